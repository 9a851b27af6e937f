//! The message a plugin is asked about: a view onto the broker's copy, read part by part.

use std::borrow::Cow;

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
///
/// In a plugin's own tests (natively, `cargo test`), [`Message::builder`] makes one:
///
/// ```
/// use warren_plugin_sdk::{Message, Value};
///
/// let m = Message::builder("orders.eu")
///     .property("content-type", "application/json")
///     .header("region", "eu")
///     .body(br#"{"total": 12}"#)
///     .build();
/// assert_eq!(m.routing_key(), "orders.eu");
/// assert_eq!(m.property_str("content-type").as_deref(), Some("application/json"));
/// assert_eq!(m.header("region"), Some(Value::from("eu")));
/// assert_eq!(m.body_size(), 13);
/// ```
pub struct Message<'a> {
    source: Source<'a>,
    routing_key: Cow<'a, str>,
}

/// Where a message's parts come from: the broker (through the generated glue) or a test.
enum Source<'a> {
    Host(&'a dyn MessageSource),
    Built(Box<Parts>),
}

impl Source<'_> {
    fn get(&self) -> &dyn MessageSource {
        match self {
            Source::Host(s) => *s,
            Source::Built(p) => &**p,
        }
    }
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
            source: Source::Host(source),
            routing_key: Cow::Borrowed(routing_key),
        }
    }

    /// A message for a plugin's tests, routed with `routing_key` (also its published routing key
    /// unless [`MessageBuilder::published_routing_key`] says otherwise); no properties, headers or
    /// body until the builder adds them.
    pub fn builder(routing_key: impl Into<String>) -> MessageBuilder {
        let routing_key = routing_key.into();
        MessageBuilder {
            parts: Parts {
                exchange: String::new(),
                published_routing_key: routing_key.clone(),
                properties: Vec::new(),
                headers: Table::default(),
                body: Vec::new(),
            },
            routing_key,
        }
    }

    /// The routing key this decision is for: for exchanges, the key being routed (the message's own or
    /// one of its `CC` / `BCC` keys); otherwise the key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The exchange named in basic.publish (`""` for the default exchange).
    pub fn exchange(&self) -> String {
        self.source.get().exchange()
    }

    /// The routing key given in basic.publish.
    pub fn published_routing_key(&self) -> String {
        self.source.get().routing_key()
    }

    /// The body's size in octets.
    pub fn body_size(&self) -> u64 {
        self.source.get().body_size()
    }

    /// A copy of the body.
    pub fn body(&self) -> Vec<u8> {
        self.source.get().body()
    }

    /// A basic property by its AMQP name (`content-type`, `content-encoding`, `delivery-mode`,
    /// `priority`, `correlation-id`, `reply-to`, `expiration`, `message-id`, `timestamp`, `type`,
    /// `user-id`, `app-id`).
    pub fn property(&self, name: &str) -> Option<Value> {
        self.source.get().property(name)
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
        self.source.get().header(name)
    }

    /// All headers.
    pub fn headers(&self) -> Table {
        self.source.get().headers()
    }
}

/// The parts of a message made by [`Message::builder`].
struct Parts {
    exchange: String,
    published_routing_key: String,
    properties: Vec<(String, Value)>,
    headers: Table,
    body: Vec<u8>,
}

impl MessageSource for Parts {
    fn exchange(&self) -> String {
        self.exchange.clone()
    }
    fn routing_key(&self) -> String {
        self.published_routing_key.clone()
    }
    fn body_size(&self) -> u64 {
        self.body.len() as u64
    }
    fn body(&self) -> Vec<u8> {
        self.body.clone()
    }
    fn property(&self, name: &str) -> Option<Value> {
        if name == "headers" {
            return Some(Value::Table(self.headers.clone()));
        }
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
    fn header(&self, name: &str) -> Option<Value> {
        self.headers.get(name).cloned()
    }
    fn headers(&self) -> Table {
        self.headers.clone()
    }
}

/// Builds a [`Message`] for a plugin's tests ([`Message::builder`]); the message reads exactly what
/// was set, as the broker's view would.
#[derive(Debug)]
#[must_use]
pub struct MessageBuilder {
    parts: Parts,
    routing_key: String,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("exchange", &self.exchange)
            .field("properties", &self.properties)
            .field("headers", &self.headers)
            .field("body_size", &self.body.len())
            .finish()
    }
}

impl MessageBuilder {
    /// The exchange named in basic.publish (default `""`).
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.parts.exchange = name.into();
        self
    }

    /// The routing key given in basic.publish, when the key being routed is another (a `CC` / `BCC`
    /// key); default: the builder's routing key.
    pub fn published_routing_key(mut self, key: impl Into<String>) -> Self {
        self.parts.published_routing_key = key.into();
        self
    }

    /// Sets a basic property by its AMQP name (`content-type`, `message-id`, `priority`, …; see
    /// [`Message::property`]), replacing an earlier value.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let name = name.into();
        self.parts.properties.retain(|(n, _)| *n != name);
        self.parts.properties.push((name, value.into()));
        self
    }

    /// Adds a header (an entry of the `headers` property).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.parts.headers.insert(name, value);
        self
    }

    /// The body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.parts.body = body.into();
        self
    }

    /// The message.
    pub fn build(self) -> Message<'static> {
        Message {
            source: Source::Built(Box::new(self.parts)),
            routing_key: Cow::Owned(self.routing_key),
        }
    }
}
