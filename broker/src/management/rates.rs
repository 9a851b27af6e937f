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

/// The last two samples of each object.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    samples: Mutex<HashMap<Key, (Option<Sample>, Sample)>>,
}

impl Rates {
    /// Takes one sample of every object `broker` has now.
    pub(crate) fn sample(&self, broker: &Broker) {
        let at = Instant::now();
        let mut now: Vec<(Key, MessageStats)> = vec![(Key::Node, broker.message_stats(None))];
        for v in broker.vhost_list() {
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
