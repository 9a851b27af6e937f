use warren_plugin_sdk::{Message, Table};

/// An idempotency key may be a `String`.
#[warren_plugin_sdk::idempotency(name = "by-message-id")]
fn key(_config: &Table, message: &Message) -> Option<String> {
    message.property_str("message-id")
}

fn main() {
    let m = Message::builder("k").property("message-id", "a").build();
    assert_eq!(key(&Table::new(), &m).as_deref(), Some("a"));
}
