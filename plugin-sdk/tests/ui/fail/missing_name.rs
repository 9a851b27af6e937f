use warren_plugin_sdk::{Message, Table};

#[warren_plugin_sdk::idempotency(description = "no name")]
fn key(_config: &Table, message: &Message) -> Option<Vec<u8>> {
    message.property_str("message-id").map(String::into_bytes)
}

fn main() {}
