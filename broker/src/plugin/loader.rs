//! Reading a `.wasm` file into a checked, pre-instantiated plugin version: compile (or take the
//! compiled artefact from the [`CompileCache`]), link, find which world it targets, instantiate once and
//! ask it to describe itself. Every failure says which file and which step.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::PluginInfo;
use super::engine::{Fault, Runtime};
use super::output::Origin;
use super::worlds::ACCEPTED;

/// The kinds of plugin, one per world of the contract (every package version has the three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `exchange-plugin`: a custom exchange type.
    Exchange,
    /// `filter-plugin`: a consumer filter.
    Filter,
    /// `idempotency-plugin`: idempotency keys for a queue.
    Idempotency,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Exchange => "exchange",
            Kind::Filter => "filter",
            Kind::Idempotency => "idempotency",
        })
    }
}

pub use super::worlds::Pre;

/// One loaded version of a plugin file.
#[derive(Debug)]
pub struct Loaded {
    /// What the plugin says it is (`name` is its exchange type or its filter / idempotency name).
    pub name: String,
    /// The plugin's own version string.
    pub version: String,
    /// The plugin's description.
    pub description: String,
    /// Which world it targets.
    pub kind: Kind,
    /// Which package version that world belongs to.
    pub package: super::worlds::Package,
    /// SHA-256 of the file, hex.
    pub hash: String,
    /// When this version was loaded.
    pub loaded_at: SystemTime,
    /// Ready to instantiate.
    pub pre: Pre,
    /// How the compiled code was obtained, and how long it took.
    pub compiled: Compiled,
}

/// Where a version's compiled code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Deserialized from the compile cache.
    CacheHit,
    /// Compiled, and written to the cache.
    Compiled,
    /// Compiled; no cache (no data directory) or the cache could not be written.
    CompiledUncached,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::CacheHit => "hit",
            Source::Compiled => "miss",
            Source::CompiledUncached => "off",
        })
    }
}

/// How a version's code was obtained.
#[derive(Clone, Copy, Debug)]
pub struct Compiled {
    /// Cache hit or compile.
    pub source: Source,
    /// Time to compile or deserialize.
    pub took: Duration,
}

/// Compiled components kept on disk (`<data dir>/plugin-cache/`), so that a restart with unchanged
/// plugins loads them in milliseconds. An entry is named by the file's content hash and the engine's
/// compatibility hash (wasmtime version and compilation settings): another engine never reads it.
/// Entries are written whole under a temporary name and renamed into place.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    /// A cache in `dir` (created when first written) for components compiled by `engine`.
    pub fn new(dir: PathBuf, engine: &wasmtime::Engine) -> CompileCache {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache {
            dir,
            engine_key: format!("{:016x}", h.finish()),
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry of the component whose file has content hash `hash`.
    pub fn entry(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_key))
    }

    /// The cached component for `hash`, if there is a usable entry (one that fails to load is
    /// removed, so that it is compiled and written again).
    fn load(&self, engine: &wasmtime::Engine, hash: &str) -> Option<Component> {
        let path = self.entry(hash);
        if !path.exists() {
            return None;
        }
        // Read into memory, not mapped: a mapped file truncated or rewritten in place by anyone
        // would fault the broker (SIGBUS) on its next plugin call.
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(entry = %path.display(), "plugin compile cache entry unreadable, compiling again: {e}");
                return None;
            }
        };
        // SAFETY: wasmtime runs the native code in a serialized component as it is, so the bytes must
        // come from `Component::serialize` of a compatible engine. Entries are written only by
        // `store` below, into the broker's own data directory (the trust boundary of everything
        // else the broker reads back: its message store and definitions), under a name that
        // includes this engine's compatibility hash; wasmtime also checks the header (its version
        // and the engine's settings) and refuses a mismatch or a file that is not one of its
        // artefacts, which falls back to compiling.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, &bytes) };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(entry = %path.display(), "plugin compile cache entry unusable, compiling again: {e:#}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes `component` as the entry for `hash`. Returns false when it could not be written (the
    /// plugin is loaded all the same).
    fn store(&self, hash: &str, component: &Component) -> bool {
        let write = || -> anyhow::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let bytes = component.serialize().map_err(wasm_err)?;
            let path = self.entry(hash);
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        };
        match write() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "plugin compile cache not written: {e:#}");
                false
            }
        }
    }

    /// Removes the entries of this engine whose content hash is not in `keep`, and every entry of
    /// other engines (left by an older broker). Returns how many were removed.
    pub fn prune(&self, keep: &std::collections::HashSet<String>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let suffix = format!("-{}.cwasm", self.engine_key);
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let kept = name
                .strip_suffix(&suffix)
                .is_some_and(|hash| keep.contains(hash));
            if !kept && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// `bytes` (content hash `hash`) as a compiled component: from `cache` when it holds it, else compiled
/// (and written to `cache`).
///
/// # Errors
/// Not a valid WebAssembly component (truncated, or a core module).
pub(crate) fn compile(
    runtime: &Runtime,
    bytes: &[u8],
    hash: &str,
    cache: Option<&CompileCache>,
) -> anyhow::Result<(Component, Compiled)> {
    let started = Instant::now();
    if let Some(component) = cache.and_then(|c| c.load(&runtime.engine, hash)) {
        let took = started.elapsed();
        return Ok((
            component,
            Compiled {
                source: Source::CacheHit,
                took,
            },
        ));
    }
    let component = Component::new(&runtime.engine, bytes)
        .map_err(wasm_err)
        .context("not a valid WebAssembly component (truncated, or a core module?)")?;
    let took = started.elapsed();
    let source = match cache {
        Some(c) if c.store(hash, &component) => Source::Compiled,
        _ => Source::CompiledUncached,
    };
    Ok((component, Compiled { source, took }))
}

/// Hex SHA-256 of `bytes`.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn wasm_err(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// Hands the memory a compile freed back to the system. Compiling a large component (a Python
/// plugin: ~18 MB) allocates ~300 MiB across wasmtime's compile threads; glibc keeps what they free in
/// its arenas, so the broker's RSS stayed ~300 MiB higher after a compile (`scripts/plugin_rss.py`:
/// 349 MiB after a first start with one Python plugin, 52 MiB after a start from the cache).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes no pointer; it only walks glibc's own arenas (each under its
        // lock) and returns free pages to the kernel. It is safe to call from any thread at any time.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Compiles (or takes from `cache`) and checks `bytes` (the content of `file`) as a plugin. Blocking:
/// call it off the hot path.
///
/// # Errors
/// Not a component, a component for an unknown world or package version, imports the sandbox does not
/// offer, a trap while initialising or describing itself, or an exchange type name without `x-`.
pub fn load(
    runtime: &Runtime,
    file: &Path,
    bytes: &[u8],
    cache: Option<&CompileCache>,
) -> anyhow::Result<Loaded> {
    let hash = content_hash(bytes);
    let (component, compiled) = compile(runtime, bytes, &hash, cache)?;
    let instance_pre = runtime
        .linker
        .instantiate_pre(&component)
        .map_err(wasm_err)
        .with_context(|| {
            format!(
                "imports something the plugin sandbox does not offer (this broker offers WASI 0.2 \
                 with an empty context and warren:plugin/types@0.3.0, @0.2.0 and @0.1.0); {}",
                summary(runtime, &component)
            )
        })?;
    let Some(pre) = Pre::find(&instance_pre) else {
        bail!(
            "targets no world this broker accepts ({ACCEPTED}); {}",
            summary(runtime, &component)
        );
    };
    let info = describe(runtime, file, &pre).context("failed to initialise and describe itself")?;
    if info.name.is_empty() || info.name.len() > 255 {
        bail!("plugin name must have 1 to 255 octets");
    }
    if pre.kind() == Kind::Exchange && !info.name.starts_with("x-") {
        bail!(
            "exchange type '{}' must start with 'x-' (RabbitMQ's rule for non-standard types)",
            info.name
        );
    }
    if compiled.source != Source::CacheHit {
        release_freed_memory();
    }
    Ok(Loaded {
        name: info.name,
        version: info.version,
        description: info.description,
        kind: pre.kind(),
        package: pre.package(),
        hash,
        loaded_at: SystemTime::now(),
        pre,
        compiled,
    })
}

fn describe(runtime: &Runtime, file: &Path, pre: &Pre) -> anyhow::Result<PluginInfo> {
    // Its name is not known before `describe` answers: output while loading is tagged with the file.
    let mut store = runtime.store(&Origin::new("(loading)", file), runtime.limits.memory_bytes);
    runtime.arm_instantiate(&mut store);
    pre.describe(&mut store)
        .map_err(|e| anyhow::anyhow!("{}", Fault::from_error(&e)))
}

/// The names a component exports and imports (`warren plugin check`).
pub(crate) fn interface(runtime: &Runtime, component: &Component) -> (Vec<String>, Vec<String>) {
    let ty = component.component_type();
    (
        ty.exports(&runtime.engine)
            .map(|(n, _)| n.to_owned())
            .collect(),
        ty.imports(&runtime.engine)
            .map(|(n, _)| n.to_owned())
            .collect(),
    )
}

/// What a component exports and imports, for a refusal: "it exports [...] and imports [...]".
fn summary(runtime: &Runtime, component: &Component) -> String {
    let ty = component.component_type();
    let names = |it: &mut dyn Iterator<Item = &str>| {
        let v: Vec<&str> = it.collect();
        if v.is_empty() {
            "nothing".to_owned()
        } else {
            v.join(", ")
        }
    };
    format!(
        "it exports {} and imports {}",
        names(&mut ty.exports(&runtime.engine).map(|(n, _)| n)),
        names(&mut ty.imports(&runtime.engine).map(|(n, _)| n)),
    )
}
