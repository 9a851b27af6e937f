//! A full disk: persistent publishes are nacked and the disk alarm blocks publishers.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_nacks_persistent_publishes_and_raises_the_disk_alarm() {
    let dir = fresh_dir("full");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&dir)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "this test mounts a 1 MiB tmpfs (needs root)"
    );
    let _unmount = Unmount(dir.clone());
    let cfg = Config {
        disk_free_limit: 0,
        ..config(&dir)
    };
    let broker = start_broker_with(cfg).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare("big".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let body = vec![7u8; 64 * 1024];
    let mut nacked = None;
    for i in 0..40 {
        let confirm = ch
            .basic_publish(
                "".into(),
                "big".into(),
                BasicPublishOptions::default(),
                &body,
                persistent(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        if matches!(confirm, Confirmation::Nack(_)) {
            nacked = Some(i);
            break;
        }
    }
    let nacked = nacked.expect("a 1 MiB disk cannot take 40 x 64 KiB");
    assert!(nacked >= 5, "the first messages fit: nack at {nacked}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let store = broker.broker.store.clone().unwrap();
    assert!(store.io_error(), "disk alarm raised");
    // The broker still serves: another connection reads the queue.
    let other = connect(&broker).await;
    let ch2 = channel(&other).await;
    let q = ch2
        .queue_declare("big".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert!(
        q.message_count() as usize > nacked,
        "nacked messages are not lost from memory"
    );
    // Deleting the queue frees the space: the alarm clears and persistence works again.
    ch2.queue_delete("big".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while store.io_error() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("alarm cleared");
    ch2.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch2.queue_declare("small".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    publish(&ch2, "", "small", b"fits", persistent()).await;
    drop(other);
    drop(conn);
    broker.stop().await;
}
