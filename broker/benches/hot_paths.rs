//! Micro-benchmarks of the hot paths: frame decode and encode, topic and headers matching, a plugin
//! route call (one key per call, a batch of keys per call, a cached key). `cargo bench -p warren`.

use std::hint::black_box;
use std::sync::{Arc, Weak};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, AMQPClass, BasicProperties};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};
use warren::bench::{
    decode_frame, encode, Binding, Destination, ExchangeType, Headers, Queue, QueueDeclaration,
    QueueOwner, Topic, VHost,
};
use warren::{MemoryAccount, Message};

/// The memory account the benchmarks' queues and messages charge.
static MEMORY: MemoryAccount = MemoryAccount::new();

fn queue(name: &str) -> Arc<Queue> {
    let owner: Weak<dyn QueueOwner> = Weak::<VHost>::new();
    Arc::new(Queue::new(
        QueueDeclaration::transient(name.into()),
        &MEMORY,
        owner,
        None,
    ))
}

fn publish_bytes() -> Vec<u8> {
    let mut out = BytesMut::new();
    let publish = basic::Publish {
        exchange: "amq.topic".into(),
        routing_key: "a.b.c".into(),
        mandatory: false,
        immediate: false,
    };
    encode::frame(
        &mut out,
        &AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Publish(publish))),
    );
    let header = AMQPContentHeader {
        class_id: 60,
        body_size: 16,
        properties: BasicProperties::default(),
    };
    encode::frame(&mut out, &AMQPFrame::Header(1, header));
    encode::content_body(&mut out, 1, &[7u8; 16], 131072);
    out.to_vec()
}

fn codec(c: &mut Criterion) {
    let bytes = publish_bytes();
    c.bench_function("decode publish+header+body (16 B)", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = decode_frame(&mut buf, 131072) {
                black_box(frame);
            }
        })
    });
    let body = vec![1u8; 16];
    let mut out = BytesMut::with_capacity(1 << 20);
    c.bench_function("encode deliver+header+body (16 B)", |b| {
        b.iter(|| {
            out.clear();
            encode::deliver_method(
                &mut out,
                1,
                "amq.ctag-abcdefghijklmnopqrstuv",
                42,
                false,
                "amq.topic",
                "a.b.c",
            );
            encode::content_header(&mut out, 1, 16, &[0, 0]);
            encode::content_body(&mut out, 1, &body, 131072);
            black_box(out.len());
        })
    });
}

fn message(key: &str, headers: Option<FieldTable>) -> Arc<Message> {
    let mut props = BasicProperties::default();
    if let Some(h) = headers {
        props = props.with_headers(h);
    }
    Arc::new(Message::new(
        &MEMORY,
        "x".into(),
        key.into(),
        props,
        Bytes::new(),
        Bytes::new(),
    ))
}

fn topic(c: &mut Criterion) {
    let mut t = Topic::default();
    let q = queue("q");
    for i in 0..10_000 {
        let key = match i % 3 {
            0 => format!("k{i}.*.*"),
            1 => format!("k{i}.#"),
            _ => format!("*.k{i}.z"),
        };
        t.bind(&Binding {
            destination: Destination::Queue(Arc::clone(&q)),
            key: key.as_str().into(),
            arguments: FieldTable::default(),
        });
    }
    let m = message("k3000.x.y", None);
    let mut out = Vec::with_capacity(16);
    c.bench_function("topic route, 10 000 bindings", |b| {
        b.iter(|| {
            out.clear();
            let _ = t.route(black_box("k3000.x.y"), &m, &mut out);
            black_box(out.len());
        })
    });
}

fn headers(c: &mut Criterion) {
    let mut h = Headers::default();
    let q = queue("q");
    for i in 0..100 {
        let mut args = FieldTable::default();
        args.insert(
            "x-match".into(),
            AMQPValue::LongString(LongString::from(if i % 2 == 0 { "all" } else { "any" })),
        );
        args.insert(
            "region".into(),
            AMQPValue::LongString(LongString::from(format!("r{i}"))),
        );
        args.insert(
            "kind".into(),
            AMQPValue::LongString(LongString::from("order")),
        );
        h.bind(&Binding {
            destination: Destination::Queue(Arc::clone(&q)),
            key: "".into(),
            arguments: args,
        });
    }
    let mut headers = FieldTable::default();
    headers.insert(
        "region".into(),
        AMQPValue::LongString(LongString::from("r42")),
    );
    headers.insert(
        "kind".into(),
        AMQPValue::LongString(LongString::from("order")),
    );
    let m = message("", Some(headers));
    let mut out = Vec::with_capacity(128);
    c.bench_function("headers route, 100 bindings", |b| {
        b.iter(|| {
            out.clear();
            let _ = h.route("", black_box(&m), &mut out);
            black_box(out.len());
        })
    });
}

/// Builds `plugins/` (as `tests/build.rs` does) and returns the x-consistent-hash component's path.
fn consistent_hash_component() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = root.join("target").join("plugins");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("plugins").join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("cargo");
    assert!(status.success(), "building plugins/ failed");
    target.join("wasm32-wasip2/release/x_consistent_hash.wasm")
}

/// One `route` call into the x-consistent-hash plugin over 10 bindings (per-key cache missed and
/// hit), against the native direct exchange.
fn plugin_route(c: &mut Criterion) {
    use warren::bench::{Direct, Registry};
    use warren::plugin::{Limits, PluginHost};
    let dir = std::env::temp_dir().join(format!("warren-bench-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(consistent_hash_component(), dir.join("chash.wasm")).expect("copy");
    let host = PluginHost::new(Limits::default(), Some(dir.clone()), None).expect("host");
    host.load_dir();
    let registry = Registry::new(Some(host));
    let mut plugin = registry
        .create(
            "x-consistent-hash",
            &FieldTable::default(),
            "exchange 'bench'",
            false,
            None,
        )
        .expect("type loaded and declared");
    let mut direct = Direct::default();
    for i in 0..10 {
        let b = Binding {
            destination: Destination::Queue(queue(&format!("q{i}"))),
            key: "1".into(),
            arguments: FieldTable::default(),
        };
        plugin.bind(&b);
        direct.bind(&b);
    }
    let keys: Vec<String> = (0..100_000).map(|i| format!("key-{i}")).collect();
    let messages: Vec<Arc<Message>> = keys.iter().map(|k| message(k, None)).collect();
    let mut out = Vec::with_capacity(4);
    let mut i = 0;
    c.bench_function(
        "x-consistent-hash plugin route, 10 bindings, new key each call",
        |b| {
            b.iter(|| {
                out.clear();
                i = (i + 1) % keys.len();
                // More keys than the cache holds, cycled: every call goes into the plugin.
                let _ = plugin.route(black_box(&keys[i]), &messages[i], &mut out);
                black_box(out.len());
            })
        },
    );
    let mut batch_start = 0;
    c.bench_function(
        "x-consistent-hash plugin route, 10 bindings, 64 new keys prepared in one call + 64 routes",
        |b| {
            b.iter(|| {
                batch_start = (batch_start + 64) % (keys.len() - 64);
                let batch = &keys[batch_start..batch_start + 64];
                let refs: Vec<_> = messages[batch_start..batch_start + 64].iter().collect();
                let mut prepared = plugin.prepare(&refs).unwrap_or_default();
                for (k, m) in batch.iter().zip(&messages[batch_start..batch_start + 64]) {
                    out.clear();
                    let _ = plugin.route_prepared(black_box(k), m, &mut prepared, &mut out);
                    black_box(out.len());
                }
            })
        },
    );
    c.bench_function(
        "x-consistent-hash plugin route, 10 bindings, cached key",
        |b| {
            b.iter(|| {
                out.clear();
                let _ = plugin.route(black_box(&keys[7]), &messages[7], &mut out);
                black_box(out.len());
            })
        },
    );
    c.bench_function("direct route, 10 bindings", |b| {
        b.iter(|| {
            out.clear();
            let _ = direct.route(black_box("1"), &messages[7], &mut out);
            black_box(out.len());
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, codec, topic, headers, plugin_route);
criterion_main!(benches);
