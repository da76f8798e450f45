//! Sending signatures and canvases with Celery's message layout.

use std::future::Future;
use std::pin::Pin;

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::{Map, Value};

use super::send::Expires;
use super::{App, IntoSignature, SendOptions};
use crate::async_result::AsyncResult;
use crate::backend::ChordSupport;
use crate::error::{BackendError, Error, ErrorKind, ProtocolError};
use crate::message::{ContentType, Embed, Message, TaskMessageBuilder, TimeLimit};
use crate::signature::{CanvasKind, Signature};
use crate::time::parse_iso;

/// The task that sends a signature from inside a worker (chain step, link,
/// chord body): its id and root, and the result to prepend.
#[derive(Debug, Clone, Default)]
pub struct Parent {
    /// The sending task's id (becomes `parent_id`).
    pub id: String,
    /// The workflow's root id.
    pub root_id: Option<String>,
    /// Prepended to a mutable signature's args.
    pub result: Option<Value>,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where built messages go: published now (`None`), or collected.
type Sink = std::sync::Mutex<Vec<(String, Message)>>;

/// The messages a signature sends, built but not published: see
/// [`App::prepare`].
#[derive(Debug)]
pub struct PreparedSend<T> {
    /// The handle on the result (for a canvas, the one [`App::delay`] returns).
    pub result: AsyncResult<T>,
    /// `(queue, message)` in the order [`App::delay`] would publish them.
    pub messages: Vec<(String, Message)>,
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn sigs_of(v: Option<&Value>) -> Result<Option<Vec<Signature>>, Error> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.is_empty() => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| serde_json::from_value(x.clone()).map_err(|e| ProtocolError::decode("signature", e).into()))
            .collect::<Result<Vec<_>, Error>>()
            .map(Some),
        Some(x @ Value::Object(_)) => serde_json::from_value(x.clone())
            .map(|s| Some(vec![s]))
            .map_err(|e| ProtocolError::decode("signature", e).into()),
        Some(other) => Err(ProtocolError::Invalid(format!("expected signatures, got {other}")).into()),
    }
}

/// A signature's option list followed by the ones given with the send.
fn with_given(listed: Option<Vec<Signature>>, given: Vec<Signature>) -> Option<Vec<Signature>> {
    if given.is_empty() {
        return listed;
    }
    let mut all = listed.unwrap_or_default();
    all.extend(given);
    Some(all)
}

/// `secs` seconds from now, to the microsecond.
fn from_now(secs: f64) -> chrono::DateTime<Utc> {
    Utc::now() + ChronoDuration::microseconds((secs * 1e6) as i64)
}

fn secs_opt(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64).filter(|f| f.is_finite() && *f >= 0.0)
}

fn date_opt(key: &str, v: Option<&Value>) -> Result<Option<chrono::DateTime<Utc>>, Error> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(parse_iso(s)?)),
        Some(Value::Number(n)) => Ok(Some(from_now(n.as_f64().unwrap_or(0.0).max(0.0)))),
        Some(other) => {
            Err(ProtocolError::Invalid(format!("option {key} must be seconds or a date, got {other}")).into())
        }
    }
}

impl App {
    /// Send any signature (task, chain, group, chord) on behalf of `parent`.
    /// The producer API and the worker's canvas continuation both end here.
    pub fn apply_signature(
        &self,
        sig: Signature,
        parent: Option<Parent>,
    ) -> BoxFut<'_, Result<AsyncResult<Value>, Error>> {
        self.apply_into(sig, parent, None)
    }

    /// Build the messages [`apply_async`](App::apply_async) would publish
    /// for `sig`, without publishing them: ids are frozen and the result
    /// handle is ready, so the caller can publish the messages later or
    /// inside a database transaction (enqueue on commit) with
    /// [`Broker::publish_many`](crate::Broker::publish_many) or an
    /// adapter's transactional publish. A chord still registers its size
    /// with a backend that joins natively now (an unused counter expires
    /// with `result_expires`); on one without, its `celery.chord_unlock`
    /// message is among the prepared ones.
    pub async fn prepare<S: IntoSignature>(
        &self,
        sig: S,
        options: SendOptions,
    ) -> Result<PreparedSend<S::Output>, Error> {
        let sink = Sink::default();
        let result = self.apply_with(sig.into_signature(), options, None, Some(&sink)).await?;
        let messages = sink.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok(PreparedSend { result: result.typed(), messages })
    }

    /// Send several signatures (tasks or canvases) at once: their messages
    /// are built first and handed to the broker in one
    /// [`publish_many`](crate::Broker::publish_many) (one pipeline on
    /// Redis; on RabbitMQ written back to back, their confirms awaited
    /// together). Returns the handles in the order given. Nothing is sent
    /// if building any message fails; a publish error may leave the first
    /// messages sent. In eager mode each runs here, as
    /// [`delay`](App::delay) would.
    ///
    /// ```no_run
    /// # async fn demo(app: qcore::App) -> Result<(), qcore::Error> {
    /// use qcore::Signature;
    /// let handles = app.send_many((0..100).map(|i| Signature::new("tasks.add").arg(i).arg(i))).await?;
    /// assert_eq!(handles.len(), 100);
    /// # Ok(()) }
    /// ```
    pub async fn send_many<I, S>(&self, sigs: I) -> Result<Vec<AsyncResult<S::Output>>, Error>
    where
        I: IntoIterator<Item = S>,
        S: IntoSignature,
    {
        let eager = self.config().task_always_eager;
        let sink = Sink::default();
        let mut results = Vec::new();
        for sig in sigs {
            let res =
                self.apply_with(sig.into_signature(), SendOptions::new(), None, (!eager).then_some(&sink)).await?;
            results.push(res.typed());
        }
        self.dispatch_many(sink.into_inner().unwrap_or_else(|p| p.into_inner())).await?;
        Ok(results)
    }

    /// Publish built messages in one [`publish_many`](crate::Broker::publish_many)
    /// (declaring their queues first), or run each here in eager mode.
    pub(super) async fn dispatch_many(&self, messages: Vec<(String, Message)>) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        if self.config().task_always_eager {
            for (queue, msg) in messages {
                self.dispatch(&queue, msg).await?;
            }
            return Ok(());
        }
        let mut queues: Vec<&str> = messages.iter().map(|(q, _)| q.as_str()).collect();
        queues.sort_unstable();
        queues.dedup();
        for q in queues {
            self.ensure_queue(q).await?;
        }
        self.broker().publish_many(&messages).await?;
        if self.config().task_send_sent_event {
            for (queue, msg) in &messages {
                self.send_sent_event(queue, msg).await;
            }
        }
        Ok(())
    }

    fn apply_into<'a>(
        &'a self,
        sig: Signature,
        parent: Option<Parent>,
        sink: Option<&'a Sink>,
    ) -> BoxFut<'a, Result<AsyncResult<Value>, Error>> {
        self.apply_with(sig, SendOptions::default(), parent, sink)
    }

    /// Send `sig` with `options`: a task's message gets them as they are; a
    /// canvas carries them in its options, as Celery's dict.
    pub(super) fn apply_with<'a>(
        &'a self,
        sig: Signature,
        options: SendOptions,
        parent: Option<Parent>,
        sink: Option<&'a Sink>,
    ) -> BoxFut<'a, Result<AsyncResult<Value>, Error>> {
        Box::pin(async move {
            match sig.kind() {
                CanvasKind::Task => {
                    let id = self.send_task_signature(sig, options, parent.as_ref(), sink).await?;
                    Ok(AsyncResult::new(self.clone(), id))
                }
                CanvasKind::Chain => self.apply_chain(options.apply_to(sig), parent, sink).await,
                CanvasKind::Group => self.apply_group(options.apply_to(sig), parent, sink).await,
                CanvasKind::Chord => self.apply_chord(options.apply_to(sig), parent, sink).await,
            }
        })
    }

    /// Send one task signature (or add it to `sink`) with the options
    /// `given` with it, which win over the signature's own; returns its id.
    async fn send_task_signature(
        &self,
        mut sig: Signature,
        mut given: SendOptions,
        parent: Option<&Parent>,
        sink: Option<&Sink>,
    ) -> Result<String, Error> {
        given.apply_other_to(&mut sig);
        if let Some(p) = parent {
            if let (Some(r), false) = (&p.result, sig.immutable) {
                sig.args.insert(0, r.clone());
            }
        }
        let o = &sig.options;
        let id = match given.task_id.take() {
            Some(id) => id,
            None => o.get("task_id").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(new_id),
        };
        let eta = match (given.eta, o.get("eta")) {
            (Some(eta), _) => Some(eta),
            (None, Some(v)) if !v.is_null() => date_opt("eta", Some(v))?,
            _ => given.countdown.map(|d| d.as_secs_f64()).or_else(|| secs_opt(o.get("countdown"))).map(from_now),
        };
        let expires = match given.expires {
            Some(Expires::In(d)) => Some(from_now(d.as_secs_f64())),
            Some(Expires::At(at)) => Some(at),
            None => date_opt("expires", o.get("expires"))?,
        };
        let task_opts = self.task_options(&sig.task);
        let queue = match (given.queue.take(), o.get("queue")) {
            (Some(q), _) => q,
            (None, Some(Value::String(q))) => q.clone(),
            (None, Some(Value::Object(q))) => {
                q.get("name").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| self.route(&sig.task))
            }
            _ => {
                o.get("routing_key").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| self.route(&sig.task))
            }
        };
        let priority = given
            .priority
            .unwrap_or_else(|| o.get("priority").and_then(Value::as_u64).map(|p| p.min(255) as u8).unwrap_or(0));
        let content_type = match (given.serializer, o.get("serializer").and_then(Value::as_str)) {
            (Some(ct), _) => ct,
            (None, Some(s)) => ContentType::from_mime(s)?,
            (None, None) => self.config().task_serializer,
        };
        let limit = |given: Option<std::time::Duration>, k: &str, default: Option<std::time::Duration>| {
            given.map(|d| d.as_secs_f64()).or_else(|| secs_opt(o.get(k))).or(default.map(|d| d.as_secs_f64()))
        };
        let timelimit = TimeLimit {
            hard: limit(given.time_limit, "time_limit", task_opts.time_limit),
            soft: limit(given.soft_time_limit, "soft_time_limit", task_opts.soft_time_limit),
        };
        let ignore_result = given
            .ignore_result
            .or_else(|| o.get("ignore_result").and_then(Value::as_bool))
            .unwrap_or(task_opts.ignore_result);
        let extra_headers = match (given.headers.take(), o.get("headers")) {
            (Some(h), _) => h,
            (None, Some(Value::Object(h))) => h.clone(),
            _ => Map::new(),
        };
        let embed = Embed {
            callbacks: with_given(sigs_of(o.get("link"))?, std::mem::take(&mut given.link)),
            errbacks: with_given(sigs_of(o.get("link_error"))?, std::mem::take(&mut given.link_error)),
            chain: match o.get("chain") {
                Some(Value::Array(a)) => Some(
                    a.iter()
                        .map(|x| {
                            serde_json::from_value(x.clone())
                                .map_err(|e| Error::from(ProtocolError::decode("chain step", e)))
                        })
                        .collect::<Result<Vec<Signature>, Error>>()?,
                ),
                _ => None,
            },
            chord: match o.get("chord") {
                Some(v @ Value::Object(_)) => {
                    Some(serde_json::from_value(v.clone()).map_err(|e| ProtocolError::decode("chord body", e))?)
                }
                _ => None,
            },
            extra: Map::new(),
        };
        let root_id = parent
            .and_then(|p| p.root_id.clone().or_else(|| Some(p.id.clone())))
            .or_else(|| o.get("root_id").and_then(Value::as_str).map(str::to_owned));
        let parent_id =
            parent.map(|p| p.id.clone()).or_else(|| o.get("parent_id").and_then(Value::as_str).map(str::to_owned));
        let builder = TaskMessageBuilder {
            id: id.clone(),
            task: sig.task.clone(),
            args: sig.args,
            kwargs: sig.kwargs,
            embed,
            eta,
            expires,
            group: o.get("group_id").and_then(Value::as_str).map(str::to_owned),
            group_index: o.get("group_index").and_then(Value::as_u64),
            retries: o.get("retries").and_then(Value::as_u64).unwrap_or(0) as u32,
            timelimit,
            root_id,
            parent_id,
            shadow: given.shadow.take().or_else(|| o.get("shadow").and_then(Value::as_str).map(str::to_owned)),
            origin: self.origin().to_string(),
            ignore_result,
            extra_headers,
            content_type,
            priority,
            // The signature's reply_to (set by whoever froze it: the original
            // caller) wins, as in Celery, so rpc:// results of chain steps
            // and callbacks reach that caller.
            reply_to: Some(
                o.get("reply_to")
                    .and_then(Value::as_str)
                    .filter(|r| !r.is_empty())
                    .map_or_else(|| self.reply_to().to_string(), str::to_owned),
            ),
        };
        let msg = builder.build()?;
        match sink {
            Some(sink) => sink.lock().unwrap_or_else(|p| p.into_inner()).push((queue, msg)),
            None => self.dispatch(&queue, msg).await?,
        }
        Ok(id)
    }

    async fn apply_chain(
        &self,
        sig: Signature,
        parent: Option<Parent>,
        sink: Option<&Sink>,
    ) -> Result<AsyncResult<Value>, Error> {
        let mut steps = normalize_chain(&sig, self.reply_to())?;
        if steps.is_empty() {
            return Err(ProtocolError::Invalid("empty chain".into()).into());
        }
        // link runs once after the last step; link_error on every step, of
        // which at most one can fail.
        if let (Some(v), Some(last)) = (sig.options.get("link"), steps.last_mut()) {
            last.options.insert("link".into(), v.clone());
        }
        if let Some(v) = sig.options.get("link_error") {
            for step in &mut steps {
                step.options.insert("link_error".into(), v.clone());
            }
        }
        let handle = steps.last().and_then(|last| self.handle_for(last));
        let mut first = steps.remove(0);
        if !steps.is_empty() {
            let reversed: Vec<Value> = steps.iter().rev().map(Signature::to_value).collect();
            attach_chain(&mut first, reversed)?;
        }
        let first_res = self.apply_into(first, parent, sink).await?;
        Ok(handle.unwrap_or(first_res))
    }

    /// The result handle of a frozen step: a task's id, a chord's body, a group's members.
    fn handle_for(&self, step: &Signature) -> Option<AsyncResult<Value>> {
        match step.kind() {
            CanvasKind::Task => step.id().map(|id| AsyncResult::new(self.clone(), id.to_owned())),
            CanvasKind::Chord => step.chord_parts().and_then(|(_, b)| self.handle_for(&b)),
            CanvasKind::Group => {
                let gid = step.id()?.to_owned();
                let members = step.tasks().iter().map(|m| self.handle_for(m)).collect::<Option<Vec<_>>>()?;
                Some(AsyncResult::group(self.clone(), gid, members))
            }
            CanvasKind::Chain => step.tasks().last().and_then(|l| self.handle_for(l)),
        }
    }

    async fn apply_group(
        &self,
        sig: Signature,
        parent: Option<Parent>,
        sink: Option<&Sink>,
    ) -> Result<AsyncResult<Value>, Error> {
        let gid = sig.options.get("task_id").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(new_id);
        let members = sig.tasks();
        let mut results = Vec::with_capacity(members.len());
        // Sent now: the members' messages go out in one batch.
        let own = Sink::default();
        let batch = sink.or((!self.config().task_always_eager).then_some(&own));
        for (i, mut m) in members.into_iter().enumerate() {
            set_group_membership(&mut m, &gid, i as u64, None, self.reply_to())?;
            inherit_options(&mut m, &sig.options);
            results.push(self.apply_into(m, parent.clone(), batch).await?);
        }
        self.dispatch_many(own.into_inner().unwrap_or_else(|p| p.into_inner())).await?;
        Ok(AsyncResult::group(self.clone(), gid, results))
    }

    async fn apply_chord(
        &self,
        sig: Signature,
        parent: Option<Parent>,
        sink: Option<&Sink>,
    ) -> Result<AsyncResult<Value>, Error> {
        let (header, mut body) =
            sig.chord_parts().ok_or_else(|| ProtocolError::Invalid("chord without header or body".into()))?;
        let backend = self.backend().ok_or(Error::NoBackend)?.clone();
        let gid = header.options.get("task_id").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(new_id);
        let body_id = body.id().map(str::to_owned).unwrap_or_else(new_id);
        // Celery's layout of the body: options `task_id, reply_to, group_id`.
        body.options.insert("task_id".into(), body_id.clone().into());
        if body.kind() == CanvasKind::Task && !body.options.contains_key("reply_to") {
            body.options.insert("reply_to".into(), self.reply_to().into());
        }
        body.options.insert("group_id".into(), gid.clone().into());
        // A chain continuing after the chord rides on the body.
        if let Some(Value::Array(rest)) = sig.options.get("chain") {
            attach_chain(&mut body, rest.clone())?;
        }
        for k in ["link", "link_error"] {
            if let Some(v) = sig.options.get(k) {
                body.options.insert(k.into(), v.clone());
            }
        }
        let members = header.tasks();
        if members.is_empty() {
            let p = Parent { result: Some(Value::Array(Vec::new())), ..parent.unwrap_or_default() };
            let id = self.send_task_signature(body, SendOptions::default(), Some(&p), sink).await?;
            return Ok(AsyncResult::new(self.clone(), id));
        }
        let native = match backend.capabilities().chords {
            ChordSupport::Native => true,
            ChordSupport::Unlock => false,
            ChordSupport::Unsupported => {
                return Err(Error::Backend(BackendError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "the result backend {} cannot join chords (as in Celery): use Redis, SQL or another store",
                        backend.describe()
                    ),
                )))
            }
        };
        if native {
            backend.chord_init(&gid, members.len() as u64, Some(self.config().result_expires)).await?;
        }
        let body_value = body.to_value();
        let mut header_ids = Vec::with_capacity(members.len());
        for (i, mut m) in members.into_iter().enumerate() {
            freeze(&mut m, self.reply_to());
            set_group_membership(&mut m, &gid, i as u64, Some(&body_value), self.reply_to())?;
            if let Some(h) = self.handle_for(&m) {
                header_ids.push(h.id().to_string());
            }
            self.apply_into(m, parent.clone(), sink).await?;
        }
        if !native {
            self.send_chord_unlock(&gid, &body, &header_ids, parent, sink).await?;
        }
        Ok(AsyncResult::new(self.clone(), body_id))
    }

    /// Celery's `fallback_chord_unlock`: the `celery.chord_unlock` task that
    /// joins a chord on a backend without a native join (see
    /// [`chord_unlock`](crate::chord_unlock)): countdown 1 s, on the body's
    /// queue with its priority.
    async fn send_chord_unlock(
        &self,
        gid: &str,
        body: &Signature,
        header_ids: &[String],
        parent: Option<Parent>,
        sink: Option<&Sink>,
    ) -> Result<(), Error> {
        use crate::chord_unlock::{chord_unlock_kwargs, CHORD_UNLOCK, DEFAULT_INTERVAL};
        let queue = match body.options.get("queue") {
            Some(Value::String(q)) => q.clone(),
            Some(Value::Object(q)) => {
                q.get("name").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| self.route(&body.task))
            }
            _ => self.route(&body.task),
        };
        let mut unlock = Signature::new(CHORD_UNLOCK).arg(gid).arg(body.to_value());
        unlock.kwargs = chord_unlock_kwargs(header_ids);
        // The parent's result (a chord sent as a chain step) goes to the
        // body's header, not here.
        unlock.immutable = true;
        let mut options = SendOptions::new().queue(queue).countdown(DEFAULT_INTERVAL);
        if let Some(p) = body.options.get("priority").and_then(Value::as_u64) {
            options = options.priority(p.min(255) as u8);
        }
        self.send_task_signature(unlock, options, parent.as_ref(), sink).await?;
        Ok(())
    }
}

/// Options a group passes on to its members.
fn inherit_options(member: &mut Signature, group_opts: &Map<String, Value>) {
    for k in ["queue", "priority", "countdown", "eta", "expires"] {
        if let Some(v) = group_opts.get(k) {
            member.options.entry(k).or_insert_with(|| v.clone());
        }
    }
}

/// Mark a header/group member: `group_id`, `group_index`, and for chords the
/// body in `chord`. A chain member is marked on its last step, which is the
/// one that joins.
fn set_group_membership(
    m: &mut Signature,
    gid: &str,
    index: u64,
    chord: Option<&Value>,
    reply_to: &str,
) -> Result<(), Error> {
    match m.kind() {
        CanvasKind::Task => {
            m.options.insert("group_id".into(), gid.into());
            m.options.insert("group_index".into(), index.into());
            if let Some(body) = chord {
                m.options.insert("chord".into(), body.clone());
            }
            Ok(())
        }
        CanvasKind::Chain => {
            let mut steps = normalize_chain(m, reply_to)?;
            let last = steps.last_mut().ok_or_else(|| ProtocolError::Invalid("empty chain in group".into()))?;
            set_group_membership(last, gid, index, chord, reply_to)?;
            m.kwargs.insert("tasks".into(), Value::Array(steps.iter().map(Signature::to_value).collect()));
            Ok(())
        }
        _ => Err(ProtocolError::Invalid(
            "a group or chord nested directly in a group/chord header is not supported; wrap it in a chain".into(),
        )
        .into()),
    }
}

/// Put the remaining steps (already reversed) where the step that runs last
/// will find them: in a task's `chain` option, or on a chord's body.
fn attach_chain(step: &mut Signature, reversed_rest: Vec<Value>) -> Result<(), Error> {
    match step.kind() {
        CanvasKind::Task | CanvasKind::Group => {
            let entry = step.options.entry("chain").or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(existing) = entry {
                // Steps already pending run after the new ones: they sit at the front.
                let mut merged = existing.clone();
                merged.extend(reversed_rest);
                *existing = merged;
            }
            Ok(())
        }
        CanvasKind::Chord => {
            let (header, mut body) =
                step.chord_parts().ok_or_else(|| ProtocolError::Invalid("chord without body".into()))?;
            attach_chain(&mut body, reversed_rest)?;
            step.kwargs.insert("header".into(), header.to_value());
            step.kwargs.insert("body".into(), body.to_value());
            Ok(())
        }
        CanvasKind::Chain => Err(ProtocolError::Invalid("nested chain was not flattened".into()).into()),
    }
}

/// Flatten nested chains, freeze task ids, and rewrite a group followed by
/// another step into a chord (as Celery does). Frozen signatures carry the
/// options in Celery's order: tasks `task_id, reply_to` (+ `group_index` in a
/// group), groups `task_id, root_id, parent_id`, a chord the id of its header.
fn normalize_chain(sig: &Signature, reply_to: &str) -> Result<Vec<Signature>, Error> {
    let mut flat = Vec::new();
    flatten(sig, &mut flat);
    let mut out: Vec<Signature> = Vec::with_capacity(flat.len());
    let mut iter = flat.into_iter().peekable();
    while let Some(mut step) = iter.next() {
        if step.kind() == CanvasKind::Group {
            if let Some(next) = iter.next() {
                let mut body = next;
                freeze(&mut body, reply_to);
                let mut header = step;
                freeze_group(&mut header, reply_to);
                out.push(chord_of(header, body));
                continue;
            }
            freeze_group(&mut step, reply_to);
        }
        freeze(&mut step, reply_to);
        out.push(step);
    }
    Ok(out)
}

/// `group | next` as Celery rewrites it: a `celery.chord` whose id is the
/// group's id, with the frozen group (options kept) as header.
fn chord_of(header: Signature, body: Signature) -> Signature {
    let mut kw = Map::new();
    kw.insert("kwargs".into(), Value::Object(Map::new()));
    kw.insert("header".into(), header.to_value());
    kw.insert("body".into(), body.to_value());
    let mut c = Signature::new("celery.chord");
    c.kwargs = kw;
    c.subtask_type = Some("chord".into());
    c.options.insert("task_id".into(), header.options.get("task_id").cloned().unwrap_or(Value::Null));
    c
}

fn flatten(sig: &Signature, out: &mut Vec<Signature>) {
    if sig.kind() == CanvasKind::Chain {
        for s in sig.tasks() {
            flatten(&s, out);
        }
    } else {
        out.push(sig.clone());
    }
}

fn freeze(sig: &mut Signature, reply_to: &str) {
    match sig.kind() {
        CanvasKind::Task => {
            if sig.id().is_none() {
                sig.options.insert("task_id".into(), new_id().into());
            }
            if !sig.options.contains_key("reply_to") {
                sig.options.insert("reply_to".into(), reply_to.into());
            }
        }
        CanvasKind::Chord => {
            if let Some((mut header, mut body)) = sig.chord_parts() {
                freeze_group(&mut header, reply_to);
                freeze(&mut body, reply_to);
                if sig.id().is_none() {
                    let gid = header.options.get("task_id").cloned().unwrap_or(Value::Null);
                    sig.options.insert("task_id".into(), gid);
                }
                sig.kwargs.insert("header".into(), header.to_value());
                sig.kwargs.insert("body".into(), body.to_value());
            }
        }
        CanvasKind::Group => freeze_group(sig, reply_to),
        CanvasKind::Chain => {
            if let Ok(steps) = normalize_chain(sig, reply_to) {
                sig.kwargs.insert("tasks".into(), Value::Array(steps.iter().map(Signature::to_value).collect()));
            }
        }
    }
}

fn freeze_group(sig: &mut Signature, reply_to: &str) {
    if sig.options.get("task_id").and_then(Value::as_str).is_none() {
        sig.options.insert("task_id".into(), new_id().into());
    }
    // Celery's group.freeze: `setdefault` of root_id and parent_id.
    sig.options.entry("root_id").or_insert(Value::Null);
    sig.options.entry("parent_id").or_insert(Value::Null);
    let mut members = sig.tasks();
    for (i, m) in members.iter_mut().enumerate() {
        freeze(m, reply_to);
        if m.kind() == CanvasKind::Task {
            m.options.insert("group_index".into(), (i as u64).into());
        }
    }
    sig.kwargs.insert("tasks".into(), Value::Array(members.iter().map(Signature::to_value).collect()));
}
