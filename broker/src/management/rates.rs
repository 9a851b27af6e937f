//! Message rates (`*_details.rate`, messages per second) for the node, vhosts, queues and channels:
//! a sampler reads every object's counters every [`SAMPLE_EVERY`] and keeps the last two samples per
//! object; a rate is the difference of the two over their interval (RabbitMQ's default sampling
//! interval is 5 s too: `collect_statistics_interval`). Objects that are gone are dropped at the next
//! sample. The counters themselves are `crate::stats`'s, read live.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::broker::Broker;
use crate::stats::MessageStats;

/// How often the sampler reads the counters.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Which object a rate belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// The node.
    Node,
    /// A vhost by name.
    Vhost(String),
    /// A queue by vhost and name.
    Queue(String, String),
    /// A channel by connection id and number.
    Channel(u64, u16),
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    stats: MessageStats,
}

/// (publish in, publish out) of an exchange at a moment.
type ExchangeSample = (Instant, (u64, u64));

/// The last two samples of each exchange, by (vhost, name).
type ExchangeSamples = HashMap<(String, String), (Option<ExchangeSample>, ExchangeSample)>;

/// The last two samples of each object.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    samples: Mutex<HashMap<Key, (Option<Sample>, Sample)>>,
    /// Exchanges by (vhost, name).
    exchanges: Mutex<ExchangeSamples>,
}

impl Rates {
    /// Takes one sample of every object `broker` has now.
    pub(crate) fn sample(&self, broker: &Broker) {
        let at = Instant::now();
        let mut now: Vec<(Key, MessageStats)> = vec![(Key::Node, broker.message_stats(None))];
        let mut exchanges = HashMap::new();
        for v in broker.vhost_list() {
            for (name, n) in broker.exchange_stats(&v.name) {
                exchanges.insert((v.name.clone(), name), (at, n));
            }
            now.push((
                Key::Vhost(v.name.clone()),
                broker.message_stats(Some(&v.name)),
            ));
            for q in v.queue_list() {
                now.push((
                    Key::Queue(v.name.clone(), q.name.as_str().to_owned()),
                    q.stats().snapshot(),
                ));
            }
        }
        for c in broker.connection_table.list() {
            for ch in c.channel_list() {
                now.push((Key::Channel(c.id, ch.id), ch.stats.snapshot()));
            }
        }
        {
            let mut previous = crate::sync::lock(&self.exchanges);
            let next = exchanges
                .into_iter()
                .map(|(key, current)| {
                    let prev = previous.remove(&key).map(|(_, last)| last);
                    (key, (prev, current))
                })
                .collect();
            *previous = next;
        }
        let mut samples = crate::sync::lock(&self.samples);
        let mut next = HashMap::with_capacity(now.len());
        for (key, stats) in now {
            let current = Sample { at, stats };
            let prev = samples.remove(&key).map(|(_, last)| last);
            next.insert(key, (prev, current));
        }
        *samples = next;
    }

    /// Per-second rates of `key`'s counters over the last sampling interval (zeros until two samples
    /// exist), in [`MessageStats::fields`] order.
    fn rates(&self, key: &Key) -> [f64; 10] {
        let samples = crate::sync::lock(&self.samples);
        let mut out = [0.0; 10];
        if let Some((Some(prev), cur)) = samples.get(key) {
            let secs = cur.at.duration_since(prev.at).as_secs_f64();
            if secs > 0.0 {
                for (i, ((_, a), (_, b))) in prev
                    .stats
                    .fields()
                    .iter()
                    .zip(cur.stats.fields().iter())
                    .enumerate()
                {
                    out[i] = b.saturating_sub(*a) as f64 / secs;
                }
            }
        }
        out
    }

    /// RabbitMQ's `message_stats` object: each count with its `_details` `{"rate": …}`.
    pub(crate) fn message_stats_json(&self, key: &Key, stats: &MessageStats) -> Value {
        let rates = self.rates(key);
        let mut m = Map::new();
        for ((name, count), rate) in stats.fields().iter().zip(rates) {
            m.insert((*name).to_owned(), json!(count));
            m.insert(format!("{name}_details"), json!({ "rate": round(rate) }));
        }
        Value::Object(m)
    }
}

impl Rates {
    /// An exchange's `message_stats`: `publish_in` and `publish_out` with their rates.
    pub(crate) fn exchange_stats_json(&self, vhost: &str, name: &str, n: (u64, u64)) -> Value {
        let (mut rate_in, mut rate_out) = (0.0, 0.0);
        if let Some((Some((t0, (i0, o0))), (t1, (i1, o1)))) = crate::sync::lock(&self.exchanges)
            .get(&(vhost.to_owned(), name.to_owned()))
            .copied()
        {
            let secs = t1.duration_since(t0).as_secs_f64();
            if secs > 0.0 {
                rate_in = i1.saturating_sub(i0) as f64 / secs;
                rate_out = o1.saturating_sub(o0) as f64 / secs;
            }
        }
        json!({
            "publish_in": n.0,
            "publish_in_details": { "rate": round(rate_in) },
            "publish_out": n.1,
            "publish_out_details": { "rate": round(rate_out) },
        })
    }
}

/// One decimal, as RabbitMQ shows rates.
fn round(r: f64) -> f64 {
    (r * 10.0).round() / 10.0
}

/// Samples `broker` every [`SAMPLE_EVERY`] for as long as the process runs.
pub(crate) async fn sampler(rates: Arc<Rates>, broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        rates.sample(&broker);
    }
}
