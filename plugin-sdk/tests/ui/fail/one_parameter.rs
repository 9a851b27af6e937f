use warren_plugin_sdk::exchange::Exchange;

#[warren_plugin_sdk::exchange(name = "x-all")]
fn route(exchange: &Exchange) -> Vec<u32> {
    exchange.bindings().iter().map(|b| b.id).collect()
}

fn main() {}
