use warren_plugin_sdk::{Message, Table};

#[warren_plugin_sdk::idempotency(name = "k")]
async fn key(_config: &Table, message: &Message) -> Option<Vec<u8>> {
    message.property_str("message-id").map(String::into_bytes)
}

fn main() {}
