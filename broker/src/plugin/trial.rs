//! `warren plugin test FILE.wasm`: runs a plugin in-process on the real plugin host (no broker, no
//! network) with declare arguments (or a filter's / idempotency plugin's configuration), bindings
//! and messages given on the command line or in a TOML / JSON file ([`Trial`]), and prints each
//! decision:
//!
//! - an exchange plugin: `init`, each binding through `validate-binding` / `add-binding`, then the
//!   binding ids and keys `route` gives for each message; then the batch path the broker takes —
//!   for a `routes-on = routing-key` plugin of a package with `route-keys`, one `route-keys` call
//!   over every message's key; for a `routes-on = message` plugin of a package with
//!   `route-messages`, one `route-messages` call over every message, on a fresh instance with the
//!   same bindings — which must answer the same bindings for each message as `route` did (order and
//!   duplicates aside, as the broker dedups them);
//! - a filter: `deliver`, `skip` or `reject` for each message;
//! - an idempotency plugin: each message's key (text when UTF-8, else hex), or none.
//!
//! Exit status: 0 when every call succeeded and the batch path agreed; 1 otherwise.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::ShortString;
use bytes::Bytes;

use super::bindings::{Binding, Decision, Due, RoutesOn};
use super::engine::{table_body, Limits};
use super::instance::{Configurable, Instance};
use super::loader::{self, CompileCache, Kind};
use super::worlds::{ExchangeWorld, FilterWorld, IdempotencyWorld};
use super::PluginHost;
use crate::message::{encode_properties, Message};

/// A JSON object (field values as in a definitions file: strings, numbers, booleans, objects for
/// tables, arrays).
pub type Object = serde_json::Map<String, serde_json::Value>;

/// What to run the plugin with: the command line's options, or a file (`--input`) in TOML or JSON
/// with the same keys, e.g.
///
/// ```toml
/// arguments = { "x-hash-on" = "header" }     # exchange.declare arguments, or x-filter-args / x-idempotency-args
/// bindings = ["a", { key = "b", arguments = { weight = 2 } }]   # ids 0, 1, … in order
/// headers = { tenant = "t1" }                # every message carries these
/// [[messages]]
/// routing_key = "orders.eu"
/// body = '{"total": 12}'
/// headers = { region = "eu" }
/// properties = { content-type = "application/json", message-id = "m-1", priority = 5 }
/// ```
///
/// A message may also be just its routing key (`messages = ["a", "b"]`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Trial {
    /// Declare arguments of the exchange, or the filter's / idempotency plugin's configuration
    /// (`x-filter-args`, `x-idempotency-args`).
    pub arguments: Object,
    /// Bindings, in order (ids 0, 1, …; destinations `binding-0`, `binding-1`, …).
    pub bindings: Vec<TrialBinding>,
    /// The messages, in order.
    pub messages: Vec<TrialMessage>,
    /// Headers every message carries (a message's own headers of the same name win).
    pub headers: Object,
}

/// A binding of [`Trial`]: a key, or a key with arguments.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum TrialBinding {
    /// The binding key alone.
    Key(String),
    /// A binding key and its arguments.
    Full {
        /// The binding key.
        key: String,
        /// The binding's arguments.
        #[serde(default)]
        arguments: Object,
    },
}

impl TrialBinding {
    fn key(&self) -> &str {
        match self {
            TrialBinding::Key(k) | TrialBinding::Full { key: k, .. } => k,
        }
    }
}

/// A message of [`Trial`]: a routing key, or its parts.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum TrialMessage {
    /// A routing key; no body, headers or properties.
    Key(String),
    /// The parts.
    Full(TrialParts),
}

/// A message's parts ([`TrialMessage::Full`]).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrialParts {
    /// The routing key.
    pub routing_key: String,
    /// The body, as text.
    pub body: String,
    /// Its headers.
    pub headers: Object,
    /// Basic properties by their AMQP names: `content-type`, `content-encoding`, `delivery-mode`,
    /// `priority`, `correlation-id`, `reply-to`, `expiration`, `message-id`, `timestamp`, `type`,
    /// `user-id`, `app-id`.
    pub properties: Object,
}

impl TrialMessage {
    fn parts(&self) -> TrialParts {
        match self {
            TrialMessage::Key(k) => TrialParts {
                routing_key: k.clone(),
                ..TrialParts::default()
            },
            TrialMessage::Full(p) => p.clone(),
        }
    }
}

impl Trial {
    /// Reads a trial from a TOML file, or a JSON file (name ending in `.json`).
    ///
    /// # Errors
    /// The file cannot be read or parsed (the parser's message, with the line).
    pub fn from_file(path: &Path) -> Result<Trial, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let json = path.extension().is_some_and(|e| e == "json");
        let parsed = if json {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Adds `other`'s arguments, bindings, messages and headers after this trial's (the command line
    /// after a file).
    pub fn extend(&mut self, other: Trial) {
        self.arguments.extend(other.arguments);
        self.bindings.extend(other.bindings);
        self.messages.extend(other.messages);
        self.headers.extend(other.headers);
    }
}

/// The properties of a trial message: its `properties` and its headers over `common` headers.
fn properties(parts: &TrialParts, common: &Object) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    let mut headers = common.clone();
    headers.extend(parts.headers.clone());
    if !headers.is_empty() {
        p = p.with_headers(crate::definitions::field_table(&headers));
    }
    for (name, value) in &parts.properties {
        let text = || match value {
            serde_json::Value::String(s) => Ok(s.clone()),
            _ => Err(format!("property '{name}' must be a string")),
        };
        let short = || {
            text().and_then(|s| {
                ShortString::try_new(s).map_err(|_| format!("property '{name}' is too long"))
            })
        };
        let number = || match value.as_u64() {
            Some(n) => Ok(n),
            None => Err(format!("property '{name}' must be a non-negative integer")),
        };
        let octet = || {
            number()
                .and_then(|n| u8::try_from(n).map_err(|_| format!("property '{name}' is 0 to 255")))
        };
        p = match name.as_str() {
            "content-type" => p.with_content_type(short()?),
            "content-encoding" => p.with_content_encoding(short()?),
            "delivery-mode" => p.with_delivery_mode(octet()?),
            "priority" => p.with_priority(octet()?),
            "correlation-id" => p.with_correlation_id(short()?),
            "reply-to" => p.with_reply_to(short()?),
            "expiration" => p.with_expiration(short()?),
            "message-id" => p.with_message_id(short()?),
            "timestamp" => p.with_timestamp(number()?),
            "type" => p.with_type(short()?),
            "user-id" => p.with_user_id(short()?),
            "app-id" => p.with_app_id(short()?),
            "headers" => return Err("give headers as 'headers', not as a property".to_owned()),
            other => return Err(format!("unknown property '{other}'")),
        };
    }
    Ok(p)
}

/// The outcome: the text to print and whether everything passed.
#[derive(Debug)]
pub struct Outcome {
    /// The decisions, a line each, and the batch-path verdict.
    pub text: String,
    /// No call failed and `route-keys` agreed with `route`.
    pub passed: bool,
}

/// Runs the plugin file at `path` with `trial`.
///
/// # Errors
/// The file cannot be read, or the broker would refuse it (the reason `warren plugin check` gives).
pub fn run(path: &Path, trial: &Trial) -> Result<Outcome, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let scratch = std::env::temp_dir().join(format!("warren-plugin-test-{}", std::process::id()));
    let plugins = scratch.join("plugins");
    std::fs::create_dir_all(&plugins).map_err(|e| format!("scratch directory: {e}"))?;
    let result = run_in(&scratch, &plugins, path, &bytes, trial);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn run_in(
    scratch: &Path,
    plugins: &Path,
    path: &Path,
    bytes: &[u8],
    trial: &Trial,
) -> Result<Outcome, String> {
    let host = PluginHost::new(
        Limits::default(),
        Some(plugins.to_path_buf()),
        Some(scratch.join("cache")),
    )
    .map_err(|e| format!("{e:#}"))?;
    // Checked (and compiled into the host's cache) first, so that a refusal reads as the broker's.
    let cache = CompileCache::new(scratch.join("cache"), &host.runtime().engine);
    let loaded = loader::load(host.runtime(), path, bytes, Some(&cache))
        .map_err(|e| format!("refused: {e:#}"))?;
    std::fs::write(plugins.join("plugin.wasm"), bytes).map_err(|e| format!("scratch copy: {e}"))?;
    host.start_loading()
        .map_err(|e| format!("cannot start the plugin host: {e}"))?;
    let slot = host
        .loaded(loaded.kind, &loaded.name)
        .ok_or_else(|| format!("the plugin host did not load {}", path.display()))?;
    let arguments = table_body(&crate::definitions::field_table(&trial.arguments));
    let mut messages: Vec<Arc<Message>> = Vec::with_capacity(trial.messages.len());
    for (n, m) in trial.messages.iter().enumerate() {
        let parts = m.parts();
        let properties =
            properties(&parts, &trial.headers).map_err(|e| format!("message {n}: {e}"))?;
        let key = ShortString::try_new(parts.routing_key)
            .map_err(|_| format!("message {n}: the routing key is longer than 255 octets"))?;
        messages.push(Arc::new(Message::new(
            crate::memory::MemoryAccount::leaked(),
            ShortString::from("test"),
            key,
            properties.clone(),
            encode_properties(&properties),
            Bytes::from(parts.body.into_bytes()),
        )));
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} plugin '{}' {} ({})",
        loaded.kind, loaded.name, loaded.version, loaded.package
    );
    let passed = match loaded.kind {
        Kind::Exchange => exchange(&host, &slot, &arguments, trial, &messages, &mut text),
        Kind::Filter => filter(&host, &slot, &arguments, &messages, &mut text),
        Kind::Idempotency => idempotency(&host, &slot, &arguments, &messages, &mut text),
    };
    Ok(Outcome { text, passed })
}

fn exchange(
    host: &Arc<PluginHost>,
    slot: &Arc<super::Slot>,
    arguments: &Vec<u8>,
    trial: &Trial,
    messages: &[Arc<Message>],
    text: &mut String,
) -> bool {
    let mut instance = match Instance::<ExchangeWorld>::new(host, slot) {
        Ok(i) => i,
        Err(f) => {
            let _ = writeln!(text, "instantiate: fault: {f}");
            return false;
        }
    };
    // A key-value store of its own (in memory), as each exchange has in the broker.
    instance.attach_kv(host.kv_store("trial exchange".into(), None));
    let options = match instance.init(arguments) {
        Ok(Ok(r)) => r,
        Ok(Err(reason)) => {
            let _ = writeln!(text, "init: refused: {reason}");
            return false;
        }
        Err(f) => {
            let _ = writeln!(text, "init: fault: {f}");
            return false;
        }
    };
    let routes_on = options.routes_on;
    let _ = writeln!(
        text,
        "init: ok, routes on {}{}",
        match routes_on {
            RoutesOn::RoutingKey => "the routing key",
            RoutesOn::Message => "the message",
        },
        if options.schedules {
            ", schedules messages"
        } else {
            ""
        }
    );
    let mut passed = true;
    let mut added = Vec::new();
    for (id, b) in trial.bindings.iter().enumerate() {
        let key = b.key();
        let binding_arguments = match b {
            TrialBinding::Key(_) => Object::new(),
            TrialBinding::Full { arguments, .. } => arguments.clone(),
        };
        let binding = Binding {
            id: id as u32,
            destination: format!("binding-{id}"),
            key: key.to_owned(),
            arguments: table_body(&crate::definitions::field_table(&binding_arguments)),
        };
        match instance.validate_binding(&binding) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                let _ = writeln!(text, "binding {id} '{key}': refused: {reason}");
                passed = false;
                continue;
            }
            Err(f) => {
                let _ = writeln!(text, "binding {id} '{key}': fault: {f}");
                return false;
            }
        }
        if let Err(f) = instance.add_binding(&binding) {
            let _ = writeln!(text, "binding {id} '{key}': fault: {f}");
            return false;
        }
        let _ = writeln!(text, "binding {id} '{key}': added");
        added.push(binding);
    }
    let describe = |ids: &[u32]| {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let keys: Vec<String> = ids
            .iter()
            .map(|i| match trial.bindings.get(*i as usize) {
                Some(b) => format!("{i} '{}'", b.key()),
                None => format!("{i} (unknown id)"),
            })
            .collect();
        (
            ids,
            if keys.is_empty() {
                "no binding".to_owned()
            } else {
                keys.join(", ")
            },
        )
    };
    let mut routed = Vec::new();
    for (n, m) in messages.iter().enumerate() {
        if options.schedules {
            match instance.schedule(m) {
                Ok(Due::Now) => {}
                Ok(Due::After(ms)) => {
                    let _ = writeln!(
                        text,
                        "message {n} '{}': schedule -> after {ms} ms",
                        m.routing_key
                    );
                }
                Ok(Due::At(at)) => {
                    let _ = writeln!(
                        text,
                        "message {n} '{}': schedule -> at {at} ms since the Unix epoch",
                        m.routing_key
                    );
                }
                Ok(Due::Refuse(reason)) => {
                    let _ = writeln!(
                        text,
                        "message {n} '{}': schedule -> refused: {reason}",
                        m.routing_key
                    );
                }
                Err(f) => {
                    let _ = writeln!(text, "message {n} '{}': schedule fault: {f}", m.routing_key);
                    passed = false;
                }
            }
        }
        match instance.route(m, m.routing_key.as_str()) {
            Ok(ids) => {
                let (ids, shown) = describe(&ids);
                let _ = writeln!(text, "message {n} '{}': route -> {shown}", m.routing_key);
                routed.push(Some(ids));
            }
            Err(f) => {
                let _ = writeln!(text, "message {n} '{}': route fault: {f}", m.routing_key);
                routed.push(None);
                passed = false;
            }
        }
    }
    if messages.is_empty() {
        return passed;
    }
    if options.schedules {
        let _ = writeln!(
            text,
            "no batch calls: the broker routes a scheduling exchange's messages one by one"
        );
        return passed;
    }
    let (batch, supported) = match routes_on {
        RoutesOn::RoutingKey => ("route-keys", instance.routes_keys_in_batches()),
        RoutesOn::Message => ("route-messages", instance.routes_messages_in_batches()),
    };
    if !supported {
        let _ = writeln!(text, "{batch}: not in this package (one call per message)");
        return passed;
    }
    let mut keys = Vec::new();
    let mut key_ends = Vec::new();
    for m in messages {
        keys.extend_from_slice(m.routing_key.as_str().as_bytes());
        key_ends.push(keys.len() as u32);
    }
    let answer = match routes_on {
        RoutesOn::RoutingKey => instance.route_keys(&keys, &key_ends),
        // On a fresh instance with the same bindings, so that a plugin with state (a round-robin
        // position) starts the run where the calls one by one started.
        RoutesOn::Message => fresh(host, slot, arguments, &added).and_then(|mut fresh| {
            let run: Vec<&Arc<Message>> = messages.iter().collect();
            fresh.route_messages(&run, &keys, &key_ends)
        }),
    };
    match answer {
        Ok((ids, id_ends)) => {
            if id_ends.len() != messages.len()
                || id_ends.windows(2).any(|w| w[0] > w[1])
                || id_ends.last().is_some_and(|e| *e as usize > ids.len())
            {
                let _ = writeln!(
                    text,
                    "{batch}: ill-formed answer ({} id-ends for {} messages)",
                    id_ends.len(),
                    messages.len()
                );
                return false;
            }
            let mut agree = true;
            let mut start = 0usize;
            for (n, end) in id_ends.iter().enumerate() {
                let (answered, shown) = describe(&ids[start..*end as usize]);
                start = *end as usize;
                if let Some(Some(single)) = routed.get(n) {
                    if *single != answered {
                        agree = false;
                        let _ = writeln!(
                            text,
                            "message {n} '{}': {batch} -> {shown}, but route -> {}",
                            messages[n].routing_key,
                            describe(single).1
                        );
                    }
                }
            }
            let what = match (routes_on, messages.len()) {
                (RoutesOn::RoutingKey, 1) => "key",
                (RoutesOn::RoutingKey, _) => "keys",
                (RoutesOn::Message, 1) => "message",
                (RoutesOn::Message, _) => "messages",
            };
            if agree {
                let _ = writeln!(
                    text,
                    "{batch} over the {} {what}: agrees with route",
                    messages.len()
                );
            } else {
                let _ = writeln!(
                    text,
                    "{batch} disagrees with route: the broker would route these messages differently in batches{}",
                    if routes_on == RoutesOn::Message {
                        " (a plugin that draws random numbers differs by design)"
                    } else {
                        ""
                    }
                );
            }
            passed && agree
        }
        Err(f) => {
            let _ = writeln!(text, "{batch}: fault: {f}");
            false
        }
    }
}

/// A new exchange instance given `arguments` and `bindings`, as the broker builds one after a reload.
fn fresh(
    host: &Arc<PluginHost>,
    slot: &Arc<super::Slot>,
    arguments: &Vec<u8>,
    bindings: &[Binding],
) -> Result<Instance<ExchangeWorld>, super::Fault> {
    let mut instance = Instance::<ExchangeWorld>::new(host, slot)?;
    instance.attach_kv(host.kv_store("trial exchange".into(), None));
    instance
        .init(arguments)?
        .map_err(super::Fault::Unavailable)?;
    for b in bindings {
        instance.add_binding(b)?;
    }
    Ok(instance)
}

/// A filter's or idempotency plugin's instance initialised with `config`, the outcome of `init`
/// written to `text`; `None` when it refused or faulted.
fn configured<W: Configurable>(
    host: &Arc<PluginHost>,
    slot: &Arc<super::Slot>,
    config: &Vec<u8>,
    text: &mut String,
) -> Option<Instance<W>> {
    match Instance::<W>::configured(host, slot, config) {
        Ok(Ok(i)) => {
            let _ = writeln!(text, "init: ok");
            Some(i)
        }
        Ok(Err(reason)) => {
            let _ = writeln!(text, "init: refused: {reason}");
            None
        }
        Err(f) => {
            let _ = writeln!(text, "init: fault: {f}");
            None
        }
    }
}

/// Writes a line per message, `message N 'KEY': ` followed by what `decide` answered or its fault;
/// false when any call faulted.
fn each_message(
    messages: &[Arc<Message>],
    text: &mut String,
    mut decide: impl FnMut(&Arc<Message>) -> Result<String, super::Fault>,
) -> bool {
    let mut passed = true;
    for (n, m) in messages.iter().enumerate() {
        let answer = decide(m).unwrap_or_else(|f| {
            passed = false;
            format!("fault: {f}")
        });
        let _ = writeln!(text, "message {n} '{}': {answer}", m.routing_key);
    }
    passed
}

fn filter(
    host: &Arc<PluginHost>,
    slot: &Arc<super::Slot>,
    config: &Vec<u8>,
    messages: &[Arc<Message>],
    text: &mut String,
) -> bool {
    let Some(mut instance) = configured::<FilterWorld>(host, slot, config, text) else {
        return false;
    };
    each_message(messages, text, |m| {
        instance.filter(m).map(|d| {
            match d {
                Decision::Deliver => "deliver",
                Decision::Skip => "skip",
                Decision::Reject => "reject",
            }
            .to_owned()
        })
    })
}

fn idempotency(
    host: &Arc<PluginHost>,
    slot: &Arc<super::Slot>,
    config: &Vec<u8>,
    messages: &[Arc<Message>],
    text: &mut String,
) -> bool {
    let Some(mut instance) = configured::<IdempotencyWorld>(host, slot, config, text) else {
        return false;
    };
    each_message(messages, text, |m| {
        instance.key(m).map(|key| match key {
            Some(k) => match std::str::from_utf8(&k) {
                Ok(s) => format!("key '{s}'"),
                Err(_) => format!(
                    "key {}",
                    k.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ),
            },
            None => "no key".to_owned(),
        })
    })
}
