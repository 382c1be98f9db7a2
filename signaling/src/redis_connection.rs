//! Connections to the region's Redis (the audit log's copy, the meeting store): timeouts on
//! every call, and the URL without its password in every message.

use std::time::Duration;

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
