//! `idempotency-key`: derives a message's idempotency key for a queue.
//!
//! `x-idempotency-args` picks the key: nothing (default) → the `message_id` property; `header` = name →
//! that header's value; `body-hash` = true → a 128-bit xxh3 hash of the body. A message without the
//! chosen field has no key and is always delivered.

use warren_plugin_sdk::{Message, Table, Value};
use xxhash_rust::xxh3::xxh3_128;

fn init(config: &Table) -> Result<(), String> {
    match (config.get("header"), config.get("body-hash")) {
        (Some(_), Some(Value::Boolean(true))) => {
            Err("x-idempotency-args: 'header' and 'body-hash' are mutually exclusive".to_owned())
        }
        (Some(Value::Text(h)), _) if !h.is_empty() => Ok(()),
        (Some(_), _) => Err("x-idempotency-args 'header' must be a non-empty string".to_owned()),
        (None, None | Some(Value::Boolean(_))) => Ok(()),
        (None, Some(_)) => Err("x-idempotency-args 'body-hash' must be a boolean".to_owned()),
    }
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::Text(s) => Some(s.into_bytes()),
        Value::Bytes(b) => Some(b),
        Value::Integer(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// The key: message id, a header, or a hash of the body.
#[warren_plugin_sdk::idempotency(
    name = "idempotency-key",
    description = "Idempotency key from message_id, a header, or a hash of the body",
    init = init
)]
fn key(config: &Table, message: &Message) -> Option<Vec<u8>> {
    if let Some(Value::Text(header)) = config.get("header") {
        return bytes(message.header(header)?);
    }
    if config.get("body-hash") == Some(&Value::Boolean(true)) {
        return Some(xxh3_128(&message.body()).to_be_bytes().to_vec());
    }
    bytes(message.property("message-id")?)
}
