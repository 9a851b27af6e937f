//! A published message: where it was published to, its properties and its body.
//!
//! A [`Message`] is immutable once assembled and shared as [`MessageRef`] (an `Arc`) by every queue it is
//! routed to, so fanout never copies a body. The encoded property list is kept as received and written
//! back verbatim on delivery, so delivering a message never re-encodes its properties.

use std::sync::Arc;

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::gen_properties;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::Bytes;

use crate::memory::{self, Memory};

/// One message as published with basic.publish (AMQP 0-9-1 §1.8.3.7) plus its content.
#[derive(Debug)]
pub struct Message {
    /// Exchange named in basic.publish (`""` for the default exchange).
    pub exchange: ShortString,
    /// Routing key of basic.publish.
    pub routing_key: ShortString,
    /// Decoded content-header properties (for routing on headers and for RabbitMQ extensions), shared
    /// by consecutive messages of a channel that carry the same properties
    /// (`Channel::intern_properties`), so a queued message does not hold a decoded copy of its own.
    pub properties: Arc<BasicProperties>,
    /// The same properties as encoded on the wire (property flags onwards).
    pub raw_properties: Bytes,
    /// Message body; a zero-copy slice of the publisher's read buffer when it came in one frame.
    pub body: Bytes,
    /// The broker's memory account, charged with the message's octets while it lives.
    pub memory: Memory,
}

/// A shared, immutable message.
pub(crate) type MessageRef = Arc<Message>;

impl Drop for Message {
    fn drop(&mut self) {
        self.memory.sub(
            memory::Account::Messages,
            self.body.len() + self.raw_properties.len(),
        );
    }
}

impl Message {
    /// A message; its size counts towards `memory`'s message account
    /// (`crate::memory::Account::Messages`) until it is dropped.
    pub fn new(
        memory: Memory,
        exchange: ShortString,
        routing_key: ShortString,
        properties: impl Into<Arc<BasicProperties>>,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Self {
        memory.add(memory::Account::Messages, body.len() + raw_properties.len());
        Message {
            memory,
            exchange,
            routing_key,
            properties: properties.into(),
            raw_properties,
            body,
        }
    }

    /// Body size in octets.
    pub fn body_size(&self) -> u64 {
        self.body.len() as u64
    }

    /// Whether the publisher asked for persistence (`delivery_mode = 2`).
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode() == &Some(2)
    }
}

/// Encodes properties as they travel in a content header (property flags onwards).
pub(crate) fn encode_properties(properties: &BasicProperties) -> Bytes {
    match gen_properties(properties)(WriteContext::from(Vec::with_capacity(64))) {
        Ok(ctx) => Bytes::from(ctx.write),
        // Encoding into a Vec does not fail for properties that were decoded or built from valid parts.
        Err(_) => Bytes::new(),
    }
}

/// A copy of `p` with `headers` replaced (`None` removes them) and, if `drop_expiration`, no
/// `expiration`. amq-protocol's properties only have setters, so the copy is rebuilt field by field.
pub(crate) fn rebuild_properties(
    p: &BasicProperties,
    headers: Option<FieldTable>,
    drop_expiration: bool,
) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(h) = headers {
        out = out.with_headers(h);
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let (Some(v), false) = (p.expiration(), drop_expiration) {
        out = out.with_expiration(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

/// The string values of an array header such as `CC` or `BCC` (RabbitMQ docs/sender-selected.md).
pub(crate) fn header_strings(headers: Option<&FieldTable>, key: &str) -> Vec<String> {
    let Some(AMQPValue::FieldArray(items)) = headers.and_then(|h| h.inner().get(key)) else {
        return Vec::new();
    };
    items
        .as_slice()
        .iter()
        .filter_map(|v| match v {
            AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

/// The per-message TTL from the `expiration` property, in ms (RabbitMQ docs/ttl.md).
///
/// # Errors
/// RabbitMQ's term for a value that is not a non-negative integer, e.g. `{value_negative,-1}`.
pub(crate) fn expiration_ms(p: &BasicProperties) -> Result<Option<u64>, String> {
    let Some(v) = p.expiration() else {
        return Ok(None);
    };
    let text = v.as_str();
    match text.parse::<i64>() {
        Ok(n) if n < 0 => Err(format!("{{value_negative,{n}}}")),
        Ok(n) => Ok(Some(n as u64)),
        Err(_) => Err("no_integer".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    #[test]
    fn rebuilt_properties_keep_every_field_but_the_dropped_ones() {
        let mut h = FieldTable::default();
        h.insert("a".into(), AMQPValue::LongString(LongString::from("1")));
        let p = BasicProperties::default()
            .with_content_type("t".into())
            .with_content_encoding("e".into())
            .with_headers(h.clone())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_expiration("100".into())
            .with_message_id("m".into())
            .with_timestamp(5)
            .with_type("k".into())
            .with_user_id("u".into())
            .with_app_id("app".into())
            .with_cluster_id("cl".into());
        assert_eq!(rebuild_properties(&p, Some(h), false), p);
        let stripped = rebuild_properties(&p, None, true);
        assert_eq!(stripped.expiration(), &None);
        assert_eq!(stripped.headers(), &None);
        assert_eq!(stripped.app_id(), p.app_id());
        let raw = encode_properties(&p);
        let (_, decoded) = amq_protocol::protocol::basic::parse_properties(&raw[..]).unwrap();
        assert_eq!(decoded, p);
    }

    #[test]
    fn expiration_parsing() {
        let p = |v: &str| BasicProperties::default().with_expiration(v.into());
        assert_eq!(expiration_ms(&BasicProperties::default()), Ok(None));
        assert_eq!(expiration_ms(&p("1500")), Ok(Some(1500)));
        assert_eq!(expiration_ms(&p("-1")), Err("{value_negative,-1}".into()));
        assert_eq!(expiration_ms(&p("soon")), Err("no_integer".into()));
    }
}
