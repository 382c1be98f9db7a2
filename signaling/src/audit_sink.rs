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
//! A copy that holds a line the file does not (or another line under the same number) is
//! never written over: shipping stops, and the error says so.

use crate::audit_chain::read_lines;
use crate::redis_connection::{connect, redacted};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Lines read from the files in one step of a catch-up.
pub(crate) const CATCH_UP_BATCH: usize = 1000;

#[derive(Clone)]
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

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("url", &redacted(&self.url))
            .field("stream", &self.stream)
            .field("buffer_lines", &self.buffer_lines)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("audit sink {url}: {reason}")]
    Config { url: String, reason: String },
}

/// What became of a line handed over while the file could not take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Redis has it (and every line before it).
    Stored,
    /// Redis does not have it: withdrawn.
    NotStored,
    /// The connection failed during its call: Redis may or may not have it.
    Unknown,
}

#[derive(Debug, Default)]
struct SinkState {
    queue: VecDeque<(u64, String)>,
    /// The sequence number being sent now.
    in_flight: Option<u64>,
    /// A line whose call failed with the connection (Redis may hold it).
    failed_in_flight: Option<u64>,
    /// Every line up to this one is in Redis.
    shipped_through: u64,
    /// The last line recorded (in the file, or handed over because the file failed).
    written_through: u64,
    connected: bool,
    /// The copy holds what the file does not: shipping stopped.
    diverged: bool,
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

fn seq_of(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Lines of the copy: (sequence number, line).
pub(crate) type CopiedLines = Vec<(u64, String)>;

/// Entries of the stream from id `from` (an XRANGE bound) on, at most `count`: their lines,
/// and the last entry's id (`None` when there were none) — the next page starts past it,
/// whether or not that entry had a line.
pub(crate) fn range(
    con: &mut redis::Connection,
    stream: &str,
    from: &str,
    to: &str,
    count: usize,
) -> redis::RedisResult<(CopiedLines, Option<String>)> {
    let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(count)
        .query(con)?;
    let last = page.last().map(|(id, _)| id.clone());
    let lines = page
        .into_iter()
        .filter_map(|(id, fields)| {
            let line = fields.into_iter().find(|(k, _)| k == "line")?.1;
            Some((seq_of(&id), line))
        })
        .collect();
    Ok((lines, last))
}

/// The number of the last line in the stream (0 when empty).
fn top(con: &mut redis::Connection, stream: &str) -> redis::RedisResult<u64> {
    let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(con)?;
    Ok(last.first().map(|(id, _)| seq_of(id)).unwrap_or(0))
}

impl AuditSink {
    fn client(config: &SinkConfig) -> Result<redis::Client, SinkError> {
        if config.timeout.is_zero() {
            return Err(SinkError::Config {
                url: redacted(&config.url),
                reason: "timeout_ms: at least 1".into(),
            });
        }
        redis::Client::open(config.url.as_str()).map_err(|e| SinkError::Config {
            url: redacted(&config.url),
            reason: e.to_string(),
        })
    }

    /// The copy from line `after + 1` on, to be read a page at a time (at start: lines the
    /// file lost — e.g. taken by the copy while the file was unwritable, before a crash —, or
    /// all of it when the file was lost with its volume). None when Redis is not reachable now.
    pub fn read_after(
        config: &SinkConfig,
        after: u64,
    ) -> Result<Option<crate::audit_copy_reader::CopyReader>, SinkError> {
        Self::client(config)?;
        Ok(crate::audit_copy_reader::CopyReader::open(
            &config.url,
            &config.stream,
            after,
            config.timeout,
        )
        .ok())
    }

    /// Starts shipping; `current` is the audit log file (read again after an outage), which
    /// holds lines up to `written_through`.
    pub fn start(
        config: SinkConfig,
        current: PathBuf,
        written_through: u64,
    ) -> Result<Self, SinkError> {
        let client = Self::client(&config)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(SinkState {
                written_through,
                ..Default::default()
            }),
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
            metrics::counter!("signaling_audit_sink_lines_requeued_from_file_total").increment(1);
        }
        metrics::gauge!("signaling_audit_sink_backlog_lines").set(s.queue.len() as f64);
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Hands over a line the file could not take, waiting until Redis has it (and every line
    /// before it), for at most twice the timeout.
    pub fn deliver_now(&self, seq: u64, line: &str) -> Delivery {
        let mut s = self.shared.lock();
        if !s.connected || s.diverged {
            return Delivery::NotStored;
        }
        let before = s.written_through;
        s.written_through = s.written_through.max(seq);
        s.failed_in_flight = None;
        s.queue.push_back((seq, line.to_owned()));
        self.shared.changed.notify_all();
        let deadline = Instant::now() + self.config.timeout * 2;
        loop {
            if s.shipped_through >= seq {
                return Delivery::Stored;
            }
            if s.failed_in_flight == Some(seq) {
                return Delivery::Unknown;
            }
            let now = Instant::now();
            // A line being sent is waited for to the end of its call.
            if (now >= deadline || !s.connected || s.diverged) && s.in_flight != Some(seq) {
                s.queue.retain(|(q, _)| *q != seq);
                s.written_through = before;
                return Delivery::NotStored;
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
        while (s.shipped_through < s.written_through || !s.queue.is_empty())
            && !s.diverged
            && Instant::now() < deadline
        {
            s = self
                .shared
                .changed
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let done = s.shipped_through >= s.written_through && s.queue.is_empty();
        s.stop = true;
        drop(s);
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        done
    }
}

/// The whole off-host copy, by sequence number (tests; a real copy is read a page at a time,
/// with [`crate::audit_copy_reader::CopyReader`]).
pub fn read_copy(url: &str, stream: &str) -> Result<Vec<(u64, String)>, SinkError> {
    let mut copy =
        crate::audit_copy_reader::CopyReader::open(url, stream, 0, Duration::from_secs(5))?;
    let mut out = Vec::new();
    loop {
        let page = copy.next_page().map_err(|e| SinkError::Config {
            url: redacted(url),
            reason: e.to_string(),
        })?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

struct Shipper {
    shared: Arc<Shared>,
    client: redis::Client,
    config: SinkConfig,
    current: PathBuf,
}

/// Why shipping stopped on a connection.
enum Halt {
    Stopped,
    Failed(redis::RedisError),
    /// The copy holds something the file does not; never written over.
    Diverged(String),
}

impl Shipper {
    fn run(self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.shared.lock().stop {
                return;
            }
            match connect(&self.client, self.config.timeout) {
                Ok(mut con) => {
                    backoff = Duration::from_millis(200);
                    let halt = self.connected(&mut con);
                    let mut s = self.shared.lock();
                    s.connected = false;
                    if let Some(seq) = s.in_flight.take() {
                        s.failed_in_flight = Some(seq);
                    }
                    drop(s);
                    self.shared.changed.notify_all();
                    metrics::gauge!("signaling_audit_sink_connected").set(0.0);
                    match halt {
                        Halt::Stopped => return,
                        Halt::Failed(e) => {
                            tracing::warn!(error = %e, "audit sink lost; lines wait")
                        }
                        Halt::Diverged(why) => {
                            self.shared.lock().diverged = true;
                            self.shared.changed.notify_all();
                            metrics::gauge!("signaling_audit_sink_diverged").set(1.0);
                            tracing::error!(
                                stream = %self.config.stream,
                                "the off-host audit copy disagrees with the audit file ({why}): \
                                 shipping stopped; compare them with `signaling audit verify --sink`"
                            );
                            return;
                        }
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

    fn connected(&self, con: &mut redis::Connection) -> Halt {
        let last = match top(con, &self.config.stream) {
            Ok(t) => t,
            Err(e) => return Halt::Failed(e),
        };
        {
            let mut s = self.shared.lock();
            if last > s.written_through {
                return Halt::Diverged(format!(
                    "the copy holds lines up to {last}, the file up to {}",
                    s.written_through
                ));
            }
            s.connected = true;
            s.shipped_through = last;
        }
        self.shared.changed.notify_all();
        metrics::gauge!("signaling_audit_sink_connected").set(1.0);
        tracing::info!(stream = %self.config.stream, through = last, "audit sink connected");
        self.ship(con)
    }

    /// Appends one line; a line already there under its number must be the same line.
    fn send(&self, con: &mut redis::Connection, seq: u64, line: &str) -> Result<(), Halt> {
        let r: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(&self.config.stream)
            .arg(format!("{seq}-0"))
            .arg("line")
            .arg(line)
            .query(con);
        match r {
            Ok(_) => {
                metrics::counter!("signaling_audit_sink_lines_total").increment(1);
                Ok(())
            }
            Err(e) if e.to_string().contains("equal or smaller") => {
                let id = format!("{seq}-0");
                match range(con, &self.config.stream, &id, &id, 1) {
                    Ok((found, _)) if found.first().is_some_and(|(_, l)| l == line) => Ok(()),
                    Ok(_) => Err(Halt::Diverged(format!(
                        "line {seq} differs from the copy's, or the copy skipped it"
                    ))),
                    Err(e) => Err(Halt::Failed(e)),
                }
            }
            Err(e) => Err(Halt::Failed(e)),
        }
    }

    /// Ships until the connection fails, the copy disagrees, or the sink stops.
    fn ship(&self, con: &mut redis::Connection) -> Halt {
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
                        return Halt::Stopped;
                    }
                    s = self
                        .shared
                        .changed
                        .wait_timeout(s, Duration::from_secs(1))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            match next {
                Ok((seq, line)) => {
                    if let Err(halt) = self.send_tracked(con, seq, &line) {
                        return halt;
                    }
                }
                Err((from, to)) => {
                    let lines = match read_lines(&self.current, from, to, CATCH_UP_BATCH) {
                        Ok(lines) => lines,
                        Err(e) => {
                            tracing::error!(error = %e, "audit sink: reading the log to catch up failed");
                            Vec::new()
                        }
                    };
                    if lines.first().is_none_or(|(q, _)| *q != from) {
                        // Not in the files (still waiting to be written after a failure, or
                        // removed): wait for them rather than leave a hole.
                        let s = self.shared.lock();
                        if s.stop {
                            return Halt::Stopped;
                        }
                        let _ = self.shared.changed.wait_timeout(s, Duration::from_secs(1));
                        continue;
                    }
                    for (q, l) in &lines {
                        if let Err(halt) = self.send(con, *q, l) {
                            return halt;
                        }
                        self.shared.lock().shipped_through = *q;
                    }
                    self.shared.changed.notify_all();
                }
            }
        }
    }

    /// Sends the line at the head of the queue and takes it off when Redis has it.
    fn send_tracked(&self, con: &mut redis::Connection, seq: u64, line: &str) -> Result<(), Halt> {
        self.send(con, seq, line)?;
        let mut s = self.shared.lock();
        s.shipped_through = s.shipped_through.max(seq);
        s.in_flight = None;
        if s.queue.front().is_some_and(|(q, _)| *q == seq) {
            s.queue.pop_front();
        }
        metrics::gauge!("signaling_audit_sink_backlog_lines").set(s.queue.len() as f64);
        drop(s);
        self.shared.changed.notify_all();
        Ok(())
    }
}
