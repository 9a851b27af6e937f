//! A raw AMQP client over a socket, for what stock clients cannot send (malformed frames) or where a
//! client library's own handling would hide the server's reply. Frames are built and parsed with
//! amq-protocol, independently of the broker's codec.
#![allow(dead_code, unreachable_pub)]

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{channel, connection, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TestBroker, WAIT};

pub struct Raw {
    pub sock: TcpStream,
    pub buf: BytesMut,
}

/// A field table (with its length prefix) holding containers of `kind` (`b'F'` tables, `b'A'` arrays)
/// inside one another, `depth` levels in all, built by hand: amq-protocol's encoder recurses. An entry
/// inside a table takes 6 octets (empty name, type, length), inside an array 5.
pub fn deep_table(depth: usize, kind: u8) -> Vec<u8> {
    let per = if kind == b'A' { 5 } else { 6 };
    let inner = |level: usize| (depth - level) * per; // content octets of a level >= 2
    let mut out = Vec::new();
    let first = if depth > 1 { 6 + inner(2) } else { 0 };
    out.extend_from_slice(&(first as u32).to_be_bytes());
    for level in 2..=depth {
        if level == 2 || kind != b'A' {
            out.push(0); // an empty field name
        }
        out.push(kind);
        out.extend_from_slice(&(inner(level) as u32).to_be_bytes());
    }
    out
}

pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("encode")
        .write
}

impl Raw {
    pub async fn connect_bare(broker: &TestBroker) -> Raw {
        Raw::connect_addr(broker.addr).await
    }

    /// A socket to `addr`, nothing sent.
    pub async fn connect_addr(addr: std::net::SocketAddr) -> Raw {
        let sock = TcpStream::connect(addr).await.expect("tcp connect");
        // Small frames go out at once (no Nagle wait for the broker's delayed ack).
        let _ = sock.set_nodelay(true);
        Raw {
            sock,
            buf: BytesMut::new(),
        }
    }

    /// Header, start-ok (PLAIN), tune-ok, open (the caller reads open-ok or the close).
    pub async fn open(
        broker: &TestBroker,
        user: &str,
        pass: &str,
        vhost: &str,
        heartbeat: u16,
    ) -> Raw {
        Raw::open_tuned(broker, user, pass, vhost, heartbeat, 2047, 131_072).await
    }

    /// Like [`Raw::open`], answering connection.tune with `channel_max` and `frame_max`.
    pub async fn open_tuned(
        broker: &TestBroker,
        user: &str,
        pass: &str,
        vhost: &str,
        heartbeat: u16,
        channel_max: u16,
        frame_max: u32,
    ) -> Raw {
        Raw::open_tuned_at(
            broker.addr,
            user,
            pass,
            vhost,
            heartbeat,
            channel_max,
            frame_max,
        )
        .await
    }

    /// Like [`Raw::open_tuned`], to a broker at `addr`.
    pub async fn open_tuned_at(
        addr: std::net::SocketAddr,
        user: &str,
        pass: &str,
        vhost: &str,
        heartbeat: u16,
        channel_max: u16,
        frame_max: u32,
    ) -> Raw {
        let mut raw = Raw::connect_addr(addr).await;
        raw.send_bytes(b"AMQP\x00\x00\x09\x01").await;
        let start = raw.recv().await.expect("connection.start");
        assert!(matches!(
            start,
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_)))
        ));
        let start_ok = connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from(format!("\0{user}\0{pass}")),
            locale: "en_US".into(),
        };
        raw.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
        )
        .await;
        match raw.recv().await.expect("tune") {
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => {
                assert_eq!(
                    (t.channel_max, t.frame_max, t.heartbeat),
                    (2047, 131_072, 60)
                );
            }
            other => return raw.with_pending(other),
        }
        let tune_ok = connection::TuneOk {
            channel_max,
            frame_max,
            heartbeat,
        };
        raw.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        )
        .await;
        raw.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: vhost.into(),
            })),
        )
        .await;
        raw
    }

    fn with_pending(mut self, frame: AMQPFrame) -> Raw {
        // Put an early frame back so the caller's expectation sees it.
        let mut bytes = BytesMut::from(&encode(&frame)[..]);
        bytes.extend_from_slice(&self.buf);
        self.buf = bytes;
        self
    }

    pub async fn opened(broker: &TestBroker) -> Raw {
        Raw::opened_with_heartbeat(broker, 0).await
    }

    /// Logged in as guest to `/` with `heartbeat` seconds negotiated, open-ok read.
    pub async fn opened_with_heartbeat(broker: &TestBroker, heartbeat: u16) -> Raw {
        Raw::opened_at(broker.addr, heartbeat).await
    }

    /// Logged in as guest to `/` at `addr` with `heartbeat` seconds negotiated, open-ok read.
    pub async fn opened_at(addr: std::net::SocketAddr, heartbeat: u16) -> Raw {
        let mut raw =
            Raw::open_tuned_at(addr, "guest", "guest", "/", heartbeat, 2047, 131_072).await;
        let ok = raw.recv().await.expect("open-ok");
        assert!(
            matches!(
                ok,
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
            ),
            "{ok:?}"
        );
        raw
    }

    pub async fn open_channel(&mut self, id: u16) {
        self.method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        let ok = self.recv().await.expect("channel.open-ok");
        assert!(
            matches!(
                ok,
                AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))
            ),
            "{ok:?}"
        );
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.expect("write");
    }

    pub async fn method(&mut self, ch: u16, method: AMQPClass) {
        self.send_bytes(&encode(&AMQPFrame::Method(ch, method)))
            .await;
    }

    /// The next frame, or None at EOF. Fails the test after 5 s.
    pub async fn recv(&mut self) -> Option<AMQPFrame> {
        loop {
            match parse_frame(&self.buf[..]) {
                Ok((rest, frame)) => {
                    let used = self.buf.len() - rest.len();
                    let _ = self.buf.split_to(used);
                    return Some(frame);
                }
                Err(e) if e.is_incomplete() => {}
                Err(e) => panic!("server sent an undecodable frame: {e:?}"),
            }
            let n = tokio::time::timeout(WAIT, self.sock.read_buf(&mut self.buf))
                .await
                .expect("timed out reading")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until connection.close; answers close-ok; returns (code, text).
    pub async fn expect_connection_close(&mut self) -> (u16, String) {
        loop {
            match self.recv().await {
                Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                )) => {
                    self.method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    )
                    .await;
                    return (c.reply_code, c.reply_text.to_string());
                }
                Some(_) => continue,
                None => panic!("socket closed without connection.close"),
            }
        }
    }

    pub async fn expect_channel_close(&mut self) -> (u16, String) {
        loop {
            match self.recv().await {
                Some(AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(c)))) => {
                    return (c.reply_code, c.reply_text.to_string());
                }
                Some(_) => continue,
                None => panic!("socket closed without channel.close"),
            }
        }
    }

    pub async fn expect_eof(&mut self) {
        while let Some(frame) = self.recv().await {
            let _ = frame;
        }
    }
}
