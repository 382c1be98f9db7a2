//! The audit log's copy off the host: every line, in order, appended to a Redis stream as it
//! is written (`XADD <stream> <seq>-0 line <json>`). The entry id is the line's sequence
//! number, so Redis itself refuses a line twice and the copy can be compared line by line
//! with the file (`audit verify --sink`). Give the service a Redis user that may only append
//! and read (`+xadd +xrange +xrevrange`): whoever holds the host then cannot rewrite the copy.
//!
//! One thread ships; the service never waits for it, except when the file cannot be written:
//! then a line counts as recorded only once Redis has it. Lines wait in memory up to a bound;
//! past it the oldest are let go from memory and, once Redis is back, read again from the
//! files — the file is the buffer, so an outage of any length loses nothing from the copy. A
//! Redis that comes back empty (restarted without persistence) gets the whole chain again.

use crate::audit_chain::read_lines;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS).
    pub url: String,
    /// The stream's key.
    pub stream: String,
    /// Lines held in memory while Redis is away (older ones are read again from the file).
    pub buffer_lines: usize,
    /// Connect, read and write timeout of each Redis call.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("audit sink {url}: {reason}")]
    Config { url: String, reason: String },
}

#[derive(Debug, Default)]
struct SinkState {
    queue: VecDeque<(u64, String)>,
    /// The sequence number being sent now.
    in_flight: Option<u64>,
    /// Every line up to this one is in Redis.
    shipped_through: u64,
    /// The last line written (to the file, or handed over because the file failed).
    written_through: u64,
    connected: bool,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<SinkState>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
pub struct AuditSink {
    shared: Arc<Shared>,
    config: SinkConfig,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditSink {
    /// Starts shipping; `current` is the audit log file (read again after an outage).
    pub fn start(config: SinkConfig, current: PathBuf) -> Result<Self, SinkError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| SinkError::Config {
            url: redacted(&config.url),
            reason: e.to_string(),
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(SinkState::default()),
            changed: Condvar::new(),
        });
        let shipper = Shipper {
            shared: shared.clone(),
            client,
            config: config.clone(),
            current,
        };
        let thread = std::thread::Builder::new()
            .name("audit-sink".into())
            .spawn(move || shipper.run())
            .map_err(|e| SinkError::Config {
                url: redacted(&config.url),
                reason: e.to_string(),
            })?;
        Ok(Self {
            shared,
            config,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The log already holds lines up to `seq` (at start): a Redis behind it gets them from
    /// the files.
    pub fn written_through(&self, seq: u64) {
        self.shared.lock().written_through = seq;
        self.shared.changed.notify_all();
    }

    /// Queues a line written to the file; never waits.
    pub fn offer(&self, seq: u64, line: &str) {
        let mut s = self.shared.lock();
        s.written_through = s.written_through.max(seq);
        s.queue.push_back((seq, line.to_owned()));
        // Past the bound the oldest waiting line is let go: it is in the file, and is read
        // again from there.
        while s.queue.len() > self.config.buffer_lines.max(1) {
            if s.queue.front().map(|(q, _)| Some(*q)) == Some(s.in_flight) {
                break;
            }
            s.queue.pop_front();
            metrics::counter!("audit_sink_lines_requeued_from_file_total").increment(1);
        }
        metrics::gauge!("audit_sink_backlog_lines").set(s.queue.len() as f64);
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Hands a line the file could not take to Redis, waiting until Redis has it (and every
    /// line before it). False when Redis is not reachable: then the line is not recorded
    /// anywhere and is withdrawn.
    pub fn deliver_now(&self, seq: u64, line: &str) -> bool {
        let mut s = self.shared.lock();
        if !s.connected {
            return false;
        }
        s.written_through = s.written_through.max(seq);
        s.queue.push_back((seq, line.to_owned()));
        self.shared.changed.notify_all();
        let deadline = Instant::now() + self.config.timeout * 2;
        loop {
            if s.shipped_through >= seq {
                return true;
            }
            let now = Instant::now();
            // A line being sent is waited for to the end of its call: withdrawing it then
            // could leave it in Redis as well.
            if (now >= deadline || !s.connected) && s.in_flight != Some(seq) {
                s.queue.retain(|(q, _)| *q != seq);
                return false;
            }
            let wait = deadline
                .saturating_duration_since(now)
                .max(Duration::from_millis(50));
            s = self
                .shared
                .changed
                .wait_timeout(s, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn connected(&self) -> bool {
        self.shared.lock().connected
    }

    /// Every line up to this one is in Redis.
    pub fn shipped_through(&self) -> u64 {
        self.shared.lock().shipped_through
    }

    /// Waits up to `wait` for every queued line to reach Redis (at shutdown); then stops.
    pub fn finish(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut s = self.shared.lock();
        while !s.queue.is_empty() && Instant::now() < deadline {
            s = self
                .shared
                .changed
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let done = s.queue.is_empty();
        s.stop = true;
        drop(s);
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        done
    }
}

/// The whole off-host copy, by sequence number (`audit verify --sink`).
pub fn read_copy(url: &str, stream: &str) -> Result<Vec<(u64, String)>, SinkError> {
    let fail = |e: redis::RedisError| SinkError::Config {
        url: redacted(url),
        reason: e.to_string(),
    };
    let client = redis::Client::open(url).map_err(fail)?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .map_err(fail)?;
    let mut out = Vec::new();
    let mut from = "-".to_owned();
    loop {
        let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query(&mut con)
            .map_err(fail)?;
        let Some((last_id, _)) = page.last().cloned() else {
            return Ok(out);
        };
        for (id, fields) in page {
            let seq = id
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if let Some((_, line)) = fields.into_iter().find(|(k, _)| k == "line") {
                out.push((seq, line));
            }
        }
        from = format!("({last_id}");
    }
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

struct Shipper {
    shared: Arc<Shared>,
    client: redis::Client,
    config: SinkConfig,
    current: PathBuf,
}

enum Sent {
    Stored,
    /// Redis holds that id already (shipped before a reconnect).
    Present,
}

impl Shipper {
    fn run(self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.shared.lock().stop {
                return;
            }
            match self.connect() {
                Ok((mut con, last)) => {
                    backoff = Duration::from_millis(200);
                    {
                        let mut s = self.shared.lock();
                        s.connected = true;
                        s.shipped_through = last;
                    }
                    self.shared.changed.notify_all();
                    metrics::gauge!("audit_sink_connected").set(1.0);
                    tracing::info!(stream = %self.config.stream, through = last, "audit sink connected");
                    let reason = self.ship(&mut con);
                    let mut s = self.shared.lock();
                    s.connected = false;
                    s.in_flight = None;
                    drop(s);
                    self.shared.changed.notify_all();
                    metrics::gauge!("audit_sink_connected").set(0.0);
                    match reason {
                        Some(e) => tracing::warn!(error = %e, "audit sink lost; lines wait"),
                        None => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, url = %redacted(&self.config.url), "audit sink unreachable; lines wait");
                }
            }
            let s = self.shared.lock();
            if s.stop {
                return;
            }
            let _ = self.shared.changed.wait_timeout(s, backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn connect(&self) -> redis::RedisResult<(redis::Connection, u64)> {
        let mut con = self
            .client
            .get_connection_with_timeout(self.config.timeout)?;
        con.set_read_timeout(Some(self.config.timeout))?;
        con.set_write_timeout(Some(self.config.timeout))?;
        let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(&self.config.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut con)?;
        let last = last
            .first()
            .and_then(|(id, _)| id.split('-').next()?.parse().ok())
            .unwrap_or(0);
        Ok((con, last))
    }

    fn send(&self, con: &mut redis::Connection, seq: u64, line: &str) -> redis::RedisResult<Sent> {
        let r: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(&self.config.stream)
            .arg(format!("{seq}-0"))
            .arg("line")
            .arg(line)
            .query(con);
        match r {
            Ok(_) => Ok(Sent::Stored),
            Err(e) if e.to_string().contains("equal or smaller") => Ok(Sent::Present),
            Err(e) => Err(e),
        }
    }

    /// Ships until the connection fails (its error) or the sink stops (None).
    fn ship(&self, con: &mut redis::Connection) -> Option<redis::RedisError> {
        {
            let s = self.shared.lock();
            if s.shipped_through > s.written_through && s.written_through > 0 {
                // The copy holds lines the file does not: the file lost its tail.
                tracing::error!(
                    copy_through = s.shipped_through,
                    file_through = s.written_through,
                    "the off-host audit copy is ahead of the audit file: lines were removed from the file"
                );
                metrics::counter!("audit_sink_ahead_of_file_total").increment(1);
            }
        }
        loop {
            // The next line Redis lacks: from the queue, or from the files when it was let go
            // from memory (or Redis came back without it).
            let next = {
                let mut s = self.shared.lock();
                loop {
                    let through = s.shipped_through;
                    while s.queue.front().is_some_and(|(q, _)| *q <= through) {
                        s.queue.pop_front();
                    }
                    match s.queue.front().cloned() {
                        Some((seq, line)) if seq == through + 1 => {
                            s.in_flight = Some(seq);
                            break Ok((seq, line));
                        }
                        Some((seq, _)) => break Err((through + 1, seq - 1)),
                        None if s.written_through > through => {
                            break Err((through + 1, s.written_through));
                        }
                        None => {}
                    }
                    if s.stop {
                        return None;
                    }
                    s = self
                        .shared
                        .changed
                        .wait_timeout(s, Duration::from_secs(1))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            let (seq, line) = match next {
                Ok(entry) => entry,
                Err((from, to)) => {
                    let lines = match read_lines(&self.current, from, to) {
                        Ok(lines) => lines,
                        Err(e) => {
                            tracing::error!(error = %e, "audit sink: reading the log to catch up failed");
                            Vec::new()
                        }
                    };
                    for (q, l) in &lines {
                        if let Err(e) = self.send(con, *q, l) {
                            return Some(e);
                        }
                        metrics::counter!("audit_sink_lines_total").increment(1);
                        self.shared.lock().shipped_through = *q;
                    }
                    if lines.last().is_none_or(|(q, _)| *q < to) {
                        // Not in the files (removed by retention, or still waiting to be
                        // written after a failure): go on past them rather than stall.
                        tracing::warn!(from, to, "audit sink: lines not found in the files");
                        self.shared.lock().shipped_through = to;
                    }
                    self.shared.changed.notify_all();
                    continue;
                }
            };
            match self.send(con, seq, &line) {
                Ok(sent) => {
                    if matches!(sent, Sent::Stored) {
                        metrics::counter!("audit_sink_lines_total").increment(1);
                    }
                    let mut s = self.shared.lock();
                    s.shipped_through = s.shipped_through.max(seq);
                    s.in_flight = None;
                    if s.queue.front().is_some_and(|(q, _)| *q == seq) {
                        s.queue.pop_front();
                    }
                    metrics::gauge!("audit_sink_backlog_lines").set(s.queue.len() as f64);
                    drop(s);
                    self.shared.changed.notify_all();
                }
                Err(e) => return Some(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn messages_never_show_the_password() {
        assert_eq!(
            redacted("rediss://audit:s3cret@redis.region.se:6380/2"),
            "rediss://…@redis.region.se:6380/2"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
