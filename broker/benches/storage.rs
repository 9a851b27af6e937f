//! The storage choice of issue 4, measured: Warren's queue log against redb (a well-kept embedded
//! B-tree engine) on the queue workload — append persistent 1 KiB messages, make each batch durable
//! (fsync) before confirming it, then delete them as consumers ack. Both sides fsync once per batch.
//!
//! `cargo bench -p warren --bench storage` (env `STORAGE_BENCH_MESSAGES`, default 200 000; batch sizes
//! 1, 10, 100, 1000 ≈ confirm windows). Prints msg/s per engine and batch size and the ratio.

use std::path::Path;
use std::time::Instant;

use redb::{Database, TableDefinition};
use warren::bench::{Durability, PublishRef};
use warren::Store;

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");

fn warren_log(dir: &Path, n: u64, batch: u64, body: &[u8]) -> f64 {
    let store = Store::open(dir, 16 << 20, 16 << 20).expect("store");
    let (log, _) = store.open_queue_log("/", "bench").expect("log");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut commits = store.commits();
    let started = Instant::now();
    let mut seq = 0;
    while seq < n {
        let first = seq;
        let mut lsn = 0;
        for _ in 0..batch {
            lsn = log.append_publish(&PublishRef {
                seq,
                persistent: true,
                expires_at: 0,
                exchange: b"",
                routing_key: b"bench",
                properties: b"\x10\x00\x02",
                body,
            });
            seq += 1;
        }
        // A confirm waits for this (as a connection does: woken by the commit round's watch).
        while log.durability(lsn) == Durability::Pending {
            runtime
                .block_on(commits.changed())
                .expect("committer alive");
        }
        // The consumer acks the batch (one Ack record for the run), synced with the next batch.
        log.append_ack(first, seq - 1, batch, batch * body.len() as u64);
        log.set_min_live(seq);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    store.shutdown();
    drop(log);
    rate
}

fn redb(dir: &Path, n: u64, batch: u64, body: &[u8]) -> f64 {
    let db = Database::create(dir.join("bench.redb")).expect("redb");
    let started = Instant::now();
    let mut seq = 0;
    let mut acked_upto = 0;
    while seq < n {
        let txn = db.begin_write().expect("begin");
        {
            let mut t = txn.open_table(TABLE).expect("table");
            // Acks of the previous batch ride in this transaction (one fsync for both, as in the log).
            for k in acked_upto..seq {
                t.remove(k).expect("remove");
            }
            acked_upto = seq;
            for _ in 0..batch {
                t.insert(seq, body).expect("insert");
                seq += 1;
            }
        }
        txn.commit().expect("commit"); // Durability::Immediate: fsynced on return
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let n: u64 = std::env::var("STORAGE_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let body = vec![0x5au8; 1024];
    let root = std::env::temp_dir().join(format!("warren-storage-bench-{}", std::process::id()));
    println!("| batch (messages per fsync) | warren log msg/s | redb msg/s | log / redb |");
    println!("|---:|---:|---:|---:|");
    for batch in [1u64, 10, 100, 1000] {
        let count = if batch == 1 { n / 20 } else { n };
        let (a, b) = (
            root.join(format!("log-{batch}")),
            root.join(format!("redb-{batch}")),
        );
        std::fs::create_dir_all(&a).expect("dir");
        std::fs::create_dir_all(&b).expect("dir");
        let w = warren_log(&a, count, batch, &body);
        let r = redb(&b, count, batch, &body);
        println!("| {batch} | {w:.0} | {r:.0} | {:.2}x |", w / r);
    }
    let _ = std::fs::remove_dir_all(&root);
}
