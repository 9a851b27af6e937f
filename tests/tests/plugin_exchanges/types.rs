//! The first-party plugin exchange types over the wire: x-consistent-hash, x-random, and what a
//! plugin refuses at declare and bind.

use super::*;

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

/// A plugin built against the released package `warren:plugin@0.1.0` (fixture `x-v01-direct`, built
/// from `wit/released/`) keeps loading and routing as it was written: bindings pushed with their
/// destination, a binding refused with its reason, routing message by message (0.1.0 has no
/// `route-keys`), decisions cached per routing key.
#[tokio::test]
async fn a_plugin_built_against_package_0_1_0_loads_and_routes() {
    let dir = PluginDir::with("v01", &[(plugins::V0_1_EXCHANGE, "v01.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let status = plugin_status(&b, "x-v01-direct").expect("loaded");
    assert_eq!(status.state, "loaded");
    assert_eq!(
        status.package,
        Some(warren::plugin::worlds::Package::V0_1),
        "{status:?}"
    );
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "old", "x-v01-direct", FieldTable::default()).await;
    bind_queues(&ch, "old", &["old-a"], "a").await;
    bind_queues(&ch, "old", &["old-b"], "b").await;
    bind_queues(&ch, "old", &["skip"], "a").await;
    // Publishes in a row (a batch for a 0.2.0 plugin), and one by one with confirms.
    for i in 0..50 {
        ch.basic_publish(
            "old".into(),
            if i % 2 == 0 { "a" } else { "b" }.into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    assert!(ch.wait_for_confirms().await.expect("confirms").is_empty());
    assert!(confirmed(&ch, "old", "a", false).await);
    assert!(
        confirmed(&ch, "old", "c", false).await,
        "unroutable: acked, routed nowhere"
    );
    assert_eq!(message_count(&ch, "old-a").await, 26);
    assert_eq!(message_count(&ch, "old-b").await, 25);
    assert_eq!(message_count(&ch, "skip").await, 0, "destination read");
    // validate-binding's refusal reaches the client.
    let other = channel(&conn).await;
    let refused = other
        .queue_bind(
            "old-a".into(),
            "old".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    let text = expect_code(refused, 406);
    assert!(text.contains("needs a binding key"), "{text}");
    let status = plugin_status(&b, "x-v01-direct").expect("loaded");
    assert_eq!((status.traps, status.breaches), (0, 0), "{status:?}");
}

/// A plugin built against the released package `warren:plugin@0.3.0` (fixture `x-v03-header`: no
/// host services, `init` answering `routes-on`) keeps loading beside 0.4.0 plugins and routes on the
/// message (its `route-messages` is checked by `plugin_trial.rs`: whether publishes arrive together
/// in one read, and so form a run, is up to the client's timing).
#[tokio::test]
async fn a_plugin_built_against_package_0_3_0_loads_and_routes_runs_of_messages() {
    let dir = PluginDir::with("v03", &[(plugins::V0_3_EXCHANGE, "v03.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let status = plugin_status(&b, "x-v03-header").expect("loaded");
    assert_eq!(
        status.package,
        Some(warren::plugin::worlds::Package::V0_3),
        "{status:?}"
    );
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "v03", "x-v03-header", FieldTable::default()).await;
    bind_queues(&ch, "v03", &["v03-a"], "a").await;
    bind_queues(&ch, "v03", &["v03-b"], "b").await;
    for i in 0..60 {
        let mut headers = FieldTable::default();
        let to = ["a", "b", "c"][i % 3];
        headers.insert("to".into(), lapin::types::AMQPValue::LongString(to.into()));
        ch.basic_publish(
            "v03".into(),
            "ignored".into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("publish");
    }
    assert!(ch.wait_for_confirms().await.expect("confirms").is_empty());
    assert_eq!(message_count(&ch, "v03-a").await, 20);
    assert_eq!(message_count(&ch, "v03-b").await, 20);
    let status = plugin_status(&b, "x-v03-header").expect("loaded");
    assert_eq!((status.traps, status.breaches), (0, 0), "{status:?}");
}
