//! `warren plugin test FILE.wasm`: runs a plugin in-process on the real plugin host (no broker, no
//! network) with declare arguments (or a filter's / idempotency plugin's configuration), bindings
//! and messages given on the command line, and prints each decision:
//!
//! - an exchange plugin: `init`, each binding through `validate-binding` / `add-binding`, then the
//!   binding ids and keys `route` gives for each message; for a `routes-on = routing-key` plugin of
//!   a package with `route-keys`, one `route-keys` call over every message's key (the batch path the
//!   broker takes), which must answer the same bindings for each key as `route` did (order and
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

use super::bindings::{Binding, Decision, RoutesOn};
use super::engine::{table_body, Limits};
use super::instance::{Configurable, Instance};
use super::loader::{self, CompileCache, Kind};
use super::worlds::{ExchangeWorld, FilterWorld, IdempotencyWorld};
use super::PluginHost;
use crate::message::{encode_properties, Message};

/// What to run the plugin with.
#[derive(Debug, Default)]
pub struct Trial {
    /// Declare arguments of the exchange, or the filter's / idempotency plugin's configuration
    /// (`x-filter-args`, `x-idempotency-args`), as a JSON object.
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// Binding keys, in order (ids 0, 1, …; destinations `binding-0`, `binding-1`, …).
    pub bindings: Vec<String>,
    /// Messages: (routing key, body).
    pub messages: Vec<(String, String)>,
    /// Headers every message carries (string values).
    pub headers: Vec<(String, String)>,
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
    let messages: Vec<Arc<Message>> = trial
        .messages
        .iter()
        .map(|(key, body)| {
            let mut properties = BasicProperties::default();
            if !trial.headers.is_empty() {
                let mut headers = amq_protocol::types::FieldTable::default();
                for (k, v) in &trial.headers {
                    headers.insert(
                        ShortString::from(k.clone()),
                        amq_protocol::types::AMQPValue::LongString(v.as_str().into()),
                    );
                }
                properties = properties.with_headers(headers);
            }
            Arc::new(Message::new(
                crate::memory::MemoryAccount::leaked(),
                ShortString::from("test"),
                ShortString::try_new(key.clone()).unwrap_or_else(|_| ShortString::from("")),
                properties.clone(),
                encode_properties(&properties),
                Bytes::from(body.clone().into_bytes()),
            ))
        })
        .collect();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} plugin '{}' {} ({})",
        loaded.kind, loaded.name, loaded.version, loaded.package
    );
    let passed = match loaded.kind {
        Kind::Exchange => exchange(&host, &slot, &arguments, trial, &messages, &mut text),
        Kind::Filter => filter(&host, &slot, &arguments, trial, &messages, &mut text),
        Kind::Idempotency => idempotency(&host, &slot, &arguments, trial, &messages, &mut text),
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
    let routes_on = match instance.init(arguments) {
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
    let _ = writeln!(
        text,
        "init: ok, routes on {}",
        match routes_on {
            RoutesOn::RoutingKey => "the routing key",
            RoutesOn::Message => "the message",
        }
    );
    let mut passed = true;
    for (id, key) in trial.bindings.iter().enumerate() {
        let binding = Binding {
            id: id as u32,
            destination: format!("binding-{id}"),
            key: key.clone(),
            arguments: table_body(&Default::default()),
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
    }
    let describe = |ids: &[u32]| {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let keys: Vec<String> = ids
            .iter()
            .map(|i| match trial.bindings.get(*i as usize) {
                Some(k) => format!("{i} '{k}'"),
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
    if routes_on != RoutesOn::RoutingKey || messages.is_empty() {
        return passed;
    }
    if !instance.routes_keys_in_batches() {
        let _ = writeln!(
            text,
            "route-keys: not in this package (one call per message)"
        );
        return passed;
    }
    let mut keys = Vec::new();
    let mut key_ends = Vec::new();
    for m in messages {
        keys.extend_from_slice(m.routing_key.as_str().as_bytes());
        key_ends.push(keys.len() as u32);
    }
    match instance.route_keys(&keys, &key_ends) {
        Ok((ids, id_ends)) => {
            if id_ends.len() != messages.len()
                || id_ends.windows(2).any(|w| w[0] > w[1])
                || id_ends.last().is_some_and(|e| *e as usize > ids.len())
            {
                let _ = writeln!(
                    text,
                    "route-keys: ill-formed answer ({} id-ends for {} keys)",
                    id_ends.len(),
                    messages.len()
                );
                return false;
            }
            let mut agree = true;
            let mut start = 0usize;
            for (n, end) in id_ends.iter().enumerate() {
                let (batch, shown) = describe(&ids[start..*end as usize]);
                start = *end as usize;
                if let Some(Some(single)) = routed.get(n) {
                    if *single != batch {
                        agree = false;
                        let _ = writeln!(
                            text,
                            "message {n} '{}': route-keys -> {shown}, but route -> {}",
                            messages[n].routing_key,
                            describe(single).1
                        );
                    }
                }
            }
            if agree {
                let _ = writeln!(
                    text,
                    "route-keys over the {} keys: agrees with route",
                    messages.len()
                );
            } else {
                let _ = writeln!(
                    text,
                    "route-keys disagrees with route: the broker would route these messages differently in batches"
                );
            }
            passed && agree
        }
        Err(f) => {
            let _ = writeln!(text, "route-keys: fault: {f}");
            false
        }
    }
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

fn filter(
    host: &Arc<PluginHost>,
    slot: &Arc<super::Slot>,
    config: &Vec<u8>,
    _trial: &Trial,
    messages: &[Arc<Message>],
    text: &mut String,
) -> bool {
    let Some(mut instance) = configured::<FilterWorld>(host, slot, config, text) else {
        return false;
    };
    let mut passed = true;
    for (n, m) in messages.iter().enumerate() {
        match instance.filter(m) {
            Ok(d) => {
                let d = match d {
                    Decision::Deliver => "deliver",
                    Decision::Skip => "skip",
                    Decision::Reject => "reject",
                };
                let _ = writeln!(text, "message {n} '{}': {d}", m.routing_key);
            }
            Err(f) => {
                let _ = writeln!(text, "message {n} '{}': fault: {f}", m.routing_key);
                passed = false;
            }
        }
    }
    passed
}

fn idempotency(
    host: &Arc<PluginHost>,
    slot: &Arc<super::Slot>,
    config: &Vec<u8>,
    _trial: &Trial,
    messages: &[Arc<Message>],
    text: &mut String,
) -> bool {
    let Some(mut instance) = configured::<IdempotencyWorld>(host, slot, config, text) else {
        return false;
    };
    let mut passed = true;
    for (n, m) in messages.iter().enumerate() {
        match instance.key(m) {
            Ok(Some(k)) => {
                let shown = match std::str::from_utf8(&k) {
                    Ok(s) => format!("'{s}'"),
                    Err(_) => k.iter().map(|b| format!("{b:02x}")).collect(),
                };
                let _ = writeln!(text, "message {n} '{}': key {shown}", m.routing_key);
            }
            Ok(None) => {
                let _ = writeln!(text, "message {n} '{}': no key", m.routing_key);
            }
            Err(f) => {
                let _ = writeln!(text, "message {n} '{}': fault: {f}", m.routing_key);
                passed = false;
            }
        }
    }
    passed
}
