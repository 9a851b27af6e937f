//! Every package version of the contract this host accepts, one type per kind: a component is
//! matched against the worlds of `warren:plugin@0.2.0` (current, `wit/warren-plugin.wit`) and of the
//! released `warren:plugin@0.1.0` (`wit/released/`), and runs with the behaviour it was written for
//! (0.1.0 exchanges have no `route-keys`: they are routed message by message). Records that did not
//! change between versions are converted field by field here, so the rest of the host speaks the
//! current package's types only.

use wasmtime::component::InstancePre;
use wasmtime::Store;

use super::bindings::{
    v0_1, Binding, Decision, ExchangePlugin, ExchangePluginPre, FilterPlugin, FilterPluginPre,
    IdempotencyPlugin, IdempotencyPluginPre, PluginInfo, RoutesOn,
};
use super::engine::{run, StoreState};
use super::loader::Kind;

/// A package version of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Package {
    /// `warren:plugin@0.2.0`, the current one.
    #[serde(rename = "warren:plugin@0.2.0")]
    V0_2,
    /// `warren:plugin@0.1.0`, released first.
    #[serde(rename = "warren:plugin@0.1.0")]
    V0_1,
}

impl std::fmt::Display for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Package::V0_2 => "warren:plugin@0.2.0",
            Package::V0_1 => "warren:plugin@0.1.0",
        })
    }
}

/// What this host accepts, for refusal messages.
pub const ACCEPTED: &str = "a component of world exchange-plugin, filter-plugin or \
    idempotency-plugin of warren:plugin@0.2.0 or warren:plugin@0.1.0";

/// An exchange plugin's component, pre-instantiated, in its package version.
#[derive(Clone)]
pub enum ExchangePre {
    /// Current package.
    V0_2(ExchangePluginPre<StoreState>),
    /// Released 0.1.0.
    V0_1(v0_1::ExchangePluginPre<StoreState>),
}

/// A filter plugin's component, pre-instantiated, in its package version.
#[derive(Clone)]
pub enum FilterPre {
    /// Current package.
    V0_2(FilterPluginPre<StoreState>),
    /// Released 0.1.0.
    V0_1(v0_1::FilterPluginPre<StoreState>),
}

/// An idempotency plugin's component, pre-instantiated, in its package version.
#[derive(Clone)]
pub enum IdempotencyPre {
    /// Current package.
    V0_2(IdempotencyPluginPre<StoreState>),
    /// Released 0.1.0.
    V0_1(v0_1::IdempotencyPluginPre<StoreState>),
}

/// A pre-instantiated component of one kind (exports looked up once, before any instance exists).
#[derive(Clone)]
pub enum Pre {
    /// An exchange plugin.
    Exchange(ExchangePre),
    /// A filter plugin.
    Filter(FilterPre),
    /// An idempotency plugin.
    Idempotency(IdempotencyPre),
}

impl std::fmt::Debug for Pre {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pre({} {})", self.kind(), self.package())
    }
}

impl Pre {
    /// The world of a package version this host accepts that `pre` targets, if any: the current
    /// package's worlds are tried first.
    pub fn find(pre: &InstancePre<StoreState>) -> Option<Pre> {
        let p = || pre.clone();
        ExchangePluginPre::new(p())
            .map(|x| Pre::Exchange(ExchangePre::V0_2(x)))
            .or_else(|_| FilterPluginPre::new(p()).map(|x| Pre::Filter(FilterPre::V0_2(x))))
            .or_else(|_| {
                IdempotencyPluginPre::new(p()).map(|x| Pre::Idempotency(IdempotencyPre::V0_2(x)))
            })
            .or_else(|_| {
                v0_1::ExchangePluginPre::new(p()).map(|x| Pre::Exchange(ExchangePre::V0_1(x)))
            })
            .or_else(|_| v0_1::FilterPluginPre::new(p()).map(|x| Pre::Filter(FilterPre::V0_1(x))))
            .or_else(|_| {
                v0_1::IdempotencyPluginPre::new(p())
                    .map(|x| Pre::Idempotency(IdempotencyPre::V0_1(x)))
            })
            .ok()
    }

    /// The kind of plugin.
    pub fn kind(&self) -> Kind {
        match self {
            Pre::Exchange(_) => Kind::Exchange,
            Pre::Filter(_) => Kind::Filter,
            Pre::Idempotency(_) => Kind::Idempotency,
        }
    }

    /// The package version its world belongs to.
    pub fn package(&self) -> Package {
        match self {
            Pre::Exchange(ExchangePre::V0_2(_))
            | Pre::Filter(FilterPre::V0_2(_))
            | Pre::Idempotency(IdempotencyPre::V0_2(_)) => Package::V0_2,
            _ => Package::V0_1,
        }
    }

    /// Instantiates into `store` and calls `describe`.
    ///
    /// # Errors
    /// Instantiation or `describe` trapped.
    pub fn describe(&self, store: &mut Store<StoreState>) -> wasmtime::Result<PluginInfo> {
        run(async {
            Ok(match self {
                Pre::Exchange(ExchangePre::V0_2(p)) => {
                    let i = p.instantiate_async(&mut *store).await?;
                    i.warren_plugin_exchange().call_describe(store).await?
                }
                Pre::Filter(FilterPre::V0_2(p)) => {
                    let i = p.instantiate_async(&mut *store).await?;
                    i.warren_plugin_filter().call_describe(store).await?
                }
                Pre::Idempotency(IdempotencyPre::V0_2(p)) => {
                    let i = p.instantiate_async(&mut *store).await?;
                    i.warren_plugin_idempotency().call_describe(store).await?
                }
                Pre::Exchange(ExchangePre::V0_1(p)) => {
                    let i = p.instantiate_async(&mut *store).await?;
                    info(i.warren_plugin_exchange().call_describe(store).await?)
                }
                Pre::Filter(FilterPre::V0_1(p)) => {
                    let i = p.instantiate_async(&mut *store).await?;
                    info(i.warren_plugin_filter().call_describe(store).await?)
                }
                Pre::Idempotency(IdempotencyPre::V0_1(p)) => {
                    let i = p.instantiate_async(&mut *store).await?;
                    info(i.warren_plugin_idempotency().call_describe(store).await?)
                }
            })
        })
    }
}

fn info(i: v0_1::PluginInfo) -> PluginInfo {
    PluginInfo {
        name: i.name,
        version: i.version,
        description: i.description,
    }
}

/// A binding as the 0.1.0 package's record (the same fields).
pub fn binding_v0_1(b: &Binding) -> v0_1::Binding {
    v0_1::Binding {
        id: b.id,
        destination: b.destination.clone(),
        key: b.key.clone(),
        arguments: b.arguments.clone(),
    }
}

/// A 0.1.0 `routes-on` as the current one.
pub fn routes_on(r: v0_1::RoutesOn) -> RoutesOn {
    match r {
        v0_1::RoutesOn::RoutingKey => RoutesOn::RoutingKey,
        v0_1::RoutesOn::Message => RoutesOn::Message,
    }
}

/// A 0.1.0 filter decision as the current one.
pub fn decision(d: v0_1::Decision) -> Decision {
    match d {
        v0_1::Decision::Deliver => Decision::Deliver,
        v0_1::Decision::Skip => Decision::Skip,
        v0_1::Decision::Reject => Decision::Reject,
    }
}

/// An exchange plugin's instance, in its package version.
pub enum ExchangeWorld {
    /// Current package.
    V0_2(ExchangePlugin),
    /// Released 0.1.0 (no `route-keys`).
    V0_1(v0_1::ExchangePlugin),
}

/// A filter plugin's instance, in its package version.
pub enum FilterWorld {
    /// Current package.
    V0_2(FilterPlugin),
    /// Released 0.1.0.
    V0_1(v0_1::FilterPlugin),
}

/// An idempotency plugin's instance, in its package version.
pub enum IdempotencyWorld {
    /// Current package.
    V0_2(IdempotencyPlugin),
    /// Released 0.1.0.
    V0_1(v0_1::IdempotencyPlugin),
}

/// `Debug` naming the package version only (the generated bindings have no `Debug`).
macro_rules! debug_by_version {
    ($($t:ident),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $t::V0_2(_) => concat!(stringify!($t), "(warren:plugin@0.2.0)"),
                    $t::V0_1(_) => concat!(stringify!($t), "(warren:plugin@0.1.0)"),
                })
            }
        }
    )*};
}

debug_by_version!(
    ExchangePre,
    FilterPre,
    IdempotencyPre,
    ExchangeWorld,
    FilterWorld,
    IdempotencyWorld
);
