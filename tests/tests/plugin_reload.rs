//! Hot reload under load: publishers with confirms route ≥ 100 000 messages through a plugin exchange
//! while its file is replaced ≥ 20 times (copy over, write-to-temp-and-rename, a truncated copy, an
//! identical copy). Every confirmed message must be delivered exactly once, routed by a whole version
//! (fixture `x-switch`: version "a" routes to the queue bound with key "a", version "b" to "b"), and a
//! new version must be live within 1 s of its write settling.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use warren::config::Config;
use warren_tests::plugins;

const MESSAGES: u64 = 100_000;
const SWAPS: usize = 24;
/// The new version must be live this soon after the write settles.
const EFFECT_WITHIN: Duration = Duration::from_secs(1);

/// The loaded plugin's content hash, from the broker's snapshot.
fn loaded_hash(b: &TestBroker) -> Option<String> {
    plugin_status(b, "x-switch")
        .filter(|s| s.state == "loaded")
        .and_then(|s| s.hash)
}

fn reloads(b: &TestBroker) -> u64 {
    plugin_status(b, "x-switch").map_or(0, |s| s.reloads)
}

fn sha256(path: &str) -> String {
    warren::plugin::loader::content_hash(&std::fs::read(path).expect("read plugin"))
}

/// How a swap writes the new version.
#[derive(Clone, Copy, Debug)]
enum Method {
    CopyOver,
    TempAndRename,
}

fn write_version(target: &Path, src: &str, method: Method) {
    match method {
        Method::CopyOver => {
            std::fs::copy(src, target).expect("copy over");
        }
        Method::TempAndRename => {
            let tmp: PathBuf = target.with_extension("wasm.tmp");
            std::fs::copy(src, &tmp).expect("copy to temp");
            std::fs::rename(&tmp, target).expect("rename");
        }
    }
}

async fn wait_for_hash(b: &TestBroker, hash: &str, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(10);
    while loaded_hash(b).as_deref() != Some(hash) {
        assert!(Instant::now() < deadline, "version never became live");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_and_misroutes_nothing() {
    let dir = std::env::temp_dir().join(format!("warren-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("plugin dir");
    let file = dir.join("switch.wasm");
    std::fs::copy(plugins::SWITCH_A, &file).expect("install a");
    let b = start_broker_with(Config {
        plugin_dir: Some(dir.clone()),
        ..Config::default()
    })
    .await;
    let (hash_a, hash_b) = (sha256(plugins::SWITCH_A), sha256(plugins::SWITCH_B));
    assert_eq!(loaded_hash(&b).as_deref(), Some(hash_a.as_str()));

    let conn = connect(&b).await;
    let setup = channel(&conn).await;
    setup
        .exchange_declare(
            "sw".into(),
            ExchangeKind::Custom("x-switch".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    for q in ["a", "b"] {
        setup
            .queue_declare(
                q.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue");
        setup
            .queue_bind(
                q.into(),
                "sw".into(),
                q.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }

    // Publisher: confirms on, 500 in flight, until MESSAGES are out and the swaps are done.
    let swapping = Arc::new(AtomicBool::new(true));
    let publisher = {
        let ch = channel(&conn).await;
        let swapping = Arc::clone(&swapping);
        tokio::spawn(async move {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirm.select");
            let mut acked = Vec::new();
            let mut nacked = 0u64;
            let mut seq = 0u64;
            while seq < MESSAGES || swapping.load(Ordering::Relaxed) {
                let mut window = Vec::with_capacity(500);
                for _ in 0..500 {
                    let confirm = ch
                        .basic_publish(
                            "sw".into(),
                            "any".into(),
                            BasicPublishOptions::default(),
                            &seq.to_be_bytes(),
                            BasicProperties::default(),
                        )
                        .await
                        .expect("publish");
                    window.push((seq, confirm));
                    seq += 1;
                }
                for (s, confirm) in window {
                    if confirm.await.expect("confirm").is_ack() {
                        acked.push(s);
                    } else {
                        nacked += 1;
                    }
                }
            }
            (seq, acked, nacked)
        })
    };

    // Swapper: alternate versions with different write methods; a truncated copy and an identical
    // copy in between must change nothing.
    let mut current = (plugins::SWITCH_A, hash_a.clone());
    let mut effect_times = Vec::new();
    let mut refused_kept = 0;
    let mut identical_skipped = 0;
    for i in 0..SWAPS {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if i % 4 == 2 {
            // A truncated copy of the other version: refused, the current version keeps routing.
            let other = if current.0 == plugins::SWITCH_A {
                plugins::SWITCH_B
            } else {
                plugins::SWITCH_A
            };
            let bytes = std::fs::read(other).expect("read");
            std::fs::write(&file, &bytes[..bytes.len() * 2 / 3]).expect("truncated write");
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(loaded_hash(&b).as_deref(), Some(current.1.as_str()));
            refused_kept += 1;
            // Put the current version back (a changed file again, so it reloads the same content).
            let before = reloads(&b);
            write_version(&file, current.0, Method::CopyOver);
            let deadline = Instant::now() + Duration::from_secs(10);
            while reloads(&b) == before {
                assert!(Instant::now() < deadline, "restored file not reloaded");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            continue;
        }
        if i % 4 == 3 {
            // An identical copy: no reload at all.
            let before = reloads(&b);
            write_version(&file, current.0, Method::TempAndRename);
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(reloads(&b), before, "identical content must not reload");
            identical_skipped += 1;
            continue;
        }
        let next = if current.0 == plugins::SWITCH_A {
            (plugins::SWITCH_B, hash_b.clone())
        } else {
            (plugins::SWITCH_A, hash_a.clone())
        };
        let method = if i % 2 == 0 {
            Method::CopyOver
        } else {
            Method::TempAndRename
        };
        write_version(&file, next.0, method);
        let settled = Instant::now();
        let took = wait_for_hash(&b, &next.1, settled).await;
        assert!(
            took <= EFFECT_WITHIN,
            "swap {i} ({method:?}) took {took:?} to take effect"
        );
        effect_times.push(took);
        current = next;
    }
    swapping.store(false, Ordering::Relaxed);
    let (published, acked, nacked) = publisher.await.expect("publisher");
    assert!(published >= MESSAGES);
    assert_eq!(nacked, 0, "no message may fail to route during swaps");
    assert!(reloads(&b) >= (SWAPS / 2) as u64);

    // Drain both queues: every confirmed message exactly once, none invented, both versions used.
    let consume = channel(&conn).await;
    let mut seen = HashSet::with_capacity(published as usize);
    let mut per_queue = [0u64; 2];
    for (i, q) in ["a", "b"].iter().enumerate() {
        let count = message_count(&consume, q).await;
        let mut consumer = consume
            .basic_consume(
                (*q).into(),
                format!("drain-{q}").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        for _ in 0..count {
            let d = tokio::time::timeout(WAIT, consumer.next())
                .await
                .expect("delivery")
                .expect("stream")
                .expect("delivery ok");
            let seq = u64::from_be_bytes(d.data[..8].try_into().expect("8-byte body"));
            assert!(seq < published, "invented message {seq}");
            assert!(seen.insert(seq), "message {seq} delivered twice");
            per_queue[i] += 1;
        }
    }
    for s in &acked {
        assert!(seen.contains(s), "confirmed message {s} lost");
    }
    assert_eq!(seen.len() as u64, published);
    assert!(
        per_queue[0] > 0 && per_queue[1] > 0,
        "both versions routed: {per_queue:?}"
    );
    let slowest = effect_times.iter().max().copied().unwrap_or_default();
    println!(
        "published {published}, confirmed {}, queue a {} / b {}, {} version swaps (slowest {slowest:?}), {refused_kept} truncated copies refused, {identical_skipped} identical copies skipped",
        acked.len(),
        per_queue[0],
        per_queue[1],
        effect_times.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each plugin file is compiled once at start: the host's own reading of its files does not queue them
/// for the watcher (which compiled them a second time and counted a spurious reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_files_are_compiled_once_at_start() {
    let dir = PluginDir::with(
        "once",
        &[
            (plugins::X_RANDOM, "random.wasm"),
            (plugins::X_CONSISTENT_HASH, "chash.wasm"),
        ],
    );
    let b = start_broker_with(dir.config()).await;
    // Well past the watcher's settle time and a compile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for name in ["x-random", "x-consistent-hash"] {
        let s = plugin_status(&b, name).expect("known plugin");
        assert_eq!((s.state, s.reloads), ("loaded", 0), "{name}");
    }
}

/// One name, one file: a second file claiming a loaded plugin's name is refused and the first keeps
/// serving; removing the refused file changes nothing; removing the first loads the waiting one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_file_with_a_loaded_plugins_name_waits_until_the_first_is_removed() {
    let dir = PluginDir::with("dupe", &[(plugins::X_RANDOM, "a.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let file = |b: &TestBroker| {
        plugin_status(b, "x-random")
            .filter(|s| s.state == "loaded")
            .and_then(|s| s.file)
    };
    let settle = Duration::from_millis(1500);
    assert_eq!(file(&b), Some(dir.path("a.wasm")));
    dir.install(plugins::X_RANDOM, "b.wasm");
    tokio::time::sleep(settle).await;
    assert_eq!(
        file(&b),
        Some(dir.path("a.wasm")),
        "the second file is refused"
    );
    std::fs::remove_file(dir.path("b.wasm")).expect("remove b");
    tokio::time::sleep(settle).await;
    assert_eq!(
        file(&b),
        Some(dir.path("a.wasm")),
        "the first file still serves"
    );
    dir.install(plugins::X_RANDOM, "b.wasm");
    tokio::time::sleep(settle).await;
    std::fs::remove_file(dir.path("a.wasm")).expect("remove a");
    let deadline = Instant::now() + WAIT;
    while file(&b) != Some(dir.path("b.wasm")) {
        assert!(
            Instant::now() < deadline,
            "the waiting file was not loaded: {:?}",
            plugin_status(&b, "x-random")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The compile cache in the data directory: the first start compiles and writes an entry, the next
/// one reads it; an entry that cannot be used (corrupted) is compiled again and rewritten, not
/// trusted; entries that no plugin file needs any more are removed at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_plugins_are_cached_in_the_data_directory() {
    use warren::plugin::loader::Source;
    let dir = PluginDir::with("cache", &[(plugins::X_RANDOM, "random.wasm")]);
    let data = std::env::temp_dir().join(format!(
        "warren-cache-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let config = || Config {
        data_dir: Some(data.clone()),
        ..dir.config()
    };
    let cache = data.join("plugin-cache");
    let entries = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&cache)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let compiled = |b: &TestBroker| plugin_status(b, "x-random").and_then(|s| s.compiled);

    let b = start_broker_with(config()).await;
    assert_eq!(compiled(&b), Some(Source::Compiled));
    b.stop().await;
    let written = entries();
    assert_eq!(written.len(), 1, "{written:?}");
    let name = written[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(&sha256(plugins::X_RANDOM)) && name.ends_with(".cwasm"),
        "{name}"
    );

    let b = start_broker_with(config()).await;
    assert_eq!(compiled(&b), Some(Source::CacheHit));
    b.stop().await;

    // A corrupted entry is not used: compiled again, and the entry rewritten.
    std::fs::write(&written[0], b"not a compiled component").expect("corrupt");
    let b = start_broker_with(config()).await;
    assert_eq!(compiled(&b), Some(Source::Compiled));
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    ch.exchange_declare(
        "r".into(),
        ExchangeKind::Custom("x-random".into()),
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("the recompiled plugin serves");
    drop(conn);
    b.stop().await;
    assert_eq!(entries(), written);
    assert!(std::fs::metadata(&written[0]).expect("entry").len() > 1000);

    // Another plugin replaces the file: the old entry goes at the next start.
    std::fs::remove_file(dir.path("random.wasm")).expect("remove");
    dir.install(plugins::X_CONSISTENT_HASH, "chash.wasm");
    let b = start_broker_with(config()).await;
    b.stop().await;
    let now = entries();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, written);
    let _ = std::fs::remove_dir_all(&data);
}
