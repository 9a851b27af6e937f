//! `x-consistent-hash`: RabbitMQ's consistent-hash exchange (rabbitmq_consistent_hash_exchange) as a
//! Warren plugin.
//!
//! Each binding's key is an integer weight. The hashed value is the routing key — or, with the declare
//! argument `hash-header`, that header's value, or with `hash-property`, `message_id`,
//! `correlation_id` or `timestamp`.
//!
//! Up to [`RENDEZVOUS_MAX`] bindings, the binding is chosen by weighted rendezvous hashing: the value
//! is hashed once (xxh3), each binding mixes that hash with its own seed (the xxh3 of its destination
//! name) into `u` in (0, 1) and scores `weight / -ln(u)`; the highest score wins. When all weights are
//! equal the score order is the order of `u`, so no logarithm is taken. Each binding's share is exactly its weight's share in
//! expectation (no ring noise), and adding or removing a binding moves only the messages that go to or
//! come from it. Beyond that, a hash ring with points in proportion to the weights keeps routing
//! O(log n). Positions derive from destination names, not broker-assigned ids, so a key routes the same
//! way after a restart or a reload.

use warren_plugin_sdk::exchange::{Binding, Exchange, RoutesOn};
use warren_plugin_sdk::{Message, Table, Value};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Bindings up to which rendezvous hashing is used (one hash per binding per message).
const RENDEZVOUS_MAX: usize = 64;

/// Ring points per unit of weight are chosen so that the ring has about this many points in all.
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

/// How bindings are chosen, rebuilt when they change.
enum Chooser {
    /// (binding id, weight, seed from the destination name); `equal` when every weight is the same.
    Rendezvous {
        bindings: Vec<(u32, f64, u64)>,
        equal: bool,
    },
    /// Sorted (point, binding id).
    Ring(Vec<(u64, u32)>),
}

struct Router {
    chooser: Chooser,
    source: Source,
}

impl Router {
    fn build(exchange: &Exchange) -> Router {
        let weights: Vec<(&Binding, u64)> = exchange
            .bindings()
            .iter()
            .filter_map(|b| weight(b).ok().map(|w| (b, w)))
            .collect();
        let seed = |b: &Binding| xxh3_64(b.destination.as_bytes());
        let chooser = if weights.len() <= RENDEZVOUS_MAX {
            Chooser::Rendezvous {
                bindings: weights
                    .iter()
                    .map(|(b, w)| (b.id, *w as f64, seed(b)))
                    .collect(),
                equal: weights.windows(2).all(|p| p[0].1 == p[1].1),
            }
        } else {
            let total: u64 = weights.iter().map(|(_, w)| w).sum();
            let per_unit = (TARGET_POINTS / total.max(1)).max(1);
            let mut points = Vec::with_capacity((total * per_unit).min(4 * TARGET_POINTS) as usize);
            for (b, w) in &weights {
                let s = seed(b);
                for i in 0..w * per_unit {
                    points.push((xxh3_64_with_seed(&i.to_le_bytes(), s), b.id));
                }
            }
            points.sort_unstable();
            Chooser::Ring(points)
        };
        let source = source(exchange.arguments()).unwrap_or(Source::RoutingKey);
        Router { chooser, source }
    }

    fn choose(&self, value: &[u8]) -> Option<u32> {
        match &self.chooser {
            Chooser::Rendezvous { bindings, equal } => {
                let hash = xxh3_64(value);
                if *equal {
                    return bindings
                        .iter()
                        .max_by_key(|(id, _, seed)| (mix(hash ^ seed), *id))
                        .map(|(id, _, _)| *id);
                }
                bindings
                    .iter()
                    .map(|(id, w, seed)| {
                        // u in (0, 1): 53 random bits, never 0 or 1.
                        let u = ((mix(hash ^ seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                        (w / -u.ln(), *id)
                    })
                    .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
                    .map(|(_, id)| id)
            }
            Chooser::Ring(points) if points.is_empty() => None,
            Chooser::Ring(points) => {
                let hash = xxh3_64(value);
                let i = points.partition_point(|(p, _)| *p < hash);
                Some(points[i % points.len()].1)
            }
        }
    }
}

/// A bijective 64-bit finalizer (splitmix64's): every input bit flips each output bit with
/// probability ~1/2, so one value hash mixed with different binding seeds gives independent scores.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The octets a field value is hashed as.
fn hashed(value: Value) -> Option<Vec<u8>> {
    Some(match value {
        Value::Text(s) => s.into_bytes(),
        Value::Bytes(b) => b,
        Value::Integer(n) => n.to_string().into_bytes(),
        Value::Timestamp(t) => t.to_string().into_bytes(),
        _ => return None,
    })
}

/// Routes to the one binding chosen for the message's hashed value; nowhere when the hashed header
/// or property is missing.
#[warren_plugin_sdk::exchange(
    name = "x-consistent-hash",
    description = "Consistent hashing over bindings weighted by their binding key (RabbitMQ semantics)",
    init = init,
    validate_binding = validate_binding
)]
fn route(exchange: &Exchange, message: &Message) -> Option<u32> {
    let router = exchange.cached(Router::build);
    match &router.source {
        Source::RoutingKey => router.choose(message.routing_key().as_bytes()),
        Source::Header(h) => router.choose(&hashed(message.header(h)?)?),
        Source::Property(p) => router.choose(&hashed(message.property(p)?)?),
    }
}
