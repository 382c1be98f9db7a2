//! Where meetings are kept across restarts: a file (one JSON array, written whole — the
//! single-node default), or Redis (`meetings.store = "redis://…"`), where each meeting is a
//! key of its own, created with `SET NX` (two replicas booking one id at the same moment: one
//! wins), read by any replica that does not know it yet, and expiring once the meeting is no
//! longer worth keeping. Give Redis append-only persistence (`appendonly yes`) so a restart of
//! it loses no booking.

use crate::meeting::MeetingRecord;
use crate::redis_connection::{RedisLink, redacted};
use jiff::Timestamp;
use std::path::PathBuf;
use std::time::Duration;

/// Key of a meeting in Redis (after the prefix).
const KEY_PREFIX: &str = "healthcare-sfu:meeting:";

/// Each Redis call gives up after this (a region's Redis answers within milliseconds): a
/// join or a booking waits no longer for the store, and a store that is away holds up the
/// thread that asked for little more than this.
const TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
#[error("meeting store {store}: {reason}")]
pub struct StoreError {
    /// The file, or the Redis URL without its password.
    pub store: String,
    pub reason: String,
}

/// A meeting to write, and until when the store should keep it.
#[derive(Debug)]
pub struct Kept<'a> {
    pub record: &'a MeetingRecord,
    pub until: Timestamp,
}

pub enum MeetingStore {
    File(PathBuf),
    Redis(Box<RedisMeetings>),
}

impl std::fmt::Debug for MeetingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

pub struct RedisMeetings {
    url: String,
    link: RedisLink,
}

/// `host:port` (or `[v6]:port`), with no path: an address, not a file.
fn looks_like_host_port(spec: &str) -> bool {
    !spec.contains('/')
        && spec
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Whether a file can be written beside `path` (its directory made if missing), by writing
/// and removing a probe there.
fn probe_writable(path: &std::path::Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let probe = path.with_extension("probe");
    crate::private_file::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

impl MeetingStore {
    /// Whether `spec` is a Redis URL or a file path, by its form alone (nothing is reached or
    /// written: `signaling check-config` asks this too).
    pub fn check_spec(spec: &str) -> Result<(), StoreError> {
        let fail = |reason: String| StoreError {
            store: redacted(spec),
            reason,
        };
        if spec.starts_with("redis://") || spec.starts_with("rediss://") {
            return Ok(());
        }
        if spec.contains("://") {
            return Err(fail(
                "not a redis:// or rediss:// URL (nor a file path)".to_owned(),
            ));
        }
        if looks_like_host_port(spec) {
            return Err(fail(format!(
                "looks like a Redis address without its scheme: write redis://{spec}"
            )));
        }
        Ok(())
    }

    /// A `redis://` or `rediss://` URL, or a file path. Redis is reached once here: a store
    /// that cannot be reached at start is a configuration error, named.
    /// A file must be writable where it is: a path that cannot hold it, or a Redis address
    /// mistyped into a file name, would otherwise lose every booking at the next restart.
    pub fn open(spec: &str) -> Result<Self, StoreError> {
        let fail = |reason: String| StoreError {
            store: redacted(spec),
            reason,
        };
        Self::check_spec(spec)?;
        if !(spec.starts_with("redis://") || spec.starts_with("rediss://")) {
            let path = PathBuf::from(spec);
            probe_writable(&path).map_err(|e| fail(format!("cannot be written here: {e}")))?;
            return Ok(Self::File(path));
        }
        let link = RedisLink::open(spec, TIMEOUT).map_err(|e| fail(e.to_string()))?;
        Ok(Self::Redis(Box::new(RedisMeetings {
            url: spec.to_owned(),
            link,
        })))
    }

    /// The file, or the URL without its password.
    pub fn name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Redis(r) => redacted(&r.url),
        }
    }

    /// The Redis URL of a shared store.
    pub fn redis_url(&self) -> Option<&str> {
        match self {
            Self::File(_) => None,
            Self::Redis(r) => Some(r.url()),
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    fn error(&self, reason: impl ToString) -> StoreError {
        StoreError {
            store: self.name(),
            reason: reason.to_string(),
        }
    }

    /// Every meeting kept.
    pub fn load(&self) -> Result<Vec<MeetingRecord>, StoreError> {
        match self {
            Self::File(path) => {
                if !path.exists() {
                    return Ok(Vec::new());
                }
                let text = std::fs::read_to_string(path).map_err(|e| self.error(e))?;
                serde_json::from_str(&text).map_err(|e| self.error(e))
            }
            Self::Redis(r) => {
                let keys: Vec<String> = r
                    .call(|con| {
                        let mut keys = Vec::new();
                        let mut cursor = 0u64;
                        loop {
                            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                                .arg(cursor)
                                .arg("MATCH")
                                .arg(format!("{KEY_PREFIX}*"))
                                .arg("COUNT")
                                .arg(500)
                                .query(con)?;
                            keys.extend(page);
                            if next == 0 {
                                return Ok(keys);
                            }
                            cursor = next;
                        }
                    })
                    .map_err(|e| self.error(e))?;
                let mut records = Vec::with_capacity(keys.len());
                for chunk in keys.chunks(200) {
                    let values: Vec<Option<String>> = r
                        .call(|con| redis::cmd("MGET").arg(chunk).query(con))
                        .map_err(|e| self.error(e))?;
                    for (key, value) in chunk.iter().zip(values) {
                        // Gone between the scan and the read: expired.
                        let Some(json) = value else { continue };
                        let record = serde_json::from_str(&json)
                            .map_err(|e| self.error(format!("{key}: {e}")))?;
                        records.push(record);
                    }
                }
                Ok(records)
            }
        }
    }

    /// One meeting, as another replica may have booked it. The file store knows nothing this
    /// process does not.
    pub fn fetch(&self, id: &str) -> Result<Option<MeetingRecord>, StoreError> {
        let Self::Redis(r) = self else {
            return Ok(None);
        };
        let json: Option<String> = r
            .call(|con| redis::cmd("GET").arg(key(id)).query(con))
            .map_err(|e| self.error(e))?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| self.error(e)))
            .transpose()
    }

    /// Books `meeting` unless its id is taken in the store: `Ok(false)` when it is. The file
    /// store holds only what this process knows, so there it is always `true`.
    pub fn create(&self, meeting: Kept<'_>) -> Result<bool, StoreError> {
        let Self::Redis(r) = self else {
            return Ok(true);
        };
        let json = serde_json::to_string(meeting.record).map_err(|e| self.error(e))?;
        let ttl = ttl_ms(meeting.until);
        let set: Option<String> = r
            .call(|con| {
                redis::cmd("SET")
                    .arg(key(&meeting.record.id))
                    .arg(&json)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query(con)
            })
            .map_err(|e| self.error(e))?;
        Ok(set.is_some())
    }

    /// Writes `meetings`: the file whole, or each Redis key with its expiry.
    pub fn save(&self, meetings: &[Kept<'_>]) -> Result<(), StoreError> {
        match self {
            Self::File(path) => {
                let records: Vec<&MeetingRecord> = meetings.iter().map(|k| k.record).collect();
                let tmp = path.with_extension("tmp");
                serde_json::to_vec_pretty(&records)
                    .map_err(std::io::Error::other)
                    .and_then(|bytes| {
                        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                            std::fs::create_dir_all(dir)?;
                        }
                        crate::private_file::write(&tmp, &bytes)?;
                        std::fs::rename(&tmp, path)
                    })
                    .map_err(|e| self.error(e))
            }
            Self::Redis(r) => {
                if meetings.is_empty() {
                    return Ok(());
                }
                let mut pipe = redis::pipe();
                for m in meetings {
                    let json = serde_json::to_string(m.record).map_err(|e| self.error(e))?;
                    pipe.cmd("SET")
                        .arg(key(&m.record.id))
                        .arg(json)
                        .arg("PX")
                        .arg(ttl_ms(m.until))
                        .ignore();
                }
                r.call(|con| pipe.query::<()>(con))
                    .map_err(|e| self.error(e))
            }
        }
    }
}

impl RedisMeetings {
    fn call<T>(
        &self,
        f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        self.link.call(f)
    }

    /// The URL it was opened with (the meeting leases open their own connection to it).
    pub fn url(&self) -> &str {
        &self.url
    }
}

fn key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// Milliseconds until `until`, at least a minute (a meeting just written is never gone at
/// once).
fn ttl_ms(until: Timestamp) -> i64 {
    let left = until.duration_since(Timestamp::now()).as_millis();
    i64::try_from(left).unwrap_or(i64::MAX).max(60_000)
}

#[cfg(test)]
mod tests {
    use super::MeetingStore;

    #[test]
    fn a_store_neither_a_redis_url_nor_a_writable_file_is_refused_at_open() {
        for spec in [
            "redis.region.internal:6379",
            "[::1]:6379",
            "Redis://redis:6379",
            "http://redis:6379",
        ] {
            let e = MeetingStore::open(spec)
                .err()
                .unwrap_or_else(|| panic!("{spec} opened as a store"));
            assert!(e.to_string().contains("meeting store"), "{e}");
        }
        let dir = std::env::temp_dir().join(format!("hc-store-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        // Under a regular file: no directory can be made there.
        let file = dir.join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let under = file.join("meetings.json");
        let e = MeetingStore::open(&under.to_string_lossy()).unwrap_err();
        assert!(e.to_string().contains("cannot be written"), "{e}");
        // A new directory is made, and nothing is left beside the store.
        let fine = dir.join("state/meetings.json");
        assert!(MeetingStore::open(&fine.to_string_lossy()).is_ok());
        let left: Vec<_> = std::fs::read_dir(dir.join("state")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
