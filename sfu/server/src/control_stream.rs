//! Framing of control messages on a QUIC stream: a 4-byte big-endian length, then the JSON of
//! one [`ControlMessage`].

use sfu_proto::ControlMessage;

/// Largest control message (an SDP with many m-lines fits easily).
pub const MAX_FRAME: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlStreamError {
    #[error("control stream closed")]
    Closed,
    #[error("the other side closed the link: {0}")]
    ClosedBy(String),
    #[error("control frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("reading control stream: {0}")]
    Read(String),
    #[error("writing control stream: {0}")]
    Write(String),
    #[error("undecodable control message: {0}")]
    Decode(#[from] sfu_proto::DecodeError),
    #[error("the other side reads nothing: more than {0} control messages wait to be written")]
    FellBehind(usize),
}

pub async fn read_message(
    recv: &mut quinn::RecvStream,
) -> Result<ControlMessage, ControlStreamError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(read_error)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ControlStreamError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.map_err(read_error)?;
    Ok(ControlMessage::decode(&buf)?)
}

fn read_error(e: quinn::ReadExactError) -> ControlStreamError {
    use quinn::{ConnectionError, ReadError, ReadExactError};
    match e {
        ReadExactError::FinishedEarly(_) => ControlStreamError::Closed,
        // (The other side's reason, e.g. why signaling refused this node: quinn's own message
        // for a lost connection leaves it out.)
        ReadExactError::ReadError(ReadError::ConnectionLost(
            ConnectionError::ApplicationClosed(close),
        )) => ControlStreamError::ClosedBy(String::from_utf8_lossy(&close.reason).into_owned()),
        e => ControlStreamError::Read(e.to_string()),
    }
}

fn write_error(e: quinn::WriteError) -> ControlStreamError {
    use quinn::{ConnectionError, WriteError};
    match e {
        WriteError::ConnectionLost(ConnectionError::ApplicationClosed(close)) => {
            ControlStreamError::ClosedBy(String::from_utf8_lossy(&close.reason).into_owned())
        }
        e => ControlStreamError::Write(e.to_string()),
    }
}

/// Reads messages on a task of its own and hands them over a channel. `read_message` is not
/// cancel-safe (a half-read frame would be lost), so it must never race in a `select!`;
/// receiving from the channel is. The channel ends after the first error, which it carries —
/// except a whole frame that does not decode (a message of a newer version of the other side,
/// e.g. a command this node does not know): it is logged and skipped, so one such message does
/// not take down the link and every room on it.
pub fn spawn_reader(
    mut recv: quinn::RecvStream,
) -> tokio::sync::mpsc::Receiver<Result<ControlMessage, ControlStreamError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let msg = read_message(&mut recv).await;
            if let Err(ControlStreamError::Decode(e)) = &msg {
                tracing::warn!(error = %e, "control message not understood; skipped");
                metrics::counter!("sfu_control_messages_skipped_total").increment(1);
                continue;
            }
            let failed = msg.is_err();
            if tx.send(msg).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

pub async fn write_message(
    send: &mut quinn::SendStream,
    msg: &ControlMessage,
) -> Result<(), ControlStreamError> {
    let body = msg.encode();
    if body.len() > MAX_FRAME {
        return Err(ControlStreamError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    send.write_all(&frame).await.map_err(write_error)
}

/// Writes a link's messages on a task of its own, so a side never waits on the other while it
/// should be reading. Two sides that each wrote inside their read loop could block each other
/// for good: each waiting for the other to take its bytes (the stream's send buffer and the
/// other's receive window full), neither reading, so neither's reader queue ever drained.
pub struct ControlWriter {
    queue: tokio::sync::mpsc::Sender<ControlMessage>,
    capacity: usize,
    task: tokio::task::JoinHandle<ControlStreamError>,
    /// Why the writer ended, for a message queued after (`ended` gives the error itself).
    why: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl ControlWriter {
    /// Writes what is queued to `send`, in order, until an error (which ends the writer).
    pub fn spawn(mut send: quinn::SendStream, capacity: usize) -> Self {
        let (queue, mut queued) = tokio::sync::mpsc::channel(capacity);
        let why = std::sync::Arc::new(std::sync::OnceLock::new());
        let told = why.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = queued.recv().await {
                if let Err(e) = write_message(&mut send, &msg).await {
                    let _ = told.set(e.to_string());
                    return e;
                }
            }
            ControlStreamError::Closed
        });
        Self {
            queue,
            capacity,
            task,
            why,
        }
    }

    /// Queues `msg` for writing; never waits. An error when `capacity` messages already wait
    /// (the other side has stopped reading: the link should be given up) or the writer ended.
    pub fn queue(&self, msg: ControlMessage) -> Result<(), ControlStreamError> {
        use tokio::sync::mpsc::error::TrySendError;
        match self.queue.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ControlStreamError::FellBehind(self.capacity)),
            Err(TrySendError::Closed(_)) => Err(ControlStreamError::Write(
                self.why
                    .get()
                    .cloned()
                    .unwrap_or_else(|| "writer ended".into()),
            )),
        }
    }

    /// Resolves with the writer's error once it has ended (for a `select!`; it runs while
    /// this value lives). Not to be awaited again once it has resolved.
    pub async fn ended(&mut self) -> ControlStreamError {
        match (&mut self.task).await {
            Ok(e) => e,
            Err(e) => ControlStreamError::Write(e.to_string()),
        }
    }
}

impl Drop for ControlWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfu_proto::{Command, ParticipantId};
    use std::time::Duration;

    /// Two ends of a control link over QUIC on loopback, with the cluster's TLS and transport.
    async fn link() -> (
        (quinn::SendStream, quinn::RecvStream),
        (quinn::SendStream, quinn::RecvStream),
        quinn::Endpoint,
        quinn::Endpoint,
    ) {
        let dir = std::env::temp_dir().join(format!("hc-link-{}", rand::random::<u64>()));
        crate::cluster_tls::generate_dev_cluster(&dir).unwrap();
        let load = |name: &str| {
            crate::cluster_tls::ClusterTls::load(
                &dir.join("ca.pem"),
                &dir.join(format!("{name}.pem")),
                &dir.join(format!("{name}.key")),
            )
            .unwrap()
        };
        let server = quinn::Endpoint::server(
            load("signaling").quic_server().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(load("sfu").quic_client().unwrap());
        let addr = server.local_addr().unwrap();
        let accepting = tokio::spawn({
            let server = server.clone();
            async move {
                let conn = server.accept().await.unwrap().await.unwrap();
                conn.accept_bi().await.unwrap()
            }
        });
        let conn = client.connect(addr, "signaling").unwrap().await.unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        // (A stream is announced to the other side by its first bytes.)
        write_message(
            &mut send,
            &ControlMessage::ReportSessions {
                room: "hello".into(),
            },
        )
        .await
        .unwrap();
        let (other_send, mut other_recv) = accepting.await.unwrap();
        read_message(&mut other_recv).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        ((send, recv), (other_send, other_recv), server, client)
    }

    /// A command of about `bytes` (an SDP offer's size and more).
    fn big(n: usize, bytes: usize) -> ControlMessage {
        ControlMessage::Command(Command::RemoveParticipant {
            participant: ParticipantId::from(format!("{n:06}-{}", "x".repeat(bytes))),
        })
    }

    fn number(msg: &ControlMessage) -> usize {
        match msg {
            ControlMessage::Command(Command::RemoveParticipant { participant }) => {
                participant.as_str()[..6].parse().unwrap()
            }
            other => panic!("{}", other.kind()),
        }
    }

    /// Both sides of a link send a burst far over what QUIC buffers (10 MiB of send buffer and
    /// a 1.25 MiB receive window per stream), and answer each message they read with another,
    /// all from their read loop, as signaling and a node do. With writes awaited inside the
    /// loop both sides stall for good; with the writer, every message arrives, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_sides_that_both_send_a_lot_never_block_each_other() {
        const BURST: usize = 400;
        const BYTES: usize = 64 * 1024;
        async fn side(
            (send, recv): (quinn::SendStream, quinn::RecvStream),
            inline: bool,
        ) -> (usize, impl Sized) {
            let mut send = Some(send);
            let writer = (!inline).then(|| ControlWriter::spawn(send.take().unwrap(), 4 * BURST));
            let mut incoming = spawn_reader(recv);
            let mut out = 0;
            let mut write = async |msg: ControlMessage| match (&writer, &mut send) {
                (Some(w), _) => w.queue(msg).unwrap(),
                (None, Some(s)) => write_message(s, &msg).await.unwrap(),
                (None, None) => unreachable!(),
            };
            for _ in 0..BURST {
                write(big(out, BYTES)).await;
                out += 1;
            }
            let mut read = 0;
            while read < 2 * BURST {
                let msg = incoming.recv().await.unwrap().unwrap();
                assert_eq!(number(&msg), read, "in order, none lost");
                read += 1;
                if out < 2 * BURST {
                    write(big(out, BYTES)).await;
                    out += 1;
                }
            }
            // (The streams are kept open until both sides have read everything.)
            (read, (writer, send, incoming))
        }
        for inline in [true, false] {
            let (a, b, _server, _client) = link().await;
            let both = async { tokio::join!(side(a, inline), side(b, inline)) };
            // (With the writer, 50 MiB each way take a few seconds here.)
            let within = Duration::from_secs(if inline { 8 } else { 30 });
            let done = tokio::time::timeout(within, both).await;
            match (inline, done) {
                (true, Err(_)) => {} // the deadlock this writer exists for
                (true, Ok(_)) => {
                    panic!("writes inside the read loop did not stall: the test proves nothing")
                }
                (false, Ok(((a, _a), (b, _b)))) => assert_eq!((a, b), (2 * BURST, 2 * BURST)),
                (false, Err(_)) => panic!("the link stalled with the writer"),
            }
        }
    }

    #[tokio::test]
    async fn a_writer_whose_other_side_reads_nothing_says_so_at_its_capacity() {
        let (a, _b, _server, _client) = link().await;
        let writer = ControlWriter::spawn(a.0, 8);
        let mut refused = None;
        for n in 0..10_000 {
            if let Err(e) = writer.queue(big(n, 64 * 1024)) {
                refused = Some((n, e));
                break;
            }
            tokio::task::yield_now().await;
        }
        let (n, e) = refused.expect("refused once the other side stopped reading");
        assert!(matches!(e, ControlStreamError::FellBehind(8)), "{e}");
        // Queued: what fits QUIC's buffers and the other's window, then 8 more.
        assert!(n > 8 && n < 1000, "refused after {n}");
    }
}
