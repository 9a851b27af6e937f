//! A trivial AMQP server for measuring the generator itself: completes the handshake, answers setup
//! methods, discards publishes and confirms them (one multiple ack per read).

use amq_protocol::frame::{parse_frame, AMQPFrame};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::encode;

/// Accepts connections on `listen` forever.
///
/// # Errors
/// The listener cannot bind.
pub(crate) async fn run(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("sink listening on {}", listener.local_addr()?);
    loop {
        let (sock, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = serve(sock).await;
        });
    }
}

fn reply(ch: u16, method: AMQPClass) -> Vec<u8> {
    encode(&AMQPFrame::Method(ch, method))
}

async fn serve(mut sock: TcpStream) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(1 << 20);
    while buf.len() < 8 {
        if sock.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
    buf.advance(8);
    let start = connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: FieldTable::default(),
        mechanisms: LongString::from("PLAIN"),
        locales: LongString::from("en_US"),
    };
    sock.write_all(&reply(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Start(start)),
    ))
    .await?;
    let mut out = BytesMut::new();
    let mut confirming = false;
    let mut published: u64 = 0;
    let mut acked: u64 = 0;
    loop {
        while buf.len() >= 7 {
            let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
            if buf.len() < size + 8 {
                break;
            }
            if buf[0] == 1 && buf[7..11] == [0, 60, 0, 40] {
                published += 1; // basic.publish: not even decoded
            } else if buf[0] == 1 {
                if let Ok((_, AMQPFrame::Method(ch, m))) = parse_frame(&buf[..size + 8]) {
                    let answer = match m {
                        AMQPClass::Connection(connection::AMQPMethod::StartOk(_)) => Some(
                            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                                channel_max: 2047,
                                frame_max: 131072,
                                heartbeat: 0,
                            })),
                        ),
                        AMQPClass::Connection(connection::AMQPMethod::Open(_)) => {
                            Some(AMQPClass::Connection(connection::AMQPMethod::OpenOk(
                                connection::OpenOk {},
                            )))
                        }
                        AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                            Some(AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )))
                        }
                        AMQPClass::Channel(channel::AMQPMethod::Open(_)) => Some(
                            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                        ),
                        AMQPClass::Confirm(confirm::AMQPMethod::Select(_)) => {
                            confirming = true;
                            Some(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
                                confirm::SelectOk {},
                            )))
                        }
                        AMQPClass::Exchange(exchange::AMQPMethod::Declare(_)) => {
                            Some(AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                                exchange::DeclareOk {},
                            )))
                        }
                        AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => Some(AMQPClass::Queue(
                            queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                                queue: d.queue,
                                message_count: 0,
                                consumer_count: 0,
                            }),
                        )),
                        AMQPClass::Queue(queue::AMQPMethod::Purge(_)) => Some(AMQPClass::Queue(
                            queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count: 0 }),
                        )),
                        AMQPClass::Queue(queue::AMQPMethod::Bind(_)) => Some(AMQPClass::Queue(
                            queue::AMQPMethod::BindOk(queue::BindOk {}),
                        )),
                        AMQPClass::Basic(basic::AMQPMethod::Qos(_)) => {
                            Some(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})))
                        }
                        _ => None,
                    };
                    if let Some(a) = answer {
                        out.extend_from_slice(&reply(ch, a));
                    }
                }
            }
            buf.advance(size + 8);
        }
        if confirming && published > acked {
            out.put_slice(&[1, 0, 1, 0, 0, 0, 13, 0, 60, 0, 80]);
            out.put_u64(published);
            out.put_u8(1);
            out.put_u8(0xCE);
            acked = published;
        }
        if !out.is_empty() {
            sock.write_all(&out).await?;
            out.clear();
        }
        if sock.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
