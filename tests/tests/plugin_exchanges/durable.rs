//! Durable exchanges of plugin types across a restart.

use super::*;

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
