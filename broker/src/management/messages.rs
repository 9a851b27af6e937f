//! Publishing and fetching messages for people debugging (RabbitMQ 3.10.8's
//! `POST /api/exchanges/{vhost}/{name}/publish` and `POST /api/queues/{vhost}/{name}/get`): not for
//! production traffic, as RabbitMQ warns too.
//!
//! Publish takes `routing_key`, `payload`, `payload_encoding` (`string` or `base64`) and `properties`
//! (RabbitMQ's property names, `headers` as an object) and answers `{"routed": bool}`; the default
//! exchange is `amq.default`. It routes like basic.publish (same exchanges, plugins, alternate
//! exchanges, `CC`/`BCC` not rewritten) and answers once every queue holds the message — for a
//! persistent message in a durable queue, once it is on disk (RabbitMQ's handler waits for a
//! publisher confirm). Needs write permission on the exchange.
//!
//! Get takes `count`, `ackmode` (`ack_requeue_true`, `ack_requeue_false`, `reject_requeue_true`,
//! `reject_requeue_false`), `encoding` (`auto` or `base64`) and optionally `truncate` (octets), takes
//! up to `count` messages, then settles them all as `ackmode` says (requeued ones come back flagged
//! redelivered, at their place). Needs read permission on the queue.

use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::ShortString;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::write::{allowed, object, vhost_of};
use super::Api;
use crate::auth::Access;
use crate::definitions::{field_table, table_json};
use crate::message::{encode_properties, expiration_ms, Message};
use crate::store::log::Durability;
use crate::vhost::Routed;

fn short(key: &str, v: &Value) -> Result<ShortString, ApiError> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => {
            return Err(ApiError::bad_request(format!(
                "property '{key}' must be a string, got {other}"
            )))
        }
    };
    ShortString::try_new(s)
        .map_err(|_| ApiError::bad_request(format!("property '{key}' is longer than 255 octets")))
}

fn integer(key: &str, v: &Value) -> Result<u64, ApiError> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| {
            ApiError::bad_request(format!("property '{key}' must be an integer, got {v}"))
        })
}

/// Basic properties from RabbitMQ's JSON names.
fn properties(props: &Map<String, Value>) -> Result<BasicProperties, ApiError> {
    let mut p = BasicProperties::default();
    for (key, v) in props {
        p = match key.as_str() {
            "content_type" => p.with_content_type(short(key, v)?),
            "content_encoding" => p.with_content_encoding(short(key, v)?),
            "headers" => match v {
                Value::Object(h) => p.with_headers(field_table(h)),
                _ => {
                    return Err(ApiError::bad_request(
                        "property 'headers' must be an object",
                    ))
                }
            },
            "delivery_mode" => p.with_delivery_mode(
                u8::try_from(integer(key, v)?)
                    .map_err(|_| ApiError::bad_request("delivery_mode must be 1 or 2"))?,
            ),
            "priority" => p.with_priority(
                u8::try_from(integer(key, v)?)
                    .map_err(|_| ApiError::bad_request("priority must be 0 to 255"))?,
            ),
            "correlation_id" => p.with_correlation_id(short(key, v)?),
            "reply_to" => p.with_reply_to(short(key, v)?),
            "expiration" => p.with_expiration(short(key, v)?),
            "message_id" => p.with_message_id(short(key, v)?),
            "timestamp" => p.with_timestamp(integer(key, v)?),
            "type" => p.with_type(short(key, v)?),
            "user_id" => p.with_user_id(short(key, v)?),
            "app_id" => p.with_app_id(short(key, v)?),
            "cluster_id" => p.with_cluster_id(short(key, v)?),
            other => return Err(ApiError::bad_request(format!("unknown property '{other}'"))),
        };
    }
    Ok(p)
}

/// RabbitMQ's JSON of the properties that are set; `[]` when none is (RabbitMQ serializes the empty
/// property list as an array, and rabbitmqadmin's columns follow it).
fn properties_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    if let Some(v) = p.content_type() {
        put("content_type", json!(v.as_str()));
    }
    if let Some(v) = p.content_encoding() {
        put("content_encoding", json!(v.as_str()));
    }
    if let Some(v) = p.headers() {
        put("headers", table_json(v));
    }
    if let Some(v) = p.delivery_mode() {
        put("delivery_mode", json!(v));
    }
    if let Some(v) = p.priority() {
        put("priority", json!(v));
    }
    if let Some(v) = p.correlation_id() {
        put("correlation_id", json!(v.as_str()));
    }
    if let Some(v) = p.reply_to() {
        put("reply_to", json!(v.as_str()));
    }
    if let Some(v) = p.expiration() {
        put("expiration", json!(v.as_str()));
    }
    if let Some(v) = p.message_id() {
        put("message_id", json!(v.as_str()));
    }
    if let Some(v) = p.timestamp() {
        put("timestamp", json!(v));
    }
    if let Some(v) = p.kind() {
        put("type", json!(v.as_str()));
    }
    if let Some(v) = p.user_id() {
        put("user_id", json!(v.as_str()));
    }
    if let Some(v) = p.app_id() {
        put("app_id", json!(v.as_str()));
    }
    if m.is_empty() {
        return json!([]);
    }
    Value::Object(m)
}

/// `POST /api/exchanges/{vhost}/{name}/publish`.
pub(crate) async fn publish(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, exchange)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = object(&body)?;
    let v = vhost_of(&api, &vhost)?;
    let exchange = if exchange == "amq.default" {
        String::new()
    } else {
        exchange
    };
    if !exchange.is_empty() && v.find_exchange(&exchange).is_none() {
        return Err(ApiError::not_found());
    }
    allowed(&api, &caller, &v.name, Access::Write, &exchange)?;
    let routing_key = match body.get("routing_key") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "'routing_key' must be a string, got {other}"
            )))
        }
    };
    let payload = body.get("payload").and_then(Value::as_str).unwrap_or("");
    let payload = match body
        .get("payload_encoding")
        .and_then(Value::as_str)
        .unwrap_or("string")
    {
        "string" => Bytes::copy_from_slice(payload.as_bytes()),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding must be string or base64, got '{other}'"
            )))
        }
    };
    let props = match body.get("properties") {
        None | Some(Value::Null) => BasicProperties::default(),
        Some(Value::Object(o)) => properties(o)?,
        Some(_) => return Err(ApiError::bad_request("'properties' must be an object")),
    };
    if let Some(user_id) = props.user_id() {
        if user_id.as_str() != caller.name {
            return Err(ApiError::bad_request(format!(
                "user_id property set to '{user_id}' but authenticated user was '{}'",
                caller.name
            )));
        }
    }
    let own_ttl = expiration_ms(&props).map_err(ApiError::bad_request)?;
    let message = Arc::new(Message::new(
        api.broker.memory,
        ShortString::try_new(exchange.clone())
            .map_err(|_| ApiError::bad_request("exchange name longer than 255 octets"))?,
        ShortString::try_new(routing_key)
            .map_err(|_| ApiError::bad_request("routing key longer than 255 octets"))?,
        props.clone(),
        encode_properties(&props),
        payload,
    ));
    // Routing may call an exchange plugin: off the worker. An exchange whose type delays the message
    // keeps it (its delay store), as for a publish over AMQP.
    let (queues, routed) = crate::sync::off_worker(|| {
        let mut queues = Vec::new();
        let mut scratch = Vec::new();
        match v.route_publish(&exchange, &message, &[], &mut queues, &mut scratch, None)? {
            Routed::Now(_) => Ok((queues, None)),
            Routed::Later { exchange, due } => {
                Ok((queues, Some(v.keep_delayed(&exchange, &message, due)?)))
            }
        }
    })
    .map_err(|e: crate::error::AmqpError| ApiError::bad_request(e.detail()))?;
    let mut waits = Vec::new();
    let delayed = routed.is_some();
    if let Some(Some(wait)) = routed {
        waits.push(wait);
    }
    for q in &queues {
        let (outcome, wait) = q.publish_durable(Arc::clone(&message), own_ttl);
        if let (crate::queue::PublishOutcome::Enqueued, Some(wait)) = (outcome, wait) {
            waits.push(wait);
        }
    }
    // A persistent message answered once it is on disk, as a confirm would say.
    for (q, lsn) in waits {
        let mut tries = 0;
        loop {
            match q.durability(lsn) {
                Durability::Durable => break,
                Durability::Failed => {
                    return Err(ApiError::internal(
                        "the message could not be written to disk",
                    ))
                }
                Durability::Pending if tries < 1000 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Durability::Pending => {
                    return Err(ApiError::internal(
                        "the message was not written to disk in time",
                    ))
                }
            }
        }
    }
    Ok(Json(json!({ "routed": delayed || !queues.is_empty() })))
}

/// `POST /api/queues/{vhost}/{name}/get`.
pub(crate) async fn get(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, queue)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = object(&body)?;
    let v = vhost_of(&api, &vhost)?;
    allowed(&api, &caller, &v.name, Access::Read, &queue)?;
    let q = v.queue(&queue, 0).map_err(|e| match e.reply_code() {
        404 => ApiError::not_found(),
        _ => ApiError::bad_request(e.detail()),
    })?;
    let count = body.get("count").map_or(Ok(1), |c| integer("count", c))?;
    let ackmode = body
        .get("ackmode")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("[{key_missing,ackmode}]"))?
        .to_owned();
    if !matches!(
        ackmode.as_str(),
        "ack_requeue_true" | "ack_requeue_false" | "reject_requeue_true" | "reject_requeue_false"
    ) {
        return Err(ApiError::bad_request(format!(
            "unknown ackmode '{ackmode}'"
        )));
    }
    let encoding = body
        .get("encoding")
        .and_then(Value::as_str)
        .unwrap_or("auto");
    if encoding != "auto" && encoding != "base64" {
        return Err(ApiError::bad_request(format!(
            "unknown encoding '{encoding}'"
        )));
    }
    let truncate = match body.get("truncate") {
        None | Some(Value::Null) => None,
        Some(t) => Some(integer("truncate", t)? as usize),
    };
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count.min(10_000) {
        let Some((m, remaining)) = q.get(false) else {
            break;
        };
        let msg = &m.message;
        let body = &msg.body[..truncate.unwrap_or(usize::MAX).min(msg.body.len())];
        let (payload, payload_encoding) = match (encoding, std::str::from_utf8(body)) {
            ("auto", Ok(s)) => (s.to_owned(), "string"),
            _ => (
                base64::engine::general_purpose::STANDARD.encode(body),
                "base64",
            ),
        };
        out.push(json!({
            "payload_bytes": msg.body.len(),
            "redelivered": m.redelivered,
            "exchange": msg.exchange.as_str(),
            "routing_key": msg.routing_key.as_str(),
            "message_count": remaining,
            "properties": properties_json(&msg.properties),
            "payload": payload,
            "payload_encoding": payload_encoding,
        }));
        taken.push(m);
    }
    match ackmode.as_str() {
        "ack_requeue_false" => q.settle(&taken),
        "reject_requeue_false" => q.reject(taken),
        _ => q.requeue(taken),
    }
    Ok(Json(Value::Array(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip_through_rabbitmq_names() {
        let given = json!({"content_type": "text/plain", "delivery_mode": 2, "priority": 3,
            "headers": {"a": "b"}, "message_id": "m1", "timestamp": 7, "type": "t", "app_id": "x"});
        let p = properties(given.as_object().unwrap()).unwrap();
        assert_eq!(properties_json(&p), given);
        let bad = json!({"nope": 1});
        assert!(properties(bad.as_object().unwrap()).is_err());
    }
}
