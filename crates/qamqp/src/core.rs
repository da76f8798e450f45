//! Connections, channels, publishing with confirms and declarations, shared
//! by the broker, its consumers, subscriptions and the rpc backend.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind, PublisherConfirm};
use qcore::config::ExchangeType;
use qcore::{BrokerError, ErrorKind};
use tokio::sync::{mpsc, Mutex};

use crate::confirms::{Unconfirmed, MAX_SENDS};
use crate::error::{broker_err, classify, Fault};
use crate::fields::short;
use crate::options::{AmqpOptions, QueueType};
use crate::tls::TlsOptions;
use crate::url::AmqpUrl;

/// Builds the properties of a message to publish (again on a retry).
pub(crate) type MakeProps<'a> = &'a (dyn Fn() -> Result<BasicProperties, BrokerError> + Send + Sync + 'a);

/// One AMQP connection, opened on first use and reopened when found dead.
pub(crate) struct Link {
    uri: lapin::uri::AMQPUri,
    tls: TlsOptions,
    name: String,
    timeout: Duration,
    conn: Mutex<Option<Arc<Connection>>>,
    epoch: AtomicU64,
}

impl Link {
    fn new(url: &AmqpUrl, tls: &TlsOptions, name: String) -> Self {
        Link {
            uri: url.to_lapin(),
            tls: tls.clone(),
            name,
            timeout: url.connection_timeout.unwrap_or(Duration::from_secs(10)),
            conn: Mutex::new(None),
            epoch: AtomicU64::new(0),
        }
    }

    /// How many times the connection was (re)opened.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The live connection, opening a new one (one attempt) if there is none.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, BrokerError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.status().connected() {
                return Ok(c.clone());
            }
            tracing::info!(connection = %self.name, "AMQP connection lost; reconnecting");
        }
        *slot = None;
        let props = ConnectionProperties::default().with_connection_name(LongString::from(self.name.as_bytes()));
        let connect = crate::tls::connect(self.uri.clone(), props, &self.tls);
        let conn = match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => {
                return Err(BrokerError::new(
                    ErrorKind::Connection,
                    format!(
                        "connecting to {}:{} timed out after {:?}",
                        self.uri.authority.host, self.uri.authority.port, self.timeout
                    ),
                ))
            }
            Ok(Err(e)) => {
                let kind = match classify(&e) {
                    // A certificate refused by either side is settings, not
                    // a passing outage: retrying cannot fix it.
                    _ if crate::tls::is_certificate_error(&e) => ErrorKind::Config,
                    Fault::Connection | Fault::Channel => ErrorKind::Connection,
                    // Bad credentials (403) or vhost (530) while connecting.
                    Fault::Refused(_) | Fault::Fatal => ErrorKind::Config,
                };
                return Err(BrokerError::with_source(
                    kind,
                    format!("connecting to {}:{}", self.uri.authority.host, self.uri.authority.port),
                    e,
                ));
            }
            Ok(Ok(c)) => Arc::new(c),
        };
        self.epoch.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(connection = %self.name, "AMQP connection open");
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// A new channel on the live connection.
    pub(crate) async fn channel(&self) -> Result<Channel, BrokerError> {
        for attempt in 0..2 {
            let conn = self.connection().await?;
            match conn.create_channel().await {
                Ok(ch) => return Ok(ch),
                Err(e) if attempt == 0 && classify(&e) == Fault::Connection => {
                    // Found dead while opening the channel: reconnect once.
                    continue;
                }
                Err(e) => return Err(broker_err("opening a channel", e)),
            }
        }
        Err(BrokerError::new(ErrorKind::Connection, "could not open a channel"))
    }
}

/// What the broker shares with its consumers, ackers and subscriptions.
pub(crate) struct Core {
    pub(crate) url: AmqpUrl,
    pub(crate) opts: AmqpOptions,
    /// Publishing, declarations, queue lengths.
    pub(crate) publish_link: Link,
    /// Consumers and subscriptions.
    pub(crate) consume_link: Link,
    pub_channel: Mutex<Option<Channel>>,
    admin_channel: Mutex<Option<Channel>>,
    /// Declarations made on the current publish connection.
    declared: StdMutex<(u64, HashSet<String>)>,
    /// Pipelined publishes waiting for their confirm.
    pub(crate) unconfirmed: Unconfirmed,
    /// Hands written messages to the confirm tracker (started on first use,
    /// again if the runtime it ran on is gone).
    tracker: StdMutex<Option<mpsc::UnboundedSender<Pending>>>,
    me: Weak<Core>,
}

/// A message written with [`Core::publish_pipelined`], kept until its
/// confirm arrives.
pub(crate) struct Pending {
    seq: u64,
    sends: u32,
    exchange: ShortString,
    routing_key: ShortString,
    body: Vec<u8>,
    props: BasicProperties,
    confirm: PublisherConfirm,
    deadline: tokio::time::Instant,
}

impl Core {
    pub(crate) fn new(url: AmqpUrl, opts: AmqpOptions) -> Arc<Self> {
        let publish_link = Link::new(&url, &opts.tls, format!("{}/publish", opts.connection_name));
        let consume_link = Link::new(&url, &opts.tls, format!("{}/consume", opts.connection_name));
        let unconfirmed = Unconfirmed::new(opts.max_unconfirmed);
        Arc::new_cyclic(|me| Core {
            url,
            opts,
            publish_link,
            consume_link,
            pub_channel: Mutex::new(None),
            admin_channel: Mutex::new(None),
            declared: StdMutex::new((0, HashSet::new())),
            unconfirmed,
            tracker: StdMutex::new(None),
            me: me.clone(),
        })
    }

    async fn cached_channel(&self, which: &Mutex<Option<Channel>>, confirm: bool) -> Result<Channel, BrokerError> {
        let mut slot = which.lock().await;
        if let Some(ch) = slot.as_ref() {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        *slot = None;
        let ch = self.publish_link.channel().await?;
        if confirm {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| broker_err("enabling publisher confirms", e))?;
        }
        *slot = Some(ch.clone());
        Ok(ch)
    }

    async fn forget_channel(&self, which: &Mutex<Option<Channel>>, dead: &Channel) {
        let mut slot = which.lock().await;
        if slot.as_ref().is_some_and(|c| c.id() == dead.id() && !c.status().connected()) {
            *slot = None;
        }
    }

    /// Run `op` on the shared admin channel; a channel or connection failure
    /// not caused by `op` itself is retried on a fresh channel (twice).
    pub(crate) async fn admin<T, F, Fut>(&self, what: &str, op: F) -> Result<T, BrokerError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, lapin::Error>>,
    {
        let mut attempt = 0;
        loop {
            let ch = self.cached_channel(&self.admin_channel, false).await?;
            match op(ch.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let fault = classify(&e);
                    self.forget_channel(&self.admin_channel, &ch).await;
                    if matches!(fault, Fault::Channel | Fault::Connection) && attempt < 2 {
                        attempt += 1;
                        continue;
                    }
                    return Err(broker_err(what, e));
                }
            }
        }
    }

    /// Publish one message and wait for the broker's confirm. `props` builds
    /// the properties (again, on a retry after a lost channel).
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: MakeProps<'_>,
    ) -> Result<(), BrokerError> {
        self.publish_with(exchange, routing_key, body, props, false).await
    }

    /// [`publish`](Self::publish) with `mandatory` set: a message no queue
    /// takes is returned by the broker, and that is an error of kind
    /// [`NotFound`](ErrorKind::NotFound) instead of a silent drop.
    pub(crate) async fn publish_routed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: MakeProps<'_>,
    ) -> Result<(), BrokerError> {
        self.publish_with(exchange, routing_key, body, props, true).await
    }

    async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: MakeProps<'_>,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let ex = short(exchange, "exchange name")?;
        let rk = short(routing_key, "routing key")?;
        let mut attempt = 0;
        loop {
            let ch = self.cached_channel(&self.pub_channel, true).await?;
            let p = props()?;
            let sent = async {
                let opts = BasicPublishOptions { mandatory, ..Default::default() };
                let confirm = ch.basic_publish(ex.clone(), rk.clone(), opts, body, p).await?;
                confirm.await
            };
            match tokio::time::timeout(self.opts.confirm_timeout, sent).await {
                Err(_) => {
                    return Err(BrokerError::new(
                        ErrorKind::Timeout,
                        format!("no publisher confirm within {:?}", self.opts.confirm_timeout),
                    ))
                }
                Ok(Ok(Confirmation::Nack(_))) => {
                    return Err(BrokerError::new(
                        ErrorKind::Other,
                        format!("the broker refused the message for {exchange:?}/{routing_key:?} (basic.nack)"),
                    ))
                }
                Ok(Ok(Confirmation::Ack(Some(_)))) => {
                    // A queue declared before is gone: declare again next time.
                    self.forget_declarations();
                    return Err(BrokerError::new(
                        ErrorKind::NotFound,
                        format!("no queue took the message for {exchange:?}/{routing_key:?} (basic.return)"),
                    ));
                }
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => {
                    let fault = classify(&e);
                    self.forget_channel(&self.pub_channel, &ch).await;
                    if matches!(fault, Fault::Channel | Fault::Connection) && attempt < 2 {
                        attempt += 1;
                        tracing::debug!(error = %e, attempt, "publish failed on a lost channel; retrying");
                        continue;
                    }
                    if matches!(fault, Fault::Refused(lapin::protocol::AMQPSoftError::NOTFOUND)) {
                        self.forget_declarations();
                    }
                    return Err(broker_err(&format!("publishing to {exchange:?}/{routing_key:?}"), e));
                }
            }
        }
    }

    /// Write one message on the publishing channel (retried on a fresh
    /// channel when the channel or connection is found lost, twice) and
    /// return its pending confirm.
    async fn write(
        &self,
        exchange: &ShortString,
        routing_key: &ShortString,
        body: &[u8],
        props: &BasicProperties,
    ) -> Result<PublisherConfirm, BrokerError> {
        let mut attempt = 0;
        loop {
            let ch = self.cached_channel(&self.pub_channel, true).await?;
            let opts = BasicPublishOptions::default();
            match ch.basic_publish(exchange.clone(), routing_key.clone(), opts, body, props.clone()).await {
                Ok(confirm) => return Ok(confirm),
                Err(e) => {
                    let fault = classify(&e);
                    self.forget_channel(&self.pub_channel, &ch).await;
                    if matches!(fault, Fault::Channel | Fault::Connection) && attempt < 2 {
                        attempt += 1;
                        tracing::debug!(error = %e, attempt, "publish failed on a lost channel; retrying");
                        continue;
                    }
                    return Err(broker_err(&format!("publishing to {exchange:?}/{routing_key:?}"), e));
                }
            }
        }
    }

    /// Publish one message without waiting for its confirm: it returns once
    /// the message is written, the message kept until the broker confirms
    /// it (see [`crate::confirms`]); [`Core::flush`] waits for the confirms.
    /// Waits while [`AmqpOptions::max_unconfirmed`] messages are unconfirmed.
    pub(crate) async fn publish_pipelined(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Vec<u8>,
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let exchange = short(exchange, "exchange name")?;
        let routing_key = short(routing_key, "routing key")?;
        let seq = self.unconfirmed.register().await?;
        match self.write(&exchange, &routing_key, &body, &props).await {
            Ok(confirm) => {
                let deadline = tokio::time::Instant::now() + self.opts.confirm_timeout;
                self.track(Pending { seq, sends: 1, exchange, routing_key, body, props, confirm, deadline });
                Ok(())
            }
            Err(e) => {
                // Never written: the caller has the error.
                self.unconfirmed.settle(seq, None);
                Err(e)
            }
        }
    }

    /// [`publish_pipelined`](Self::publish_pipelined) for a batch: the
    /// frames of up to 256 messages at a time are queued together on the
    /// channel (one wake of the connection's writer instead of one per
    /// message), in order. A message whose write fails is written again on
    /// its own; if that fails too, the error is returned and the messages
    /// after it are not sent.
    pub(crate) async fn publish_pipelined_many(
        &self,
        items: Vec<(&str, &str, Vec<u8>, BasicProperties)>,
    ) -> Result<(), BrokerError> {
        let mut checked = Vec::with_capacity(items.len());
        for (exchange, routing_key, body, props) in items {
            checked.push((short(exchange, "exchange name")?, short(routing_key, "routing key")?, body, props));
        }
        let chunk = self.opts.max_unconfirmed.clamp(1, 256);
        let mut rest = checked.into_iter().peekable();
        while rest.peek().is_some() {
            let mut batch = Vec::with_capacity(chunk);
            for item in rest.by_ref().take(chunk) {
                batch.push((self.unconfirmed.register().await?, item));
            }
            let written = match self.cached_channel(&self.pub_channel, true).await {
                Ok(ch) => {
                    let writes = batch.iter().map(|(_, (exchange, routing_key, body, props))| {
                        let opts = BasicPublishOptions::default();
                        ch.basic_publish(exchange.clone(), routing_key.clone(), opts, body, props.clone())
                    });
                    futures_util::future::join_all(writes).await.into_iter().map(Result::ok).collect()
                }
                Err(_) => Vec::new(),
            };
            let mut written = written.into_iter();
            let mut batch = batch.into_iter();
            while let Some((seq, (exchange, routing_key, body, props))) = batch.next() {
                let confirm = match written.next().flatten() {
                    Some(confirm) => confirm,
                    None => match self.write(&exchange, &routing_key, &body, &props).await {
                        Ok(confirm) => confirm,
                        Err(e) => {
                            // Never written: the caller has the error.
                            self.unconfirmed.settle(seq, None);
                            for (seq, _) in batch {
                                self.unconfirmed.settle(seq, None);
                            }
                            return Err(e);
                        }
                    },
                };
                let deadline = tokio::time::Instant::now() + self.opts.confirm_timeout;
                self.track(Pending { seq, sends: 1, exchange, routing_key, body, props, confirm, deadline });
            }
        }
        Ok(())
    }

    /// Hand a written message to the confirm tracker, starting it if needed.
    fn track(&self, pending: Pending) {
        let mut slot = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let pending = match slot.as_ref() {
            Some(tx) => match tx.send(pending) {
                Ok(()) => return,
                Err(mpsc::error::SendError(p)) => p,
            },
            None => pending,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(pending);
        *slot = Some(tx);
        tokio::spawn(track_confirms(self.me.clone(), rx));
    }

    /// Wait for the confirm of every message published before this call
    /// (see [`qcore::Broker::flush`]).
    pub(crate) async fn flush(&self) -> Result<(), BrokerError> {
        self.unconfirmed.flush().await
    }

    /// Publish several messages on one channel, then wait for all confirms.
    /// Any failure is retried message by message with [`Core::publish`].
    pub(crate) async fn publish_batch(
        &self,
        items: &[(String, String, &[u8], MakeProps<'_>)],
    ) -> Result<(), BrokerError> {
        let ch = self.cached_channel(&self.pub_channel, true).await?;
        let mut pending = Vec::with_capacity(items.len());
        for (i, (ex, rk, body, props)) in items.iter().enumerate() {
            let sent = ch
                .basic_publish(
                    short(ex, "exchange name")?,
                    short(rk, "routing key")?,
                    BasicPublishOptions::default(),
                    body,
                    props()?,
                )
                .await;
            match sent {
                Ok(confirm) => pending.push((i, confirm)),
                Err(_) => break,
            }
        }
        let mut failed: Vec<usize> = (pending.len()..items.len()).collect();
        let deadline = tokio::time::Instant::now() + self.opts.confirm_timeout;
        for (i, confirm) in pending {
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Nack(_))) => {
                    return Err(BrokerError::new(
                        ErrorKind::Other,
                        "the broker refused a message of the batch (basic.nack)",
                    ))
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => failed.push(i),
                Err(_) => return Err(BrokerError::new(ErrorKind::Timeout, "publisher confirms of a batch timed out")),
            }
        }
        if !failed.is_empty() {
            self.forget_channel(&self.pub_channel, &ch).await;
            failed.sort_unstable();
            for i in failed {
                let (ex, rk, body, props) = &items[i];
                self.publish(ex, rk, body, *props).await?;
            }
        }
        Ok(())
    }

    /// Run `declare` once per key and publish connection (declarations are
    /// repeated after a reconnect, in case the broker restarted).
    pub(crate) async fn declare_once<F, Fut>(&self, key: &str, declare: F) -> Result<(), BrokerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), BrokerError>>,
    {
        let epoch = self.publish_link.epoch();
        {
            let mut d = self.declared.lock().unwrap_or_else(|p| p.into_inner());
            if d.0 != epoch {
                *d = (epoch, HashSet::new());
            }
            if d.1.contains(key) {
                return Ok(());
            }
        }
        declare().await?;
        let epoch = self.publish_link.epoch();
        let mut d = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        if d.0 == epoch {
            d.1.insert(key.to_string());
        }
        Ok(())
    }

    pub(crate) fn forget_declarations(&self) {
        self.declared.lock().unwrap_or_else(|p| p.into_inner()).1.clear();
    }

    /// The arguments of a task queue: `x-max-priority` (classic) or
    /// `x-queue-type: quorum`.
    pub(crate) fn task_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        match self.opts.queue_type {
            QueueType::Classic => {
                if let Some(p) = self.opts.queue_max_priority {
                    args.insert("x-max-priority".into(), AMQPValue::LongInt(i32::from(p)));
                }
            }
            QueueType::Quorum => {
                args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            }
        }
        args
    }

    /// Celery's declarations for a task queue `q`: exchange `q` (direct,
    /// durable), queue `q` (durable) and the binding with routing key `q`;
    /// for a queue listed in `task_queues`, its exchange (of its type,
    /// durable) and routing key instead.
    pub(crate) async fn declare_task_queue(&self, ch: &Channel, q: &ShortString) -> Result<(), lapin::Error> {
        let (exchange, kind, key) = match self.opts.task_queues.iter().find(|d| d.name == q.as_str()) {
            Some(d) => (ShortString::from(d.exchange.as_str()), exchange_kind(d.exchange_type), d.routing_key.as_str()),
            None => (q.clone(), ExchangeKind::Direct, q.as_str()),
        };
        ch.exchange_declare(
            exchange.clone(),
            kind,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            q.clone(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            self.task_queue_args(),
        )
        .await?;
        ch.queue_bind(q.clone(), exchange, key.into(), QueueBindOptions::default(), FieldTable::default()).await
    }

    /// Where a task for `queue` is published: the default exchange with the
    /// queue's name (Celery's rule for direct exchanges), or the topic or
    /// fanout exchange `task_queues` binds it to, with its routing key.
    pub(crate) fn task_route<'a>(&'a self, queue: &'a str) -> (&'a str, &'a str) {
        match self.opts.task_queues.iter().find(|d| d.name == queue) {
            Some(d) if d.exchange_type != ExchangeType::Direct => (&d.exchange, &d.routing_key),
            _ => ("", queue),
        }
    }

    pub(crate) async fn ensure_task_queue(&self, q: &str) -> Result<(), BrokerError> {
        let name = short(q, "queue name")?;
        if self.opts.queue_type == QueueType::Quorum && self.opts.queue_max_priority.is_some() {
            tracing::warn!(queue = q, "quorum queues take no x-max-priority; declaring without it");
        }
        let (name, what) = (&name, format!("declaring queue {q:?}"));
        self.declare_once(&format!("q:{q}"), || {
            self.admin(&what, |ch| async move { self.declare_task_queue(&ch, name).await })
        })
        .await
    }

    /// A durable classic queue with no arguments, reached through the
    /// default exchange (dead-letter queues).
    pub(crate) async fn ensure_plain_queue(&self, q: &str) -> Result<(), BrokerError> {
        let name = short(q, "queue name")?;
        let (name, what) = (&name, format!("declaring queue {q:?}"));
        self.declare_once(&format!("plain:{q}"), || {
            self.admin(&what, |ch| async move {
                ch.queue_declare(
                    name.clone(),
                    QueueDeclareOptions { durable: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }

    /// Declare an exchange used for fanout/topic publishing.
    pub(crate) async fn ensure_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        let what = format!("declaring exchange {:?}", spec.name);
        self.declare_once(&format!("x:{}", spec.name), || {
            self.admin(&what, |ch| async move { spec.declare(&ch).await })
        })
        .await
    }
}

/// The confirm tracker: awaits the confirms of written messages in the
/// order they were written (RabbitMQ confirms in that order, often several
/// at once with `multiple`), settles the confirmed ones and writes again a
/// message that was nacked, whose channel was lost, or whose confirm did not
/// come within the timeout, up to [`MAX_SENDS`] writes.
async fn track_confirms(core: Weak<Core>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(p) = rx.recv().await {
        let Pending { seq, sends, exchange, routing_key, body, props, confirm, deadline } = p;
        let why = match tokio::time::timeout_at(deadline, confirm).await {
            Ok(Ok(Confirmation::Nack(_))) => (ErrorKind::Other, "the broker refused it (basic.nack)".to_string()),
            Ok(Ok(_)) => {
                let Some(core) = core.upgrade() else { return };
                core.unconfirmed.settle(seq, None);
                continue;
            }
            Ok(Err(e)) => (ErrorKind::Connection, format!("its channel was lost before the confirm: {e}")),
            Err(_) => (ErrorKind::Timeout, "no publisher confirm within the confirm timeout".to_string()),
        };
        let Some(core) = core.upgrade() else { return };
        let id = props.correlation_id().as_ref().map(|s| s.to_string()).unwrap_or_default();
        let failure = if sends >= MAX_SENDS {
            Some(why)
        } else {
            tracing::debug!(id, exchange = %exchange, routing_key = %routing_key, reason = %why.1, "publishing again");
            // The broker may be down for a while (a restart): try again with
            // backoff for up to the confirm timeout before giving up.
            let give_up = tokio::time::Instant::now() + core.opts.confirm_timeout;
            let mut attempt = 0;
            let written = loop {
                match core.write(&exchange, &routing_key, &body, &props).await {
                    Ok(confirm) => break Ok(confirm),
                    Err(e) if e.is_retryable() && tokio::time::Instant::now() < give_up => {
                        attempt += 1;
                        tokio::time::sleep(crate::options::backoff(attempt, core.opts.reconnect_max_delay)).await;
                    }
                    Err(e) => break Err(e),
                }
            };
            match written {
                Ok(confirm) => {
                    let deadline = tokio::time::Instant::now() + core.opts.confirm_timeout;
                    let sends = sends + 1;
                    core.track(Pending { seq, sends, exchange, routing_key, body, props, confirm, deadline });
                    continue;
                }
                Err(e) => Some((e.kind(), format!("{}; writing it again failed: {e}", why.1))),
            }
        };
        if let Some((kind, what)) = failure {
            let what = format!("message {id:?} for {exchange:?}/{routing_key:?}: {what}");
            tracing::error!(id, exchange = %exchange, routing_key = %routing_key, "a published message was not confirmed: {what}");
            core.unconfirmed.settle(seq, Some((kind, what)));
        }
    }
}

/// How an exchange is declared (Celery's settings for its own exchanges).
#[derive(Debug, Clone)]
pub(crate) struct ExchangeSpec {
    pub(crate) name: ShortString,
    pub(crate) kind: ExchangeKind,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
}

impl ExchangeSpec {
    /// `celeryev` topic durable; `celery.pidbox` fanout and
    /// `reply.celery.pidbox` direct, both non-durable; any other name a
    /// non-durable, auto-delete topic exchange.
    pub(crate) fn for_name(name: &str) -> Result<Self, BrokerError> {
        let (kind, durable, auto_delete) = match name {
            "celeryev" => (ExchangeKind::Topic, true, false),
            qcore::control::PIDBOX_EXCHANGE => (ExchangeKind::Fanout, false, false),
            qcore::control::REPLY_EXCHANGE => (ExchangeKind::Direct, false, false),
            _ => (ExchangeKind::Topic, false, true),
        };
        if name.is_empty() {
            return Err(BrokerError::new(ErrorKind::Config, "the default exchange \"\" cannot be used for fanout"));
        }
        Ok(ExchangeSpec { name: short(name, "exchange name")?, kind, durable, auto_delete })
    }

    pub(crate) async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
        ch.exchange_declare(
            self.name.clone(),
            self.kind.clone(),
            ExchangeDeclareOptions { durable: self.durable, auto_delete: self.auto_delete, ..Default::default() },
            FieldTable::default(),
        )
        .await
    }
}

/// lapin's name for a `task_queues` exchange type.
fn exchange_kind(t: ExchangeType) -> ExchangeKind {
    match t {
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Fanout => ExchangeKind::Fanout,
    }
}
