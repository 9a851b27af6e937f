//! Reading a `.wasm` file into a checked, pre-instantiated plugin version: compile, link, find which
//! world it targets, instantiate once and ask it to describe itself. Every failure says which file and
//! which step.

use std::time::SystemTime;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::{ExchangePluginPre, FilterPluginPre, IdempotencyPluginPre, PluginInfo};
use super::engine::{Fault, Runtime};
use super::output::Origin;

/// The kinds of plugin, one per world of `warren:plugin@0.2.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
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

/// A pre-instantiated component of one kind (exports looked up once, before any instance exists).
#[derive(Clone)]
pub enum Pre {
    /// An exchange plugin.
    Exchange(ExchangePluginPre<super::engine::StoreState>),
    /// A filter plugin.
    Filter(FilterPluginPre<super::engine::StoreState>),
    /// An idempotency plugin.
    Idempotency(IdempotencyPluginPre<super::engine::StoreState>),
}

impl std::fmt::Debug for Pre {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pre::Exchange(_) => "Pre::Exchange",
            Pre::Filter(_) => "Pre::Filter",
            Pre::Idempotency(_) => "Pre::Idempotency",
        })
    }
}

impl Pre {
    /// The kind of plugin.
    pub fn kind(&self) -> Kind {
        match self {
            Pre::Exchange(_) => Kind::Exchange,
            Pre::Filter(_) => Kind::Filter,
            Pre::Idempotency(_) => Kind::Idempotency,
        }
    }
}

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
    /// SHA-256 of the file, hex.
    pub hash: String,
    /// When this version was loaded.
    pub loaded_at: SystemTime,
    /// Ready to instantiate.
    pub pre: Pre,
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

/// Compiles and checks `bytes` (the content of `file`) as a plugin. Blocking: call it off the hot path.
///
/// # Errors
/// Not a component, a component for an unknown world or package version, imports the sandbox does not
/// offer, a trap while initialising or describing itself, or an exchange type name without `x-`.
pub fn load(runtime: &Runtime, file: &std::path::Path, bytes: &[u8]) -> anyhow::Result<Loaded> {
    let component = Component::new(&runtime.engine, bytes)
        .map_err(wasm_err)
        .context("not a valid WebAssembly component (truncated, or a core module?)")?;
    let instance_pre = runtime
        .linker
        .instantiate_pre(&component)
        .map_err(wasm_err)
        .context("imports something the plugin sandbox does not offer")?;
    let pre = if let Ok(p) = ExchangePluginPre::new(instance_pre.clone()) {
        Pre::Exchange(p)
    } else if let Ok(p) = FilterPluginPre::new(instance_pre.clone()) {
        Pre::Filter(p)
    } else if let Ok(p) = IdempotencyPluginPre::new(instance_pre) {
        Pre::Idempotency(p)
    } else {
        bail!(
            "exports none of warren:plugin/exchange@0.2.0, warren:plugin/filter@0.2.0, \
             warren:plugin/idempotency@0.2.0 (built against another package version?)"
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
    Ok(Loaded {
        name: info.name,
        version: info.version,
        description: info.description,
        kind: pre.kind(),
        hash: content_hash(bytes),
        loaded_at: SystemTime::now(),
        pre,
    })
}

fn describe(runtime: &Runtime, file: &std::path::Path, pre: &Pre) -> anyhow::Result<PluginInfo> {
    // Its name is not known before `describe` answers: output while loading is tagged with the file.
    let mut store = runtime.store(&Origin::new("(loading)", file));
    runtime.arm(&mut store);
    let info = super::engine::run(async {
        match pre {
            Pre::Exchange(p) => {
                let i = p.instantiate_async(&mut store).await?;
                i.warren_plugin_exchange().call_describe(&mut store).await
            }
            Pre::Filter(p) => {
                let i = p.instantiate_async(&mut store).await?;
                i.warren_plugin_filter().call_describe(&mut store).await
            }
            Pre::Idempotency(p) => {
                let i = p.instantiate_async(&mut store).await?;
                i.warren_plugin_idempotency()
                    .call_describe(&mut store)
                    .await
            }
        }
    });
    info.map_err(|e| anyhow::anyhow!("{}", Fault::from_error(&e)))
}
