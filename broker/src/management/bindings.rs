//! Bindings, read side: every form RabbitMQ serves (`/api/bindings[/{vhost}]`, a queue's, an
//! exchange's as source or destination, and those between one source and one destination), with
//! RabbitMQ's `properties_key` (`rabbit_mgmt_format.erl` `pack_binding_props`: `~` for an empty key
//! without arguments, else the key `quote_plus`-encoded with `~` as `%7E`, plus `~` and a hash of the
//! arguments when there are any; the hash is Warren's own, stable: SHA-256 of the wire-encoded
//! table, first four octets, base64url). Each queue's implicit binding from the default exchange is
//! listed, as RabbitMQ does.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::auth::Caller;
use super::error::ApiError;
use super::read::visible_vhost;
use super::Api;
use crate::definitions::table_json;
use crate::exchange::{Binding, Destination};
use crate::vhost::VHost;

/// `s` with every octet but ASCII letters, digits and those in `keep` as `%XX`, and a space as `+`
/// when `plus`.
fn percent_encode(s: &str, keep: &[u8], plus: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(char::from(b));
        } else if plus && b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `quote_plus` of RabbitMQ (`rabbit_http_util`), with `~` also encoded: `_ . -` kept, a space as
/// `+`, every other octet as `%XX`.
fn quote(s: &str) -> String {
    percent_encode(s, b"_.-", true)
}

/// `s` as one URI path segment: every octet but unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`
/// (RabbitMQ's `Location: q1/a%2Bb%257Ec`).
pub(crate) fn quote_segment(s: &str) -> String {
    percent_encode(s, b"_.-~", false)
}

/// The binding from exchange `source` to the queue (`to_queue`) or exchange `destination` whose
/// `properties_key` is `props`.
pub(crate) fn find(
    v: &VHost,
    source: &str,
    to_queue: bool,
    destination: &str,
    props: &str,
) -> Option<Binding> {
    let x = v.find_exchange(source)?;
    x.bindings().into_iter().find(|b| {
        let same_destination = match &b.destination {
            Destination::Queue(q) => to_queue && q.name.as_str() == destination,
            Destination::Exchange(e) => !to_queue && e.as_str() == destination,
        };
        same_destination && properties_key(b.key.as_str(), &b.arguments) == props
    })
}

/// The binding's `properties_key`: the last segment of its URI.
pub(crate) fn properties_key(key: &str, arguments: &amq_protocol::types::FieldTable) -> String {
    if arguments.inner().is_empty() {
        if key.is_empty() {
            return "~".into();
        }
        return quote(key);
    }
    let digest = Sha256::digest(crate::protocol::values::encode_table(arguments));
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..4]);
    format!("{}~{}", quote(key), quote(&hash))
}

fn binding_json(vhost: &str, source: &str, b: &Binding) -> Value {
    let (destination, destination_type) = match &b.destination {
        Destination::Queue(q) => (q.name.as_str().to_owned(), "queue"),
        Destination::Exchange(x) => (x.as_str().to_owned(), "exchange"),
    };
    json!({
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": destination_type,
        "routing_key": b.key.as_str(),
        "arguments": table_json(&b.arguments),
        "properties_key": properties_key(b.key.as_str(), &b.arguments),
    })
}

/// The implicit binding of queue `queue` from the default exchange.
fn default_binding_json(vhost: &str, queue: &str) -> Value {
    json!({
        "source": "",
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": queue,
        "arguments": {},
        "properties_key": quote(queue),
    })
}

/// Every binding of `v`: the default exchange's first, then each exchange's.
fn all_of(v: &VHost) -> Vec<Value> {
    let mut out: Vec<Value> = v
        .queue_list()
        .iter()
        .map(|q| default_binding_json(&v.name, q.name.as_str()))
        .collect();
    for x in v.exchange_list() {
        out.extend(
            x.bindings()
                .iter()
                .map(|b| binding_json(&v.name, x.name.as_str(), b)),
        );
    }
    out
}

/// `GET /api/bindings`.
pub(crate) async fn all(State(api): State<Arc<Api>>, caller: Caller) -> Json<Value> {
    let mut out = Vec::new();
    for v in api.broker.vhost_list() {
        if caller.may_see(&api, &v.name) {
            out.extend(all_of(&v));
        }
    }
    Json(Value::Array(out))
}

/// `GET /api/bindings/{vhost}`.
pub(crate) async fn in_vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = visible_vhost(&api, &caller, &vhost)?;
    Ok(Json(Value::Array(all_of(&v))))
}

fn is_queue(b: &Value, name: &str) -> bool {
    b["destination_type"] == "queue" && b["destination"] == name
}

/// `GET /api/queues/{vhost}/{name}/bindings`.
pub(crate) async fn of_queue(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let v = visible_vhost(&api, &caller, &vhost)?;
    if !v.queue_list().iter().any(|q| q.name.as_str() == name) {
        return Err(ApiError::not_found());
    }
    Ok(Json(Value::Array(
        all_of(&v)
            .into_iter()
            .filter(|b| is_queue(b, &name))
            .collect(),
    )))
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/{source|destination}`.
pub(crate) async fn of_exchange(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name, side)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let v = visible_vhost(&api, &caller, &vhost)?;
    if v.find_exchange(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let keep: Box<dyn Fn(&Value) -> bool> = match side.as_str() {
        "source" => Box::new(|b: &Value| b["source"] == name.as_str()),
        "destination" => Box::new(|b: &Value| {
            b["destination_type"] == "exchange" && b["destination"] == name.as_str()
        }),
        _ => return Err(ApiError::not_found()),
    };
    Ok(Json(Value::Array(
        all_of(&v).into_iter().filter(|b| keep(b)).collect(),
    )))
}

/// The bindings from exchange `source` to the queue (`kind` `q`) or exchange (`e`) `destination`.
fn between(v: &VHost, source: &str, kind: &str, destination: &str) -> Result<Vec<Value>, ApiError> {
    let destination_type = match kind {
        "q" => "queue",
        "e" => "exchange",
        _ => return Err(ApiError::not_found()),
    };
    let source = if source == "amq.default" { "" } else { source };
    Ok(all_of(v)
        .into_iter()
        .filter(|b| {
            b["source"] == source
                && b["destination_type"] == destination_type
                && b["destination"] == destination
        })
        .collect())
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`.
pub(crate) async fn between_list(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let v = visible_vhost(&api, &caller, &vhost)?;
    Ok(Json(Value::Array(between(
        &v,
        &source,
        &kind,
        &destination,
    )?)))
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`.
pub(crate) async fn one(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let v = visible_vhost(&api, &caller, &vhost)?;
    between(&v, &source, &kind, &destination)?
        .into_iter()
        .find(|b| b["properties_key"] == props.as_str())
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldTable};

    #[test]
    fn properties_keys_as_rabbitmq() {
        let none = FieldTable::default();
        assert_eq!(properties_key("", &none), "~");
        assert_eq!(properties_key("orders.eu", &none), "orders.eu");
        assert_eq!(properties_key("a b~c/#", &none), "a+b%7Ec%2F%23");
        let mut args = FieldTable::default();
        args.insert("x-match".into(), AMQPValue::LongString("all".into()));
        let key = properties_key("k", &args);
        assert!(key.starts_with("k~"), "{key}");
        assert_eq!(key, properties_key("k", &args), "stable");
        assert_ne!(key, properties_key("k", &FieldTable::default()));
    }
}
