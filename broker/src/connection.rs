//! One client connection: protocol header, handshake (start / tune / open), heartbeats, the channel
//! table, demultiplexing frames to channels, and hard errors as `connection.close`.
//!
//! One task per connection reads frames and handles them synchronously; a second task
//! ([`Outbound::run_writer`]) writes. Publisher confirms are flushed once per read batch.
//! Reference: AMQP 0-9-1 §2.2.4 (connection), §4.2 (framing), RabbitMQ docs/heartbeats.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{channel as amqp_channel, connection, AMQPClass, AMQPHardError};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::alarm::AlarmState;
use crate::broker::Broker;
use crate::channel::{short_text, Channel, ConnectionContext};
use crate::error::AmqpError;
use crate::protocol::ids::{BASIC_CLASS, BASIC_PUBLISH};
use crate::protocol::outbound::Outbound;
use crate::protocol::{decode_frame, encode, Frame, FrameError, PROTOCOL_HEADER};
use crate::throttle::Admission;
use crate::tls::TlsAcceptor;

/// How long a client has to complete the handshake, and to answer our connection.close.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Octets read ahead, unhandled, while a connection's input is held back (alarm, full write buffer).
const READ_AHEAD: usize = 64 * 1024;
/// Smallest frame_max a client may negotiate: AMQP 0-9-1 `frame-min-size` (4096, as RabbitMQ uses;
/// amq-protocol's generated constant says 8192).
const FRAME_MIN_SIZE: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent connection.close and wait for close-ok; everything else is dropped.
    Closing,
    /// We answered the client's connection.close; wait (bounded) for it to close the socket, as RabbitMQ
    /// does, dropping anything else it sends (AMQP 0-9-1 §2.2.4: the side that sent close closes).
    Draining,
    /// Done: the socket is to be closed.
    Closed,
}

impl State {
    /// RabbitMQ's name for the state (`connection_state` in rabbit_reader), used in reply texts.
    fn rabbit_name(self) -> &'static str {
        match self {
            State::AwaitStartOk => "starting",
            State::AwaitTuneOk => "tuning",
            State::AwaitOpen => "opening",
            State::Open => "running",
            State::Closing | State::Draining | State::Closed => "closing",
        }
    }
}

/// How often a connection's timer ticks: every second, or at half the negotiated heartbeat interval
/// when that is shorter, so heartbeats go out at half the interval as RabbitMQ sends them
/// (docs/heartbeats.md) — a client that treats one interval of silence as a dead peer stays up.
fn tick_period(heartbeat: u16) -> Duration {
    let half = Duration::from_millis(u64::from(heartbeat) * 500);
    if heartbeat == 0 {
        Duration::from_secs(1)
    } else {
        half.min(Duration::from_secs(1))
    }
}

struct Connection {
    broker: Arc<Broker>,
    id: u64,
    peer: SocketAddr,
    outbound: Arc<Outbound>,
    state: State,
    frame_max: usize,
    channel_max: u16,
    heartbeat: u16,
    cancel_notify: bool,
    user: String,
    ctx: Option<ConnectionContext>,
    channels: HashMap<u16, Channel>,
    close_deadline: Option<Instant>,
    /// This connection has published: resource alarms block it.
    publisher: bool,
    /// Blocked by a resource alarm: the socket is not read.
    blocked: bool,
    /// The client advertised the `connection.blocked` capability.
    blocked_notify: bool,
    /// Counted among the broker's connections still in the handshake (until connection.open-ok).
    in_handshake: bool,
    /// Set on an AMQPS connection.
    tls: Option<TlsSession>,
    /// What the management API lists of this connection (registered in the broker's table).
    info: Arc<crate::tracking::ConnectionInfo>,
    /// The client's properties and SASL mechanism from connection.start-ok, kept for `info`.
    client: Option<(FieldTable, String)>,
}

/// Serves one accepted socket until it closes or `shutdown` fires (then closes it with 320); with
/// `tls`, the TLS handshake comes first (within the handshake timeout).
pub(crate) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
    tls: Option<TlsAcceptor>,
) {
    // connection_max, then the cap on connections that have not logged in: past either the socket is
    // closed at once, before anything is read or allocated for it.
    if !broker
        .connections
        .try_increment(broker.config.connection_max)
    {
        warn!(%peer, limit = ?broker.config.connection_max, "connection_max reached, closing the new connection");
        return;
    }
    if !broker
        .handshakes
        .try_increment(Some(broker.config.unauthenticated_connection_max))
    {
        broker.connections.decrement();
        warn!(%peer, limit = broker.config.unauthenticated_connection_max, "too many connections in the handshake, closing the new connection");
        return;
    }
    // An address that keeps failing to log in waits for its turn (crate::throttle).
    let admitted = match broker.login_throttle.admit(peer.ip(), HANDSHAKE_TIMEOUT) {
        Admission::Now => true,
        Admission::After(wait) => tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = shutdown.cancelled() => false,
        },
        Admission::Refuse => {
            debug!(%peer, "failed-login throttle: closing the new connection");
            false
        }
    };
    if !admitted {
        broker.handshakes.decrement();
        broker.connections.decrement();
        return;
    }
    let _ = socket.set_nodelay(true);
    let local = socket.local_addr().unwrap_or(peer);
    let Some(tls) = tls else {
        let (rd, wr) = socket.into_split();
        return serve_stream(rd, wr, (peer, local), broker, shutdown, None).await;
    };
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(socket)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake failed");
            broker.handshakes.decrement();
            broker.connections.decrement();
            return;
        }
        Err(_) => {
            info!(%peer, "TLS handshake timed out");
            broker.handshakes.decrement();
            broker.connections.decrement();
            return;
        }
    };
    // A verified client certificate names the user SASL EXTERNAL logs in as.
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| crate::tls::cert_login_name(cert, broker.config.ssl_cert_login_from));
    let (rd, wr) = tokio::io::split(stream);
    serve_stream(
        rd,
        wr,
        (peer, local),
        broker,
        shutdown,
        Some(TlsSession { identity }),
    )
    .await;
}

/// What a TLS connection knows of its client.
#[derive(Debug, Default)]
struct TlsSession {
    /// The user name from the client's verified certificate (`ssl_cert_login_from`), if it sent one.
    identity: Option<String>,
}

/// Serves a connection over `rd` / `wr` (a TCP socket's halves or a TLS stream's) once admitted.
async fn serve_stream<R, W>(
    rd: R,
    wr: W,
    (peer, local): (SocketAddr, SocketAddr),
    broker: Arc<Broker>,
    shutdown: CancellationToken,
    tls: Option<TlsSession>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let outbound = Arc::new(Outbound::new(broker.config.frame_max as usize));
    let writer = {
        let outbound = Arc::clone(&outbound);
        tokio::spawn(async move { outbound.run_writer(wr).await })
    };
    let id = broker.next_connection_id();
    let info = Arc::new(crate::tracking::ConnectionInfo::new(
        id,
        peer,
        local,
        tls.is_some(),
        shutdown.child_token(),
    ));
    broker.connection_table.insert(Arc::clone(&info));
    let mut conn = Connection {
        // Until tune-ok the spec's frame-min-size bounds every frame, as in RabbitMQ: a client cannot
        // make the broker buffer more than 4 KiB before it has logged in.
        frame_max: FRAME_MIN_SIZE as usize,
        channel_max: broker.config.channel_max,
        heartbeat: 0,
        broker,
        id,
        peer,
        outbound: Arc::clone(&outbound),
        state: State::AwaitStartOk,
        cancel_notify: false,
        user: String::new(),
        ctx: None,
        channels: HashMap::new(),
        close_deadline: None,
        publisher: false,
        blocked: false,
        blocked_notify: false,
        in_handshake: true,
        tls,
        info,
        client: None,
    };
    debug!(conn = id, %peer, "accepted connection");
    if let Err(e) = conn.run(rd, shutdown).await {
        debug!(conn = id, %peer, error = %e, "connection read error");
    }
    conn.cleanup();
    conn.broker.connection_table.remove(id);
    conn.broker.connections.decrement();
    outbound.close();
    let _ = writer.await;
    info!(conn = id, %peer, user = %conn.user, "connection closed");
}

impl Connection {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        mut rd: R,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let handshake_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        while buf.len() < PROTOCOL_HEADER.len() {
            match tokio::time::timeout_at(handshake_deadline, rd.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
        if &buf[..PROTOCOL_HEADER.len()] != PROTOCOL_HEADER {
            // AMQP 0-9-1 §4.2.2: answer with the header we support, then close.
            debug!(conn = self.id, peer = %self.peer, "bad protocol header");
            self.outbound
                .write(|out| out.extend_from_slice(PROTOCOL_HEADER));
            return Ok(());
        }
        buf.advance(PROTOCOL_HEADER.len());
        self.send_start();
        // The client may have written start-ok in the same segment as the header: handle it now rather
        // than wait for bytes it will not send before our connection.tune.
        let mut input_left = false;
        if !buf.is_empty() {
            input_left = self.process(&mut buf);
        }

        let mut last_recv = Instant::now();
        let mut tick = tokio::time::interval(tick_period(0));
        let mut last_heartbeat_sent = Instant::now();
        let mut alarms = self.broker.alarms.subscribe();
        let mut commits = self.broker.store.as_ref().map(|s| s.commits());
        loop {
            let awaiting = self.channels.values().any(Channel::awaits_durability);
            self.apply_alarm(*alarms.borrow_and_update());
            // Input is not handled while blocked by an alarm, nor while the client is not reading what
            // the broker already owes it (its write buffer is past 4 MiB): whatever the
            // client asks for (basic.get, replies, returns) waits in its socket rather than in broker
            // memory. The writer signals `resume` once it has drained. Meanwhile up to READ_AHEAD
            // octets are still read (not handled), so that a client that goes away is noticed and its
            // resources freed.
            // In a cluster, a publisher also waits while more than 8 MiB waits to be written to
            // another node (publishes routed to queues homed there): the link's pace, not memory.
            let link_congested =
                self.publisher && self.broker.cluster.get().is_some_and(|c| c.congested());
            let can_process =
                !self.blocked && !link_congested && self.outbound.has_room_for_input();
            let can_read = can_process || buf.len() < READ_AHEAD;
            tokio::select! {
                biased;
                // The broker's shutdown, or a close asked through the management API (a child token).
                () = self.info.close.cancelled(), if self.state == State::Open => {
                    let reason = self.info.close_reason();
                    let e = AmqpError::connection(
                        AMQPHardError::CONNECTIONFORCED,
                        if shutdown.is_cancelled() || reason.is_empty() {
                            "broker forced connection closure with reason 'shutdown'".to_owned()
                        } else {
                            reason
                        },
                    );
                    self.fail(&e, 0, 0);
                }
                () = self.outbound.resume.notified() => {
                    for ch in self.channels.values() {
                        ch.kick_consumers();
                    }
                }
                Ok(()) = alarms.changed() => {}
                Ok(()) = store_committed(&mut commits), if awaiting => {
                    if let Some(ctx) = &self.ctx {
                        for ch in self.channels.values_mut() {
                            ch.flush_confirms(ctx);
                        }
                    }
                }
                read = rd.read_buf(&mut buf), if can_read => {
                    if read? == 0 {
                        return Ok(());
                    }
                    last_recv = Instant::now();
                    input_left = !can_process || self.process(&mut buf);
                }
                // Input left unhandled while blocked or while the client's write buffer was full.
                () = std::future::ready(()), if input_left && can_process => {
                    input_left = self.process(&mut buf);
                }
                // A congested inter-node link is looked at again shortly.
                () = tokio::time::sleep(std::time::Duration::from_millis(2)), if link_congested => {}
                now = tick.tick() => {
                    let handshaking = matches!(self.state, State::AwaitStartOk | State::AwaitTuneOk | State::AwaitOpen);
                    if handshaking && now > handshake_deadline {
                        debug!(conn = self.id, "handshake timed out");
                        return Ok(());
                    }
                    if self.close_deadline.is_some_and(|d| now > d) {
                        return Ok(());
                    }
                    if let (Some(ctx), State::Open) = (&self.ctx, self.state) {
                        for ch in self.channels.values_mut() {
                            ch.check_delivery_timeout(ctx, now);
                        }
                    }
                    if !can_process {
                        // Input not handled: the client's heartbeats wait in the socket or the buffer.
                        last_recv = now;
                    }
                    if self.heartbeat > 0 {
                        let interval = Duration::from_secs(u64::from(self.heartbeat));
                        if now.duration_since(last_recv) > interval * 2 {
                            warn!(conn = self.id, peer = %self.peer, "missed heartbeats from client, closing");
                            return Ok(());
                        }
                        if now.duration_since(last_heartbeat_sent) >= interval / 2 {
                            last_heartbeat_sent = now;
                            self.outbound.write(encode::heartbeat);
                        }
                    }
                }
            }
            if self.state == State::Closed || self.outbound.is_closed() {
                return Ok(());
            }
            let period = tick_period(self.heartbeat);
            if tick.period() != period {
                // Negotiated a heartbeat below 2 s: tick often enough to send at half the interval.
                tick = tokio::time::interval_at(Instant::now() + period, period);
            }
        }
    }

    /// Decodes and handles the complete frames in `buf`, then flushes publisher confirms. Stops early
    /// when the client's write buffer is full (it is not reading what it asked for); returns whether
    /// input was left in `buf` for that reason.
    fn process(&mut self, buf: &mut BytesMut) -> bool {
        let mut left = false;
        while self.state != State::Closed {
            if !self.outbound.has_room_for_input() {
                left = !buf.is_empty();
                break;
            }
            match decode_frame(buf, self.frame_max) {
                Ok(Some(frame)) => self.handle_frame(frame),
                Ok(None) => break,
                Err(e) => {
                    if matches!(self.state, State::Closing | State::Draining) {
                        self.state = State::Closed;
                        break;
                    }
                    // RabbitMQ reports undecodable payloads as frame errors (rabbit_reader frame_error).
                    let code = match e {
                        FrameError::UnknownMethod { .. } | FrameError::PrefetchSize(_) => {
                            AMQPHardError::NOTIMPLEMENTED
                        }
                        _ => AMQPHardError::FRAMEERROR,
                    };
                    warn!(conn = self.id, peer = %self.peer, error = %e, "bad frame");
                    self.fail(&AmqpError::connection(code, e), 0, 0);
                    buf.clear();
                    break;
                }
            }
        }
        self.flush_held_publications(None);
        if let Some(ctx) = &self.ctx {
            for ch in self.channels.values_mut() {
                ch.flush_confirms(ctx);
            }
        }
        if self.publisher {
            crate::alarm::raise_memory_alarm_if_over(
                &self.broker.alarms,
                &self.broker.alarm_limits,
                self.broker.memory,
            );
        }
        left
    }

    /// Routes the publishes held back for batch routing by every channel (`only = None`) or by channel
    /// `only`: the connection's one entry point for that (at the end of a read batch, before another
    /// method on the channel). An error closes the channel, or the connection, as basic.publish's would.
    fn flush_held_publications(&mut self, only: Option<u16>) {
        let Some(ch) = only else {
            let held: Vec<u16> = self
                .channels
                .iter()
                .filter(|(_, c)| c.has_held_publications())
                .map(|(id, _)| *id)
                .collect();
            for ch in held {
                self.flush_held_on(ch);
            }
            return;
        };
        // Before every method on a channel: one lookup, not a scan of the connection's channels.
        self.flush_held_on(ch);
    }

    fn flush_held_on(&mut self, ch: u16) {
        // Also false when the channel was released meanwhile (a connection error closed every one).
        if !self
            .channels
            .get(&ch)
            .is_some_and(Channel::has_held_publications)
        {
            return;
        }
        if let Err(e) =
            self.with_channel(ch, BASIC_CLASS, BASIC_PUBLISH, Channel::flush_publications)
        {
            self.fail(&e, BASIC_CLASS, BASIC_PUBLISH);
        }
    }

    fn send(&self, channel: u16, method: AMQPClass) {
        self.outbound
            .write(|out| encode::frame(out, &AMQPFrame::Method(channel, method)));
    }

    /// Sends connection.close for a hard error, frees every channel and waits for close-ok.
    fn fail(&mut self, error: &AmqpError, class_id: u16, method_id: u16) {
        let close = connection::Close {
            reply_code: error.reply_code(),
            reply_text: short_text(error.reply_text()),
            class_id,
            method_id,
        };
        // As for channel.close: consumers detached before the close goes out, so no delivery follows it.
        self.release_channels();
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(close)),
        );
        self.state = State::Closing;
        self.close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    /// Gives back `n` channels counted against the user's `max-channels`.
    /// Forgets the closed channels `ids`: user limits, the connection's listing, and their message
    /// counts into the broker's retired totals (node and vhost totals stay monotonic).
    fn forget_channels(&self, ids: impl IntoIterator<Item = u16>) {
        let mut n = 0u64;
        let mut listed = crate::sync::lock(&self.info.channels);
        for id in ids {
            n += 1;
            if let Some(shared) = listed.remove(&id) {
                crate::stats::bump(&self.broker.connection_table.lifecycle.channels_closed, 1);
                let vhost = self.ctx.as_ref().map(|c| c.vhost.name.as_str());
                self.broker.retire_stats(vhost, &shared.stats.snapshot());
                if let Some(v) = vhost {
                    self.broker.retire_exchange_stats(v, &shared.exchanges);
                }
            }
        }
        drop(listed);
        self.broker.user_limits.close_channels(&self.user, n);
    }

    fn release_channels(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        self.forget_channels(ids);
        if let Some(ctx) = &mut self.ctx {
            for (_, mut ch) in self.channels.drain() {
                // Publishes complete before the close were accepted: route them (errors change nothing
                // now).
                if !ch.is_closing() {
                    let _ = ch.flush_publications(ctx);
                }
                ch.release(ctx);
            }
        }
        self.channels.clear();
    }

    fn cleanup(&mut self) {
        self.release_channels();
        if let Some(ctx) = &self.ctx {
            ctx.vhost.remove_exclusive_queues(self.id);
            ctx.vhost.close_connection();
            self.broker.user_limits.close_connection(&self.user);
        }
        self.leave_handshake();
    }

    /// Gives back this connection's place among those in the handshake (once).
    fn leave_handshake(&mut self) {
        if std::mem::take(&mut self.in_handshake) {
            self.broker.handshakes.decrement();
        }
    }

    fn drain(&mut self) {
        self.state = State::Draining;
        self.close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    /// Blocks or unblocks this connection for the current alarm state (publishers only, once open).
    fn apply_alarm(&mut self, alarm: AlarmState) {
        let block = alarm.any() && self.publisher && self.state == State::Open;
        if block == self.blocked {
            return;
        }
        self.blocked = block;
        if self.blocked_notify {
            let method = if block {
                connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: alarm.reason().into(),
                })
            } else {
                connection::AMQPMethod::Unblocked(connection::Unblocked {})
            };
            self.send(0, AMQPClass::Connection(method));
        }
        info!(conn = self.id, peer = %self.peer, blocked = block, "publishing connection flow control");
    }

    fn handle_frame(&mut self, frame: Frame) {
        if let Frame::Method(_, m) = &frame {
            if matches!(
                **m,
                AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Publish(_))
            ) {
                self.publisher = true;
            }
        }
        if self.state == State::Draining {
            return;
        }
        if self.state == State::Closing {
            if let Frame::Method(0, method) = frame {
                match *method {
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                        self.state = State::Closed
                    }
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                        self.send(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        self.drain();
                    }
                    _ => {}
                }
            }
            return;
        }
        let result = match frame {
            Frame::Heartbeat(0) => Ok(()),
            Frame::Heartbeat(ch) => Err(AmqpError::connection(
                AMQPHardError::FRAMEERROR,
                format!("heartbeat frame on channel {ch}"),
            )),
            Frame::Method(0, method) => {
                let ids = (method.get_amqp_class_id(), method.get_amqp_method_id());
                if let Err(e) = self.connection_method(*method) {
                    self.fail(&e, ids.0, ids.1);
                }
                Ok(())
            }
            Frame::Method(ch, method) => {
                self.channel_method(ch, *method);
                Ok(())
            }
            Frame::Header(ch, header, raw) => {
                self.with_channel(ch, BASIC_CLASS, BASIC_PUBLISH, |c, ctx| {
                    c.handle_header(ctx, header, raw)
                })
            }
            Frame::Body(ch, data) => self.with_channel(ch, BASIC_CLASS, BASIC_PUBLISH, |c, ctx| {
                c.handle_body(ctx, data)
            }),
        };
        if let Err(e) = result {
            self.fail(&e, 0, 0);
        }
    }

    /// Runs `f` on an open channel and turns its error into a channel or connection close.
    fn with_channel(
        &mut self,
        ch: u16,
        class_id: u16,
        method_id: u16,
        f: impl FnOnce(&mut Channel, &mut ConnectionContext) -> Result<(), AmqpError>,
    ) -> Result<(), AmqpError> {
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(AmqpError::channel_error("connection not open"));
        };
        let Some(channel) = self.channels.get_mut(&ch) else {
            return Err(AmqpError::channel_error(format!(
                "expected 'channel.open' on channel {ch}"
            )));
        };
        if channel.is_closing() {
            return Ok(()); // frames after our channel.close are dropped until close-ok (§2.2.4)
        }
        let (e, class_id, method_id) = match f(channel, ctx) {
            Ok(()) => return Ok(()),
            // Publishes held back came before the failing frame: they are routed first, and their
            // error, if any, is the one reported.
            Err(e) => match channel.flush_publications(ctx) {
                Err(first) => (first, BASIC_CLASS, BASIC_PUBLISH),
                Ok(()) => (e, class_id, method_id),
            },
        };
        match e {
            AmqpError::Channel(_) => {
                debug!(conn = self.id, channel = ch, error = %e, "channel error");
                channel.close_with_error(ctx, &e, class_id, method_id);
                Ok(())
            }
            e => Err(e),
        }
    }

    fn channel_method(&mut self, ch: u16, method: AMQPClass) {
        let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        let publish = matches!(
            method,
            AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Publish(_))
        );
        if !publish {
            self.flush_held_publications(Some(ch));
        }
        let result = match method {
            AMQPClass::Channel(amqp_channel::AMQPMethod::Open(_)) => self.channel_open(ch),
            AMQPClass::Channel(amqp_channel::AMQPMethod::Close(_)) => {
                let removed = self.channels.remove(&ch);
                if removed.is_some() {
                    self.forget_channels([ch]);
                }
                if let (Some(mut c), Some(ctx)) = (removed, self.ctx.as_ref()) {
                    c.release(ctx);
                }
                self.send(
                    ch,
                    AMQPClass::Channel(amqp_channel::AMQPMethod::CloseOk(amqp_channel::CloseOk {})),
                );
                Ok(())
            }
            AMQPClass::Channel(amqp_channel::AMQPMethod::CloseOk(_)) => {
                if self.channels.get(&ch).is_some_and(Channel::is_closing) {
                    self.channels.remove(&ch);
                    self.forget_channels([ch]);
                }
                Ok(())
            }
            AMQPClass::Connection(_) => Err(AmqpError::command_invalid(format!(
                "connection method on channel {ch}"
            ))),
            method => self.with_channel(ch, class_id, method_id, |c, ctx| {
                c.handle_method(ctx, method)
            }),
        };
        if let Err(e) = result {
            self.fail(&e, class_id, method_id);
        }
    }

    fn channel_open(&mut self, ch: u16) -> Result<(), AmqpError> {
        let Some(ctx) = &self.ctx else {
            return Err(AmqpError::channel_error(
                "channel.open before connection.open",
            ));
        };
        if self.channels.contains_key(&ch) {
            return Err(AmqpError::channel_error("second 'channel.open' seen"));
        }
        // Open channels are counted, whatever their ids (rabbit_reader create_channel).
        if self.channels.len() >= usize::from(self.channel_max) {
            return Err(AmqpError::not_allowed(format!(
                "number of channels opened ({}) has reached the negotiated channel_max ({})",
                self.channels.len(),
                self.channel_max
            )));
        }
        self.broker.user_limits.open_channel(&self.user)?;
        let channel = Channel::new(ch, ctx);
        crate::sync::lock(&self.info.channels).insert(ch, channel.shared());
        crate::stats::bump(&self.broker.connection_table.lifecycle.channels_opened, 1);
        self.channels.insert(ch, channel);
        self.send(
            ch,
            AMQPClass::Channel(amqp_channel::AMQPMethod::OpenOk(amqp_channel::OpenOk {})),
        );
        Ok(())
    }

    fn connection_method(&mut self, method: AMQPClass) -> Result<(), AmqpError> {
        use connection::AMQPMethod as M;
        let AMQPClass::Connection(method) = method else {
            // RabbitMQ: rabbit_reader handle_method0's catch-all.
            return Err(AmqpError::channel_error(format!(
                "unexpected method in connection state {}",
                self.state.rabbit_name()
            )));
        };
        match (self.state, method) {
            (State::AwaitStartOk, M::StartOk(m)) => self.start_ok(&m),
            (State::AwaitTuneOk, M::TuneOk(m)) => self.tune_ok(&m),
            (State::AwaitOpen, M::Open(m)) => self.open(&m),
            (_, M::Close(_)) => {
                self.release_channels();
                self.send(0, AMQPClass::Connection(M::CloseOk(connection::CloseOk {})));
                self.drain();
                Ok(())
            }
            (State::Open, M::UpdateSecret(_)) => {
                self.send(
                    0,
                    AMQPClass::Connection(M::UpdateSecretOk(connection::UpdateSecretOk {})),
                );
                Ok(())
            }
            (State::Open, M::Blocked(_) | M::Unblocked(_)) => Ok(()),
            (state, m) => Err(AmqpError::command_invalid(format!(
                "unexpected method {m:?} in state {state:?}"
            ))),
        }
    }

    /// The user a verified TLS client certificate names, if any.
    fn external_identity(&self) -> Option<&str> {
        self.tls.as_ref()?.identity.as_deref()
    }

    fn send_start(&self) {
        let mut caps = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        let s = |v: &str| AMQPValue::LongString(LongString::from(v));
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        props.insert("product".into(), s("Warren"));
        props.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
        props.insert("platform".into(), s("Rust"));
        props.insert("cluster_name".into(), s("warren"));
        props.insert("copyright".into(), s("The Warren authors"));
        props.insert(
            "information".into(),
            s("Licensed under the Apache License 2.0"),
        );
        // EXTERNAL is offered to a TLS client that presented a verified certificate, as RabbitMQ's
        // rabbitmq_auth_mechanism_ssl does.
        let mechanisms = if self.external_identity().is_some() {
            "PLAIN AMQPLAIN EXTERNAL"
        } else {
            "PLAIN AMQPLAIN"
        };
        let start = connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: LongString::from(mechanisms),
            locales: LongString::from("en_US"),
        };
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(start)),
        );
    }

    fn start_ok(&mut self, m: &connection::StartOk) -> Result<(), AmqpError> {
        if let Some(AMQPValue::FieldTable(caps)) = m.client_properties.inner().get("capabilities") {
            self.cancel_notify = matches!(
                caps.inner().get("consumer_cancel_notify"),
                Some(AMQPValue::Boolean(true))
            );
            self.blocked_notify = matches!(
                caps.inner().get("connection.blocked"),
                Some(AMQPValue::Boolean(true))
            );
        }
        let mechanism = m.mechanism.as_str();
        self.client = Some((m.client_properties.clone(), mechanism.to_owned()));
        let from_loopback = self.peer.ip().is_loopback();
        let (credentials, allowed) = match mechanism {
            "PLAIN" | "AMQPLAIN" => {
                let credentials = if mechanism == "PLAIN" {
                    parse_plain(m.response.as_bytes())
                } else {
                    parse_amqplain(m.response.as_bytes())
                };
                let allowed = credentials.as_ref().is_some_and(|(user, pass)| {
                    self.broker
                        .auth()
                        .authenticate(user, pass, from_loopback)
                        .is_some()
                });
                (credentials, allowed)
            }
            // SASL EXTERNAL: the user named by the verified client certificate, if it exists
            // (RabbitMQ rabbit_auth_mechanism_ssl; the response is not used).
            "EXTERNAL" if self.external_identity().is_some() => {
                let user = self.external_identity().unwrap_or_default().to_owned();
                let allowed = self
                    .broker
                    .auth()
                    .authenticate_external(&user, from_loopback)
                    .is_some();
                (Some((user, String::new())), allowed)
            }
            other => {
                return Err(AmqpError::command_invalid(format!(
                    "unknown authentication mechanism '{other}'"
                )));
            }
        };
        if !allowed {
            self.broker.login_throttle.failed(self.peer.ip());
            warn!(conn = self.id, peer = %self.peer, mechanism, user = ?credentials.map(|c| c.0), "login refused");
            // Sent as connection.close 403 (RabbitMQ's authentication_failure_close behaviour).
            return Err(AmqpError::access_refused(format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            )));
        }
        self.broker.login_throttle.succeeded(self.peer.ip());
        self.user = credentials.map(|c| c.0).unwrap_or_default();
        let tune = connection::Tune {
            channel_max: self.broker.config.channel_max,
            frame_max: self.broker.config.frame_max,
            heartbeat: self.broker.config.heartbeat,
        };
        self.send(0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune)));
        self.state = State::AwaitTuneOk;
        Ok(())
    }

    fn tune_ok(&mut self, m: &connection::TuneOk) -> Result<(), AmqpError> {
        let server = &self.broker.config;
        let frame_max = if m.frame_max == 0 {
            server.frame_max
        } else {
            m.frame_max
        };
        if frame_max > server.frame_max {
            return Err(AmqpError::not_allowed(format!(
                "frame_max={frame_max} > {} max",
                server.frame_max
            )));
        }
        if frame_max < FRAME_MIN_SIZE {
            return Err(AmqpError::not_allowed(format!(
                "frame_max={frame_max} < 4096 min"
            )));
        }
        let channel_max = if m.channel_max == 0 {
            server.channel_max
        } else {
            m.channel_max
        };
        if channel_max > server.channel_max {
            return Err(AmqpError::not_allowed(format!(
                "channel_max={channel_max} > {} max",
                server.channel_max
            )));
        }
        self.frame_max = frame_max as usize;
        self.outbound.set_frame_max(self.frame_max);
        self.channel_max = channel_max;
        self.heartbeat = m.heartbeat;
        self.state = State::AwaitOpen;
        Ok(())
    }

    fn open(&mut self, m: &connection::Open) -> Result<(), AmqpError> {
        let Some(vhost) = self.broker.vhost(m.virtual_host.as_str()) else {
            return Err(AmqpError::not_allowed(format!(
                "vhost {} not found",
                m.virtual_host
            )));
        };
        let Some(permission) = self
            .broker
            .auth()
            .permission(&self.user, m.virtual_host.as_str())
        else {
            return Err(AmqpError::not_allowed(format!(
                "access to vhost '{}' refused for user '{}'",
                m.virtual_host, self.user
            )));
        };
        vhost.open_connection(&self.user)?;
        if let Err(e) = self.broker.user_limits.open_connection(&self.user) {
            vhost.close_connection();
            return Err(e);
        }
        self.leave_handshake();
        self.ctx = Some(ConnectionContext::new(
            vhost,
            self.id,
            Arc::clone(&self.outbound),
            &self.broker.config,
            self.cancel_notify,
            self.user.clone(),
            permission,
        ));
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        self.state = State::Open;
        let (client_properties, auth_mechanism) = self.client.take().unwrap_or_default();
        let _ = self.info.opened.set(crate::tracking::Opened {
            user: self.user.clone(),
            vhost: m.virtual_host.to_string(),
            client_properties,
            auth_mechanism,
            heartbeat: self.heartbeat,
            frame_max: u32::try_from(self.frame_max).unwrap_or(u32::MAX),
            channel_max: self.channel_max,
        });
        info!(conn = self.id, peer = %self.peer, user = %self.user, vhost = %m.virtual_host, "connection opened");
        Ok(())
    }
}

/// SASL PLAIN response: `[authzid] NUL authcid NUL passwd` (RFC 4616).
fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(pass.to_vec()).ok()?,
    ))
}

/// AMQPLAIN response: a field table without its length prefix, with `LOGIN` and `PASSWORD`.
fn parse_amqplain(response: &[u8]) -> Option<(String, String)> {
    let mut framed = Vec::with_capacity(response.len() + 4);
    framed.extend_from_slice(&(response.len() as u32).to_be_bytes());
    framed.extend_from_slice(response);
    if crate::protocol::nesting::table_nesting(&framed)
        > crate::protocol::nesting::MAX_FIELD_NESTING
    {
        return None;
    }
    let (_, table) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
    let text = |key: &str| match table.inner().get(key)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

/// Completes when the store finishes a commit round (never without a store).
async fn store_committed(
    commits: &mut Option<tokio::sync::watch::Receiver<u64>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match commits {
        Some(r) => r.changed().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_responses() {
        assert_eq!(
            parse_plain(b"\0guest\0guest"),
            Some(("guest".into(), "guest".into()))
        );
        assert_eq!(parse_plain(b"guest\0guest"), None);
        let mut table = FieldTable::default();
        table.insert("LOGIN".into(), AMQPValue::LongString("u".into()));
        table.insert("PASSWORD".into(), AMQPValue::LongString("p".into()));
        let encoded = amq_protocol::types::generation::gen_field_table(&table)(
            amq_protocol::frame::WriteContext::from(Vec::new()),
        )
        .unwrap()
        .write;
        assert_eq!(
            parse_amqplain(&encoded[4..]),
            Some(("u".into(), "p".into()))
        );
    }
}
