//! Connections to the region's Redis (the audit log's copy, the meeting store): timeouts on
//! every call, and the URL without its password in every message.

use std::sync::Mutex;
use std::time::Duration;

/// One connection to a Redis, made again after a failed call: what the meeting store and the
/// meeting leases share.
pub struct RedisLink {
    client: redis::Client,
    timeout: Duration,
    con: Mutex<Option<redis::Connection>>,
}

impl RedisLink {
    /// Connects once (a Redis that cannot be reached at start is the caller's error to name).
    pub fn open(url: &str, timeout: Duration) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let mut con = connect(&client, timeout)?;
        redis::cmd("PING").query::<String>(&mut con)?;
        Ok(Self {
            client,
            timeout,
            con: Mutex::new(Some(con)),
        })
    }

    /// Runs `f` on the connection, connecting first when there is none; a failed call drops
    /// the connection and is tried once more on a new one.
    pub fn call<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let mut guard = self.con.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(connect(&self.client, self.timeout)?);
            }
            let Some(con) = guard.as_mut() else {
                continue;
            };
            match f(con) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    *guard = None;
                    if attempt == 1 || !(e.is_io_error() || e.is_connection_dropped()) {
                        return Err(e);
                    }
                }
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no connection to Redis",
        )))
    }
}

/// A Redis connection whose connect, reads and writes each give up after `timeout`.
pub fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// The URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
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
