//! `x-consistent-hash`: RabbitMQ's consistent-hash exchange (rabbitmq_consistent_hash_exchange) as a
//! Warren plugin.
//!
//! Each binding's key is an integer weight; the binding owns points on a 64-bit hash ring in
//! proportion to it. A message goes to the binding owning the first point at or after the hash of its
//! routing key — or, with the declare argument `hash-header`, of that header's value, or with
//! `hash-property`, of `message_id`, `correlation_id` or `timestamp`. Points are placed by hashing
//! (binding id, point index) with xxh3, so the ring is the same on every broker and after reloads.

use warren_plugin_sdk::exchange::{Binding, Exchange, RoutesOn};
use warren_plugin_sdk::{Message, Table, Value};
use xxhash_rust::xxh3::xxh3_64;

/// Ring points per unit of weight are chosen so that the ring has about this many points in all:
/// enough that every binding's share is within about 1 % of its weight's share.
const TARGET_POINTS: u64 = 100_000;

/// Where the hashed value comes from, per the declare arguments.
enum Source {
    RoutingKey,
    Header(String),
    Property(&'static str),
}

fn source(arguments: &Table) -> Result<Source, String> {
    let header = arguments.get("hash-header");
    let property = arguments.get("hash-property");
    match (header, property) {
        (Some(_), Some(_)) => Err(
            "hash-header and hash-property are mutually exclusive (x-consistent-hash)".to_owned(),
        ),
        (Some(Value::Text(h)), None) if !h.is_empty() => Ok(Source::Header(h.clone())),
        (Some(_), None) => {
            Err("hash-header must be a non-empty string (x-consistent-hash)".to_owned())
        }
        (None, Some(Value::Text(p))) => match p.as_str() {
            "message_id" => Ok(Source::Property("message-id")),
            "correlation_id" => Ok(Source::Property("correlation-id")),
            "timestamp" => Ok(Source::Property("timestamp")),
            other => Err(format!(
                "hash-property '{other}' is not one of message_id, correlation_id, timestamp (x-consistent-hash)"
            )),
        },
        (None, Some(_)) => Err("hash-property must be a string (x-consistent-hash)".to_owned()),
        (None, None) => Ok(Source::RoutingKey),
    }
}

fn init(arguments: &Table) -> Result<RoutesOn, String> {
    Ok(match source(arguments)? {
        Source::RoutingKey => RoutesOn::RoutingKey,
        _ => RoutesOn::Message,
    })
}

fn weight(binding: &Binding) -> Result<u64, String> {
    binding
        .key
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|w| (1..=1_000_000).contains(w))
        .ok_or_else(|| {
            format!(
                "binding key '{}' is not a weight: x-consistent-hash binding keys are integers from 1 to 1000000",
                binding.key
            )
        })
}

fn validate_binding(_: &Exchange, binding: &Binding) -> Result<(), String> {
    weight(binding).map(|_| ())
}

/// The ring: sorted (point, binding id).
struct Ring {
    points: Vec<(u64, u32)>,
    source: Source,
}

impl Ring {
    fn build(exchange: &Exchange) -> Ring {
        let weights: Vec<(u32, u64)> = exchange
            .bindings()
            .iter()
            .filter_map(|b| weight(b).ok().map(|w| (b.id, w)))
            .collect();
        let total: u64 = weights.iter().map(|(_, w)| w).sum();
        let per_unit = (TARGET_POINTS / total.max(1)).max(1);
        let mut points = Vec::with_capacity((total * per_unit).min(4 * TARGET_POINTS) as usize);
        for (id, w) in weights {
            for i in 0..w * per_unit {
                let mut seed = [0u8; 12];
                seed[..4].copy_from_slice(&id.to_le_bytes());
                seed[4..].copy_from_slice(&i.to_le_bytes());
                points.push((xxh3_64(&seed), id));
            }
        }
        points.sort_unstable();
        let source = source(exchange.arguments()).unwrap_or(Source::RoutingKey);
        Ring { points, source }
    }

    fn lookup(&self, hash: u64) -> Option<u32> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|(p, _)| *p < hash);
        Some(self.points[i % self.points.len()].1)
    }
}

fn hashed(value: &Value) -> Option<u64> {
    Some(match value {
        Value::Text(s) => xxh3_64(s.as_bytes()),
        Value::Bytes(b) => xxh3_64(b),
        Value::Integer(n) => xxh3_64(n.to_string().as_bytes()),
        Value::Timestamp(t) => xxh3_64(t.to_string().as_bytes()),
        _ => return None,
    })
}

/// Routes to the one binding owning the message's point on the ring; nowhere when the hashed header
/// or property is missing.
#[warren_plugin_sdk::exchange(
    name = "x-consistent-hash",
    description = "Consistent hashing over bindings weighted by their binding key (RabbitMQ semantics)",
    init = init,
    validate_binding = validate_binding
)]
fn route(exchange: &Exchange, message: &Message) -> Option<u32> {
    let ring = exchange.cached(Ring::build);
    let hash = match &ring.source {
        Source::RoutingKey => xxh3_64(message.routing_key().as_bytes()),
        Source::Header(h) => hashed(&message.header(h)?)?,
        Source::Property(p) => hashed(&message.property(p)?)?,
    };
    ring.lookup(hash)
}
