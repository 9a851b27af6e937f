//! Isolation of plugin calls from the broker's I/O threads: while a plugin exchange loops until its
//! deadline on every call, a second connection publishing to a native exchange keeps its latency and
//! its throughput. Runs the real binary (the broker's multi-threaded runtime, as deployed), alone in
//! its own test binary so that no other test shares the two cores during the measurement.

mod common;

use std::time::{Duration, Instant};

use common::process::Process;
use common::PluginDir;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use warren_tests::plugins;

/// The probe publishes once per this interval (the 5 ms).
const PACE: Duration = Duration::from_millis(5);
/// How long each probe run lasts.
const WINDOW: Duration = Duration::from_millis(1500);

/// What one probe run saw: confirmed publishes and the worst publish-to-confirm latency.
struct Probe {
    confirmed: u32,
    worst: Duration,
    p99: Duration,
}

/// Publishes to `amq.direct` (a native exchange, bound to a queue) every [`PACE`] for [`WINDOW`],
/// waiting for each confirm: the latency of each is publish to confirm.
async fn probe(ch: &Channel) -> Probe {
    let mut latencies = Vec::new();
    let end = Instant::now() + WINDOW;
    while Instant::now() < end {
        let started = Instant::now();
        let confirm = ch
            .basic_publish(
                "amq.direct".into(),
                "probe".into(),
                BasicPublishOptions::default(),
                b"probe",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "probe message confirmed");
        latencies.push(started.elapsed());
        tokio::time::sleep_until((started + PACE).into()).await;
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    Probe {
        confirmed: u32::try_from(latencies.len()).expect("count"),
        worst: *latencies.last().expect("some"),
        p99,
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The bound: with a plugin exchange timing out on every call, a connection publishing to a
/// native exchange every 5 ms sees latencies within 20 ms (asserted on the 99th percentile; the
/// single worst within 50 ms, as one scheduling hiccup on this shared 2-core machine reached 22 ms)
/// and keeps ≥ 90 % of its undisturbed throughput. Before plugin calls were isolated the same probe
/// saw 90–100 ms stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_does_not_stall_other_connections() {
    let dir = PluginDir::with("isolation", &[(plugins::FAULTY, "faulty.wasm")]);
    let data = std::env::temp_dir().join(format!("warren-isolation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let log = data.with_extension("log");
    let p = Process::start_logged(&data, &dir.0, &log);

    let looping = p.connect().await;
    let lch = looping.create_channel().await.expect("channel");
    let mut loop_args = FieldTable::default();
    loop_args.insert("fault".into(), text("loop"));
    lch.exchange_declare(
        "looping".into(),
        ExchangeKind::Custom("x-faulty".into()),
        ExchangeDeclareOptions::default(),
        loop_args,
    )
    .await
    .expect("declare the looping exchange");

    let conn = p.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch.queue_declare(
        "probe-q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    ch.queue_bind(
        "probe-q".into(),
        "amq.direct".into(),
        "probe".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");

    let undisturbed = probe(&ch).await;

    // Each of these loops until the call deadline (100 ms): more than the window's worth. Fewer than
    // the 20 failures that quarantine an exchange, so the plugin is called for every one. Two
    // connections publish them, so one of them also waits for the exchange the other is in.
    let second = p.connect().await;
    let sch = second.create_channel().await.expect("channel");
    let calls = 18;
    for i in 0..calls {
        let publisher = if i % 2 == 0 { &lch } else { &sch };
        publisher
            .basic_publish(
                "looping".into(),
                "fail".into(),
                BasicPublishOptions::default(),
                b"loops",
                BasicProperties::default(),
            )
            .await
            .expect("publish to the looping exchange");
    }
    let disturbed = probe(&ch).await;

    // The plugin was looping throughout the window: its timeouts are in the log.
    let deadline = Instant::now() + Duration::from_secs(10);
    let timeouts = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let n = text
            .lines()
            .filter(|l| l.contains("plugin call failed") && l.contains("call timed out"))
            .count();
        if n >= calls || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (run, probe) in [
        ("undisturbed", &undisturbed),
        ("with a looping plugin", &disturbed),
    ] {
        println!(
            "{run}: {} confirmed, p99 {:?}, worst {:?}",
            probe.confirmed, probe.p99, probe.worst
        );
    }
    println!("{timeouts} looping calls timed out");
    assert_eq!(timeouts, calls, "every looping call timed out");
    // A probe that waited behind a looping call would take up to the call deadline (100 ms).
    assert!(
        disturbed.p99 <= Duration::from_millis(20),
        "p99 probe latency {:?} while a plugin loops (undisturbed {:?})",
        disturbed.p99,
        undisturbed.p99
    );
    assert!(
        disturbed.worst <= Duration::from_millis(50),
        "worst probe latency {:?} while a plugin loops (undisturbed {:?})",
        disturbed.worst,
        undisturbed.worst
    );
    assert!(
        f64::from(disturbed.confirmed) >= 0.9 * f64::from(undisturbed.confirmed),
        "probe throughput {} with a looping plugin vs {} without",
        disturbed.confirmed,
        undisturbed.confirmed
    );
    drop(p);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(&log);
}
