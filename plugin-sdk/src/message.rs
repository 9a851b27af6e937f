//! The message a plugin is asked about: a view onto the broker's copy, read part by part.

use crate::table::{Table, Value};

/// Access to the host's message view. Implemented by the glue that the plugin macros generate;
/// plugin code uses [`Message`].
#[doc(hidden)]
pub trait MessageSource {
    fn exchange(&self) -> String;
    fn routing_key(&self) -> String;
    fn body_size(&self) -> u64;
    fn body(&self) -> Vec<u8>;
    fn property(&self, name: &str) -> Option<Value>;
    fn header(&self, name: &str) -> Option<Value>;
    fn headers(&self) -> Table;
}

/// A message known only by its routing key (`route-keys` batches): every other part reads as empty.
pub(crate) struct KeyOnly<'a>(pub(crate) &'a str);

impl MessageSource for KeyOnly<'_> {
    fn exchange(&self) -> String {
        String::new()
    }
    fn routing_key(&self) -> String {
        self.0.to_owned()
    }
    fn body_size(&self) -> u64 {
        0
    }
    fn body(&self) -> Vec<u8> {
        Vec::new()
    }
    fn property(&self, _: &str) -> Option<Value> {
        None
    }
    fn header(&self, _: &str) -> Option<Value> {
        None
    }
    fn headers(&self) -> Table {
        Table::default()
    }
}

/// A read-only message (basic.publish + content header + body). Every accessor asks the broker for
/// just that part, so read only what the decision needs.
pub struct Message<'a> {
    source: &'a dyn MessageSource,
    routing_key: &'a str,
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("routing_key", &self.routing_key)
            .finish_non_exhaustive()
    }
}

impl<'a> Message<'a> {
    #[doc(hidden)]
    pub fn new(source: &'a dyn MessageSource, routing_key: &'a str) -> Self {
        Message {
            source,
            routing_key,
        }
    }

    /// The routing key this decision is for: for exchanges, the key being routed (the message's own or
    /// one of its `CC` / `BCC` keys); otherwise the key it was published with.
    pub fn routing_key(&self) -> &str {
        self.routing_key
    }

    /// The exchange named in basic.publish (`""` for the default exchange).
    pub fn exchange(&self) -> String {
        self.source.exchange()
    }

    /// The routing key given in basic.publish.
    pub fn published_routing_key(&self) -> String {
        self.source.routing_key()
    }

    /// The body's size in octets.
    pub fn body_size(&self) -> u64 {
        self.source.body_size()
    }

    /// A copy of the body.
    pub fn body(&self) -> Vec<u8> {
        self.source.body()
    }

    /// A basic property by its AMQP name (`content-type`, `content-encoding`, `delivery-mode`,
    /// `priority`, `correlation-id`, `reply-to`, `expiration`, `message-id`, `timestamp`, `type`,
    /// `user-id`, `app-id`).
    pub fn property(&self, name: &str) -> Option<Value> {
        self.source.property(name)
    }

    /// A property that is a string, such as `message-id` or `content-type`.
    pub fn property_str(&self, name: &str) -> Option<String> {
        match self.property(name)? {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// One header (entry of the `headers` property).
    pub fn header(&self, name: &str) -> Option<Value> {
        self.source.header(name)
    }

    /// All headers.
    pub fn headers(&self) -> Table {
        self.source.headers()
    }
}
