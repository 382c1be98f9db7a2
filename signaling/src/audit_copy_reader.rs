//! The audit log's off-host copy read back in order, a page at a time: at start (lines the
//! file lost) and by `audit verify --sink`. A copy holds years of lines until a region archives
//! it, and both run where the service does (`kubectl exec` shares its memory limit): never
//! the whole of it at once.

use crate::audit_sink::{CATCH_UP_BATCH, SinkError, range};
use crate::redis_connection::{connect, redacted};
use std::time::Duration;

pub struct CopyReader {
    con: redis::Connection,
    stream: String,
    /// The next page's start (an XRANGE bound).
    from: String,
    ended: bool,
}

impl std::fmt::Debug for CopyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyReader")
            .field("stream", &self.stream)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl CopyReader {
    /// Reads `stream` at `url` from line `after + 1` on; an error when Redis cannot be
    /// reached or the URL is wrong.
    pub fn open(url: &str, stream: &str, after: u64, timeout: Duration) -> Result<Self, SinkError> {
        let fail = |e: redis::RedisError| SinkError::Config {
            url: redacted(url),
            reason: e.to_string(),
        };
        let client = redis::Client::open(url).map_err(fail)?;
        let con = connect(&client, timeout).map_err(fail)?;
        Ok(Self {
            con,
            stream: stream.to_owned(),
            from: format!("{}-0", after + 1),
            ended: false,
        })
    }

    /// The next lines in order (sequence number, line), up to a page of them; empty at the
    /// copy's end.
    pub fn next_page(&mut self) -> redis::RedisResult<Vec<(u64, String)>> {
        // (Entries without a line, which the service never writes, are passed over.)
        while !self.ended {
            let (page, last) = range(&mut self.con, &self.stream, &self.from, "+", CATCH_UP_BATCH)?;
            match last {
                Some(last) => self.from = format!("({last}"),
                None => self.ended = true,
            }
            if !page.is_empty() {
                return Ok(page);
            }
        }
        Ok(Vec::new())
    }
}
