//! `kill -9` of the real binary: committed transactions and confirmed messages survive.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_transactions_survive_kill_9() {
    let dir = fresh_dir("tx");
    let p = Process::start(&dir);
    let conn = p.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("txq".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    ch.tx_select().await.unwrap();
    for i in 0..100 {
        ch.basic_publish(
            "".into(),
            "txq".into(),
            BasicPublishOptions::default(),
            format!("c{i}").as_bytes(),
            persistent(),
        )
        .await
        .unwrap();
    }
    ch.tx_commit().await.unwrap();
    ch.basic_publish(
        "".into(),
        "txq".into(),
        BasicPublishOptions::default(),
        b"uncommitted",
        persistent(),
    )
    .await
    .unwrap();
    p.kill(); // right after commit-ok: the committed messages must be on disk
    let p = Process::start(&dir);
    let conn = p.connect().await;
    let got = drain(&conn.create_channel().await.unwrap(), "txq").await;
    let expected: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    assert_eq!(
        bodies(&got),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill_9() {
    let rounds: usize = std::env::var("WARREN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = fresh_dir("crash");
    let mut previous: Option<Seen> = None;
    let mut stats: HashMap<&str, usize> = HashMap::new();
    for round in 0..rounds {
        let p = Process::start(&dir);
        if let Some(seen) = previous.take() {
            *stats.entry("recovered").or_default() += check_after_restart(&p, &seen).await;
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let run = tokio::spawn(load(p.port, round, Arc::clone(&seen)));
        let millis = rand::thread_rng().gen_range(300..1500);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        p.kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert!(
            !seen.confirmed.is_empty(),
            "round {round}: some publishes were confirmed"
        );
        *stats.entry("confirmed").or_default() += seen.confirmed.len();
        *stats.entry("acked").or_default() += seen.acked.len();
        previous = Some(seen);
    }
    let p = Process::start(&dir);
    if let Some(seen) = previous.take() {
        *stats.entry("recovered").or_default() += check_after_restart(&p, &seen).await;
    }
    p.kill();
    eprintln!("crash test: {rounds} kills, {stats:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
