//! Prometheus metrics on their own listener (`[prometheus] listen`, default `127.0.0.1:15692`,
//! RabbitMQ's `prometheus.tcp.port`), with rabbitmq_prometheus's names and labels so that the stock
//! Grafana dashboards and alerts work unchanged (`../shared/MANAGEMENT.md` §2; rabbitmq-server
//! `deps/rabbitmq_prometheus/src/collectors/*.erl`, `deps/rabbit/src/rabbit_global_counters.erl`):
//!
//! - `GET /metrics`: node-wide values, queue gauges summed (no per-object labels);
//! - `GET /metrics/per-object`: the same, plus each queue's gauges and counters with labels `vhost`
//!   and `queue`;
//! - both carry `rabbitmq_identity_info` and `rabbitmq_build_info` (every panel of the stock
//!   "RabbitMQ-Overview" dashboard joins on the first), and Warren's own `warren_plugin_*` series
//!   (label `plugin`, `kind`).
//!
//! Everything is read from broker state when scraped (prometheus-client's `Collector`): nothing is
//! registered per queue, a deleted queue simply vanishes, and the publish path pays only the
//! per-channel counters of `crate::stats`. Output is OpenMetrics text (`# EOF` terminated), which
//! Prometheus negotiates.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::broker::Broker;
use crate::plugin::PluginStatus;
use crate::queue::{Queue, QueueCounts};
use crate::stats::{MessageStats, SIZE_BUCKETS};

/// The labels of a series.
type Labels<'a> = Vec<(&'static str, String)>;

/// A queue value read at scrape time: from its counts, its ready body octets, the queue.
type QueueValue<'a> = &'a dyn Fn(&QueueCounts, u64, &Queue) -> f64;

/// A plugin value read at scrape time.
type PluginValue<'a> = &'a dyn Fn(&PluginStatus) -> f64;

/// A family's name, help and how each series' value is read.
type Reading<'a, F> = (&'static str, &'static str, F);

/// Reads the broker at each scrape.
#[derive(Debug)]
struct BrokerCollector {
    broker: Arc<Broker>,
    node: String,
    started: Instant,
    per_object: bool,
}

/// Writes one family of gauges or counters.
fn family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[(Labels<'_>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let metric = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*value).encode(metric)?,
            _ => ConstGauge::new(*value).encode(metric)?,
        }
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        name,
        help,
        MetricType::Gauge,
        &[(Vec::new(), value)],
    )
}

/// Open file descriptors and their soft limit, from `/proc/self/fd` and `/proc/self/limits`.
fn fds() -> (f64, f64) {
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let max = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    (open as f64, max)
}

impl BrokerCollector {
    fn global_counters(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        s: &MessageStats,
    ) -> Result<(), std::fmt::Error> {
        let protocol = || vec![("protocol", "amqp091".to_owned())];
        let typed = || {
            vec![
                ("protocol", "amqp091".to_owned()),
                ("queue_type", "rabbit_classic_queue".to_owned()),
            ]
        };
        let deliver_get = s.deliver_get();
        let per_protocol: [(&str, &str, u64); 6] = [
            ("rabbitmq_global_messages_received", "Messages received from publishers", s.publish),
            ("rabbitmq_global_messages_received_confirm", "Messages received from publishers expecting confirms", s.received_confirm),
            ("rabbitmq_global_messages_routed", "Messages routed to one or more queues", s.routed),
            ("rabbitmq_global_messages_unroutable_dropped", "Messages published as non-mandatory into an exchange and dropped as unroutable", s.unroutable_dropped),
            ("rabbitmq_global_messages_unroutable_returned", "Messages published as mandatory into an exchange and returned to the publisher as unroutable", s.return_unroutable),
            ("rabbitmq_global_messages_confirmed", "Messages confirmed to publishers", s.confirm),
        ];
        for (name, help, v) in per_protocol {
            family(
                encoder,
                name,
                help,
                MetricType::Counter,
                &[(protocol(), v as f64)],
            )?;
        }
        let per_queue_type: [(&str, &str, u64); 8] = [
            (
                "rabbitmq_global_messages_delivered",
                "Messages delivered to consumers",
                deliver_get,
            ),
            (
                "rabbitmq_global_messages_delivered_consume_manual_ack",
                "Messages delivered to consumers with manual acknowledgements",
                s.deliver,
            ),
            (
                "rabbitmq_global_messages_delivered_consume_auto_ack",
                "Messages delivered to consumers with automatic acknowledgements",
                s.deliver_no_ack,
            ),
            (
                "rabbitmq_global_messages_delivered_get_manual_ack",
                "Messages fetched with basic.get in manual acknowledgement mode",
                s.get,
            ),
            (
                "rabbitmq_global_messages_delivered_get_auto_ack",
                "Messages fetched with basic.get in automatic acknowledgement mode",
                s.get_no_ack,
            ),
            (
                "rabbitmq_global_messages_get_empty",
                "Times basic.get found no message",
                s.get_empty,
            ),
            (
                "rabbitmq_global_messages_redelivered",
                "Messages redelivered to consumers",
                s.redeliver,
            ),
            (
                "rabbitmq_global_messages_acknowledged",
                "Messages acknowledged by consumers",
                s.ack,
            ),
        ];
        for (name, help, v) in per_queue_type {
            family(
                encoder,
                name,
                help,
                MetricType::Counter,
                &[(typed(), v as f64)],
            )?;
        }
        // rabbitmq_message_size_bytes: a histogram of published body sizes.
        let mut family = encoder.encode_descriptor(
            "rabbitmq_message_size_bytes",
            "Size of messages received from publishers",
            None,
            MetricType::Histogram,
        )?;
        let labels = [("protocol", "amqp091")];
        let mut metric = family.encode_family(&labels)?;
        // Per-bucket counts (the encoder accumulates); infinity is written as +Inf.
        let buckets: Vec<(f64, u64)> = s
            .size_buckets
            .iter()
            .enumerate()
            .map(|(i, n)| (SIZE_BUCKETS.get(i).map_or(f64::INFINITY, |b| *b as f64), *n))
            .collect();
        let count: u64 = s.size_buckets.iter().sum();
        metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            s.size_sum as f64,
            count,
            &buckets,
            None,
        )?;
        Ok(())
    }
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let b = &self.broker;
        let e = &mut encoder;
        family(
            e,
            "rabbitmq_identity_info",
            "RabbitMQ node & cluster identity info",
            MetricType::Gauge,
            &[(
                vec![
                    ("rabbitmq_node", self.node.clone()),
                    ("rabbitmq_cluster", self.node.clone()),
                    (
                        "rabbitmq_cluster_permanent_id",
                        format!("warren-{}", self.node),
                    ),
                    (
                        "rabbitmq_endpoint",
                        if self.per_object {
                            "per-object"
                        } else {
                            "aggregated"
                        }
                        .to_owned(),
                    ),
                ],
                1.0,
            )],
        )?;
        family(
            e,
            "rabbitmq_build_info",
            "RabbitMQ & Erlang/OTP version info",
            MetricType::Gauge,
            &[(
                vec![
                    (
                        "rabbitmq_version",
                        crate::management::RABBITMQ_VERSION.to_owned(),
                    ),
                    ("erlang_version", "none".to_owned()),
                    ("product_name", "Warren".to_owned()),
                    ("product_version", env!("CARGO_PKG_VERSION").to_owned()),
                    (
                        "prometheus_plugin_version",
                        env!("CARGO_PKG_VERSION").to_owned(),
                    ),
                    (
                        "prometheus_client_version",
                        "prometheus-client 0.26".to_owned(),
                    ),
                ],
                1.0,
            )],
        )?;
        let conns = b.connection_table.list();
        let channels: Vec<_> = conns.iter().flat_map(|c| c.channel_list()).collect();
        let consumers: usize = channels.iter().map(|c| c.consumer_list().len()).sum();
        let publishers = channels
            .iter()
            .filter(|c| c.stats.snapshot().publish > 0)
            .count();
        let vhosts = b.vhost_list();
        // Each node reports the queues homed on it, as each RabbitMQ node does (dashboards sum over
        // nodes): a cluster node's proxies of other nodes' queues are theirs to report, and the
        // quorum queues are reported by their leader.
        // The quorum group's status, when this node leads it.
        let quorum = b.cluster.get().and_then(|c| {
            let status = c.quorum.status();
            (status.1 == Some(c.me())).then_some(status)
        });
        let leads_quorum = quorum.is_some();
        let queues: Vec<(String, Arc<crate::queue::Queue>)> = vhosts
            .iter()
            .flat_map(|v| {
                v.queue_list()
                    .into_iter()
                    .filter(|q| q.home().is_none() && (!q.is_replicated() || leads_quorum))
                    .map(|q| (v.name.clone(), q))
            })
            .collect();
        gauge(
            e,
            "rabbitmq_connections",
            "Connections currently open",
            conns.len() as f64,
        )?;
        gauge(
            e,
            "rabbitmq_channels",
            "Channels currently open",
            channels.len() as f64,
        )?;
        gauge(
            e,
            "rabbitmq_consumers",
            "Consumers currently connected",
            consumers as f64,
        )?;
        gauge(
            e,
            "rabbitmq_queues",
            "Queues available",
            queues.len() as f64,
        )?;
        let proto = || vec![("protocol", "amqp091".to_owned())];
        family(
            e,
            "rabbitmq_global_consumers",
            "Current number of consumers",
            MetricType::Gauge,
            &[(proto(), consumers as f64)],
        )?;
        family(
            e,
            "rabbitmq_global_publishers",
            "Current number of publishers",
            MetricType::Gauge,
            &[(proto(), publishers as f64)],
        )?;
        let lc = &b.connection_table.lifecycle;
        let load =
            |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let counter = |e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64| {
            family(e, name, help, MetricType::Counter, &[(Vec::new(), v)])
        };
        counter(
            e,
            "rabbitmq_connections_opened",
            "Total number of connections opened",
            load(&lc.connections_opened),
        )?;
        counter(
            e,
            "rabbitmq_connections_closed",
            "Total number of connections closed or terminated",
            load(&lc.connections_closed),
        )?;
        counter(
            e,
            "rabbitmq_channels_opened",
            "Total number of channels opened",
            load(&lc.channels_opened),
        )?;
        counter(
            e,
            "rabbitmq_channels_closed",
            "Total number of channels closed",
            load(&lc.channels_closed),
        )?;
        let sum = |f: fn(&crate::vhost::QueueCounters) -> &std::sync::atomic::AtomicU64| {
            vhosts.iter().map(|v| load(f(&v.queue_counts))).sum::<f64>()
        };
        counter(
            e,
            "rabbitmq_queues_declared",
            "Total number of queues declared",
            sum(|c| &c.declared),
        )?;
        counter(
            e,
            "rabbitmq_queues_created",
            "Total number of queues created",
            sum(|c| &c.created),
        )?;
        counter(
            e,
            "rabbitmq_queues_deleted",
            "Total number of queues deleted",
            sum(|c| &c.deleted),
        )?;
        // Queue gauges: summed here, per queue below on the per-object endpoint.
        let counts: Vec<(
            String,
            &Arc<crate::queue::Queue>,
            crate::queue::QueueCounts,
            u64,
        )> = queues
            .iter()
            .map(|(v, q)| (v.clone(), q, q.counts(), q.usage().0))
            .collect();
        let per_queue = |value: &dyn Fn(
            &crate::queue::QueueCounts,
            u64,
            &crate::queue::Queue,
        ) -> f64|
         -> Vec<(Labels<'_>, f64)> {
            if self.per_object {
                counts
                    .iter()
                    .map(|(v, q, c, bytes)| {
                        (
                            vec![("vhost", v.clone()), ("queue", q.name.as_str().to_owned())],
                            value(c, *bytes, q),
                        )
                    })
                    .collect()
            } else {
                vec![(
                    Vec::new(),
                    counts
                        .iter()
                        .map(|(_, q, c, bytes)| value(c, *bytes, q))
                        .sum(),
                )]
            }
        };
        let queue_gauges: [Reading<'_, QueueValue<'_>>; 6] = [
            (
                "rabbitmq_queue_messages_ready",
                "Messages ready to be delivered to consumers",
                &|c, _, _| f64::from(c.messages),
            ),
            (
                "rabbitmq_queue_messages_unacked",
                "Messages delivered to consumers but not yet acknowledged",
                &|c, _, _| f64::from(c.unacked),
            ),
            (
                "rabbitmq_queue_messages",
                "Sum of ready and unacknowledged messages - total queue depth",
                &|c, _, _| f64::from(c.messages) + f64::from(c.unacked),
            ),
            (
                "rabbitmq_queue_messages_bytes",
                "Size in bytes of ready messages (bodies)",
                &|_, bytes, _| bytes as f64,
            ),
            (
                "rabbitmq_queue_messages_ready_bytes",
                "Size in bytes of ready messages",
                &|_, bytes, _| bytes as f64,
            ),
            (
                "rabbitmq_queue_consumers",
                "Consumers on a queue",
                &|c, _, _| f64::from(c.consumers),
            ),
        ];
        for (name, help, value) in queue_gauges {
            family(e, name, help, MetricType::Gauge, &per_queue(value))?;
        }
        // rabbitmq_prometheus's Raft metrics of the quorum queues (one group serves them all here,
        // so each queue shows the group's figures).
        if let Some((_, _, commit, term)) = quorum {
            let raft: [(&str, &str, MetricType, f64); 2] = [
                (
                    "rabbitmq_raft_term",
                    "Current Raft term number",
                    MetricType::Counter,
                    term as f64,
                ),
                (
                    "rabbitmq_raft_log_commit_index",
                    "Raft log commit index",
                    MetricType::Gauge,
                    commit as f64,
                ),
            ];
            for (name, help, kind, value) in raft {
                let rows: Vec<(Labels<'_>, f64)> = counts
                    .iter()
                    .filter(|(_, q, _, _)| q.is_replicated())
                    .map(|(v, q, _, _)| {
                        (
                            vec![("vhost", v.clone()), ("queue", q.name.as_str().to_owned())],
                            value,
                        )
                    })
                    .collect();
                if !rows.is_empty() && self.per_object {
                    family(e, name, help, kind, &rows)?;
                }
            }
        }
        let queue_counters: [Reading<'_, QueueValue<'_>>; 3] = [
            (
                "rabbitmq_queue_messages_published",
                "Total number of messages published to queues",
                &|_, _, q| q.stats().snapshot().publish as f64,
            ),
            (
                "rabbitmq_queue_messages_delivered",
                "Total number of messages delivered to consumers",
                &|_, _, q| q.stats().snapshot().deliver_get() as f64,
            ),
            (
                "rabbitmq_queue_messages_acked",
                "Total number of messages acknowledged by consumers",
                &|_, _, q| q.stats().snapshot().ack as f64,
            ),
        ];
        for (name, help, value) in queue_counters {
            family(e, name, help, MetricType::Counter, &per_queue(value))?;
        }
        self.global_counters(e, &b.message_stats(None))?;
        let alarms = *b.alarms.borrow();
        gauge(
            e,
            "rabbitmq_alarms_memory_used_watermark",
            "is set to 1 when the memory alarm is in effect",
            f64::from(u8::from(alarms.memory)),
        )?;
        gauge(
            e,
            "rabbitmq_alarms_free_disk_space_watermark",
            "is set to 1 when the free disk space alarm is in effect",
            f64::from(u8::from(alarms.disk)),
        )?;
        gauge(
            e,
            "rabbitmq_process_resident_memory_bytes",
            "Memory used in bytes",
            crate::memory::resident_bytes().unwrap_or(0) as f64,
        )?;
        gauge(
            e,
            "rabbitmq_resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            b.alarm_limits.process_bytes as f64,
        )?;
        let disk = fs4::available_space(&b.alarm_limits.disk_path).unwrap_or(0);
        gauge(
            e,
            "rabbitmq_disk_space_available_bytes",
            "Disk space available in bytes",
            disk as f64,
        )?;
        gauge(
            e,
            "rabbitmq_disk_space_available_limit_bytes",
            "Free disk space low watermark in bytes",
            b.alarm_limits.disk_free_bytes as f64,
        )?;
        let (open, max) = fds();
        gauge(
            e,
            "rabbitmq_process_open_fds",
            "Open file descriptors",
            open,
        )?;
        gauge(
            e,
            "rabbitmq_process_max_fds",
            "Open file descriptors limit",
            max,
        )?;
        gauge(
            e,
            "rabbitmq_erlang_uptime_seconds",
            "Node uptime",
            self.started.elapsed().as_secs_f64(),
        )?;
        self.plugins(e)
    }
}

impl BrokerCollector {
    /// `warren_plugin_*`: each plugin's calls, faults, reloads, memory and state.
    fn plugins(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let plugins = self.broker.plugins.snapshot();
        let labels = |p: &crate::plugin::PluginStatus| {
            vec![
                ("plugin", p.name.clone()),
                ("kind", crate::management::kind_name(p.kind).to_owned()),
            ]
        };
        let series = |f: &dyn Fn(&crate::plugin::PluginStatus) -> f64| -> Vec<(Labels<'_>, f64)> {
            plugins.iter().map(|p| (labels(p), f(p))).collect()
        };
        let counters: [Reading<'_, PluginValue<'_>>; 5] = [
            ("warren_plugin_calls", "Calls into the plugin", &|p| {
                p.calls as f64
            }),
            ("warren_plugin_traps", "Calls that trapped", &|p| {
                p.traps as f64
            }),
            (
                "warren_plugin_timeouts",
                "Calls stopped at the call deadline",
                &|p| p.timeouts as f64,
            ),
            (
                "warren_plugin_contract_breaches",
                "Answers that broke the WIT contract",
                &|p| p.breaches as f64,
            ),
            (
                "warren_plugin_reloads",
                "Times the plugin file was loaded again",
                &|p| p.reloads as f64,
            ),
        ];
        for (name, help, f) in counters {
            family(e, name, help, MetricType::Counter, &series(f))?;
        }
        let gauges: [Reading<'_, PluginValue<'_>>; 4] = [
            (
                "warren_plugin_memory_bytes",
                "Linear memory of the plugin's instances",
                &|p| p.memory as f64,
            ),
            (
                "warren_plugin_memory_cap_bytes",
                "The plugin's memory cap",
                &|p| p.memory_cap as f64,
            ),
            (
                "warren_plugin_entities_quarantined",
                "Entities of the plugin in quarantine",
                &|p| p.entities_quarantined as f64,
            ),
            (
                "warren_plugin_loaded",
                "1 when the plugin is loaded and not quarantined",
                &|p| f64::from(u8::from(p.state == "loaded")),
            ),
        ];
        for (name, help, f) in gauges {
            family(e, name, help, MetricType::Gauge, &series(f))?;
        }
        Ok(())
    }
}

/// What a handler reads: one registry per endpoint.
#[derive(Debug)]
struct Endpoints {
    aggregated: Registry,
    per_object: Registry,
}

fn render(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The routes over `broker`; `node` is the node name the management API reports too.
pub fn router(broker: Arc<Broker>, node: String) -> Router {
    let started = Instant::now();
    let collector = |per_object| BrokerCollector {
        broker: Arc::clone(&broker),
        node: node.clone(),
        started,
        per_object,
    };
    let mut aggregated = Registry::default();
    aggregated.register_collector(Box::new(collector(false)));
    let mut per_object = Registry::default();
    per_object.register_collector(Box::new(collector(true)));
    let endpoints = Arc::new(Endpoints {
        aggregated,
        per_object,
    });
    Router::new()
        .route(
            "/metrics",
            get(|State(e): State<Arc<Endpoints>>| async move { render(&e.aggregated) }),
        )
        .route(
            "/metrics/per-object",
            get(|State(e): State<Arc<Endpoints>>| async move { render(&e.per_object) }),
        )
        .with_state(endpoints)
}

/// Serves the metrics on `listener` until the process ends.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    node: String,
) -> std::io::Result<()> {
    axum::serve(listener, router(broker, node)).await
}
