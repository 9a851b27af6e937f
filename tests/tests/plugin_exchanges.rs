//! Plugin exchange types with lapin: `x-consistent-hash` and `x-random` built from `plugins/` as real
//! components, loaded from a plugin directory; bad declares and bindings; removal and return of a
//! plugin file; faulty plugins (endless loop, panic, 1 GiB allocation) contained with the failure
//! policy; plugin exchanges across a restart.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use warren::config::Config;
use warren_tests::plugins;

fn kind(name: &str) -> ExchangeKind {
    ExchangeKind::Custom(name.into())
}

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

async fn declare_exchange(ch: &Channel, name: &str, kind_name: &str, arguments: FieldTable) {
    ch.exchange_declare(
        name.into(),
        kind(kind_name),
        ExchangeDeclareOptions::default(),
        arguments,
    )
    .await
    .expect("exchange.declare");
}

/// Declares `queues` (exclusive to nothing; auto-named by the caller) and binds each with `key`.
async fn bind_queues(ch: &Channel, exchange: &str, queues: &[&str], key: &str) {
    for q in queues {
        ch.queue_declare(
            (*q).into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        ch.queue_bind(
            (*q).into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
    }
}

/// Waits until the queues hold `total` messages in all; returns each one's count.
async fn counts_when_total(ch: &Channel, queues: &[&str], total: u32) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut counts = Vec::new();
        for q in queues {
            counts.push(message_count(ch, q).await);
        }
        if counts.iter().sum::<u32>() >= total || Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn random_key() -> String {
    // UUID-shaped random keys, as in the RabbitMQ reports of uneven spread.
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Publishes `n` messages with random routing keys and returns each queue's share.
async fn spread(ch: &Channel, exchange: &str, queues: &[&str], n: u32) -> Vec<u32> {
    for _ in 0..n {
        ch.basic_publish(
            exchange.into(),
            random_key().as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let counts = counts_when_total(ch, queues, n).await;
    assert_eq!(
        counts.iter().sum::<u32>(),
        n,
        "every message routed to exactly one queue"
    );
    counts
}

#[tokio::test]
async fn consistent_hash_spreads_random_keys_evenly() {
    let dir = PluginDir::with("chash", &[(plugins::X_CONSISTENT_HASH, "chash.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    for (n_queues, messages) in [(10usize, 100_000u32), (3, 30_000), (2, 20_000)] {
        let x = format!("chx-{n_queues}");
        declare_exchange(&ch, &x, "x-consistent-hash", FieldTable::default()).await;
        let names: Vec<String> = (0..n_queues).map(|i| format!("{x}-q{i}")).collect();
        let queues: Vec<&str> = names.iter().map(String::as_str).collect();
        bind_queues(&ch, &x, &queues, "1").await;
        let counts = spread(&ch, &x, &queues, messages).await;
        let expected = f64::from(messages) / n_queues as f64;
        for (q, c) in queues.iter().zip(&counts) {
            let deviation = (f64::from(*c) - expected) / expected;
            assert!(
                deviation.abs() <= 0.05,
                "{q}: {c} messages, {:.2} % off the even share {expected} (counts {counts:?})",
                deviation * 100.0
            );
        }
        println!("{n_queues} queues, {messages} random keys: {counts:?}");
    }
}

#[tokio::test]
async fn consistent_hash_weights_keys_and_headers() {
    let dir = PluginDir::with("chash-w", &[(plugins::X_CONSISTENT_HASH, "chash.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;

    // Weight 1 vs 2: the second queue gets about twice as many.
    declare_exchange(&ch, "w", "x-consistent-hash", FieldTable::default()).await;
    bind_queues(&ch, "w", &["w1"], "1").await;
    bind_queues(&ch, "w", &["w2"], "2").await;
    let counts = spread(&ch, "w", &["w1", "w2"], 9_000).await;
    let ratio = f64::from(counts[1]) / f64::from(counts[0]);
    assert!((1.8..=2.2).contains(&ratio), "weight 2:1 gave {counts:?}");

    // The same routing key always lands in the same queue.
    declare_exchange(&ch, "same", "x-consistent-hash", FieldTable::default()).await;
    let qs = ["s0", "s1", "s2", "s3"];
    bind_queues(&ch, "same", &qs, "10").await;
    for _ in 0..40 {
        ch.basic_publish(
            "same".into(),
            "order-42".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let counts = counts_when_total(&ch, &qs, 40).await;
    assert_eq!(counts.iter().filter(|c| **c > 0).count(), 1, "{counts:?}");
    assert_eq!(counts.iter().sum::<u32>(), 40);

    // hash-header: the header's value decides; a message without the header goes nowhere.
    declare_exchange(
        &ch,
        "hh",
        "x-consistent-hash",
        args(&[("hash-header", text("customer"))]),
    )
    .await;
    let hq = ["h0", "h1", "h2"];
    bind_queues(&ch, "hh", &hq, "1").await;
    for i in 0..300 {
        let mut headers = FieldTable::default();
        headers.insert("customer".into(), text(&format!("c{}", i % 3)));
        ch.basic_publish(
            "hh".into(),
            random_key().as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("publish");
    }
    ch.basic_publish(
        "hh".into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"no header",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let counts = counts_when_total(&ch, &hq, 300).await;
    assert_eq!(counts.iter().sum::<u32>(), 300, "{counts:?}");
    assert!(
        counts.iter().all(|c| c % 100 == 0),
        "each customer's messages stay together: {counts:?}"
    );

    // hash-property = message_id.
    declare_exchange(
        &ch,
        "hp",
        "x-consistent-hash",
        args(&[("hash-property", text("message_id"))]),
    )
    .await;
    let pq = ["p0", "p1"];
    bind_queues(&ch, "hp", &pq, "1").await;
    for _ in 0..20 {
        ch.basic_publish(
            "hp".into(),
            random_key().as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_message_id("m-1".into()),
        )
        .await
        .expect("publish");
    }
    let counts = counts_when_total(&ch, &pq, 20).await;
    assert!(counts.contains(&20), "{counts:?}");
}

#[tokio::test]
async fn random_exchange_routes_each_message_to_one_queue() {
    let dir = PluginDir::with("random", &[(plugins::X_RANDOM, "random.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "rnd", "x-random", FieldTable::default()).await;
    let qs = ["r0", "r1", "r2"];
    bind_queues(&ch, "rnd", &qs, "ignored").await;
    for i in 0..3_000 {
        ch.basic_publish(
            "rnd".into(),
            format!("k{}", i % 2).as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let counts = counts_when_total(&ch, &qs, 3_000).await;
    assert_eq!(counts.iter().sum::<u32>(), 3_000, "{counts:?}");
    for c in &counts {
        assert!((800..=1200).contains(c), "uneven random spread {counts:?}");
    }
    // Consume through the plugin exchange like any other.
    let mut consumer = ch
        .basic_consume(
            "r0".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let d = next(&mut consumer).await;
    assert_eq!(d.exchange.as_str(), "rnd");
    d.ack(BasicAckOptions::default()).await.expect("ack");
}

/// Each x-random exchange draws its own sequence, seeded from the host's randomness: two exchanges
/// with the same bindings (the same plugin, one instance each) do not route 64 messages alike. With a
/// fixed seed they would, every time and after every restart.
#[tokio::test]
async fn random_exchanges_draw_different_sequences() {
    let dir = PluginDir::with("random-seed", &[(plugins::X_RANDOM, "x-random.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let mut patterns = Vec::new();
    for x in ["rnd-a", "rnd-b"] {
        declare_exchange(&ch, x, "x-random", FieldTable::default()).await;
        let qs = [format!("{x}-0"), format!("{x}-1")];
        let qs: Vec<&str> = qs.iter().map(String::as_str).collect();
        bind_queues(&ch, x, &qs, "").await;
        for i in 0..64u8 {
            ch.basic_publish(
                x.into(),
                "k".into(),
                BasicPublishOptions::default(),
                &[i],
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        }
        counts_when_total(&ch, &qs, 64).await;
        // Bit i set: message i went to the second queue.
        let mut pattern = 0u64;
        while let Some(m) = ch
            .basic_get(qs[1].into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            pattern |= 1 << m.delivery.data[0];
        }
        patterns.push(pattern);
    }
    assert_ne!(
        patterns[0], patterns[1],
        "two exchanges replayed one random sequence"
    );
}

#[tokio::test]
async fn bad_declares_and_bindings_are_refused() {
    let dir = PluginDir::with("bad", &[(plugins::X_CONSISTENT_HASH, "chash.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;

    // Conflicting arguments: 406 with the plugin's reason; the channel closes, the connection stays.
    let ch = channel(&conn).await;
    let text406 = expect_code(
        ch.exchange_declare(
            "both".into(),
            kind("x-consistent-hash"),
            ExchangeDeclareOptions::default(),
            args(&[
                ("hash-header", text("h")),
                ("hash-property", text("message_id")),
            ]),
        )
        .await,
        406,
    );
    assert!(text406.contains("mutually exclusive"), "{text406}");

    // A binding key that is not a weight: 406, and the exchange keeps its good bindings.
    let ch = channel(&conn).await;
    declare_exchange(&ch, "cx", "x-consistent-hash", FieldTable::default()).await;
    bind_queues(&ch, "cx", &["good"], "1").await;
    ch.queue_declare(
        "bad-q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    let reason = expect_code(
        ch.queue_bind(
            "bad-q".into(),
            "cx".into(),
            "heavy".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        406,
    );
    assert!(reason.contains("not a weight"), "{reason}");
    let ch = channel(&conn).await;
    ch.basic_publish(
        "cx".into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    assert_eq!(counts_when_total(&ch, &["good"], 1).await, [1]);

    // An unknown plugin type: 503 COMMAND_INVALID closes the connection, as in RabbitMQ.
    let err = ch
        .exchange_declare(
            "nope".into(),
            kind("x-not-loaded"),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("unknown type");
    assert_eq!(reply_code(&err), Some(503), "{err:?}");
    assert!(reply_text(&err).contains("unknown exchange type 'x-not-loaded'"));
}

/// Publishes with confirms on a fresh channel and returns whether the broker acked.
async fn confirmed(ch: &Channel, exchange: &str, key: &str, mandatory: bool) -> bool {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            b"payload",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    confirm.is_ack()
}

async fn confirm_channel(conn: &lapin::Connection) -> Channel {
    let ch = channel(conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

#[tokio::test]
async fn faulty_plugins_are_contained_with_the_failure_policy() {
    let dir = PluginDir::with(
        "faulty",
        &[
            (plugins::FAULTY, "faulty.wasm"),
            (plugins::X_RANDOM, "random.wasm"),
        ],
    );
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "healthy", "x-random", FieldTable::default()).await;
    bind_queues(&ch, "healthy", &["healthy-q"], "").await;
    ch.exchange_declare(
        "ae".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare ae");
    bind_queues(&ch, "ae", &["ae-q"], "").await;

    for fault in ["loop", "panic", "alloc"] {
        let x = format!("faulty-{fault}");
        declare_exchange(&ch, &x, "x-faulty", args(&[("fault", text(fault))])).await;
        bind_queues(&ch, &x, &[&format!("{x}-q")], "").await;
        let started = Instant::now();
        // The fault: the publisher sees a nack (unroutable by failure), not a hang or a crash.
        assert!(
            !confirmed(&ch, &x, "fail", false).await,
            "{fault}: a faulted route must be nacked"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{fault}: contained promptly ({:?})",
            started.elapsed()
        );
        // The same exchange routes again once the instance is replaced.
        assert!(
            confirmed(&ch, &x, "ok", false).await,
            "{fault}: instance replaced"
        );
        // Every other exchange is unaffected.
        assert!(confirmed(&ch, "healthy", "k", false).await);
        // With an alternate exchange the failed message goes there instead (acked).
        let with_ae = format!("{x}-ae");
        declare_exchange(
            &ch,
            &with_ae,
            "x-faulty",
            args(&[("fault", text(fault)), ("alternate-exchange", text("ae"))]),
        )
        .await;
        assert!(confirmed(&ch, &with_ae, "fail", false).await);
    }
    assert_eq!(message_count(&ch, "healthy-q").await, 3);
    assert_eq!(message_count(&ch, "ae-q").await, 3);
    for fault in ["loop", "panic", "alloc"] {
        assert_eq!(message_count(&ch, &format!("faulty-{fault}-q")).await, 1);
    }

    // Mandatory + failure: basic.return (312 NO_ROUTE) with the message, and a nack.
    let confirmation = ch
        .basic_publish(
            "faulty-panic".into(),
            "fail".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"returned",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirmation.is_nack());
    let returned = confirmation.take_message().expect("basic.return");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.data, b"returned");

    // Counted: the snapshot shows traps, timeouts and memory breaches for x-faulty.
    let status: HashMap<String, warren::plugin::PluginStatus> = b
        .broker
        .plugins
        .snapshot()
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let faulty = &status["x-faulty"];
    assert!(faulty.timeouts >= 2, "{faulty:?}");
    assert!(faulty.traps >= 3, "{faulty:?}");
    assert!(faulty.memory >= 2, "{faulty:?}");
    assert_eq!(faulty.state, "loaded");
    assert_eq!(status["x-random"].traps, 0);
}

#[tokio::test]
async fn removed_plugin_leaves_exchanges_unavailable_until_it_returns() {
    let dir = PluginDir::with("remove", &[(plugins::X_RANDOM, "random.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "rx", "x-random", FieldTable::default()).await;
    bind_queues(&ch, "rx", &["rx-q"], "").await;
    assert!(confirmed(&ch, "rx", "k", false).await);

    std::fs::remove_file(dir.path("random.wasm")).expect("remove");
    let deadline = Instant::now() + WAIT;
    while b.broker.plugins.snapshot()[0].state != "unavailable" {
        assert!(Instant::now() < deadline, "removal not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Declared exchanges stay, publishes through them fail per the policy (nack) …
    assert!(!confirmed(&ch, "rx", "k", false).await);
    ch.exchange_declare(
        "rx".into(),
        kind("x-random"),
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("still declared");
    // … and new declares of the type are refused (503 closes the connection).
    let other = connect(&b).await;
    let och = channel(&other).await;
    expect_code(
        och.exchange_declare(
            "rx2".into(),
            kind("x-random"),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        503,
    );

    // The plugin returns: the exchange routes again, with its bindings replayed.
    dir.install(plugins::X_RANDOM, "random.wasm");
    let deadline = Instant::now() + WAIT;
    loop {
        if confirmed(&ch, "rx", "k", false).await {
            break;
        }
        assert!(Instant::now() < deadline, "plugin did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(message_count(&ch, "rx-q").await, 2);
}

#[tokio::test]
async fn broken_files_are_refused_and_the_broker_keeps_serving() {
    let dir = PluginDir::with("broken", &[(plugins::X_RANDOM, "random.wasm")]);
    std::fs::write(dir.path("garbage.wasm"), b"\0asm this is not a component").expect("write");
    let full = std::fs::read(plugins::X_CONSISTENT_HASH).expect("read");
    std::fs::write(dir.path("truncated.wasm"), &full[..full.len() / 2]).expect("write");
    std::fs::copy(plugins::OTHER_WORLD, dir.path("other-world.wasm")).expect("copy");
    std::fs::copy(plugins::TRAP_ON_LOAD, dir.path("trap-on-load.wasm")).expect("copy");
    let b = start_broker_with(dir.config()).await;
    let names: Vec<String> = b
        .broker
        .plugins
        .snapshot()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["x-random"], "only the valid plugin loaded");
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "still", "x-random", FieldTable::default()).await;
    bind_queues(&ch, "still", &["still-q"], "").await;
    assert!(confirmed(&ch, "still", "k", false).await);
    // A plugin that traps while loading, copied over a loaded one, keeps the old version too.
    std::fs::copy(plugins::TRAP_ON_LOAD, dir.path("random.wasm")).expect("copy");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(confirmed(&ch, "still", "k", false).await);
    // A broken copy over a loaded plugin keeps the old version.
    std::fs::write(dir.path("random.wasm"), b"broken").expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(confirmed(&ch, "still", "k", false).await);
    assert_eq!(b.broker.plugins.snapshot()[0].state, "loaded");
}

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "warren-plugin-data-{}-{name}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn restart(dir: &PluginDir, data: &Path) -> TestBroker {
    let config = Config {
        data_dir: Some(data.to_path_buf()),
        ..dir.config()
    };
    start_broker_with(config).await
}

#[tokio::test]
async fn durable_plugin_exchanges_survive_a_restart() {
    let dir = PluginDir::with("durable", &[(plugins::X_CONSISTENT_HASH, "chash.wasm")]);
    let data = data_dir("durable");
    let b = restart(&dir, &data).await;
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        ch.exchange_declare(
            "dx".into(),
            kind("x-consistent-hash"),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args(&[("hash-header", text("h"))]),
        )
        .await
        .expect("declare");
        for q in ["d0", "d1"] {
            ch.queue_declare(
                q.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue");
            ch.queue_bind(
                q.into(),
                "dx".into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        }
        conn.close(200, "bye".into()).await.expect("close");
    }
    b.stop().await;

    let b = restart(&dir, &data).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    // The arguments came back: without the header the message routes nowhere.
    let mut headers = FieldTable::default();
    headers.insert("h".into(), text("v"));
    let ack = ch
        .basic_publish(
            "dx".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(ack.is_ack());
    assert_eq!(
        counts_when_total(&ch, &["d0", "d1"], 1)
            .await
            .iter()
            .sum::<u32>(),
        1
    );
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;

    // Restarted without the plugin: the exchange is recovered, unavailable (nack), not lost.
    std::fs::remove_file(dir.path("chash.wasm")).expect("remove");
    let b = restart(&dir, &data).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    assert!(!confirmed(&ch, "dx", "k", false).await);
    dir.install(plugins::X_CONSISTENT_HASH, "chash.wasm");
    let deadline = Instant::now() + WAIT;
    let mut headers = FieldTable::default();
    headers.insert("h".into(), text("v"));
    loop {
        let ack = ch
            .basic_publish(
                "dx".into(),
                "k".into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default().with_headers(headers.clone()),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        if ack.is_ack() {
            break;
        }
        assert!(Instant::now() < deadline, "plugin did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The earlier (transient) message did not survive the restarts; the new one is routed.
    assert_eq!(
        counts_when_total(&ch, &["d0", "d1"], 1)
            .await
            .iter()
            .sum::<u32>(),
        1
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test]
async fn a_plugin_that_keeps_failing_is_quarantined_until_its_file_changes() {
    let dir = PluginDir::with("quarantine", &[(plugins::FAULTY, "faulty.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(
        &ch,
        "q-panic",
        "x-faulty",
        args(&[("fault", text("panic"))]),
    )
    .await;
    bind_queues(&ch, "q-panic", &["q-panic-q"], "").await;
    let state = |b: &TestBroker| plugin_status(b, "x-faulty").map(|s| s.state);
    for _ in 0..warren::plugin::registry::QUARANTINE_AFTER {
        assert!(!confirmed(&ch, "q-panic", "fail", false).await);
    }
    assert_eq!(state(&b), Some("quarantined"));
    // Quarantined: even a message it would route fails fast (nack) …
    assert!(!confirmed(&ch, "q-panic", "ok", false).await);
    // … until a new version of the file is loaded.
    let mut bytes = std::fs::read(plugins::FAULTY).expect("read");
    // The same code with a custom section appended (id 0, 3 octets: name "x", payload "1"): a valid
    // component with other content, i.e. a new version of the file.
    bytes.extend_from_slice(&[0x00, 0x03, 0x01, b'x', b'1']);
    std::fs::write(dir.path("faulty.wasm"), &bytes).expect("write");
    let deadline = Instant::now() + WAIT;
    while state(&b) != Some("loaded") {
        assert!(
            Instant::now() < deadline,
            "new version not loaded: {:?}",
            state(&b)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(confirmed(&ch, "q-panic", "ok", false).await);
}

/// basic.publish + header + body frames for `body` to `exchange` under `key` on channel 1.
fn publish_frames(exchange: &str, key: &str, body: &[u8]) -> Vec<u8> {
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
    use amq_protocol::protocol::{basic, AMQPClass};
    let mut out = raw::encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: key.into(),
            ..Default::default()
        })),
    ));
    out.extend(raw::encode(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: Default::default(),
        },
    )));
    out.extend(raw::encode(&AMQPFrame::Body(1, body.to_vec())));
    out
}

/// A raw connection with channel 1 in confirm mode.
async fn raw_confirm_channel(b: &TestBroker) -> raw::Raw {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{confirm, AMQPClass};
    let mut r = raw::Raw::opened(b).await;
    r.open_channel(1).await;
    r.method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(Default::default())),
    )
    .await;
    assert!(matches!(
        r.recv().await,
        Some(AMQPFrame::Method(1, AMQPClass::Confirm(_)))
    ));
    r
}

/// Reads until the basic.ack that covers delivery tag `upto`; no nack may come first.
async fn acked_upto(r: &mut raw::Raw, upto: u64) {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{basic, AMQPClass};
    loop {
        match r.recv().await {
            Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a)))) => {
                if a.delivery_tag >= upto {
                    return;
                }
            }
            other => panic!("expected basic.ack up to {upto}, got {other:?}"),
        }
    }
}

/// Every message left in `queue`, by basic.get, as body strings in queue order.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        bodies.push(String::from_utf8(m.delivery.data.clone()).expect("utf-8"));
    }
    bodies
}

/// Publishes arriving back to back at an exchange whose plugin routes on the routing key alone are
/// routed as a batch (one `route-keys` call for many messages): the decisions equal those of one
/// message at a time, and every queue keeps publish order.
#[tokio::test]
async fn back_to_back_publishes_are_routed_in_batches_with_the_same_decisions() {
    let dir = PluginDir::with("batch", &[(plugins::X_CONSISTENT_HASH, "chash.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    let queues = ["batch-q0", "batch-q1", "batch-q2"];
    declare_exchange(&ch, "batch-x", "x-consistent-hash", FieldTable::default()).await;
    bind_queues(&ch, "batch-x", &queues, "1").await;
    let calls = |b: &TestBroker| plugin_status(b, "x-consistent-hash").map_or(0, |s| s.calls);

    // 300 publishes written at once: the broker reads them in one or a few reads.
    const N: u64 = 300;
    let mut r = raw_confirm_channel(&b).await;
    let mut frames = Vec::new();
    for i in 0..N {
        frames.extend(publish_frames(
            "batch-x",
            &format!("key-{i}"),
            format!("b{i}").as_bytes(),
        ));
    }
    let before = calls(&b);
    r.send_bytes(&frames).await;
    acked_upto(&mut r, N).await;
    let batched_calls = calls(&b) - before;
    assert!(
        batched_calls <= N / 10,
        "{N} back-to-back publishes took {batched_calls} plugin calls"
    );

    // The same keys one at a time, each confirmed before the next is sent. Binding and unbinding
    // another queue first empties the per-key cache, so each of these goes into the plugin.
    bind_queues(&ch, "batch-x", &["batch-extra"], "1").await;
    ch.queue_unbind(
        "batch-extra".into(),
        "batch-x".into(),
        "1".into(),
        FieldTable::default(),
    )
    .await
    .expect("unbind");
    let before = calls(&b);
    for i in 0..N {
        let confirm = ch
            .basic_publish(
                "batch-x".into(),
                format!("key-{i}").as_str().into(),
                BasicPublishOptions::default(),
                format!("s{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
    }
    assert!(calls(&b) - before >= N, "one at a time: a call per message");

    let mut queue_of: HashMap<String, &str> = HashMap::new();
    for q in queues {
        let bodies = drain(&ch, q).await;
        let batched: Vec<u64> = bodies
            .iter()
            .filter_map(|s| s.strip_prefix('b')?.parse().ok())
            .collect();
        assert!(
            batched.windows(2).all(|w| w[0] < w[1]),
            "{q} out of publish order: {batched:?}"
        );
        assert!(!batched.is_empty(), "{q} got no message");
        for body in bodies {
            queue_of.insert(body, q);
        }
    }
    assert_eq!(queue_of.len() as u64, 2 * N, "every message delivered once");
    for i in 0..N {
        assert_eq!(
            queue_of[&format!("b{i}")],
            queue_of[&format!("s{i}")],
            "key-{i}: batched and single routing disagree"
        );
    }
}

/// A publish that fails (missing exchange) right behind a run of publishes held for batch routing:
/// the run is routed first, then the channel is closed with 404.
#[tokio::test]
async fn a_failing_publish_behind_a_batch_leaves_the_batch_routed() {
    let dir = PluginDir::with("batch-error", &[(plugins::X_CONSISTENT_HASH, "chash.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "batch-e", "x-consistent-hash", FieldTable::default()).await;
    bind_queues(&ch, "batch-e", &["batch-e-q0", "batch-e-q1"], "1").await;
    let mut r = raw_confirm_channel(&b).await;
    let mut frames = Vec::new();
    for i in 0..50 {
        frames.extend(publish_frames("batch-e", &format!("k{i}"), b"x"));
    }
    frames.extend(publish_frames("no-such-exchange", "k", b"x"));
    r.send_bytes(&frames).await;
    let (code, text) = r.expect_channel_close().await;
    assert_eq!(code, 404, "{text}");
    let total = message_count(&ch, "batch-e-q0").await + message_count(&ch, "batch-e-q1").await;
    assert_eq!(
        total, 50,
        "the publishes before the failing one were routed"
    );
}
