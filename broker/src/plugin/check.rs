//! `warren plugin check FILE.wasm`: what the broker would make of a plugin file, without a broker.
//! The file goes through the broker's own loader (`loader::load`: the same engine, linker, limits,
//! world and name checks), so an accepted file loads in the broker and a refused one is refused with
//! the reason the broker logs ("plugin refused, previous version (if any) kept: REASON").
//!
//! The report lists the kind, plugin name, version and description, the WIT package and world, what
//! the component exports and imports, its size and content hash, and how long it took to compile.

use std::fmt::Write as _;
use std::path::Path;

use super::engine::{Limits, Runtime};
use super::loader::{self, CompileCache, Kind};

/// The report of one check: the text to print, and whether the broker would load the file.
#[derive(Debug)]
pub struct Report {
    /// Lines of `key: value`, the last one `result: accepted …` or `result: refused: REASON`.
    pub text: String,
    /// The broker would load it.
    pub accepted: bool,
}

/// The world a plugin of `kind` targets.
fn world(kind: Kind) -> &'static str {
    match kind {
        Kind::Exchange => "exchange-plugin",
        Kind::Filter => "filter-plugin",
        Kind::Idempotency => "idempotency-plugin",
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join(", ")
    }
}

/// Checks the plugin file `path` with the broker's default plugin limits.
///
/// # Errors
/// The file cannot be read, or the plugin engine cannot start (a message for the user).
pub fn check(path: &Path) -> Result<Report, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let runtime = Runtime::new(Limits::default()).map_err(|e| format!("{e:#}"))?;
    // A scratch compile cache: the component is compiled once, inspected, then handed to the
    // loader from the cache (as a broker restart would find it).
    let scratch = std::env::temp_dir().join(format!("warren-plugin-check-{}", std::process::id()));
    let cache = CompileCache::new(scratch.clone(), &runtime.engine);
    let report = inspect(&runtime, path, &bytes, &cache);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(report)
}

fn inspect(runtime: &Runtime, path: &Path, bytes: &[u8], cache: &CompileCache) -> Report {
    let hash = loader::content_hash(bytes);
    let mut text = String::new();
    let _ = writeln!(text, "file:        {}", path.display());
    let _ = writeln!(text, "size:        {} octets", bytes.len());
    let _ = writeln!(text, "sha256:      {hash}");
    let refused = |mut text: String, reason: String| {
        let _ = writeln!(text, "result:      refused: {reason}");
        Report {
            text,
            accepted: false,
        }
    };
    let component = match loader::compile(runtime, bytes, &hash, Some(cache)) {
        Ok((component, compiled)) => {
            let _ = writeln!(text, "compile:     {} ms", compiled.took.as_millis());
            component
        }
        Err(e) => return refused(text, format!("{e:#}")),
    };
    let (exports, imports) = loader::interface(runtime, &component);
    let _ = writeln!(text, "exports:     {}", list(&exports));
    let _ = writeln!(text, "imports:     {}", list(&imports));
    match loader::load(runtime, path, bytes, Some(cache)) {
        Ok(loaded) => {
            let _ = writeln!(text, "kind:        {}", loaded.kind);
            let _ = writeln!(text, "name:        {}", loaded.name);
            let _ = writeln!(text, "version:     {}", loaded.version);
            let _ = writeln!(text, "description: {}", loaded.description);
            let _ = writeln!(
                text,
                "package:     {} (world {})",
                loaded.package,
                world(loaded.kind)
            );
            let what = match loaded.kind {
                Kind::Exchange => format!("exchange type '{}'", loaded.name),
                Kind::Filter => format!("consumer filter '{}' (x-filter)", loaded.name),
                Kind::Idempotency => {
                    format!("idempotency plugin '{}' (x-idempotency)", loaded.name)
                }
            };
            let _ = writeln!(text, "result:      accepted: the broker loads it as {what}");
            Report {
                text,
                accepted: true,
            }
        }
        Err(e) => refused(text, format!("{e:#}")),
    }
}
