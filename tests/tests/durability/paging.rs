//! Long durable queues page to disk and come back in order, across a restart.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_queues_page_to_disk_and_come_back_in_order() {
    let dir = fresh_dir("paging");
    let cfg = || Config {
        queue_memory_limit: 64 * 1024,
        segment_size: 256 * 1024,
        ..config(&dir)
    };
    let broker = start_broker_with(cfg()).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare("long".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let body = |i: usize| format!("{i:06}-{}", "x".repeat(1000));
    let mut pending = Vec::new();
    let n = 6000;
    for i in 0..n {
        // Every tenth message transient: paged too, but not recovered after a restart.
        let props = if i % 10 == 9 {
            BasicProperties::default()
        } else {
            persistent()
        };
        pending.push(
            ch.basic_publish(
                "".into(),
                "long".into(),
                BasicPublishOptions::default(),
                body(i).as_bytes(),
                props,
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

    let broker = start_broker_with(cfg()).await;
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
