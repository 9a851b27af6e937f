use warren_plugin_sdk::filter::Decision;
use warren_plugin_sdk::{Message, Table};

fn check(_exchange: &Table) -> Result<(), String> {
    Ok(())
}

#[warren_plugin_sdk::filter(name = "f", validate_binding = check)]
fn filter(_config: &Table, _message: &Message) -> Decision {
    Decision::Deliver
}

fn main() {}
