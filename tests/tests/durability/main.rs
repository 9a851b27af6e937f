//! Durability (issue 4): durable definitions and persistent messages survive a restart and `kill -9`;
//! a confirm means the message is on disk; torn and corrupt logs recover; a full disk nacks.
//!
//! The crash test runs the real binary (`target/debug/warren`, or `WARREN_BIN`) and kills it with SIGKILL
//! `WARREN_CRASH_ROUNDS` times (default 5; the soak in the README uses 100).

#[path = "../common/mod.rs"]
mod common;
mod corruption;
mod crash;
mod disk_full;
mod paging;
mod restart;

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
