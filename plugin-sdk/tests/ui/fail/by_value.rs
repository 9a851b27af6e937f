use warren_plugin_sdk::filter::Decision;
use warren_plugin_sdk::{Message, Table};

#[warren_plugin_sdk::filter(name = "f")]
fn filter(_config: Table, _message: &Message) -> Decision {
    Decision::Deliver
}

fn main() {}
