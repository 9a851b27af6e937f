use warren_plugin_sdk::{Message, Table};

#[warren_plugin_sdk::idempotency(name = "k")]
fn key(_config: &Table, message: &Message) -> Vec<u8> {
    message.body()
}

fn main() {}
