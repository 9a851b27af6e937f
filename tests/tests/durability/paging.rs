//! Long durable queues page to disk and come back in order, across a restart.

use super::*;

/// Small queue memory and segments, so that a few MB page to disk over many segments.
fn paging_config(dir: &Path) -> Config {
    Config {
        queue_memory_limit: 64 * 1024,
        segment_size: 256 * 1024,
        ..config(dir)
    }
}

/// Publishes messages `0..n` to `queue` on a channel in confirm mode, up to 500 in flight, each
/// confirmed with an ack.
async fn publish_confirmed(
    ch: &Channel,
    queue: &str,
    n: usize,
    body: impl Fn(usize) -> String,
    properties: impl Fn(usize) -> BasicProperties,
) {
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body(i).as_bytes(),
                properties(i),
            )
            .await
            .unwrap(),
        );
        if pending.len() == 500 {
            for p in pending.drain(..) {
                assert!(matches!(p.await.unwrap(), Confirmation::Ack(None)));
            }
        }
    }
    for p in pending.drain(..) {
        assert!(matches!(p.await.unwrap(), Confirmation::Ack(None)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_queues_page_to_disk_and_come_back_in_order() {
    let dir = fresh_dir("paging");
    let broker = start_broker_with(paging_config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare("long".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let body = |i: usize| format!("{i:06}-{}", "x".repeat(1000));
    let n = 6000;
    // Every tenth message transient: paged too, but not recovered after a restart.
    publish_confirmed(&ch, "long", n, body, |i| {
        if i % 10 == 9 {
            BasicProperties::default()
        } else {
            persistent()
        }
    })
    .await;
    assert!(segments(&dir).len() > 10, "6 MB went to 256 KiB segments");
    // Read the first 2000 back (in order), then restart with the rest on disk.
    let consumer = channel(&conn).await;
    consumer
        .basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut c = consumer
        .basic_consume(
            "long".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..2000 {
        let d = next(&mut c).await;
        assert_eq!(String::from_utf8_lossy(&d.data), body(i));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    drop(c);
    // A clean close: close-ok comes after the broker has handled every ack sent before it (dropping
    // the connection and stopping the broker at once could leave the last acks unread).
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;

    let broker = start_broker_with(paging_config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let q = ch
        .queue_declare("long".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    let expected: Vec<usize> = (2000..n).filter(|i| i % 10 != 9).collect();
    assert_eq!(q.message_count() as usize, expected.len());
    let mut c = ch
        .basic_consume(
            "long".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for &i in &expected {
        let d = next(&mut c).await;
        assert_eq!(String::from_utf8_lossy(&d.data), body(i));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    expect_silence(&mut c, Duration::from_millis(200)).await;
    // Emptied segments were deleted.
    let left = segments(&dir).len();
    assert!(left <= 3, "{left} segments left");
    drop(conn);
    broker.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A purge of a durable queue whose messages went to disk leaves no segment behind once the next
/// commit runs, whatever the messages in memory at the time were (here: transient ones, which write no
/// Ack) and whatever flows afterwards (here: transient messages only, which write no Ack either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_of_a_paged_queue_frees_its_segments() {
    let dir = fresh_dir("paging-purge");
    let broker = start_broker_with(paging_config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare("purged".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    // Transient first (they stay in memory and are not logged), then persistent ones (paged).
    publish_confirmed(
        &ch,
        "purged",
        4000,
        |_| "x".repeat(1000),
        |i| {
            if i < 100 {
                BasicProperties::default()
            } else {
                persistent()
            }
        },
    )
    .await;
    let before = segments(&dir).len();
    assert!(before > 10, "4 MB went to 256 KiB segments ({before})");
    let purged = ch
        .queue_purge("purged".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged, 4000);
    // Traffic after the purge: transient messages through the queue.
    for _ in 0..20 {
        publish(&ch, "", "purged", b"later", BasicProperties::default()).await;
    }
    assert_eq!(drain(&ch, "purged").await.len(), 20);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut left = segments(&dir).len();
    while left > 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = segments(&dir).len();
    }
    assert!(
        left <= 2,
        "{left} of {before} segments left after the purge"
    );
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
    // Restarted on what is left, the queue is there and empty.
    let broker = start_broker_with(paging_config(&dir)).await;
    let conn = connect(&broker).await;
    let q = channel(&conn)
        .await
        .queue_declare("purged".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    drop(conn);
    broker.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
