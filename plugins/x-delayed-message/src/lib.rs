//! `x-delayed-message`: RabbitMQ's delayed-message exchange (rabbitmq-delayed-message-exchange) as a
//! Warren plugin. Declare it with `x-delayed-type` = `direct`, `topic`, `fanout` or `headers`; a
//! message's `x-delay` header (milliseconds) holds it that long in the broker's delay store
//! (`warren:plugin@0.4.0` `schedule`), after which it is routed the way an exchange of the
//! `x-delayed-type` would route it, against the bindings the exchange has then. No `x-delay`, zero or
//! negative: routed now. Unlike RabbitMQ's plugin, delays are not capped at 2³²−1 ms.

use warren_plugin_sdk::exchange::{Binding, Due, Exchange, RoutesOn};
use warren_plugin_sdk::{Message, Table, Value};

/// RabbitMQ's text for a missing or unknown `x-delayed-type`.
const BAD_TYPE: &str = "Invalid argument, 'x-delayed-type' must be an existing exchange type";

/// The routing the exchange delegates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delegate {
    Direct,
    Topic,
    Fanout,
    Headers,
}

fn delegate(arguments: &Table) -> Result<Delegate, String> {
    match arguments.get("x-delayed-type").and_then(Value::as_str) {
        Some("direct") => Ok(Delegate::Direct),
        Some("topic") => Ok(Delegate::Topic),
        Some("fanout") => Ok(Delegate::Fanout),
        Some("headers") => Ok(Delegate::Headers),
        _ => Err(BAD_TYPE.to_owned()),
    }
}

fn init(arguments: &Table) -> Result<RoutesOn, String> {
    Ok(match delegate(arguments)? {
        Delegate::Headers => RoutesOn::Message,
        _ => RoutesOn::RoutingKey,
    })
}

fn validate_binding(exchange: &Exchange, binding: &Binding) -> Result<(), String> {
    if delegate(exchange.arguments()) == Ok(Delegate::Headers) {
        match binding.arguments.get("x-match").map(Value::as_str) {
            None | Some(Some("all" | "any" | "all-with-x" | "any-with-x")) => {}
            Some(_) => {
                return Err(format!(
                "Invalid x-match field value {:?}; expected all, any, all-with-x, or any-with-x",
                binding.arguments.get("x-match")
            ))
            }
        }
    }
    Ok(())
}

/// `x-delay` in milliseconds: absent, zero or negative route now; anything but an integer is refused
/// (406 naming the header).
fn delay(_exchange: &Exchange, message: &Message) -> Due {
    match message.header("x-delay") {
        None => Due::Now,
        Some(Value::Integer(ms)) if ms > 0 => Due::After(ms as u64),
        Some(Value::Integer(_)) => Due::Now,
        Some(other) => Due::Refuse(format!(
            "invalid 'x-delay' header: expected an integer number of milliseconds, got {other:?}"
        )),
    }
}

/// AMQP topic matching: words separated by `.`, `*` one word, `#` zero or more words.
fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
            Some((w, rest)) => k.first() == Some(w) && go(rest, &k[1..]),
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// The headers exchange's rule (RabbitMQ docs/exchanges.md): `x-match` = `all` (default) or `any`
/// over the binding's arguments, keys starting with `x-` ignored unless `all-with-x` / `any-with-x`;
/// a void binding value matches any value of that header.
fn headers_match(binding: &Table, headers: &Table) -> bool {
    let mode = binding
        .get("x-match")
        .and_then(Value::as_str)
        .unwrap_or("all");
    let with_x = mode.ends_with("-with-x");
    let mut checked = binding
        .iter()
        .filter(|(k, _)| *k != "x-match" && (with_x || !k.starts_with("x-")))
        .map(|(k, v)| match headers.get(k) {
            Some(h) => matches!(v, Value::Void) || h == v,
            None => false,
        });
    if mode.starts_with("any") {
        checked.any(|m| m)
    } else {
        checked.all(|m| m)
    }
}

/// Routes as the `x-delayed-type` exchange would (asked when the message is due).
#[warren_plugin_sdk::exchange(
    name = "x-delayed-message",
    description = "Delays each message by its x-delay header (ms), then routes it as x-delayed-type",
    init = init,
    validate_binding = validate_binding,
    schedule = delay
)]
fn route(exchange: &Exchange, message: &Message) -> Vec<u32> {
    let key = message.routing_key();
    let bindings = exchange.bindings().iter();
    match delegate(exchange.arguments()).unwrap_or(Delegate::Direct) {
        Delegate::Direct => bindings.filter(|b| b.key == key).map(|b| b.id).collect(),
        Delegate::Fanout => bindings.map(|b| b.id).collect(),
        Delegate::Topic => bindings
            .filter(|b| topic_matches(&b.key, key))
            .map(|b| b.id)
            .collect(),
        Delegate::Headers => {
            let headers = message.headers();
            bindings
                .filter(|b| headers_match(&b.arguments, &headers))
                .map(|b| b.id)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(kind: &str, bindings: Vec<Binding>) -> Exchange {
        Exchange::new(Table::new().with("x-delayed-type", kind), bindings)
    }

    #[test]
    fn x_delayed_type_is_required_and_known() {
        assert_eq!(init(&Table::new()), Err(BAD_TYPE.to_owned()));
        assert_eq!(
            init(&Table::new().with("x-delayed-type", "x-nope")),
            Err(BAD_TYPE.to_owned())
        );
        assert_eq!(
            init(&Table::new().with("x-delayed-type", "headers")),
            Ok(RoutesOn::Message)
        );
    }

    #[test]
    fn x_delay_is_read_in_milliseconds() {
        let x = exchange("direct", vec![]);
        let with = |v: Value| Message::builder("k").header("x-delay", v).build();
        assert_eq!(delay(&x, &with(Value::Integer(1500))), Due::After(1500));
        assert_eq!(delay(&x, &with(Value::Integer(-5))), Due::Now);
        assert_eq!(delay(&x, &Message::builder("k").build()), Due::Now);
        assert!(matches!(
            delay(&x, &with(Value::Text("soon".into()))),
            Due::Refuse(t) if t.contains("x-delay")
        ));
    }

    #[test]
    fn routes_as_the_delayed_type() {
        let topic = exchange(
            "topic",
            vec![
                Binding::new(1, "a", "orders.*.eu"),
                Binding::new(2, "b", "orders.#"),
            ],
        );
        assert_eq!(
            route(&topic, &Message::builder("orders.paid.eu").build()),
            vec![1, 2]
        );
        assert_eq!(route(&topic, &Message::builder("orders").build()), vec![2]);
        let headers = exchange(
            "headers",
            vec![
                Binding::new(1, "a", "")
                    .with_arguments(Table::new().with("x-match", "any").with("region", "eu")),
                Binding::new(2, "b", "")
                    .with_arguments(Table::new().with("region", "eu").with("tier", "gold")),
            ],
        );
        let eu = Message::builder("").header("region", "eu").build();
        assert_eq!(route(&headers, &eu), vec![1]);
        let gold = Message::builder("")
            .header("region", "eu")
            .header("tier", "gold")
            .build();
        assert_eq!(route(&headers, &gold), vec![1, 2]);
    }
}
