//! Integration tests for Warren live in `tests/`. This library only exports the paths of the plugin
//! components that `build.rs` builds from `plugins/`.

/// Paths of the built plugin components (`.wasm`).
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}
