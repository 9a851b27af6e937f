//! A published message: where it was published to, its properties and its body.
//!
//! A [`Message`] is immutable once assembled and shared as [`MessageRef`] (an `Arc`) by every queue it is
//! routed to, so fanout never copies a body. The encoded property list is kept as received and written
//! back verbatim on delivery, so delivering a message never re-encodes its properties.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::ShortString;
use bytes::Bytes;

/// One message as published with basic.publish (AMQP 0-9-1 §1.8.3.7) plus its content.
#[derive(Debug)]
pub struct Message {
    /// Exchange named in basic.publish (`""` for the default exchange).
    pub exchange: ShortString,
    /// Routing key of basic.publish.
    pub routing_key: ShortString,
    /// Decoded content-header properties (for routing on headers and for RabbitMQ extensions).
    pub properties: BasicProperties,
    /// The same properties as encoded on the wire (property flags onwards).
    pub raw_properties: Bytes,
    /// Message body; a zero-copy slice of the publisher's read buffer when it came in one frame.
    pub body: Bytes,
}

/// A shared, immutable message.
pub type MessageRef = Arc<Message>;

impl Message {
    /// Body size in octets.
    pub fn body_size(&self) -> u64 {
        self.body.len() as u64
    }

    /// Whether the publisher asked for persistence (`delivery_mode = 2`).
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode() == &Some(2)
    }
}
