//! One shared pub/sub connection per backend, multiplexing every waiter:
//! `SUBSCRIBE celery-task-meta-<id>` while at least one waiter wants the
//! channel, `UNSUBSCRIBE` when the last one leaves. After a reconnect every
//! channel is subscribed again and every waiter told to read the key again
//! (a store may have been published while the connection was down).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool_redis::redis::aio::PubSubSink;
use futures_util::StreamExt;
use qcore::{BackendError, ErrorKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::conn::{backoff, map_err, Conn};

/// What a waiter is told.
#[derive(Debug)]
pub(crate) enum Event {
    /// A payload published on the channel.
    Payload(Vec<u8>),
    /// The connection was re-established: read the key again.
    Resync,
}

type Senders = Vec<(u64, mpsc::UnboundedSender<Event>)>;

pub(crate) struct Hub {
    conn: Arc<Conn>,
    registry: Mutex<HashMap<String, Senders>>,
    ops: tokio::sync::Mutex<Option<PubSubSink>>,
    connected: watch::Sender<bool>,
    next_id: AtomicU64,
    connect_timeout: Duration,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(h) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }
}

/// A registration for one channel; unsubscribes when dropped.
pub(crate) struct Waiter {
    hub: Arc<Hub>,
    channel: String,
    id: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<Event>,
}

impl Hub {
    pub(crate) fn start(conn: Arc<Conn>, connect_timeout: Duration) -> Arc<Hub> {
        let (connected, _) = watch::channel(false);
        let hub = Arc::new(Hub {
            conn,
            registry: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(None),
            connected,
            next_id: AtomicU64::new(1),
            connect_timeout,
            reader: Mutex::new(None),
        });
        let handle = tokio::spawn(reader(Arc::downgrade(&hub)));
        *hub.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        hub
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<String, Senders>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register for `channel` and make sure the server sends it to us; when
    /// this returns, every later publish on the channel reaches the waiter.
    pub(crate) async fn subscribe(self: &Arc<Self>, channel: &str) -> Result<Waiter, BackendError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.registry().entry(channel.to_string()).or_default().push((id, tx));
        let waiter = Waiter { hub: self.clone(), channel: channel.to_string(), id, rx };
        let mut connected = self.connected.subscribe();
        match tokio::time::timeout(self.connect_timeout, connected.wait_for(|c| *c)).await {
            Ok(Ok(_)) => {}
            _ => return Err(BackendError::new(ErrorKind::Connection, "result pub/sub connection is not available")),
        }
        let mut ops = self.ops.lock().await;
        let Some(sink) = ops.as_mut() else {
            return Err(BackendError::new(ErrorKind::Connection, "result pub/sub connection is not available"));
        };
        if let Err(e) = sink.subscribe(channel).await {
            if !crate::conn::is_connection_error(&e) {
                return Err(map_err::<BackendError>("SUBSCRIBE", e));
            }
            // The connection just broke: the channel is registered, so the
            // reconnect subscribes it again and tells the waiter to re-read.
            tracing::debug!(error = %e, "SUBSCRIBE on a broken pub/sub connection");
        }
        Ok(waiter)
    }

    fn dispatch(&self, channel: &str, payload: &[u8]) {
        if let Some(senders) = self.registry().get(channel) {
            for (_, tx) in senders {
                let _ = tx.send(Event::Payload(payload.to_vec()));
            }
        }
    }

    fn resync_all(&self) {
        for senders in self.registry().values() {
            for (_, tx) in senders {
                let _ = tx.send(Event::Resync);
            }
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let last = {
            let mut reg = self.hub.registry();
            match reg.get_mut(&self.channel) {
                Some(v) => {
                    v.retain(|(id, _)| *id != self.id);
                    if v.is_empty() {
                        reg.remove(&self.channel);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if !last {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (hub, channel) = (self.hub.clone(), std::mem::take(&mut self.channel));
        rt.spawn(async move {
            let mut ops = hub.ops.lock().await;
            // A new waiter may have registered meanwhile: then keep it.
            if hub.registry().contains_key(&channel) {
                return;
            }
            if let Some(sink) = ops.as_mut() {
                let _ = sink.unsubscribe(&channel).await;
            }
        });
    }
}

async fn reader(hub: Weak<Hub>) {
    let mut failures = 0u32;
    loop {
        if failures > 0 {
            tokio::time::sleep(backoff(failures)).await;
        }
        let Some(h) = hub.upgrade() else { return };
        let pubsub = match tokio::time::timeout(h.connect_timeout, h.conn.client().get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "result pub/sub cannot connect");
                failures = failures.saturating_add(1);
                continue;
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        {
            let mut ops = h.ops.lock().await;
            let channels: Vec<String> = h.registry().keys().cloned().collect();
            if !channels.is_empty() {
                if let Err(e) = sink.subscribe(&channels).await {
                    tracing::debug!(error = %e, "result pub/sub cannot resubscribe");
                    failures = failures.saturating_add(1);
                    continue;
                }
            }
            *ops = Some(sink);
        }
        if failures > 0 {
            tracing::info!("result pub/sub reconnected");
        }
        h.connected.send_replace(true);
        h.resync_all();
        drop(h);
        while let Some(msg) = stream.next().await {
            let Some(h) = hub.upgrade() else { return };
            h.dispatch(msg.get_channel_name(), msg.get_payload_bytes());
        }
        let Some(h) = hub.upgrade() else { return };
        tracing::warn!("result pub/sub connection lost; reconnecting");
        h.connected.send_replace(false);
        *h.ops.lock().await = None;
        failures = 1;
    }
}
