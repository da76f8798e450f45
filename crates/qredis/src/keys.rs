//! Key names, exactly as kombu 5.7 and Celery 5.7 spell them (plus qtask's
//! own `qtask.*` keys). Every key, and every fanout channel, starts with the
//! `global_keyprefix` (empty by default), as kombu's prefixed client does.

/// kombu's separator (ACK, SYN) between a queue name and its priority step,
/// and between the parts of a binding member.
pub const SEP: &str = "\x06\x16";

/// kombu's priority steps: priorities 0–2 go to the plain key, 3–5 to
/// `\x06\x163`, 6–8 to `\x06\x166`, 9 to `\x06\x169`. Consumers take lower
/// steps first, so **0 is the highest priority on Redis**.
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// Header counting how many times qtask restored a message after a lost
/// delivery (compared with `max_deliveries`).
pub const DELIVERIES_HEADER: &str = "x-qtask-deliveries";

/// The priority step a message priority lands in (kombu clamps to 0–9).
pub fn priority_step(priority: u8) -> u8 {
    let p = priority.min(9);
    PRIORITY_STEPS.iter().copied().filter(|s| *s <= p).max().unwrap_or(0)
}

/// Key builder for one prefix and database.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    db: i64,
}

impl Keys {
    pub(crate) fn new(prefix: &str, db: i64) -> Self {
        Keys { prefix: prefix.to_string(), db }
    }

    fn k(&self, rest: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + rest.len());
        s.push_str(&self.prefix);
        s.push_str(rest);
        s
    }

    /// The list holding `queue`'s messages of `priority`.
    pub(crate) fn queue(&self, queue: &str, priority: u8) -> String {
        match priority_step(priority) {
            0 => self.k(queue),
            step => format!("{}{queue}{SEP}{step}", self.prefix),
        }
    }

    /// The four lists of a queue, highest priority (plain key) first.
    pub(crate) fn queue_keys(&self, queue: &str) -> [String; 4] {
        PRIORITY_STEPS.map(|s| self.queue(queue, s))
    }

    /// `_kombu.binding.<exchange>` (set).
    pub(crate) fn binding(&self, exchange: &str) -> String {
        self.k(&format!("_kombu.binding.{exchange}"))
    }

    /// `_kombu.binding_permanent.<exchange>` (set, kombu 5.7).
    pub(crate) fn binding_permanent(&self, exchange: &str) -> String {
        self.k(&format!("_kombu.binding_permanent.{exchange}"))
    }

    /// `unacked` (hash tag → `[envelope, exchange, routing_key]`).
    pub(crate) fn unacked(&self) -> String {
        self.k("unacked")
    }

    /// `unacked_index` (zset tag → delivery time).
    pub(crate) fn unacked_index(&self) -> String {
        self.k("unacked_index")
    }

    /// `unacked_mutex` (string, held during a restore scan).
    pub(crate) fn unacked_mutex(&self) -> String {
        self.k("unacked_mutex")
    }

    /// `qtask.unacked_owner` (hash tag → consumer token) for qtask's deliveries.
    pub(crate) fn owner(&self) -> String {
        self.k("qtask.unacked_owner")
    }

    /// `qtask.delayed` (zset of deferred messages, score = due time).
    pub(crate) fn delayed(&self) -> String {
        self.k("qtask.delayed")
    }

    /// `qtask.dead.<queue>` (list of dead-letter records, oldest first).
    pub(crate) fn dead(&self, queue: &str) -> String {
        self.k(&format!("qtask.dead.{queue}"))
    }

    /// The pub/sub channel of a fanout/topic exchange: `/<db>.<exchange>/<routing_key>`
    /// (the routing key part omitted when empty).
    pub(crate) fn fanout_channel(&self, exchange: &str, routing_key: &str) -> String {
        if routing_key.is_empty() {
            format!("{}/{}.{exchange}", self.prefix, self.db)
        } else {
            format!("{}/{}.{exchange}/{routing_key}", self.prefix, self.db)
        }
    }

    /// The `PSUBSCRIBE` pattern for an AMQP topic pattern (`#` → `*`; glob
    /// characters of the exchange name escaped).
    pub(crate) fn fanout_pattern(&self, exchange: &str, pattern: &str) -> String {
        let base = glob_escape(&format!("{}/{}.{exchange}", self.prefix, self.db));
        if pattern.is_empty() {
            base
        } else {
            let p: String = pattern
                .split('.')
                .map(|w| match w {
                    "#" | "*" => "*".to_string(),
                    w => glob_escape(w),
                })
                .collect::<Vec<_>>()
                .join(".");
            format!("{base}/{p}")
        }
    }

    /// The routing key of a message received on `channel` for `exchange`.
    pub(crate) fn routing_key_of<'a>(&self, exchange: &str, channel: &'a str) -> &'a str {
        let base_len = self.prefix.len() + 1 + self.db.to_string().len() + 1 + exchange.len();
        channel.get(base_len..).map(|rest| rest.strip_prefix('/').unwrap_or(rest)).unwrap_or("")
    }

    /// `celery-task-meta-<id>`.
    pub(crate) fn task_meta(&self, task_id: &str) -> String {
        self.k(&format!("celery-task-meta-{task_id}"))
    }

    /// `celery-taskset-meta-<group id>`.
    pub(crate) fn taskset_meta(&self, group_id: &str) -> String {
        self.k(&format!("celery-taskset-meta-{group_id}"))
    }
}

/// The `_kombu.binding.*` member for a queue: `routing_key SEP pattern SEP queue`.
pub(crate) fn binding_member(routing_key: &str, pattern: &str, queue: &str) -> String {
    format!("{routing_key}{SEP}{pattern}{SEP}{queue}")
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_keys_match_kombu() {
        let k = Keys::new("", 5);
        for (p, key) in [
            (0, "celery"),
            (1, "celery"),
            (3, "celery\x06\x163"),
            (5, "celery\x06\x163"),
            (6, "celery\x06\x166"),
            (9, "celery\x06\x169"),
            (200, "celery\x06\x169"),
        ] {
            assert_eq!(k.queue("celery", p), key, "priority {p}");
        }
    }

    #[test]
    fn fanout_channels_match_kombu() {
        let k = Keys::new("", 5);
        assert_eq!(k.fanout_channel("celeryev", "worker.heartbeat"), "/5.celeryev/worker.heartbeat");
        assert_eq!(k.fanout_channel("celery.pidbox", ""), "/5.celery.pidbox");
        assert_eq!(k.fanout_pattern("celeryev", "worker.#"), "/5.celeryev/worker.*");
        assert_eq!(k.fanout_pattern("celery.pidbox", ""), "/5.celery.pidbox");
        assert_eq!(k.routing_key_of("celeryev", "/5.celeryev/task.multi"), "task.multi");
        assert_eq!(k.routing_key_of("celery.pidbox", "/5.celery.pidbox"), "");
        let p = Keys::new("t1:", 0);
        assert_eq!(p.fanout_channel("ev", "a.b"), "t1:/0.ev/a.b");
        assert_eq!(p.routing_key_of("ev", "t1:/0.ev/a.b"), "a.b");
        assert_eq!(binding_member("celery", "", "celery"), "celery\x06\x16\x06\x16celery");
    }
}
