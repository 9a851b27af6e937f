use warren_plugin_sdk::{Message, Table};

/// A filter may answer `bool` (deliver or skip).
#[warren_plugin_sdk::filter(name = "has-body")]
fn filter(_config: &Table, message: &Message) -> bool {
    message.body_size() > 0
}

fn main() {
    assert!(filter(&Table::new(), &Message::builder("k").body("x").build()));
}
