//! Every package version of the contract this host accepts, one type per kind: a component is
//! matched against the worlds of `warren:plugin@0.4.0` (current, `wit/warren-plugin.wit`) and of the
//! released `warren:plugin@0.3.0`, `@0.2.0` and `@0.1.0` (`wit/released/`), and runs with the
//! behaviour it was written for (0.1.0 exchanges have no `route-keys` and 0.2.0 ones no
//! `route-messages`: they are routed message by message where those would batch; exchanges before
//! 0.4.0 have no host services and never schedule). Records that did not change between versions
//! are converted field by field here, so the rest of the host speaks the current package's types
//! only.

use wasmtime::component::InstancePre;
use wasmtime::Store;

use super::bindings::{
    v0_1, v0_2, v0_3, Binding, Decision, ExchangePlugin, ExchangePluginPre, FilterPlugin,
    FilterPluginPre, IdempotencyPlugin, IdempotencyPluginPre, PluginInfo, RoutesOn,
};
use super::engine::{run, StoreState};
use super::loader::Kind;

/// A package version of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Package {
    /// `warren:plugin@0.4.0`, the current one.
    #[serde(rename = "warren:plugin@0.4.0")]
    V0_4,
    /// `warren:plugin@0.3.0` (no host services, no `schedule`).
    #[serde(rename = "warren:plugin@0.3.0")]
    V0_3,
    /// `warren:plugin@0.2.0` (no `route-messages`).
    #[serde(rename = "warren:plugin@0.2.0")]
    V0_2,
    /// `warren:plugin@0.1.0`, released first (no `route-keys`).
    #[serde(rename = "warren:plugin@0.1.0")]
    V0_1,
}

impl std::fmt::Display for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Package::V0_4 => "warren:plugin@0.4.0",
            Package::V0_3 => "warren:plugin@0.3.0",
            Package::V0_2 => "warren:plugin@0.2.0",
            Package::V0_1 => "warren:plugin@0.1.0",
        })
    }
}

/// What this host accepts, for refusal messages.
pub const ACCEPTED: &str = "a component of world exchange-plugin, filter-plugin or \
    idempotency-plugin of warren:plugin@0.4.0, warren:plugin@0.3.0, warren:plugin@0.2.0 or \
    warren:plugin@0.1.0";

/// One type per kind, a variant per package version: `$t` of the current package's bindings,
/// `v0_3::$t`, `v0_2::$t` and `v0_1::$t` of the released ones.
macro_rules! by_version {
    ($(#[$doc:meta] $name:ident($t:ident $(<$g:ty>)?);)*) => {$(
        #[$doc]
        pub enum $name {
            /// Current package (0.4.0).
            V0_4($t $(<$g>)?),
            /// Released 0.3.0.
            V0_3(v0_3::$t $(<$g>)?),
            /// Released 0.2.0.
            V0_2(v0_2::$t $(<$g>)?),
            /// Released 0.1.0.
            V0_1(v0_1::$t $(<$g>)?),
        }

        /// `Debug` naming the package version only (the generated bindings have no `Debug`).
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $name::V0_4(_) => concat!(stringify!($name), "(warren:plugin@0.4.0)"),
                    $name::V0_3(_) => concat!(stringify!($name), "(warren:plugin@0.3.0)"),
                    $name::V0_2(_) => concat!(stringify!($name), "(warren:plugin@0.2.0)"),
                    $name::V0_1(_) => concat!(stringify!($name), "(warren:plugin@0.1.0)"),
                })
            }
        }
    )*};
}

by_version! {
    /// An exchange plugin's component, pre-instantiated, in its package version.
    ExchangePre(ExchangePluginPre<StoreState>);
    /// A filter plugin's component, pre-instantiated, in its package version.
    FilterPre(FilterPluginPre<StoreState>);
    /// An idempotency plugin's component, pre-instantiated, in its package version.
    IdempotencyPre(IdempotencyPluginPre<StoreState>);
    /// An exchange plugin's instance, in its package version.
    ExchangeWorld(ExchangePlugin);
    /// A filter plugin's instance, in its package version.
    FilterWorld(FilterPlugin);
    /// An idempotency plugin's instance, in its package version.
    IdempotencyWorld(IdempotencyPlugin);
}

impl Clone for ExchangePre {
    fn clone(&self) -> Self {
        match self {
            ExchangePre::V0_4(p) => ExchangePre::V0_4(p.clone()),
            ExchangePre::V0_3(p) => ExchangePre::V0_3(p.clone()),
            ExchangePre::V0_2(p) => ExchangePre::V0_2(p.clone()),
            ExchangePre::V0_1(p) => ExchangePre::V0_1(p.clone()),
        }
    }
}

impl Clone for FilterPre {
    fn clone(&self) -> Self {
        match self {
            FilterPre::V0_4(p) => FilterPre::V0_4(p.clone()),
            FilterPre::V0_3(p) => FilterPre::V0_3(p.clone()),
            FilterPre::V0_2(p) => FilterPre::V0_2(p.clone()),
            FilterPre::V0_1(p) => FilterPre::V0_1(p.clone()),
        }
    }
}

impl Clone for IdempotencyPre {
    fn clone(&self) -> Self {
        match self {
            IdempotencyPre::V0_4(p) => IdempotencyPre::V0_4(p.clone()),
            IdempotencyPre::V0_3(p) => IdempotencyPre::V0_3(p.clone()),
            IdempotencyPre::V0_2(p) => IdempotencyPre::V0_2(p.clone()),
            IdempotencyPre::V0_1(p) => IdempotencyPre::V0_1(p.clone()),
        }
    }
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

/// Instantiates a pre-instantiated component into a store and calls its `describe`, converting a
/// released package's `plugin-info`.
macro_rules! describe {
    ($store:ident, $pre:expr, $interface:ident, $convert:path) => {{
        let i = $pre.instantiate_async(&mut *$store).await?;
        $convert(i.$interface().call_describe($store).await?)
    }};
}

impl Pre {
    /// The world of a package version this host accepts that `pre` targets, if any: the newest
    /// package's worlds are tried first.
    pub fn find(pre: &InstancePre<StoreState>) -> Option<Pre> {
        let p = || pre.clone();
        ExchangePluginPre::new(p())
            .map(|x| Pre::Exchange(ExchangePre::V0_4(x)))
            .or_else(|_| FilterPluginPre::new(p()).map(|x| Pre::Filter(FilterPre::V0_4(x))))
            .or_else(|_| {
                IdempotencyPluginPre::new(p()).map(|x| Pre::Idempotency(IdempotencyPre::V0_4(x)))
            })
            .or_else(|_| {
                v0_3::ExchangePluginPre::new(p()).map(|x| Pre::Exchange(ExchangePre::V0_3(x)))
            })
            .or_else(|_| v0_3::FilterPluginPre::new(p()).map(|x| Pre::Filter(FilterPre::V0_3(x))))
            .or_else(|_| {
                v0_3::IdempotencyPluginPre::new(p())
                    .map(|x| Pre::Idempotency(IdempotencyPre::V0_3(x)))
            })
            .or_else(|_| {
                v0_2::ExchangePluginPre::new(p()).map(|x| Pre::Exchange(ExchangePre::V0_2(x)))
            })
            .or_else(|_| v0_2::FilterPluginPre::new(p()).map(|x| Pre::Filter(FilterPre::V0_2(x))))
            .or_else(|_| {
                v0_2::IdempotencyPluginPre::new(p())
                    .map(|x| Pre::Idempotency(IdempotencyPre::V0_2(x)))
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
            Pre::Exchange(ExchangePre::V0_4(_))
            | Pre::Filter(FilterPre::V0_4(_))
            | Pre::Idempotency(IdempotencyPre::V0_4(_)) => Package::V0_4,
            Pre::Exchange(ExchangePre::V0_3(_))
            | Pre::Filter(FilterPre::V0_3(_))
            | Pre::Idempotency(IdempotencyPre::V0_3(_)) => Package::V0_3,
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
        let same = |i: PluginInfo| i;
        run(async {
            Ok(match self {
                Pre::Exchange(ExchangePre::V0_4(p)) => {
                    describe!(store, p, warren_plugin_exchange, same)
                }
                Pre::Filter(FilterPre::V0_4(p)) => describe!(store, p, warren_plugin_filter, same),
                Pre::Idempotency(IdempotencyPre::V0_4(p)) => {
                    describe!(store, p, warren_plugin_idempotency, same)
                }
                Pre::Exchange(ExchangePre::V0_3(p)) => {
                    describe!(store, p, warren_plugin_exchange, from_v0_3::info)
                }
                Pre::Filter(FilterPre::V0_3(p)) => {
                    describe!(store, p, warren_plugin_filter, from_v0_3::info)
                }
                Pre::Idempotency(IdempotencyPre::V0_3(p)) => {
                    describe!(store, p, warren_plugin_idempotency, from_v0_3::info)
                }
                Pre::Exchange(ExchangePre::V0_2(p)) => {
                    describe!(store, p, warren_plugin_exchange, from_v0_2::info)
                }
                Pre::Filter(FilterPre::V0_2(p)) => {
                    describe!(store, p, warren_plugin_filter, from_v0_2::info)
                }
                Pre::Idempotency(IdempotencyPre::V0_2(p)) => {
                    describe!(store, p, warren_plugin_idempotency, from_v0_2::info)
                }
                Pre::Exchange(ExchangePre::V0_1(p)) => {
                    describe!(store, p, warren_plugin_exchange, from_v0_1::info)
                }
                Pre::Filter(FilterPre::V0_1(p)) => {
                    describe!(store, p, warren_plugin_filter, from_v0_1::info)
                }
                Pre::Idempotency(IdempotencyPre::V0_1(p)) => {
                    describe!(store, p, warren_plugin_idempotency, from_v0_1::info)
                }
            })
        })
    }
}

/// Conversions between the current package's records and a released package's (module `$v` of
/// `bindings`; the same fields and cases).
macro_rules! conversions {
    ($module:ident, $v:ident, $package:literal) => {
        #[doc = concat!("Records of the released `warren:plugin@", $package, "` to and from the current ones.")]
        pub mod $module {
            use super::super::bindings::$v;
            use super::{Binding, Decision, PluginInfo, RoutesOn};

            /// Its `plugin-info` as the current one.
            pub fn info(i: $v::PluginInfo) -> PluginInfo {
                PluginInfo {
                    name: i.name,
                    version: i.version,
                    description: i.description,
                }
            }

            /// A binding as its record (the same fields).
            pub fn binding(b: &Binding) -> $v::Binding {
                $v::Binding {
                    id: b.id,
                    destination: b.destination.clone(),
                    key: b.key.clone(),
                    arguments: b.arguments.clone(),
                }
            }

            /// Its `routes-on` as the current one.
            pub fn routes_on(r: $v::RoutesOn) -> RoutesOn {
                match r {
                    $v::RoutesOn::RoutingKey => RoutesOn::RoutingKey,
                    $v::RoutesOn::Message => RoutesOn::Message,
                }
            }

            /// Its filter decision as the current one.
            pub fn decision(d: $v::Decision) -> Decision {
                match d {
                    $v::Decision::Deliver => Decision::Deliver,
                    $v::Decision::Skip => Decision::Skip,
                    $v::Decision::Reject => Decision::Reject,
                }
            }
        }
    };
}

conversions!(from_v0_3, v0_3, "0.3.0");
conversions!(from_v0_2, v0_2, "0.2.0");
conversions!(from_v0_1, v0_1, "0.1.0");
