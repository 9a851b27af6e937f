use warren_plugin_sdk::{Message, Table};

#[warren_plugin_sdk::filter(name = "f")]
fn filter(_config: &Table, message: &Message) -> Option<String> {
    message.property_str("type")
}

fn main() {}
