//! Durability (issue 4): durable definitions and persistent messages survive a restart and `kill -9`;
//! a confirm means the message is on disk; torn and corrupt logs recover; a full disk nacks.
//!
//! The crash test runs the real binary (`target/debug/warren`, or `WARREN_BIN`) and kills it with SIGKILL
//! `WARREN_CRASH_ROUNDS` times (default 5; the soak in the README uses 100).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::Process;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use rand::Rng;
use warren::config::Config;

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-durability-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path) -> Config {
    Config {
        data_dir: Some(dir.to_owned()),
        ..Config::default()
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    }
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(confirm, Confirmation::Ack(None)), "{confirm:?}");
}

/// Every message left in `queue`, as (body, redelivered), taken with basic.get and acked.
async fn drain(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        out.push((
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
            m.delivery.redelivered,
        ));
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    out
}

/// Starts a broker on `dir`, drains `queue`, stops the broker.
async fn start_and_drain(dir: &Path, queue: &str) -> Vec<(String, bool)> {
    let broker = start_broker_with(config(dir)).await;
    let conn = connect(&broker).await;
    let got = drain(&channel(&conn).await, queue).await;
    drop(conn);
    broker.stop().await;
    got
}

fn bodies(v: &[(String, bool)]) -> Vec<&str> {
    v.iter().map(|(b, _)| b.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_exactly_the_durable_state() {
    let dir = fresh_dir("restart");
    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable_x = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "dx".into(),
        ExchangeKind::Direct,
        durable_x,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "dx2".into(),
        ExchangeKind::Fanout,
        durable_x,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "tx".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut limited = FieldTable::default();
    limited.insert("x-max-length".into(), AMQPValue::ShortInt(100));
    ch.queue_declare("dq".into(), durable(), limited.clone())
        .await
        .unwrap();
    ch.queue_declare(
        "tq".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dq".into(),
        "dx".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dq".into(),
        "tx".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        "dx".into(),
        "dx2".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Persistent and transient messages interleaved, through the durable e2e binding.
    for i in 0..10 {
        publish(&ch, "dx2", "k", format!("p{i}").as_bytes(), persistent()).await;
        if i % 2 == 0 {
            publish(
                &ch,
                "dx",
                "k",
                format!("t{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
    }
    publish(&ch, "", "tq", b"lost with its queue", persistent()).await;
    // p0 acked, t0 acked; p1 delivered and left unacked (requeued at shutdown).
    let consumer_ch = channel(&conn).await;
    for _ in 0..2 {
        let m = consumer_ch
            .basic_get("dq".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .unwrap();
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let unacked = consumer_ch
        .basic_get("dq".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&unacked.delivery.data[..], b"p1");
    drop(conn);
    broker.stop().await;

    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Durable entities are back with their arguments (an equal redeclare passes, a different one fails).
    let q = ch
        .queue_declare("dq".into(), durable(), limited.clone())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 9, "p1..p9");
    let ch2 = channel(&conn).await;
    let mut other = FieldTable::default();
    other.insert("x-max-length".into(), AMQPValue::ShortInt(5));
    expect_code(ch2.queue_declare("dq".into(), durable(), other).await, 406);
    let ch2 = channel(&conn).await;
    expect_code(
        ch2.queue_declare("tq".into(), passive(), FieldTable::default())
            .await,
        404,
    );
    let ch2 = channel(&conn).await;
    expect_code(
        ch2.exchange_declare(
            "tx".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
        404,
    );
    let got = drain(&ch, "dq").await;
    let expected: Vec<String> = (1..10).map(|i| format!("p{i}")).collect();
    assert_eq!(
        bodies(&got),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(
        got[0],
        ("p1".to_owned(), true),
        "delivered before the restart"
    );
    assert!(got[1..].iter().all(|(_, r)| !r), "never delivered: {got:?}");
    // Bindings between durable entities are back (dx2 -> dx -> dq); acked messages stay acked.
    publish(&ch, "dx2", "k", b"after", persistent()).await;
    assert_eq!(bodies(&drain(&ch, "dq").await), ["after"]);
    drop(conn);
    broker.stop().await;

    // Acks were recorded too: nothing comes back.
    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = ch
        .queue_declare("dq".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    ch.queue_delete("dq".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    drop(conn);
    broker.stop().await;
    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    expect_code(
        ch.queue_declare("dq".into(), passive(), FieldTable::default())
            .await,
        404,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_ttl_and_dead_letter_headers_survive_a_restart() {
    let dir = fresh_dir("extensions");
    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
    ch.queue_declare("prio".into(), durable(), args.clone())
        .await
        .unwrap();
    for (i, p) in [1u8, 5, 9, 5, 1].iter().enumerate() {
        let props = persistent().with_priority(*p);
        publish(&ch, "", "prio", format!("{p}-{i}").as_bytes(), props).await;
    }
    // A message that expires 1.5 s after publishing, dead-lettered into a durable queue.
    let mut ttl_args = FieldTable::default();
    ttl_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    ttl_args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("expired".into()),
    );
    ch.queue_declare("ttl".into(), durable(), ttl_args.clone())
        .await
        .unwrap();
    ch.queue_declare("expired".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    publish(
        &ch,
        "",
        "ttl",
        b"short",
        persistent().with_expiration("1500".into()),
    )
    .await;
    publish(
        &ch,
        "",
        "ttl",
        b"long",
        persistent().with_expiration("600000".into()),
    )
    .await;
    drop(conn);
    broker.stop().await;

    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    // Highest priority first, FIFO within a priority, as before the restart.
    assert_eq!(
        bodies(&drain(&ch, "prio").await),
        ["9-2", "5-1", "5-3", "1-0", "1-4"]
    );
    // The expiry time was kept: "short" is dead-lettered with its x-death once it passes.
    let got = wait_get(&ch, "expired", false).await;
    assert_eq!(&got.delivery.data[..], b"short");
    let headers = got.delivery.properties.headers().clone().unwrap();
    assert!(headers.inner().contains_key("x-death"), "{headers:?}");
    got.delivery.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(bodies(&drain(&ch, "ttl").await), ["long"]);
    drop(conn);
    broker.stop().await;
    // The dead-lettered copy was persisted in its own queue and acked there: nothing is left.
    assert!(start_and_drain(&dir, "expired").await.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The queue log directory of `queue` in vhost `/` (same hashing as the store).
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let vhosts = dir.join("vhosts");
    for v in std::fs::read_dir(vhosts).unwrap().flatten() {
        let queues = v.path().join("queues");
        let Ok(qs) = std::fs::read_dir(queues) else {
            continue;
        };
        for q in qs.flatten() {
            for s in std::fs::read_dir(q.path()).unwrap().flatten() {
                out.push(s.path());
            }
        }
    }
    out.sort();
    out
}

async fn fill(dir: &Path, n: usize) {
    let broker = start_broker_with(config(dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare("q".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    for i in 0..n {
        publish(
            &ch,
            "",
            "q",
            format!("m{i:04}").repeat(20).as_bytes(),
            persistent(),
        )
        .await;
    }
    drop(conn);
    broker.stop().await;
}

/// Length of a segment's written data (segments are preallocated: zeros follow the data).
fn data_len(path: &Path) -> u64 {
    let data = std::fs::read(path).unwrap();
    data.iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// The newest non-empty segment.
fn newest_with_data(dir: &Path) -> PathBuf {
    segments(dir)
        .into_iter()
        .rev()
        .find(|p| data_len(p) > 16)
        .expect("a segment with records")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_write_recovers_every_intact_record() {
    for round in 0..5 {
        let dir = fresh_dir(&format!("torn{round}"));
        fill(&dir, 50).await;
        let seg = newest_with_data(&dir);
        let len = data_len(&seg);
        let cut = rand::thread_rng().gen_range(17..len);
        let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        if round % 2 == 0 {
            // The file ends inside a record.
            file.set_len(cut).unwrap();
        } else {
            // The write stopped inside a record in preallocated space: zeros follow.
            use std::os::unix::fs::FileExt;
            file.write_all_at(&vec![0u8; (len - cut) as usize], cut)
                .unwrap();
        }
        drop(file);
        let broker = start_broker_with(config(&dir)).await;
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        let got = drain(&ch, "q").await;
        let expected: Vec<String> = (0..got.len())
            .map(|i| format!("m{i:04}").repeat(20))
            .collect();
        assert_eq!(
            bodies(&got),
            expected.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert!(
            got.len() < 50,
            "cut at {cut} of {len} lost the last record at least"
        );
        // The log takes new appends after recovery.
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "", "q", b"after", persistent()).await;
        drop(conn);
        broker.stop().await;
        assert_eq!(bodies(&start_and_drain(&dir, "q").await), ["after"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_in_the_middle_is_skipped() {
    let dir = fresh_dir("corrupt");
    fill(&dir, 50).await;
    let seg = newest_with_data(&dir);
    let mut data = std::fs::read(&seg).unwrap();
    let at = data_len(&seg) as usize / 2;
    data[at] ^= 0x5a;
    std::fs::write(&seg, &data).unwrap();
    let got = start_and_drain(&dir, "q").await;
    assert_eq!(got.len(), 49, "exactly the damaged record is lost");
    let all: Vec<String> = (0..50).map(|i| format!("m{i:04}").repeat(20)).collect();
    let missing: Vec<&String> = all
        .iter()
        .filter(|m| !bodies(&got).contains(&m.as_str()))
        .collect();
    assert_eq!(missing.len(), 1);
    let mut sorted = bodies(&got);
    sorted.sort_unstable();
    assert_eq!(sorted, bodies(&got), "order kept");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_format_refuses_to_start() {
    let dir = fresh_dir("newer");
    std::fs::write(dir.join("FORMAT"), "warren-data 99\n").unwrap();
    let err = warren::broker::Broker::new(config(&dir)).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("newer Warren"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

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

/// Unmounts (and removes) the tmpfs when the test ends, also when it fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn connect_port(port: u16) -> Connection {
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap()
}

#[derive(Default)]
struct Seen {
    published: HashSet<String>,
    confirmed: HashSet<String>,
    delivered: HashSet<String>,
    acked: HashSet<String>,
}

/// Publishers with confirms and a consumer with manual acks, until the connection dies.
async fn load(port: u16, round: usize, seen: Arc<Mutex<Seen>>) {
    let conn = connect_port(port).await;
    let setup = conn.create_channel().await.unwrap();
    setup
        .queue_declare("crash".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for publisher in 0..2 {
        let ch = conn.create_channel().await.unwrap();
        let seen = Arc::clone(&seen);
        tasks.push(tokio::spawn(async move {
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            let mut i = 0;
            loop {
                let mut batch = Vec::new();
                for _ in 0..50 {
                    let id = format!("r{round}-p{publisher}-{i}");
                    i += 1;
                    seen.lock().unwrap().published.insert(id.clone());
                    let c = ch
                        .basic_publish(
                            "".into(),
                            "crash".into(),
                            BasicPublishOptions::default(),
                            id.as_bytes(),
                            persistent(),
                        )
                        .await?;
                    batch.push((id, c));
                }
                for (id, c) in batch {
                    if let Confirmation::Ack(_) = c.await? {
                        seen.lock().unwrap().confirmed.insert(id);
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), lapin::Error>(())
        }));
    }
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "crash".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let seen2 = Arc::clone(&seen);
    tasks.push(tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let id = String::from_utf8_lossy(&d.data).into_owned();
            seen2.lock().unwrap().delivered.insert(id.clone());
            d.ack(BasicAckOptions::default()).await?;
            seen2.lock().unwrap().acked.insert(id);
        }
        Ok(())
    }));
    for t in tasks {
        let _ = t.await;
    }
}

/// Checks what a restarted broker holds against what the killed one was seen to do.
async fn check_after_restart(p: &Process, seen: &Seen) -> usize {
    let conn = p.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let got = drain(&ch, "crash").await;
    let mut once = HashSet::new();
    for (id, redelivered) in &got {
        assert!(seen.published.contains(id), "invented message {id}");
        assert!(once.insert(id.clone()), "{id} recovered twice");
        if seen.delivered.contains(id) {
            assert!(
                redelivered,
                "{id} was delivered before the kill but is not flagged redelivered"
            );
        }
    }
    let lost: Vec<&String> = seen
        .confirmed
        .iter()
        .filter(|id| !seen.acked.contains(*id) && !once.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "confirmed but lost: {} e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    got.len()
}

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
