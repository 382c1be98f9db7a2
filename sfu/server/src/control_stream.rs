//! Framing of control messages on a QUIC stream: a 4-byte big-endian length, then the JSON of
//! one [`ControlMessage`].

use sfu_proto::ControlMessage;

/// Largest control message (an SDP with many m-lines fits easily).
pub const MAX_FRAME: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlStreamError {
    #[error("control stream closed")]
    Closed,
    #[error("control frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("reading control stream: {0}")]
    Read(String),
    #[error("writing control stream: {0}")]
    Write(String),
    #[error("undecodable control message: {0}")]
    Decode(#[from] sfu_proto::DecodeError),
}

pub async fn read_message(
    recv: &mut quinn::RecvStream,
) -> Result<ControlMessage, ControlStreamError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(ControlStreamError::Closed),
        Err(e) => return Err(ControlStreamError::Read(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ControlStreamError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| ControlStreamError::Read(e.to_string()))?;
    Ok(ControlMessage::decode(&buf)?)
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
    send.write_all(&frame)
        .await
        .map_err(|e| ControlStreamError::Write(e.to_string()))
}
