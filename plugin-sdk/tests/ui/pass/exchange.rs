use warren_plugin_sdk::exchange::{Binding, Exchange, RoutesOn};
use warren_plugin_sdk::{Message, Table};

fn init(arguments: &Table) -> Result<RoutesOn, String> {
    match arguments.get("x-on") {
        None => Ok(RoutesOn::RoutingKey),
        Some(_) => Err("x-on is not supported".into()),
    }
}

fn validate_binding(_exchange: &Exchange, binding: &Binding) -> Result<(), String> {
    if binding.key.is_empty() {
        return Err("binding key must not be empty".into());
    }
    Ok(())
}

#[warren_plugin_sdk::exchange(
    name = "x-first",
    description = "the first binding whose key equals the routing key",
    init = init,
    validate_binding = validate_binding
)]
fn route(exchange: &Exchange, message: &Message) -> Option<u32> {
    exchange
        .bindings()
        .iter()
        .find(|b| b.key == message.routing_key())
        .map(|b| b.id)
}

fn main() {
    let x = Exchange::new(Table::new(), vec![Binding::new(3, "q", "a")]);
    assert_eq!(route(&x, &Message::builder("a").build()), Some(3));
}
