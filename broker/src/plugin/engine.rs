//! One wasmtime [`Engine`] and [`Linker`] for every plugin, the per-instance store state, the host side
//! of the `message` resource, and the sandbox limits.
//!
//! Phases (spin's `factors`): the engine and linker are made once; a plugin version is compiled and
//! pre-instantiated once (`loader`); each entity gets its own [`Store`] and instance. Every call runs
//! under a wall-clock deadline checked at each epoch tick (a 2 ms ticker thread) and every store under
//! a memory cap; WASI is linked with an empty context (no files, environment, network or arguments;
//! stdout and stderr go to the log).
//!
//! Isolation: a call runs on the calling thread (a Tokio worker, for a publish) until its first epoch
//! tick; a call still running then yields once, and [`run`] finishes it through
//! `crate::sync::off_worker`, which hands the worker's other tasks to another thread. A fast call
//! costs nothing extra; a looping one delays only its own caller (ARCHITECTURE.md "Sandbox").

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use amq_protocol::types::AMQPValue;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, v0_1, v0_2, v0_3, FieldValue, MessageRunView, MessageView};
use super::kv::{KvQuota, KvStore};
use super::output::{Origin, PluginOutput};
use crate::message::Message;
use crate::protocol::values::{encode_array, encode_table};

/// How often the epoch advances: how often a running call's deadline is checked, and how long a call
/// may hold the calling thread before it is moved off the Tokio worker.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Sandbox limits for plugin calls (config keys `plugin_call_timeout`, `plugin_memory_limit` and
/// `plugin_memory_ceiling`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Wall-clock budget of one call. Epoch deadlines are wall-clock, so keep it well above a healthy
    /// call's time on a busy machine (`../shared/DESIGN.md` §3: ≥ 100 ms held while the other core compiled).
    pub call_timeout: Duration,
    /// Wall-clock budget of instantiating a plugin (its start function and data initialisation) and,
    /// at load, of its `describe`. Larger than a call's: a freshly compiled component's first
    /// instantiation touches all of its memory image (a componentize-py plugin: ~20–40 ms in a debug
    /// build, well past 100 ms on a busy machine).
    pub instantiate_timeout: Duration,
    /// Linear memory one instance may grow to, in octets (the cap a plugin starts with).
    pub memory_bytes: usize,
    /// How far a plugin's cap is raised after breaches (doubling each time), in octets.
    pub memory_ceiling_bytes: usize,
    /// Bounds of each exchange's key-value store (`host` interface).
    pub kv: KvQuota,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout: Duration::from_millis(100),
            instantiate_timeout: Duration::from_millis(2000),
            memory_bytes: 64 << 20,
            memory_ceiling_bytes: 256 << 20,
            kv: KvQuota::default(),
        }
    }
}

/// Why a plugin call failed. The instance is unusable afterwards (a trapped instance cannot be
/// re-entered) and is replaced on the next call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call ran past its deadline (endless loop or too slow).
    Timeout,
    /// The instance tried to grow its memory past the cap.
    Memory,
    /// A trap: a guest panic (`unreachable`), a bad memory access, …
    Trap(String),
    /// The plugin's file is gone or quarantined: nothing to call.
    Unavailable(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Timeout => write!(f, "call timed out"),
            Fault::Memory => write!(f, "memory limit exceeded"),
            Fault::Trap(t) => write!(f, "trap: {t}"),
            Fault::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

impl Fault {
    /// Classifies a wasmtime call error.
    pub fn from_error(e: &wasmtime::Error) -> Fault {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Fault::Timeout,
            Some(trap) => Fault::Trap(trap.to_string()),
            None => {
                let text = format!("{e:#}");
                if text.contains("memory") {
                    Fault::Memory
                } else {
                    Fault::Trap(text)
                }
            }
        }
    }
}

/// The deadline of the call running in a store (set by [`Runtime::arm_for`]).
#[derive(Debug)]
struct Deadline {
    /// When the call was armed.
    armed: Instant,
    /// Wall-clock budget from `armed`.
    budget: Duration,
    /// The call has yielded once (at its first tick) to be moved off the worker.
    yielded: bool,
}

impl Deadline {
    /// What to do at an epoch tick: interrupt past the budget; yield at the first tick (the call is
    /// slow: [`run`] moves it off the worker); else check again at the next tick.
    fn at_tick(&mut self) -> UpdateDeadline {
        if self.armed.elapsed() >= self.budget {
            UpdateDeadline::Interrupt
        } else if !self.yielded {
            self.yielded = true;
            UpdateDeadline::Yield(1)
        } else {
            UpdateDeadline::Continue(1)
        }
    }
}

/// What one instance's [`Store`] holds.
pub struct StoreState {
    table: ResourceTable,
    wasi: WasiCtx,
    limits: StoreLimits,
    deadline: Deadline,
    /// The entity's key-value store (`host` interface), when the entity has one.
    pub(super) kv: Option<Arc<KvStore>>,
}

impl std::fmt::Debug for StoreState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreState").finish_non_exhaustive()
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StoreState {
    fn view(&self, r: &Resource<MessageView>) -> Option<&Message> {
        self.table.get(r).ok().map(|v| &*v.message)
    }

    fn run_message(&self, r: &Resource<MessageRunView>, i: u32) -> Option<&Message> {
        let run = self.table.get(r).ok()?;
        run.messages.get(i as usize).map(|m| &**m)
    }
}

fn text(s: &amq_protocol::types::ShortString) -> FieldValue {
    FieldValue::Text(s.as_str().to_owned())
}

/// An AMQP value as the WIT `field-value`.
pub fn field_value(v: &AMQPValue) -> FieldValue {
    match v {
        AMQPValue::Boolean(b) => FieldValue::Boolean(*b),
        AMQPValue::Float(f) => FieldValue::Float((*f).into()),
        AMQPValue::Double(f) => FieldValue::Float(*f),
        AMQPValue::DecimalValue(d) => FieldValue::Decimal((d.scale, d.value)),
        AMQPValue::ShortString(s) => text(s),
        AMQPValue::LongString(s) => {
            FieldValue::Text(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => FieldValue::Bytes(b.as_slice().to_vec()),
        AMQPValue::Timestamp(t) => FieldValue::Timestamp(*t),
        AMQPValue::FieldTable(t) => FieldValue::Table(table_body(t)),
        AMQPValue::FieldArray(a) => {
            let mut bytes = encode_array(a);
            bytes.drain(..bytes.len().min(4));
            FieldValue::Array(bytes)
        }
        AMQPValue::Void => FieldValue::Void,
        other => crate::protocol::values::int_value(other)
            .and_then(|n| i64::try_from(n).ok())
            .map_or(FieldValue::Void, FieldValue::Integer),
    }
}

/// A field table's octets after its length prefix (the WIT `field-table`).
pub fn table_body(t: &amq_protocol::types::FieldTable) -> Vec<u8> {
    let mut bytes = encode_table(t);
    bytes.drain(..bytes.len().min(4));
    bytes
}

/// The `message` accessors over the broker's message (shared by `message` and `message-run`).
mod read {
    use super::{field_value, table_body, text, FieldValue, Message};

    pub(super) fn property(m: &Message, name: &str) -> Option<FieldValue> {
        let p = &m.properties;
        match name {
            "content-type" => p.content_type().as_ref().map(text),
            "content-encoding" => p.content_encoding().as_ref().map(text),
            "delivery-mode" => p.delivery_mode().map(|n| FieldValue::Integer(n.into())),
            "priority" => p.priority().map(|n| FieldValue::Integer(n.into())),
            "correlation-id" => p.correlation_id().as_ref().map(text),
            "reply-to" => p.reply_to().as_ref().map(text),
            "expiration" => p.expiration().as_ref().map(text),
            "message-id" => p.message_id().as_ref().map(text),
            "timestamp" => p.timestamp().map(FieldValue::Timestamp),
            "type" => p.kind().as_ref().map(text),
            "user-id" => p.user_id().as_ref().map(text),
            "app-id" => p.app_id().as_ref().map(text),
            _ => None,
        }
    }

    pub(super) fn header(m: &Message, name: &str) -> Option<FieldValue> {
        let headers = m.properties.headers().as_ref()?;
        headers.inner().get(name).map(field_value)
    }

    pub(super) fn headers(m: &Message) -> Vec<u8> {
        m.properties
            .headers()
            .as_ref()
            .map(table_body)
            .unwrap_or_default()
    }
}

impl bindings::HostMessage for StoreState {
    fn exchange(&mut self, r: Resource<MessageView>) -> String {
        self.view(&r)
            .map(|m| m.exchange.to_string())
            .unwrap_or_default()
    }

    fn routing_key(&mut self, r: Resource<MessageView>) -> String {
        self.view(&r)
            .map(|m| m.routing_key.to_string())
            .unwrap_or_default()
    }

    fn body_size(&mut self, r: Resource<MessageView>) -> u64 {
        self.view(&r).map_or(0, Message::body_size)
    }

    fn body(&mut self, r: Resource<MessageView>) -> Vec<u8> {
        self.view(&r).map(|m| m.body.to_vec()).unwrap_or_default()
    }

    fn property(&mut self, r: Resource<MessageView>, name: String) -> Option<FieldValue> {
        read::property(self.view(&r)?, &name)
    }

    fn header(&mut self, r: Resource<MessageView>, name: String) -> Option<FieldValue> {
        read::header(self.view(&r)?, &name)
    }

    fn headers(&mut self, r: Resource<MessageView>) -> Vec<u8> {
        self.view(&r).map(read::headers).unwrap_or_default()
    }

    fn drop(&mut self, r: Resource<MessageView>) -> wasmtime::Result<()> {
        // The host lends message views (`borrow<message>`) and deletes them after each call; a guest
        // never owns one, but dropping an own handle must still be safe.
        let _ = self.table.delete(r);
        Ok(())
    }
}

impl bindings::HostMessageRun for StoreState {
    fn len(&mut self, r: Resource<MessageRunView>) -> u32 {
        self.table.get(&r).map_or(0, |run| {
            u32::try_from(run.messages.len()).unwrap_or(u32::MAX)
        })
    }

    fn exchange(&mut self, r: Resource<MessageRunView>, i: u32) -> String {
        self.run_message(&r, i)
            .map(|m| m.exchange.to_string())
            .unwrap_or_default()
    }

    fn routing_key(&mut self, r: Resource<MessageRunView>, i: u32) -> String {
        self.run_message(&r, i)
            .map(|m| m.routing_key.to_string())
            .unwrap_or_default()
    }

    fn body_size(&mut self, r: Resource<MessageRunView>, i: u32) -> u64 {
        self.run_message(&r, i).map_or(0, Message::body_size)
    }

    fn body(&mut self, r: Resource<MessageRunView>, i: u32) -> Vec<u8> {
        self.run_message(&r, i)
            .map(|m| m.body.to_vec())
            .unwrap_or_default()
    }

    fn property(
        &mut self,
        r: Resource<MessageRunView>,
        i: u32,
        name: String,
    ) -> Option<FieldValue> {
        read::property(self.run_message(&r, i)?, &name)
    }

    fn header(&mut self, r: Resource<MessageRunView>, i: u32, name: String) -> Option<FieldValue> {
        read::header(self.run_message(&r, i)?, &name)
    }

    fn headers(&mut self, r: Resource<MessageRunView>, i: u32) -> Vec<u8> {
        self.run_message(&r, i)
            .map(read::headers)
            .unwrap_or_default()
    }

    fn bodies(&mut self, r: Resource<MessageRunView>) -> bindings::RunBodies {
        let mut bodies = bindings::RunBodies {
            octets: Vec::new(),
            ends: Vec::new(),
        };
        if let Ok(run) = self.table.get(&r) {
            bodies
                .octets
                .reserve(run.messages.iter().map(|m| m.body.len()).sum());
            bodies.ends.reserve(run.messages.len());
            for m in &run.messages {
                bodies.octets.extend_from_slice(&m.body);
                bodies
                    .ends
                    .push(u32::try_from(bodies.octets.len()).unwrap_or(u32::MAX));
            }
        }
        bodies
    }

    fn drop(&mut self, r: Resource<MessageRunView>) -> wasmtime::Result<()> {
        // Lent as a borrow and deleted by the host after the call, like `message`.
        let _ = self.table.delete(r);
        Ok(())
    }
}

impl bindings::TypesHost for StoreState {}

/// `warren:plugin/host` (0.4.0): the entity's key-value store and the clock. Without a store (an
/// instance made by `warren plugin check`/`test`, or one not attached yet) reads find nothing and
/// writes are refused as over quota.
impl bindings::HostServices for StoreState {
    fn kv_configure(&mut self, options: bindings::KvOptions) {
        if let Some(kv) = &self.kv {
            kv.configure(options);
        }
    }

    fn kv_get(&mut self, key: Vec<u8>) -> Option<Vec<u8>> {
        self.kv.as_ref()?.get(&key)
    }

    fn kv_set(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), bindings::KvError> {
        match &self.kv {
            Some(kv) => kv.set(key, value, ttl_ms),
            None => Err(bindings::KvError::QuotaExceeded),
        }
    }

    fn kv_delete(&mut self, key: Vec<u8>) -> bool {
        self.kv.as_ref().is_some_and(|kv| kv.delete(&key))
    }

    fn kv_len(&mut self) -> u64 {
        self.kv.as_ref().map_or(0, |kv| kv.len())
    }

    fn now_ms(&mut self) -> u64 {
        crate::clock::wall_ms()
    }
}

/// `warren:plugin/types` of a released package (module `$v` of `bindings`): the same host `message`
/// as the current package's, its `field-value` converted variant by variant (the same shape).
macro_rules! released_types {
    ($v:ident, $package:literal) => {
        #[doc = concat!("`warren:plugin/types@", $package, "`: the current host `message`.")]
        impl $v::HostMessage for StoreState {
            fn exchange(&mut self, r: Resource<MessageView>) -> String {
                bindings::HostMessage::exchange(self, r)
            }

            fn routing_key(&mut self, r: Resource<MessageView>) -> String {
                bindings::HostMessage::routing_key(self, r)
            }

            fn body_size(&mut self, r: Resource<MessageView>) -> u64 {
                bindings::HostMessage::body_size(self, r)
            }

            fn body(&mut self, r: Resource<MessageView>) -> Vec<u8> {
                bindings::HostMessage::body(self, r)
            }

            fn property(
                &mut self,
                r: Resource<MessageView>,
                name: String,
            ) -> Option<$v::FieldValue> {
                bindings::HostMessage::property(self, r, name).map(|v| released_value!($v, v))
            }

            fn header(&mut self, r: Resource<MessageView>, name: String) -> Option<$v::FieldValue> {
                bindings::HostMessage::header(self, r, name).map(|v| released_value!($v, v))
            }

            fn headers(&mut self, r: Resource<MessageView>) -> Vec<u8> {
                bindings::HostMessage::headers(self, r)
            }

            fn drop(&mut self, r: Resource<MessageView>) -> wasmtime::Result<()> {
                bindings::HostMessage::drop(self, r)
            }
        }

        impl $v::TypesHost for StoreState {}
    };
}

/// A current `field-value` as a released package's (module `$v`; the same variant).
macro_rules! released_value {
    ($v:ident, $value:expr) => {
        match $value {
            FieldValue::Boolean(b) => $v::FieldValue::Boolean(b),
            FieldValue::Integer(n) => $v::FieldValue::Integer(n),
            FieldValue::Float(f) => $v::FieldValue::Float(f),
            FieldValue::Decimal(d) => $v::FieldValue::Decimal(d),
            FieldValue::Text(t) => $v::FieldValue::Text(t),
            FieldValue::Bytes(b) => $v::FieldValue::Bytes(b),
            FieldValue::Timestamp(t) => $v::FieldValue::Timestamp(t),
            FieldValue::Table(t) => $v::FieldValue::Table(t),
            FieldValue::Array(a) => $v::FieldValue::Array(a),
            FieldValue::Void => $v::FieldValue::Void,
        }
    };
}

released_types!(v0_3, "0.3.0");
released_types!(v0_2, "0.2.0");
released_types!(v0_1, "0.1.0");

/// `warren:plugin/types@0.3.0`'s `message-run`: the current one (the same shape).
impl v0_3::HostMessageRun for StoreState {
    fn len(&mut self, r: Resource<MessageRunView>) -> u32 {
        bindings::HostMessageRun::len(self, r)
    }

    fn exchange(&mut self, r: Resource<MessageRunView>, i: u32) -> String {
        bindings::HostMessageRun::exchange(self, r, i)
    }

    fn routing_key(&mut self, r: Resource<MessageRunView>, i: u32) -> String {
        bindings::HostMessageRun::routing_key(self, r, i)
    }

    fn body_size(&mut self, r: Resource<MessageRunView>, i: u32) -> u64 {
        bindings::HostMessageRun::body_size(self, r, i)
    }

    fn body(&mut self, r: Resource<MessageRunView>, i: u32) -> Vec<u8> {
        bindings::HostMessageRun::body(self, r, i)
    }

    fn property(
        &mut self,
        r: Resource<MessageRunView>,
        i: u32,
        name: String,
    ) -> Option<v0_3::FieldValue> {
        bindings::HostMessageRun::property(self, r, i, name).map(|v| released_value!(v0_3, v))
    }

    fn header(
        &mut self,
        r: Resource<MessageRunView>,
        i: u32,
        name: String,
    ) -> Option<v0_3::FieldValue> {
        bindings::HostMessageRun::header(self, r, i, name).map(|v| released_value!(v0_3, v))
    }

    fn headers(&mut self, r: Resource<MessageRunView>, i: u32) -> Vec<u8> {
        bindings::HostMessageRun::headers(self, r, i)
    }

    fn bodies(&mut self, r: Resource<MessageRunView>) -> v0_3::RunBodies {
        let b = bindings::HostMessageRun::bodies(self, r);
        v0_3::RunBodies {
            octets: b.octets,
            ends: b.ends,
        }
    }

    fn drop(&mut self, r: Resource<MessageRunView>) -> wasmtime::Result<()> {
        bindings::HostMessageRun::drop(self, r)
    }
}

/// The engine, the linker and the limits shared by every plugin.
#[derive(Clone)]
pub struct Runtime {
    /// Compiles components; its epoch drives call deadlines.
    pub engine: Engine,
    /// WASI (empty context) + `warren:plugin/types` (0.4.0 and the released 0.3.0, 0.2.0 and
    /// 0.1.0) + `warren:plugin/host` (0.4.0).
    pub linker: Arc<Linker<StoreState>>,
    /// Applied to every store and call.
    pub limits: Limits,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine (epoch interruption on) and the linker, and starts the epoch ticker thread,
    /// which ends when the engine is dropped.
    ///
    /// # Errors
    /// wasmtime refused the configuration or a linker definition clashed (a bug).
    pub fn new(limits: Limits) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking WASI: {e:#}"))?;
        bindings::types::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("linking warren:plugin/types: {e:#}"))?;
        bindings::host::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("linking warren:plugin/host: {e:#}"))?;
        v0_3::types::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("linking warren:plugin/types@0.3.0: {e:#}"))?;
        v0_2::types::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("linking warren:plugin/types@0.2.0: {e:#}"))?;
        v0_1::types::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("linking warren:plugin/types@0.1.0: {e:#}"))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("warren-plugin-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            })?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            limits,
        })
    }

    /// A fresh store for one instance of the plugin `origin` names, its linear memory capped at
    /// `memory_bytes`; the plugin's stdout and stderr go to the log, tagged with `origin` (see
    /// [`super::output`]).
    pub fn store(&self, origin: &Origin, memory_bytes: usize) -> Store<StoreState> {
        let (stdout, stderr) = PluginOutput::pair(origin);
        let state = StoreState {
            table: ResourceTable::new(),
            wasi: WasiCtxBuilder::new().stdout(stdout).stderr(stderr).build(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            deadline: Deadline {
                armed: Instant::now(),
                budget: self.limits.call_timeout,
                yielded: false,
            },
            kv: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().deadline.at_tick()));
        store
    }

    /// Arms the deadline for the next call on `store`.
    pub fn arm(&self, store: &mut Store<StoreState>) {
        self.arm_for(store, 1);
    }

    /// Arms the deadline for instantiating a plugin in `store` ([`Limits::instantiate_timeout`]).
    pub fn arm_instantiate(&self, store: &mut Store<StoreState>) {
        self.arm_budget(store, self.limits.instantiate_timeout);
    }

    /// Arms the deadline for a call that does the work of `calls` calls (a `route-keys` batch): the
    /// call timeout times `calls`.
    pub fn arm_for(&self, store: &mut Store<StoreState>, calls: u64) {
        let calls = u32::try_from(calls.max(1)).unwrap_or(u32::MAX);
        self.arm_budget(store, self.limits.call_timeout.saturating_mul(calls));
    }

    fn arm_budget(&self, store: &mut Store<StoreState>, budget: Duration) {
        store.data_mut().deadline = Deadline {
            armed: Instant::now(),
            budget,
            yielded: false,
        };
        store.set_epoch_deadline(1);
    }
}

/// Drives a plugin call's future to completion. A plugin's only imports are `warren:plugin/types`
/// (synchronous) and WASI with an empty context whose output writes synchronously, so the future
/// never waits on I/O: it is pending only when the call yielded at its first epoch tick (it is slow),
/// and the rest of it then runs through `crate::sync::off_worker`, so that a call looping until its
/// deadline does not hold a Tokio worker that serves other connections.
pub fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => crate::sync::off_worker(|| futures_lite::future::block_on(future)),
    }
}

/// Lends `message` to a call as a `message` resource; the caller deletes it afterwards with
/// [`forget_message`].
///
/// # Errors
/// The resource table is full (a guest leaking handles).
pub fn lend_message(
    store: &mut Store<StoreState>,
    message: &Arc<Message>,
) -> Result<Resource<MessageView>, Fault> {
    store
        .data_mut()
        .table
        .push(MessageView {
            message: Arc::clone(message),
        })
        .map_err(|e| Fault::Trap(e.to_string()))
}

/// Puts a run of messages into the store's resource table for one `route-messages` call (delete it
/// with [`forget_run`] after the call).
///
/// # Errors
/// The resource table is full.
pub fn lend_run(
    store: &mut Store<StoreState>,
    messages: &[&Arc<Message>],
) -> Result<Resource<MessageRunView>, Fault> {
    store
        .data_mut()
        .table
        .push(MessageRunView {
            messages: messages.iter().map(|m| Arc::clone(m)).collect(),
        })
        .map_err(|e| Fault::Trap(e.to_string()))
}

/// Deletes a run made by [`lend_run`].
pub fn forget_run(store: &mut Store<StoreState>, run: Resource<MessageRunView>) {
    let _ = store.data_mut().table.delete(run);
}

/// Deletes a view made by [`lend_message`].
pub fn forget_message(store: &mut Store<StoreState>, view: Resource<MessageView>) {
    let _ = store.data_mut().table.delete(view);
}
