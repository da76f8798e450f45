//! The task consumer's own AMQP connection, driven by tokio directly.
//!
//! lapin runs one I/O thread per connection: every delivery crosses from
//! that thread to the consumer's task, and every ack from the ack batcher's
//! task back to it, each a thread wake-up. With a prefetch window of 8 the
//! worker's throughput is that round trip divided into 8, so the hops were
//! the bound. Here the consumer reads and parses frames from the socket in
//! its own task (`recv`), and the ack batcher writes its frames to the
//! socket itself: a delivery reaches the worker, and its ack the broker,
//! with no other thread in between.
//!
//! It speaks only what a consumer needs: the handshake (PLAIN
//! authentication, tune, vhost), one channel, `basic.qos`,
//! `basic.consume`, deliveries (method, header and body frames),
//! `basic.ack`/`basic.reject`, heartbeats both ways, and the broker's
//! `basic.cancel`, `channel.close`, `connection.close` and flow control.
//! Frames are encoded and decoded with the AMQP codec lapin uses
//! (amq-protocol), so properties and header tables read exactly as they do
//! on lapin's channels. Declarations, publishing and everything else stay
//! on lapin's connections.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::protocol::{self, basic, channel, connection, AMQPClass};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use qcore::{BrokerError, ErrorKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

use crate::tls::TlsOptions;

use crate::url::AmqpUrl;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type, channel and size.
const FRAME_HEAD: usize = 7;
/// The one channel of the connection.
const CH: u16 = 1;
/// The largest frame proposed (RabbitMQ's default).
const FRAME_MAX: u32 = 131_072;
/// The smallest frame AMQP allows.
const FRAME_MIN: u32 = 4_096;

fn lost(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(ErrorKind::Connection, what.to_string())
}

fn context(what: &str, e: BrokerError) -> BrokerError {
    BrokerError::new(e.kind(), format!("{what}: {}", e.message()))
}

fn protocol_err(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(ErrorKind::Protocol, format!("AMQP framing: {what}"))
}

/// A close sent by the broker: its reply code picks the kind, its text
/// (which says what was wrong) is kept.
fn closed_by_broker(what: &str, code: u16, text: &ShortString) -> BrokerError {
    let kind = match code {
        // CONNECTION_FORCED (an operator, a node shutting down), RESOURCE_ERROR,
        // INTERNAL_ERROR: try again later.
        320 | 506 | 541 => ErrorKind::Connection,
        // ACCESS_REFUSED, INVALID_PATH (vhost), NOT_ALLOWED: settings.
        403 | 402 | 530 => ErrorKind::Config,
        404 => ErrorKind::NotFound,
        _ => ErrorKind::Protocol,
    };
    BrokerError::new(kind, format!("{what}: {code} {}", text.as_str()))
}

/// Append one method frame.
fn put_method(buf: &mut Vec<u8>, channel: u16, class: &AMQPClass) -> Result<(), BrokerError> {
    let start = buf.len();
    buf.push(FRAME_METHOD);
    buf.extend_from_slice(&channel.to_be_bytes());
    buf.extend_from_slice(&[0; 4]);
    let (out, _) = cookie_factory::gen(protocol::gen_class(class), std::mem::take(buf))
        .map_err(|e| BrokerError::new(ErrorKind::Serialization, format!("encoding an AMQP method: {e:?}")))?;
    *buf = out;
    let size = u32::try_from(buf.len() - start - FRAME_HEAD)
        .map_err(|_| BrokerError::new(ErrorKind::Serialization, "AMQP method too large"))?;
    buf[start + 3..start + FRAME_HEAD].copy_from_slice(&size.to_be_bytes());
    buf.push(FRAME_END);
    Ok(())
}

const HEARTBEAT: [u8; 8] = [FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END];

/// The two halves of the connection's byte stream (TCP, or TLS over it).
type ReadSide = Box<dyn AsyncRead + Send + Unpin>;
type WriteSide = Box<dyn AsyncWrite + Send + Unpin>;

/// `amqps://`: the TLS handshake over `sock`, with the broker's TLS options.
#[cfg(feature = "tls")]
async fn tls_stream(url: &AmqpUrl, tls: &TlsOptions, sock: TcpStream) -> Result<(ReadSide, WriteSide), BrokerError> {
    let config = tls.rustls_config()?;
    let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| {
        BrokerError::new(ErrorKind::Config, format!("{:?} is not a valid TLS server name: {e}", url.host))
    })?;
    let stream = tokio_rustls::TlsConnector::from(config).connect(name, sock).await.map_err(|e| {
        // A refused certificate is settings, not a passing outage.
        let kind = if crate::tls::is_certificate_error(&e) { ErrorKind::Config } else { ErrorKind::Connection };
        BrokerError::with_source(kind, format!("TLS handshake with {}:{}", url.host, url.port), e)
    })?;
    let (r, w) = tokio::io::split(stream);
    Ok((Box::new(r), Box::new(w)))
}

#[cfg(not(feature = "tls"))]
async fn tls_stream(_: &AmqpUrl, _: &TlsOptions, _: TcpStream) -> Result<(ReadSide, WriteSide), BrokerError> {
    Err(BrokerError::new(ErrorKind::Config, "amqps:// needs qamqp's cargo feature `tls`"))
}

/// The write side of the connection, shared by the consumer, the ack
/// batcher, the ackers and the heartbeat task.
pub(crate) struct Out {
    w: Mutex<WriteSide>,
    open: AtomicBool,
}

impl Out {
    /// Whether the connection is still usable (no error seen either way).
    pub(crate) fn connected(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn broken(&self) {
        self.open.store(false, Ordering::Release);
    }

    async fn write(&self, bytes: &[u8]) -> Result<(), BrokerError> {
        if !self.connected() {
            return Err(lost("the consumer connection is closed"));
        }
        let mut w = self.w.lock().await;
        // (TLS buffers what it is given: the flush sends it.)
        if let Err(e) = async {
            w.write_all(bytes).await?;
            w.flush().await
        }
        .await
        {
            self.broken();
            return Err(BrokerError::with_source(ErrorKind::Connection, "writing to the consumer connection", e));
        }
        Ok(())
    }

    async fn method(&self, class: AMQPClass) -> Result<(), BrokerError> {
        let mut buf = Vec::with_capacity(64);
        put_method(&mut buf, CH, &class)?;
        self.write(&buf).await
    }

    async fn method0(&self, m: connection::AMQPMethod) -> Result<(), BrokerError> {
        let mut buf = Vec::with_capacity(256);
        put_method(&mut buf, 0, &AMQPClass::Connection(m))?;
        self.write(&buf).await
    }

    /// `basic.ack` frames, written at once.
    pub(crate) async fn acks(&self, acks: impl Iterator<Item = (u64, bool)>) -> Result<(), BrokerError> {
        let mut buf = Vec::with_capacity(64);
        for (delivery_tag, multiple) in acks {
            put_method(&mut buf, CH, &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack { delivery_tag, multiple })))?;
        }
        self.write(&buf).await
    }

    /// `basic.reject`.
    pub(crate) async fn reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), BrokerError> {
        self.method(AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject { delivery_tag, requeue }))).await
    }

    /// `connection.close` (it closes the channel too), without waiting for
    /// the reply: RabbitMQ returns the unsettled deliveries when it reads it
    /// (or when the socket closes). Also right after the broker closed the
    /// channel: nothing is sent on that channel again.
    pub(crate) async fn close(&self) {
        if !self.connected() {
            return;
        }
        let close = connection::Close { reply_code: 200, reply_text: "OK".into(), class_id: 0, method_id: 0 };
        let _ = self.method0(connection::AMQPMethod::Close(close)).await;
        let mut w = self.w.lock().await;
        let _ = w.shutdown().await;
        self.broken();
    }
}

/// A message as the broker delivered it.
pub(crate) struct RawDelivery {
    pub(crate) consumer_tag: ShortString,
    pub(crate) delivery_tag: u64,
    pub(crate) redelivered: bool,
    pub(crate) properties: BasicProperties,
    pub(crate) data: Vec<u8>,
}

/// What the consumer receives. Deliveries are nearly every value, so they
/// are not boxed (an allocation each) to make the rare variant smaller.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Incoming {
    Delivery(RawDelivery),
    /// The broker cancelled this consumer (its queue was deleted, or the
    /// node holding it went away).
    Cancelled(ShortString),
}

#[allow(clippy::large_enum_variant)]
enum Event {
    In(Incoming),
    /// A reply to a synchronous method (setup).
    Reply(AMQPClass),
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A consumer connection with its one channel open. A reader task reads
/// the socket all the time (so a close by the broker is known at once, also
/// while the worker is not asking for deliveries) and hands deliveries over
/// through a channel; `recv` takes them from there.
pub(crate) struct DirectConn {
    rx: mpsc::UnboundedReceiver<Result<Event, BrokerError>>,
    out: Arc<Out>,
    backlog: VecDeque<Incoming>,
    _reader: AbortOnDrop,
    _heartbeat: Option<AbortOnDrop>,
}

impl DirectConn {
    /// Connect, authenticate, open the vhost and channel 1.
    pub(crate) async fn open(url: &AmqpUrl, tls: &TlsOptions, name: &str) -> Result<Self, BrokerError> {
        let timeout = url.connection_timeout.unwrap_or(Duration::from_secs(10));
        let where_ = format!("{}:{}", url.host, url.port);
        let mut conn = match tokio::time::timeout(timeout, Self::handshake(url, tls, name)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(BrokerError::new(
                    ErrorKind::Connection,
                    format!("connecting to {where_} timed out after {timeout:?}"),
                ))
            }
        };
        conn.out.method(AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))).await?;
        match conn.reply("opening a channel").await? {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => Ok(conn),
            other => Err(protocol_err(format!("expected channel.open-ok, got {other:?}"))),
        }
    }

    async fn handshake(url: &AmqpUrl, tls: &TlsOptions, name: &str) -> Result<Self, BrokerError> {
        let where_ = format!("{}:{}", url.host, url.port);
        let sock = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| BrokerError::with_source(ErrorKind::Connection, format!("connecting to {where_}"), e))?;
        let _ = sock.set_nodelay(true);
        let (rd, mut wr): (ReadSide, WriteSide) = if url.tls {
            tls_stream(url, tls, sock).await?
        } else {
            let (r, w) = sock.into_split();
            (Box::new(r), Box::new(w))
        };
        async {
            wr.write_all(b"AMQP\x00\x00\x09\x01").await?;
            wr.flush().await
        }
        .await
        .map_err(|e| BrokerError::with_source(ErrorKind::Connection, format!("connecting to {where_}"), e))?;
        let out = Arc::new(Out { w: Mutex::new(wr), open: AtomicBool::new(true) });
        let mut reader = Reader {
            rd,
            buf: Vec::with_capacity(1 << 16),
            pos: 0,
            out: out.clone(),
            read_timeout: None,
            frame_max: FRAME_MAX,
        };
        let start = match reader.handshake_reply("connecting").await? {
            connection::AMQPMethod::Start(s) => s,
            other => return Err(protocol_err(format!("expected connection.start, got {other:?}"))),
        };
        let mechanisms = start.mechanisms.to_string();
        if !mechanisms.split(' ').any(|m| m == "PLAIN") {
            return Err(BrokerError::new(
                ErrorKind::Config,
                format!("the broker at {where_} offers no PLAIN authentication (it offers {mechanisms:?})"),
            ));
        }
        let mut caps = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert("product".into(), AMQPValue::LongString("qtask".into()));
        props.insert("version".into(), AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()));
        props.insert("platform".into(), AMQPValue::LongString("Rust".into()));
        props.insert("connection_name".into(), AMQPValue::LongString(name.into()));
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let response = format!("\0{}\0{}", url.user, url.password);
        out.method0(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: LongString::from(response.as_str()),
            locale: "en_US".into(),
        }))
        .await?;
        let tune = match reader.handshake_reply("authenticating").await {
            Ok(connection::AMQPMethod::Tune(t)) => t,
            Ok(other) => return Err(protocol_err(format!("expected connection.tune, got {other:?}"))),
            Err(e) if e.kind() == ErrorKind::Connection => {
                // Brokers without authentication_failure_close just hang up.
                return Err(BrokerError::new(
                    ErrorKind::Config,
                    format!(
                        "the broker at {where_} closed the connection during authentication ({e}); \
                         check the user name and password"
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        let negotiate = |ours: u32, theirs: u32| match (ours, theirs) {
            (0, t) => t,
            (o, 0) => o,
            (o, t) => o.min(t),
        };
        let frame_max = negotiate(url.frame_max.unwrap_or(FRAME_MAX), tune.frame_max).max(FRAME_MIN);
        let channel_max = negotiate(u32::from(url.channel_max.unwrap_or(0)), u32::from(tune.channel_max));
        let heartbeat =
            if url.heartbeat == 0 { 0 } else { negotiate(u32::from(url.heartbeat), u32::from(tune.heartbeat)) };
        let heartbeat = u16::try_from(heartbeat).unwrap_or(u16::MAX);
        reader.frame_max = frame_max;
        out.method0(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: u16::try_from(channel_max).unwrap_or(u16::MAX),
            frame_max,
            heartbeat,
        }))
        .await?;
        out.method0(connection::AMQPMethod::Open(connection::Open { virtual_host: url.vhost.as_str().into() })).await?;
        match reader.handshake_reply(&format!("opening vhost {:?}", url.vhost)).await? {
            connection::AMQPMethod::OpenOk(_) => {}
            other => return Err(protocol_err(format!("expected connection.open-ok, got {other:?}"))),
        }
        let mut beat = None;
        if heartbeat > 0 {
            let every = Duration::from_secs(u64::from(heartbeat));
            reader.read_timeout = Some(every * 2);
            let out = Arc::downgrade(&out);
            beat = Some(AbortOnDrop(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every / 2);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(out) = out.upgrade() else { return };
                    if out.write(&HEARTBEAT).await.is_err() {
                        return;
                    }
                }
            })));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = AbortOnDrop(tokio::spawn(reader.run(tx)));
        Ok(DirectConn { rx, out, backlog: VecDeque::new(), _reader: reader, _heartbeat: beat })
    }

    /// The write side, for the ack batcher and the ackers.
    pub(crate) fn out(&self) -> &Arc<Out> {
        &self.out
    }

    /// `basic.qos`.
    pub(crate) async fn qos(&mut self, prefetch_count: u16, global: bool) -> Result<(), BrokerError> {
        self.out.method(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos { prefetch_count, global }))).await?;
        match self.reply("setting the prefetch (basic.qos)").await? {
            AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) => Ok(()),
            other => Err(protocol_err(format!("expected basic.qos-ok, got {other:?}"))),
        }
    }

    /// `basic.consume`; returns the consumer tag (the broker's if `tag` is empty).
    pub(crate) async fn consume(&mut self, queue: &str, tag: &str) -> Result<ShortString, BrokerError> {
        let consume = basic::Consume {
            queue: queue.into(),
            consumer_tag: tag.into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        };
        self.out.method(AMQPClass::Basic(basic::AMQPMethod::Consume(consume))).await?;
        match self.reply(&format!("consuming from {queue:?}")).await? {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)) => Ok(ok.consumer_tag),
            other => Err(protocol_err(format!("expected basic.consume-ok, got {other:?}"))),
        }
    }

    async fn event(&mut self) -> Result<Event, BrokerError> {
        match self.rx.recv().await {
            Some(r) => r,
            None => Err(lost("the consumer connection's reader stopped")),
        }
    }

    /// The next delivery or cancellation.
    pub(crate) async fn next(&mut self) -> Result<Incoming, BrokerError> {
        if let Some(i) = self.backlog.pop_front() {
            return Ok(i);
        }
        loop {
            match self.event().await? {
                Event::In(i) => return Ok(i),
                Event::Reply(other) => tracing::debug!(method = ?other, "unexpected method on the consumer channel"),
            }
        }
    }

    /// Wait for the reply to a synchronous method; deliveries that come
    /// first are kept for [`DirectConn::next`].
    async fn reply(&mut self, what: &str) -> Result<AMQPClass, BrokerError> {
        loop {
            match self.event().await.map_err(|e| context(what, e))? {
                Event::In(i) => self.backlog.push_back(i),
                Event::Reply(class) => return Ok(class),
            }
        }
    }
}

/// The read side: frames from the socket, parsed.
struct Reader {
    rd: ReadSide,
    buf: Vec<u8>,
    pos: usize,
    out: Arc<Out>,
    /// Silence after which the broker is taken for gone (two heartbeats).
    read_timeout: Option<Duration>,
    frame_max: u32,
}

impl Reader {
    async fn run(mut self, tx: mpsc::UnboundedSender<Result<Event, BrokerError>>) {
        loop {
            match self.event().await {
                Ok(ev) => {
                    if tx.send(Ok(ev)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    self.out.broken();
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    }

    /// A connection-class reply during the handshake.
    async fn handshake_reply(&mut self, what: &str) -> Result<connection::AMQPMethod, BrokerError> {
        match self.event().await.map_err(|e| context(what, e))? {
            Event::Reply(AMQPClass::Connection(m)) => Ok(m),
            Event::Reply(other) => Err(protocol_err(format!("{what}: unexpected {other:?}"))),
            Event::In(_) => Err(protocol_err(format!("{what}: a delivery before the connection is open"))),
        }
    }

    async fn event(&mut self) -> Result<Event, BrokerError> {
        loop {
            let (kind, channel, payload) = self.frame().await?;
            match kind {
                FRAME_HEARTBEAT => continue,
                FRAME_METHOD => {}
                other => return Err(protocol_err(format!("unexpected frame type {other} on channel {channel}"))),
            }
            let class = parse_method(&self.buf[payload])?;
            match class {
                AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => {
                    let delivery = self.content(d).await?;
                    return Ok(Event::In(Incoming::Delivery(delivery)));
                }
                AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
                    if !c.nowait {
                        let ok = basic::CancelOk { consumer_tag: c.consumer_tag.clone() };
                        self.out.method(AMQPClass::Basic(basic::AMQPMethod::CancelOk(ok))).await?;
                    }
                    return Ok(Event::In(Incoming::Cancelled(c.consumer_tag)));
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                    let ok = AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}));
                    let _ = self.out.method(ok).await;
                    self.out.close().await;
                    return Err(closed_by_broker(
                        "the broker closed the consumer channel",
                        c.reply_code,
                        &c.reply_text,
                    ));
                }
                AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                    let ok = connection::AMQPMethod::CloseOk(connection::CloseOk {});
                    let _ = self.out.method0(ok).await;
                    self.out.broken();
                    return Err(closed_by_broker(
                        "the broker closed the consumer connection",
                        c.reply_code,
                        &c.reply_text,
                    ));
                }
                AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => {
                    let ok = channel::FlowOk { active: f.active };
                    self.out.method(AMQPClass::Channel(channel::AMQPMethod::FlowOk(ok))).await?;
                }
                AMQPClass::Connection(connection::AMQPMethod::Blocked(b)) => {
                    tracing::warn!(reason = %b.reason, "the broker blocked the connection (resource alarm)");
                }
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => {
                    tracing::info!("the broker unblocked the connection");
                }
                other => return Ok(Event::Reply(other)),
            }
        }
    }

    /// The header and body frames of a delivery.
    async fn content(&mut self, d: basic::Deliver) -> Result<RawDelivery, BrokerError> {
        let (kind, _, payload) = self.frame().await?;
        if kind != FRAME_HEADER {
            return Err(protocol_err(format!("expected a content header after basic.deliver, got frame type {kind}")));
        }
        let (body_size, properties) = parse_content_header(&self.buf[payload])?;
        let mut data = Vec::with_capacity(body_size.min(64 << 20));
        while data.len() < body_size {
            let (kind, _, payload) = self.frame().await?;
            if kind != FRAME_BODY {
                return Err(protocol_err(format!("expected a body frame, got frame type {kind}")));
            }
            data.extend_from_slice(&self.buf[payload]);
        }
        if data.len() != body_size {
            return Err(protocol_err(format!("body of {} bytes, {body_size} announced", data.len())));
        }
        Ok(RawDelivery {
            consumer_tag: d.consumer_tag,
            delivery_tag: d.delivery_tag,
            redelivered: d.redelivered,
            properties,
            data,
        })
    }

    /// The next frame: (type, channel, payload range in `self.buf`).
    async fn frame(&mut self) -> Result<(u8, u16, Range<usize>), BrokerError> {
        loop {
            let avail = &self.buf[self.pos..];
            if avail.len() >= FRAME_HEAD {
                let kind = avail[0];
                let channel = u16::from_be_bytes([avail[1], avail[2]]);
                let size = u32::from_be_bytes([avail[3], avail[4], avail[5], avail[6]]);
                if size > self.frame_max {
                    return Err(protocol_err(format!("frame of {size} bytes (frame_max {})", self.frame_max)));
                }
                let end = FRAME_HEAD + size as usize;
                let have = avail.len();
                if have > end {
                    if avail[end] != FRAME_END {
                        return Err(protocol_err("frame without its end marker"));
                    }
                    let start = self.pos + FRAME_HEAD;
                    self.pos += end + 1;
                    return Ok((kind, channel, start..start + size as usize));
                }
                self.buf.reserve(end + 1 - have);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), BrokerError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(1 << 16);
        }
        let read = self.rd.read_buf(&mut self.buf);
        let n = match self.read_timeout {
            Some(t) => match tokio::time::timeout(t, read).await {
                Ok(r) => r,
                Err(_) => return Err(lost(format!("no heartbeat from the broker for {t:?}"))),
            },
            None => read.await,
        };
        match n {
            Ok(0) => Err(lost("the broker closed the consumer connection")),
            Ok(_) => Ok(()),
            Err(e) => {
                // TLS 1.3: a server refusing our certificate says so after the
                // handshake, on the first read.
                let kind = if crate::tls::is_certificate_error(&e) { ErrorKind::Config } else { ErrorKind::Connection };
                Err(BrokerError::with_source(kind, "reading from the consumer connection", e))
            }
        }
    }
}

/// A content header frame's payload: the announced body size and the
/// message properties.
pub(crate) fn parse_content_header(header: &[u8]) -> Result<(usize, BasicProperties), BrokerError> {
    if header.len() < 12 {
        return Err(protocol_err("content header too short"));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&header[4..12]);
    let body_size = u64::from_be_bytes(size);
    let (_, properties) = protocol::basic::parse_properties(&header[12..])
        .map_err(|e| protocol_err(format!("content header properties: {e:?}")))?;
    let body_size = usize::try_from(body_size).map_err(|_| protocol_err("body too large"))?;
    Ok((body_size, properties))
}

pub(crate) fn parse_method(payload: &[u8]) -> Result<AMQPClass, BrokerError> {
    match protocol::parse_class(payload) {
        Ok(([], class)) => Ok(class),
        Ok(_) => Err(protocol_err("bytes left after a method")),
        Err(e) => Err(protocol_err(format!("undecodable method: {e:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_frames_are_amqp_method_frames() {
        let mut buf = Vec::new();
        let ack = AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack { delivery_tag: 0x0102, multiple: true }));
        put_method(&mut buf, CH, &ack).expect("encode");
        assert_eq!(
            buf,
            [&[FRAME_METHOD, 0, 1, 0, 0, 0, 13][..], &[0, 60, 0, 80], &[0, 0, 0, 0, 0, 0, 1, 2], &[1, FRAME_END]]
                .concat()
        );
        assert_eq!(parse_method(&buf[FRAME_HEAD..buf.len() - 1]).expect("decode"), ack);
    }

    fn url(s: &str) -> AmqpUrl {
        AmqpUrl::parse(s).expect("url")
    }

    /// The shared RabbitMQ of the tests: `QTASK_TEST_AMQP_URL`, else
    /// `amqp://guest:guest@127.0.0.1:5672/%2f` (as in integration-tests).
    fn shared() -> AmqpUrl {
        url(&std::env::var("QTASK_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string()))
    }

    #[tokio::test]
    async fn handshake_refusals_are_config_errors() {
        let wrong = AmqpUrl { password: "wrong".to_string(), ..shared() };
        let e = DirectConn::open(&wrong, &TlsOptions::default(), "qamqp-unit").await.err().expect("refused");
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("ACCESS_REFUSED"), "{e}");
        let vhost = AmqpUrl { vhost: format!("no-such-vhost-{}", uuid::Uuid::new_v4().simple()), ..shared() };
        let e = DirectConn::open(&vhost, &TlsOptions::default(), "qamqp-unit").await.err().expect("refused");
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        let e = DirectConn::open(&url("amqp://guest:guest@127.0.0.1:1/%2f"), &TlsOptions::default(), "qamqp-unit")
            .await
            .err()
            .expect("refused");
        assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    }

    #[tokio::test]
    async fn a_channel_error_from_the_broker_ends_the_session_with_its_reason() {
        let mut conn = DirectConn::open(&shared(), &TlsOptions::default(), "qamqp-unit").await.expect("open");
        conn.qos(4, false).await.expect("qos");
        // An ack of a tag never delivered: RabbitMQ closes the channel.
        conn.out().acks([(999, false)].into_iter()).await.expect("written");
        let e = conn.next().await.err().expect("the channel is closed");
        assert!(e.to_string().contains("unknown delivery tag 999"), "{e}");
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(!conn.out().connected(), "the session is over");
        let e = conn.out().reject(1, true).await.expect_err("nothing is written any more");
        assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    }

    #[test]
    fn broker_closes_map_to_kinds() {
        assert_eq!(closed_by_broker("consuming", 404, &"NOT_FOUND - no queue 'x'".into()).kind(), ErrorKind::NotFound);
        assert_eq!(closed_by_broker("consuming", 320, &"CONNECTION_FORCED".into()).kind(), ErrorKind::Connection);
        assert_eq!(closed_by_broker("opening vhost", 530, &"NOT_ALLOWED".into()).kind(), ErrorKind::Config);
        assert_eq!(closed_by_broker("auth", 403, &"ACCESS_REFUSED".into()).kind(), ErrorKind::Config);
        let e = closed_by_broker("consuming", 406, &"PRECONDITION_FAILED - unknown delivery tag 9".into());
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.to_string().ends_with("consuming: 406 PRECONDITION_FAILED - unknown delivery tag 9"), "{e}");
    }
}
