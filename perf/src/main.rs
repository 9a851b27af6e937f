//! `warren-perf`: an AMQP 0-9-1 load generator with RabbitMQ PerfTest's vocabulary (producers,
//! consumers, queue, exchange, routing key, size, rate, time, confirm window, persistent, qos, auto-ack,
//! multi-ack), for comparing Warren and RabbitMQ on the same machine.
//!
//! A full client library tops out near 2× RabbitMQ on this hardware (`../shared/DESIGN.md` §3), so producers write
//! pre-encoded publish frames in large batches and consumers scan deliveries with a minimal frame
//! parser. `warren-perf sink` is a trivial AMQP server that accepts publishes and discards them: running
//! the producer side against it shows the generator's own ceiling.

mod client;
mod sink;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "warren-perf",
    version,
    about = "AMQP 0-9-1 load generator (PerfTest vocabulary)",
    // `-h` is the broker address, as in PerfTest; help is `--help` only.
    disable_help_flag = true
)]
struct Cli {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a trivial AMQP server that discards publishes (confirming them), to measure the generator.
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:5699")]
        listen: String,
    },
    /// Open idle connections (for memory per connection), print `ready N` once they are all open, and
    /// hold them until stdin closes.
    Idle {
        /// Broker address HOST:PORT.
        #[arg(long = "uri", default_value = "127.0.0.1:5672")]
        addr: String,
        /// Number of connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Open channel 1 on each connection.
        #[arg(long)]
        channel: bool,
    },
}

/// A load scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Broker address HOST:PORT.
    #[arg(long = "uri", short = 'h', default_value = "127.0.0.1:5672")]
    pub addr: String,
    /// Number of producers (one connection each).
    #[arg(short = 'x', long, default_value_t = 1)]
    pub producers: usize,
    /// Number of consumers (one connection each).
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: usize,
    /// Queue name; with several queues, `-{n}` is appended.
    #[arg(short = 'u', long, default_value = "perf")]
    pub queue: String,
    /// Number of queues; producer i publishes to queue i mod n, consumer j consumes queue j mod n.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Exchange name (empty: the default exchange, routing key = queue name).
    #[arg(short = 'e', long, default_value = "")]
    pub exchange: String,
    /// Exchange type when an exchange is named.
    #[arg(short = 't', long = "type", default_value = "direct")]
    pub exchange_type: String,
    /// An exchange.declare argument NAME=VALUE (repeatable; the value is sent as a string), e.g.
    /// `x-delayed-type=direct`.
    #[arg(long = "exchange-arg")]
    pub exchange_args: Vec<String>,
    /// A queue.declare argument NAME=VALUE (repeatable; an integer value is sent as a signed 64-bit
    /// integer, anything else as a string), e.g. `x-queue-type=quorum` (with `-f`: durable).
    #[arg(long = "queue-arg")]
    pub queue_args: Vec<String>,
    /// A header every message carries, NAME=VALUE (repeatable; an integer value is sent as a signed
    /// 64-bit integer, anything else as a string), e.g. `x-delay=0`.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Routing key (default: the queue name). `random` picks a random dot-separated 3-word key per
    /// message from `--keys` distinct keys.
    #[arg(short = 'k', long)]
    pub routing_key: Option<String>,
    /// Extra bindings per queue (topic scenario: `--bindings 10000` binds random patterns; one matches).
    #[arg(long, default_value_t = 0)]
    pub bindings: usize,
    /// Binding key of every queue's binding (default: the routing key, or the queue name); e.g. `1` for
    /// an `x-consistent-hash` weight.
    #[arg(long)]
    pub binding_key: Option<String>,
    /// Number of distinct random routing keys with `-k random`.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Extra queues bound to a fanout exchange (fanout scenario); messages are consumed from the first.
    #[arg(long, default_value_t = 0)]
    pub fanout_queues: usize,
    /// A fixed body for every message (e.g. a JSON document for a plugin that routes on the body)
    /// instead of the timestamped one; `--size` is then ignored and latency is not measured.
    #[arg(long)]
    pub body: Option<String>,
    /// Message body size in bytes (at least 16: send timestamp and sequence).
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// Publish rate limit per producer, messages/s (0 = unlimited).
    #[arg(short = 'r', long, default_value_t = 0)]
    pub rate: u64,
    /// Run time in seconds.
    #[arg(short = 'z', long, default_value_t = 10)]
    pub time: u64,
    /// Stop each producer after this many messages (0 = no limit).
    #[arg(short = 'C', long = "pmessages", default_value_t = 0)]
    pub pmessages: u64,
    /// Publisher confirm window (0 = no confirms).
    #[arg(short = 'c', long, default_value_t = 0)]
    pub confirm: u64,
    /// Publish persistent messages (delivery_mode 2) to durable queues.
    #[arg(short = 'f', long)]
    pub persistent: bool,
    /// Consumer prefetch (basic.qos).
    #[arg(short = 'q', long, default_value_t = 0)]
    pub qos: u16,
    /// Auto-ack consumers (no acks).
    #[arg(short = 'a', long = "autoack")]
    pub auto_ack: bool,
    /// Ack with multiple=true every N deliveries (manual ack mode).
    #[arg(short = 'A', long = "multi-ack-every", default_value_t = 1)]
    pub multi_ack_every: u64,
    /// Only set up queues and publish (no consumers), e.g. to fill a queue for a memory test.
    #[arg(long)]
    pub no_consume: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Consumers check that the sequence numbers in the bodies (one producer's, from 1) arrive in
    /// order, each once; the summary counts the deliveries that did not (`out_of_order`).
    #[arg(long)]
    pub check_order: bool,
    /// Consume a backlog left by an earlier run: the queue is not purged at set-up, and the run ends
    /// once this many messages were delivered (or the time is up).
    #[arg(long, default_value_t = 0)]
    pub drain: u64,
    /// Print a line per second.
    #[arg(long)]
    pub verbose: bool,
}

/// Shared counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages written to the socket.
    pub published: AtomicU64,
    /// Publishes confirmed.
    pub confirmed: AtomicU64,
    /// Deliveries received.
    pub consumed: AtomicU64,
    /// Deliveries whose body sequence number was not the next expected (`--check-order`).
    pub out_of_order: AtomicU64,
    /// Set when the run should end.
    pub stop: AtomicBool,
    /// Publisher confirm latencies (from the write of a publish to its confirm), microseconds.
    pub confirm_latency: std::sync::Mutex<Option<Histogram<u64>>>,
}

/// The run's summary.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Seconds measured.
    pub seconds: f64,
    /// Publishes per second.
    pub publish_rate: f64,
    /// Confirms per second.
    pub confirm_rate: f64,
    /// Deliveries per second.
    pub consume_rate: f64,
    /// Latency percentiles, microseconds.
    pub latency_us: Latency,
    /// Publisher confirm latency percentiles, microseconds (with `--confirm`).
    pub confirm_latency_us: Latency,
    /// Deliveries out of order or repeated (`--check-order`; 0 otherwise).
    pub out_of_order: u64,
    /// Deliveries received in all.
    pub consumed: u64,
}

/// End-to-end latency percentiles in microseconds.
#[derive(Debug, Serialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// The largest.
    pub max: u64,
    /// Samples.
    pub samples: u64,
}

/// Opens `n` connections (50 handshakes at a time), reports them open, holds them until stdin closes.
async fn idle(addr: &str, n: usize, channel: bool) -> anyhow::Result<()> {
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        let mut handshakes = tokio::task::JoinSet::new();
        for _ in 0..(n - conns.len()).min(50) {
            let addr = addr.to_owned();
            handshakes.spawn(async move { client::Conn::connect(&addr, channel, 4096).await });
        }
        while let Some(opened) = handshakes.join_next().await {
            conns.push(opened??);
        }
    }
    println!("ready {}", conns.len());
    tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    drop(conns);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::Sink { listen }) => runtime.block_on(sink::run(&listen)),
        Some(Command::Idle {
            addr,
            connections,
            channel,
        }) => runtime.block_on(idle(&addr, connections, channel)),
        None => {
            let summary = runtime.block_on(run(cli.run.clone()))?;
            if cli.run.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "publish {:.0} msg/s, confirm {:.0} msg/s, consume {:.0} msg/s, latency p50 {} us, p99 {} us, p99.9 {} us ({} samples)",
                    summary.publish_rate,
                    summary.confirm_rate,
                    summary.consume_rate,
                    summary.latency_us.p50,
                    summary.latency_us.p99,
                    summary.latency_us.p999,
                    summary.latency_us.samples
                );
            }
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        args.size >= 16 || args.body.is_some(),
        "--size must be at least 16 (timestamp and sequence)"
    );
    let args = Arc::new(args);
    client::setup(&args)
        .await
        .context("declaring the topology")?;
    let stats = Arc::new(Stats::default());
    let epoch = Instant::now();
    let mut consumers = Vec::new();
    if !args.no_consume {
        for i in 0..args.consumers {
            let (args, stats) = (Arc::clone(&args), Arc::clone(&stats));
            consumers.push(tokio::spawn(async move {
                client::consume(args, i, stats, epoch).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // consumers subscribed before publishing
    }
    let mut producers = Vec::new();
    let start = Instant::now();
    for i in 0..args.producers {
        let (args, stats) = (Arc::clone(&args), Arc::clone(&stats));
        producers.push(tokio::spawn(async move {
            client::produce(args, i, stats, epoch).await
        }));
    }
    let mut last = (0, 0, 0);
    for _ in 0..args.time {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = (
            stats.published.load(Ordering::Relaxed),
            stats.confirmed.load(Ordering::Relaxed),
            stats.consumed.load(Ordering::Relaxed),
        );
        if args.verbose {
            eprintln!(
                "sent {} msg/s, confirmed {} msg/s, received {} msg/s",
                now.0 - last.0,
                now.1 - last.1,
                now.2 - last.2
            );
        }
        last = now;
        if args.drain > 0 {
            if now.2 >= args.drain {
                break;
            }
        } else if producers.iter().all(|p| p.is_finished()) && (args.no_consume || now.2 >= now.0) {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    stats.stop.store(true, Ordering::Relaxed);
    let published = stats.published.load(Ordering::Relaxed);
    let confirmed = stats.confirmed.load(Ordering::Relaxed);
    let consumed = stats.consumed.load(Ordering::Relaxed);
    for p in producers {
        p.await.context("producer task")??;
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    for c in consumers {
        if let Ok(Ok(h)) = tokio::time::timeout(Duration::from_secs(5), c)
            .await
            .context("consumer task")?
        {
            histogram.add(h)?;
        }
    }
    Ok(Summary {
        seconds,
        publish_rate: published as f64 / seconds,
        confirm_rate: confirmed as f64 / seconds,
        consume_rate: consumed as f64 / seconds,
        latency_us: Latency {
            p50: histogram.value_at_quantile(0.5),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            samples: histogram.len(),
        },
        confirm_latency_us: stats
            .confirm_latency
            .lock()
            .ok()
            .and_then(|h| {
                h.as_ref().map(|h| Latency {
                    p50: h.value_at_quantile(0.5),
                    p99: h.value_at_quantile(0.99),
                    p999: h.value_at_quantile(0.999),
                    max: h.max(),
                    samples: h.len(),
                })
            })
            .unwrap_or_default(),
        out_of_order: stats.out_of_order.load(Ordering::Relaxed),
        consumed,
    })
}
