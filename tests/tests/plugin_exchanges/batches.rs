//! Batch routing: runs of publishes routed with one `route-keys` call.

use super::*;

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
