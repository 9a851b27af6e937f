use warren_plugin_sdk::exchange::Exchange;
use warren_plugin_sdk::Message;

#[warren_plugin_sdk::exchange(name = "prefix")]
fn route(exchange: &Exchange, message: &Message) -> Vec<u32> {
    let _ = message;
    exchange.bindings().iter().map(|b| b.id).collect()
}

fn main() {}
