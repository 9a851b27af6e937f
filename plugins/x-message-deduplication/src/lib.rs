//! `x-message-deduplication`: the exchange of noxdafox's rabbitmq-message-deduplication as a Warren
//! plugin. It routes like a fanout exchange, except that a message whose `x-deduplication-header`
//! value was seen within the cache's TTL is dropped (routed nowhere: returned when `mandatory`).
//! Seen values live in the broker's key-value store for the exchange (`warren:plugin@0.4.0` `host`),
//! so they survive plugin reloads and, with `x-cache-persistence` = `disk` on a durable exchange,
//! broker restarts.
//!
//! Declare arguments: `x-cache-size` (required, > 0: most values remembered; past it the value seen
//! longest ago is forgotten), `x-cache-ttl` (ms, > 0; default: remembered until evicted),
//! `x-cache-persistence` (`memory`, the default, or `disk`). A message's own `x-cache-ttl` header
//! overrides the exchange's TTL for its value. Messages without the header are always routed.

use std::time::Duration;

use warren_plugin_sdk::exchange::{Exchange, RoutesOn};
use warren_plugin_sdk::store::{self, Options};
use warren_plugin_sdk::{Message, Table, Value};

const BAD_SIZE: &str =
    "Missing or invalid argument, 'x-cache-size' must be an integer greater than 0";
const BAD_TTL: &str = "Invalid argument, 'x-cache-ttl' must be an integer greater than 0";
const BAD_PERSISTENCE: &str =
    "Invalid argument, 'x-cache-persistence' must be either 'disk' or 'memory'";

/// The cache's settings from the declare arguments.
#[derive(Debug, PartialEq, Eq)]
struct Cache {
    size: u64,
    ttl_ms: Option<u64>,
    persistent: bool,
}

/// A positive integer: an integer value, or a string of one (the original plugin accepts both).
fn positive(v: Option<&Value>) -> Option<u64> {
    let n = match v? {
        Value::Text(s) => s.trim().parse::<i64>().ok()?,
        other => other.as_i64()?,
    };
    u64::try_from(n).ok().filter(|n| *n > 0)
}

fn cache(arguments: &Table) -> Result<Cache, String> {
    let size = positive(arguments.get("x-cache-size")).ok_or(BAD_SIZE)?;
    let ttl_ms = match arguments.get("x-cache-ttl") {
        None => None,
        v => Some(positive(v).ok_or(BAD_TTL)?),
    };
    let persistent = match arguments.get("x-cache-persistence").map(Value::as_str) {
        None | Some(Some("memory")) => false,
        Some(Some("disk")) => true,
        Some(_) => return Err(BAD_PERSISTENCE.to_owned()),
    };
    Ok(Cache {
        size,
        ttl_ms,
        persistent,
    })
}

fn init(arguments: &Table) -> Result<RoutesOn, String> {
    let c = cache(arguments)?;
    store::configure(Options {
        max_entries: c.size,
        persistent: c.persistent,
    });
    Ok(RoutesOn::Message)
}

/// The cache key of a header value: a text's octets, other types tagged so that `1` and `"1"` differ.
fn key(v: &Value) -> Vec<u8> {
    match v {
        Value::Text(s) => s.as_bytes().to_vec(),
        Value::Bytes(b) => b.clone(),
        other => format!("\u{0}{other:?}").into_bytes(),
    }
}

/// Every binding, unless the message's deduplication value was seen within the TTL.
#[warren_plugin_sdk::exchange(
    name = "x-message-deduplication",
    description = "Fanout that drops messages whose x-deduplication-header was seen within x-cache-ttl",
    init = init
)]
fn route(exchange: &Exchange, message: &Message) -> Vec<u32> {
    let all = || exchange.bindings().iter().map(|b| b.id).collect();
    let Some(value) = message.header("x-deduplication-header") else {
        return all();
    };
    let key = key(&value);
    if store::get(&key).is_some() {
        return Vec::new();
    }
    let ttl = positive(message.header("x-cache-ttl").as_ref())
        .or(cache(exchange.arguments()).ok().and_then(|c| c.ttl_ms))
        .map(Duration::from_millis);
    // A store over the broker's quota cannot remember the value: the message still goes through.
    let _ = store::set(&key, b"", ttl);
    all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_plugin_sdk::exchange::Binding;

    fn exchange(arguments: Table) -> Exchange {
        store::reset();
        init(&arguments).unwrap();
        Exchange::new(
            arguments,
            vec![Binding::new(1, "a", ""), Binding::new(2, "b", "")],
        )
    }

    fn with(v: &str) -> Message<'static> {
        Message::builder("")
            .header("x-deduplication-header", v)
            .build()
    }

    #[test]
    fn arguments_are_checked_with_the_plugins_texts() {
        assert_eq!(init(&Table::new()), Err(BAD_SIZE.to_owned()));
        assert_eq!(
            init(&Table::new().with("x-cache-size", 0i64)),
            Err(BAD_SIZE.to_owned())
        );
        assert_eq!(
            init(&Table::new().with("x-cache-size", "25")),
            Ok(RoutesOn::Message)
        );
        let sized = Table::new().with("x-cache-size", 10i64);
        assert_eq!(
            init(&sized.clone().with("x-cache-ttl", -1i64)),
            Err(BAD_TTL.to_owned())
        );
        assert_eq!(
            init(&sized.with("x-cache-persistence", "tape")),
            Err(BAD_PERSISTENCE.to_owned())
        );
    }

    #[test]
    fn a_value_seen_before_is_dropped_until_it_expires() {
        let x = exchange(
            Table::new()
                .with("x-cache-size", 100i64)
                .with("x-cache-ttl", 30i64),
        );
        assert_eq!(route(&x, &with("a")), vec![1, 2]);
        assert_eq!(route(&x, &with("a")), Vec::<u32>::new());
        assert_eq!(route(&x, &Message::builder("").build()), vec![1, 2]);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(route(&x, &with("a")), vec![1, 2]);
    }

    #[test]
    fn the_cache_size_evicts_the_oldest_value() {
        let x = exchange(Table::new().with("x-cache-size", 2i64));
        for v in ["a", "b", "c"] {
            assert_eq!(route(&x, &with(v)), vec![1, 2]);
        }
        assert_eq!(route(&x, &with("a")), vec![1, 2], "a was evicted");
        assert_eq!(route(&x, &with("c")), Vec::<u32>::new());
    }
}
