//! The generator's AMQP side: a small handshake/RPC client for setup, and the hot producer and
//! consumer loops, which bypass a client library (pre-encoded frames out, a minimal parser in).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BufMut, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{RunArgs, Stats};

/// Messages encoded per socket write.
const BATCH: u64 = 256;

pub(crate) fn encode(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .map(|c| c.write)
        .unwrap_or_default()
}

/// One connection with channel 1 open.
pub(crate) struct Conn {
    sock: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn send(&mut self, frame: &AMQPFrame) -> anyhow::Result<()> {
        self.sock.write_all(&encode(frame)).await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<AMQPFrame> {
        loop {
            match parse_frame(&self.buf[..]) {
                Ok((rest, frame)) => {
                    let used = self.buf.len() - rest.len();
                    self.buf.advance(used);
                    return Ok(frame);
                }
                Err(e) if e.is_incomplete() => {}
                Err(e) => bail!("undecodable frame: {e:?}"),
            }
            if self.sock.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed by the broker");
            }
        }
    }

    /// Sends a method on channel 1 and waits for the reply method.
    async fn rpc(&mut self, method: AMQPClass) -> anyhow::Result<AMQPClass> {
        self.send(&AMQPFrame::Method(1, method)).await?;
        loop {
            match self.recv().await? {
                AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(c))) => {
                    bail!("channel closed: {}", c.reply_text)
                }
                AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                    bail!("connection closed: {}", c.reply_text)
                }
                AMQPFrame::Method(1, m) => return Ok(m),
                _ => {}
            }
        }
    }

    /// Connects as guest/guest to vhost `/` with heartbeats off and opens channel 1.
    pub(crate) async fn open(addr: &str) -> anyhow::Result<Conn> {
        Self::connect(addr, true, 1 << 20).await
    }

    /// Connects as guest/guest to vhost `/` with heartbeats off, with a read buffer of `capacity`
    /// octets, and opens channel 1 if `open_channel`.
    pub(crate) async fn connect(
        addr: &str,
        open_channel: bool,
        capacity: usize,
    ) -> anyhow::Result<Conn> {
        let sock = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        sock.set_nodelay(true)?;
        let mut c = Conn {
            sock,
            buf: BytesMut::with_capacity(capacity),
        };
        c.sock.write_all(b"AMQP\x00\x00\x09\x01").await?;
        let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_))) =
            c.recv().await?
        else {
            bail!("expected connection.start");
        };
        let mut caps = FieldTable::default();
        caps.insert("publisher_confirms".into(), AMQPValue::Boolean(true));
        let mut props = FieldTable::default();
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        props.insert(
            "product".into(),
            AMQPValue::LongString("warren-perf".into()),
        );
        let start_ok = connection::StartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: LongString::from("\0guest\0guest"),
            locale: "en_US".into(),
        };
        c.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
        ))
        .await?;
        let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) =
            c.recv().await?
        else {
            bail!("expected connection.tune (bad credentials?)");
        };
        let tune_ok = connection::TuneOk {
            channel_max: t.channel_max,
            frame_max: t.frame_max,
            heartbeat: 0,
        };
        c.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        ))
        .await?;
        let open = connection::Open {
            virtual_host: "/".into(),
        };
        c.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(open)),
        ))
        .await?;
        let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) =
            c.recv().await?
        else {
            bail!("expected connection.open-ok");
        };
        if open_channel {
            c.rpc(AMQPClass::Channel(channel::AMQPMethod::Open(
                channel::Open {},
            )))
            .await?;
        }
        Ok(c)
    }
}

pub(crate) fn queue_name(args: &RunArgs, i: usize) -> String {
    if args.queues <= 1 {
        args.queue.clone()
    } else {
        format!("{}-{}", args.queue, i % args.queues)
    }
}

/// `NAME=VALUE` pairs as a field table (`int`: integer values as signed 64-bit integers).
fn pairs(items: &[String], int: bool) -> anyhow::Result<FieldTable> {
    let mut table = FieldTable::default();
    for item in items {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("expected NAME=VALUE, got '{item}'"))?;
        let value = match value.parse::<i64>() {
            Ok(n) if int => AMQPValue::LongLongInt(n),
            _ => AMQPValue::LongString(LongString::from(value)),
        };
        table.insert(name.into(), value);
    }
    Ok(table)
}

/// Declares queues, the exchange and bindings (purging queues left over from a previous run, unless
/// the run drains them).
pub(crate) async fn setup(args: &RunArgs) -> anyhow::Result<()> {
    let mut c = Conn::open(&args.addr).await?;
    if !args.exchange.is_empty() {
        let declare = exchange::Declare {
            exchange: args.exchange.as_str().into(),
            kind: args.exchange_type.as_str().into(),
            durable: args.persistent,
            arguments: pairs(&args.exchange_args, false)?,
            ..Default::default()
        };
        c.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare)))
            .await?;
    }
    for i in 0..args.queues.max(1) {
        let name = queue_name(args, i);
        let declare = queue::Declare {
            queue: name.as_str().into(),
            durable: args.persistent,
            arguments: pairs(&args.queue_args, true)?,
            ..Default::default()
        };
        c.rpc(AMQPClass::Queue(queue::AMQPMethod::Declare(declare)))
            .await?;
        if args.drain == 0 {
            c.rpc(AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: name.as_str().into(),
                nowait: false,
            })))
            .await?;
        }
        if args.exchange.is_empty() {
            continue;
        }
        let keys: Vec<String> = if args.bindings > 0 {
            (0..args.bindings).map(|b| format!("k{b}.*.*")).collect()
        } else if let Some(key) = &args.binding_key {
            vec![key.clone()]
        } else {
            vec![args
                .routing_key
                .clone()
                .filter(|k| k != "random")
                .unwrap_or_else(|| name.clone())]
        };
        for key in keys {
            let bind = queue::Bind {
                queue: name.as_str().into(),
                exchange: args.exchange.as_str().into(),
                routing_key: key.as_str().into(),
                ..Default::default()
            };
            c.rpc(AMQPClass::Queue(queue::AMQPMethod::Bind(bind)))
                .await?;
        }
    }
    Ok(())
}

fn put_short_str(out: &mut BytesMut, s: &str) {
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

/// Appends basic.publish + content header + one body frame; the body is `fixed`, or starts with
/// `stamp` and `seq` and has `size` octets.
#[allow(clippy::too_many_arguments)]
fn put_publish(
    out: &mut BytesMut,
    exchange: &str,
    key: &str,
    header: &[u8],
    fixed: Option<&[u8]>,
    size: usize,
    stamp: u64,
    seq: u64,
) {
    let method_len = 4 + 2 + 1 + exchange.len() + 1 + key.len() + 1;
    out.put_u8(1);
    out.put_u16(1);
    out.put_u32(method_len as u32);
    out.put_u16(60);
    out.put_u16(40);
    out.put_u16(0);
    put_short_str(out, exchange);
    put_short_str(out, key);
    out.put_u8(0);
    out.put_u8(0xCE);
    out.put_slice(header);
    out.put_u8(3);
    out.put_u16(1);
    if let Some(body) = fixed {
        out.put_u32(body.len() as u32);
        out.put_slice(body);
    } else {
        out.put_u32(size as u32);
        out.put_u64(stamp);
        out.put_u64(seq);
        out.put_bytes(b'.', size - 16);
    }
    out.put_u8(0xCE);
}

/// One producer: publishes until the run stops (or `pmessages`), within the confirm window and rate.
pub(crate) async fn produce(
    args: Arc<RunArgs>,
    index: usize,
    stats: Arc<Stats>,
    epoch: Instant,
) -> anyhow::Result<()> {
    let mut c = Conn::open(&args.addr).await?;
    if args.confirm > 0 {
        c.rpc(AMQPClass::Confirm(confirm::AMQPMethod::Select(
            confirm::Select { nowait: false },
        )))
        .await?;
    }
    let mut props = basic::AMQPProperties::default();
    if args.persistent {
        props = props.with_delivery_mode(2);
    }
    if !args.headers.is_empty() {
        props = props.with_headers(pairs(&args.headers, true)?);
    }
    let header = encode(&AMQPFrame::Header(
        1,
        amq_protocol::frame::AMQPContentHeader {
            class_id: 60,
            body_size: args.body.as_ref().map_or(args.size, String::len) as u64,
            properties: props,
        },
    ));
    let queue = queue_name(&args, index);
    let fixed_key = match args.routing_key.as_deref() {
        Some("random") => None,
        Some(k) => Some(k.to_owned()),
        None => Some(queue),
    };
    let (mut rd, mut wr) = c.sock.into_split();
    let confirmed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    // When each outstanding publish was written (ns since `epoch`), oldest first.
    let written: Arc<std::sync::Mutex<std::collections::VecDeque<u64>>> = Arc::default();
    let reader = if args.confirm > 0 {
        let (confirmed, notify, stats, mut buf, written) = (
            Arc::clone(&confirmed),
            Arc::clone(&notify),
            Arc::clone(&stats),
            c.buf,
            Arc::clone(&written),
        );
        Some(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).ok();
            loop {
                while buf.len() >= 7 {
                    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
                    if buf.len() < size + 8 {
                        break;
                    }
                    if buf[0] == 1
                        && size >= 13
                        && buf[7..9] == [0, 60]
                        && (buf[9..11] == [0, 80] || buf[9..11] == [0, 120])
                    {
                        let tag = u64::from_be_bytes(buf[11..19].try_into().unwrap_or_default());
                        let multiple = buf[19] & 1 == 1;
                        let before = confirmed.load(Ordering::Relaxed);
                        let now = if multiple {
                            tag.max(before)
                        } else {
                            before + 1
                        };
                        confirmed.store(now, Ordering::Relaxed);
                        stats.confirmed.fetch_add(now - before, Ordering::Relaxed);
                        let at = epoch.elapsed().as_nanos() as u64;
                        if let (Some(h), Ok(mut w)) = (histogram.as_mut(), written.lock()) {
                            for _ in before..now {
                                if let Some(t) = w.pop_front() {
                                    let _ = h.record(at.saturating_sub(t) / 1000);
                                }
                            }
                        }
                        notify.notify_one();
                    }
                    buf.advance(size + 8);
                }
                if let (Some(h), Ok(mut all)) = (histogram.as_ref(), stats.confirm_latency.lock()) {
                    // Merged after each read, so an aborted reader has left its samples.
                    match all.as_mut() {
                        Some(a) => {
                            let _ = a.add(h);
                        }
                        None => *all = Some(h.clone()),
                    }
                }
                if let Some(h) = histogram.as_mut() {
                    h.reset();
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }))
    } else {
        None
    };
    let mut out = BytesMut::with_capacity((args.size + 200) * BATCH as usize);
    let mut sent: u64 = 0;
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ index as u64;
    let started = Instant::now();
    let mut key_buf = String::new();
    while !stats.stop.load(Ordering::Relaxed) && (args.pmessages == 0 || sent < args.pmessages) {
        let mut batch = BATCH;
        if args.pmessages > 0 {
            batch = batch.min(args.pmessages - sent);
        }
        if args.rate > 0 {
            let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
            if due <= sent {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            batch = batch.min(due - sent);
        }
        if args.confirm > 0 {
            loop {
                let outstanding = sent - confirmed.load(Ordering::Relaxed);
                if outstanding < args.confirm {
                    batch = batch.min(args.confirm - outstanding);
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), notify.notified()).await;
                if stats.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        out.clear();
        for _ in 0..batch {
            sent += 1;
            let key = match &fixed_key {
                Some(k) => k.as_str(),
                None => {
                    // xorshift: a cheap random key from the configured key space
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    key_buf.clear();
                    use std::fmt::Write;
                    let _ = write!(key_buf, "k{}.x.y", rng % args.keys.max(1) as u64);
                    key_buf.as_str()
                }
            };
            put_publish(
                &mut out,
                &args.exchange,
                key,
                &header,
                args.body.as_deref().map(str::as_bytes),
                args.size,
                epoch.elapsed().as_nanos() as u64,
                sent,
            );
        }
        if args.confirm > 0 {
            let at = epoch.elapsed().as_nanos() as u64;
            if let Ok(mut w) = written.lock() {
                w.extend(std::iter::repeat_n(at, batch as usize));
            }
        }
        wr.write_all(&out).await?;
        stats.published.fetch_add(batch, Ordering::Relaxed);
    }
    if let Some(r) = reader {
        // Give outstanding confirms a moment, then stop reading.
        let deadline = Instant::now() + Duration::from_secs(2);
        while args.confirm > 0
            && confirmed.load(Ordering::Relaxed) < sent
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        r.abort();
    }
    Ok(())
}

/// One consumer: counts deliveries, records latency from the timestamp in each body, acks.
pub(crate) async fn consume(
    args: Arc<RunArgs>,
    index: usize,
    stats: Arc<Stats>,
    epoch: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut c = Conn::open(&args.addr).await?;
    if args.qos > 0 {
        c.rpc(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: args.qos,
            global: false,
        })))
        .await?;
    }
    let consume = basic::Consume {
        queue: queue_name(&args, index).as_str().into(),
        consumer_tag: format!("perf-{index}").as_str().into(),
        no_ack: args.auto_ack,
        ..Default::default()
    };
    match c
        .rpc(AMQPClass::Basic(basic::AMQPMethod::Consume(consume)))
        .await?
    {
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => {}
        other => return Err(anyhow!("expected consume-ok, got {other:?}")),
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    let (mut sock, mut buf) = (c.sock, c.buf);
    let mut acks = BytesMut::with_capacity(64 * 1024);
    let mut expect_body = false;
    let mut next_seq = 1u64;
    let mut last_tag = 0u64;
    let mut unacked = 0u64;
    loop {
        let mut received = 0;
        while buf.len() >= 7 {
            let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
            if buf.len() < size + 8 {
                break;
            }
            match buf[0] {
                1 if size >= 4 && buf[7..11] == [0, 60, 0, 60] => {
                    let tag_len = buf[11] as usize;
                    let at = 12 + tag_len;
                    last_tag = u64::from_be_bytes(buf[at..at + 8].try_into().unwrap_or_default());
                    expect_body = true;
                    received += 1;
                    unacked += 1;
                }
                3 if expect_body && args.body.is_some() => expect_body = false,
                3 if expect_body && size >= 8 => {
                    let stamp = u64::from_be_bytes(buf[7..15].try_into().unwrap_or_default());
                    let now = epoch.elapsed().as_nanos() as u64;
                    let _ = histogram.record(now.saturating_sub(stamp) / 1000);
                    if args.check_order && size >= 16 {
                        let seq = u64::from_be_bytes(buf[15..23].try_into().unwrap_or_default());
                        if seq != next_seq
                            && stats.out_of_order.fetch_add(1, Ordering::Relaxed) < 10
                        {
                            eprintln!("out of order: expected {next_seq}, got {seq}");
                        }
                        next_seq = seq + 1;
                    }
                    expect_body = false;
                }
                _ => {}
            }
            buf.advance(size + 8);
            if !args.auto_ack && unacked >= args.multi_ack_every {
                put_ack(&mut acks, last_tag, args.multi_ack_every > 1);
                unacked = 0;
            }
        }
        if received > 0 {
            stats.consumed.fetch_add(received, Ordering::Relaxed);
        }
        if !acks.is_empty() {
            sock.write_all(&acks).await?;
            acks.clear();
        }
        if stats.stop.load(Ordering::Relaxed) {
            return Ok(histogram);
        }
        match tokio::time::timeout(Duration::from_millis(100), sock.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Ok(histogram),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

fn put_ack(out: &mut BytesMut, tag: u64, multiple: bool) {
    out.put_u8(1);
    out.put_u16(1);
    out.put_u32(13);
    out.put_u16(60);
    out.put_u16(80);
    out.put_u64(tag);
    out.put_u8(u8::from(multiple));
    out.put_u8(0xCE);
}
