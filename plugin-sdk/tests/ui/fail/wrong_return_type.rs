use warren_plugin_sdk::exchange::Exchange;
use warren_plugin_sdk::Message;

#[warren_plugin_sdk::exchange(name = "x-names")]
fn route(exchange: &Exchange, _message: &Message) -> Vec<String> {
    exchange.bindings().iter().map(|b| b.destination.clone()).collect()
}

fn main() {}
