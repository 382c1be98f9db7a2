//! A connection's queue of messages from its meeting, bounded by the bytes waiting in it.
//!
//! Messages wait here while the connection's task is blocked sending earlier ones (a client
//! that reads slowly, or not at all, while its socket's buffers are full) and while its
//! participant is parked for a resume. Every sort of message a meeting sends has a budget of
//! its own, but a client reading a few bytes now and then (each send then completes within its
//! time limit) would keep a long meeting's worth in memory: past the limit the queue stops
//! taking messages and the connection is closed (`too_slow`), its client to join again afresh.

use crate::meeting_effects::Outbound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;

/// The default limit: far above what a slow phone lets wait (a meeting's largest message, an
/// offer naming everyone's media, is tens of KiB) and small beside the service's memory.
pub const DEFAULT_OUTBOX_LIMIT_BYTES: usize = 1024 * 1024;

/// What a queued message costs beyond its text (the queue's node, the string's header).
const PER_MESSAGE_BYTES: usize = 64;

#[derive(Debug)]
struct Shared {
    queued_bytes: AtomicUsize,
    limit_bytes: usize,
    overflowed: AtomicBool,
    /// Tells every waiter (a live connection, and a park task of its last drop that may still
    /// be waiting out its window): one woken alone could be the wrong one.
    overflow: watch::Sender<bool>,
}

/// The meeting's end of a connection's queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: UnboundedSender<Outbound>,
    shared: Arc<Shared>,
}

/// The connection's end.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: UnboundedReceiver<Outbound>,
    shared: Arc<Shared>,
}

/// A queue that holds at most `limit_bytes` of messages.
pub fn outbox(limit_bytes: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = unbounded_channel();
    let shared = Arc::new(Shared {
        queued_bytes: AtomicUsize::new(0),
        limit_bytes,
        overflowed: AtomicBool::new(false),
        overflow: watch::Sender::new(false),
    });
    (
        Outbox {
            tx,
            shared: shared.clone(),
        },
        OutboxReceiver { rx, shared },
    )
}

fn cost(message: &Outbound) -> usize {
    PER_MESSAGE_BYTES
        + match message {
            Outbound::Text(text) => text.len(),
            // A close is the last message: it is always taken (and never counted).
            Outbound::Close { .. } => 0,
        }
}

impl Outbox {
    /// Queues `message`, unless the queue overflowed: then it, and every message after it, is
    /// dropped (a close still goes in), and whoever waits on [`Overflow`] is told.
    pub fn send(&self, message: Outbound) {
        let s = &self.shared;
        if matches!(message, Outbound::Close { .. }) {
            let _ = self.tx.send(message);
            return;
        }
        if s.overflowed.load(Ordering::Acquire) {
            return;
        }
        let size = cost(&message);
        let before = s.queued_bytes.fetch_add(size, Ordering::AcqRel);
        // (One message larger than the limit still goes into an empty queue.)
        if before > 0 && before + size > s.limit_bytes {
            s.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            s.overflowed.store(true, Ordering::Release);
            s.overflow.send_replace(true);
            return;
        }
        if self.tx.send(message).is_err() {
            s.queued_bytes.fetch_sub(size, Ordering::AcqRel);
        }
    }
}

impl OutboxReceiver {
    /// The next message, in order; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let message = self.rx.recv().await?;
        if !matches!(message, Outbound::Close { .. }) {
            self.shared
                .queued_bytes
                .fetch_sub(cost(&message), Ordering::AcqRel);
        }
        Some(message)
    }

    /// A close waiting in the queue, if any (the rest of it dropped): what a connection whose
    /// queue overflowed was to be told in the end anyway (removed, replaced, a restart).
    pub fn take_close(&mut self) -> Option<Outbound> {
        while let Ok(message) = self.rx.try_recv() {
            if matches!(message, Outbound::Close { .. }) {
                return Some(message);
            }
            self.shared
                .queued_bytes
                .fetch_sub(cost(&message), Ordering::AcqRel);
        }
        None
    }

    /// What tells of this queue's overflow (waited on beside [`OutboxReceiver::recv`]).
    pub fn overflow(&self) -> Overflow {
        Overflow {
            shared: self.shared.clone(),
        }
    }

    /// Bytes waiting now (texts and their overhead).
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }
}

/// Whether a queue overflowed: messages were dropped, and its client's view of the meeting is
/// incomplete.
#[derive(Debug, Clone)]
pub struct Overflow {
    shared: Arc<Shared>,
}

impl Overflow {
    /// Completes once the queue has overflowed (at once if it already has).
    pub async fn happened(&self) {
        // (The sender lives as long as `shared`: this waits until it says so.)
        let _ = self.shared.overflow.subscribe().wait_for(|&v| v).await;
    }

    pub fn has_happened(&self) -> bool {
        self.shared.overflowed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(n: usize) -> Outbound {
        Outbound::Text("x".repeat(n))
    }

    #[tokio::test]
    async fn messages_within_the_limit_arrive_in_order_and_their_bytes_are_given_back() {
        let (tx, mut rx) = outbox(1000);
        tx.send(text(100));
        tx.send(text(200));
        assert_eq!(rx.queued_bytes(), 300 + 2 * PER_MESSAGE_BYTES);
        assert_eq!(rx.recv().await, Some(text(100)));
        assert_eq!(rx.recv().await, Some(text(200)));
        assert_eq!(rx.queued_bytes(), 0);
        // Read as fast as it is written, far more than the limit goes through.
        for _ in 0..100 {
            tx.send(text(500));
            assert_eq!(rx.recv().await, Some(text(500)));
        }
        assert!(!rx.overflow().has_happened());
    }

    #[tokio::test]
    async fn past_the_limit_the_queue_takes_nothing_more_but_a_close_and_says_so_once() {
        let (tx, mut rx) = outbox(1000);
        let overflow = rx.overflow();
        for _ in 0..3 {
            tx.send(text(250));
        }
        assert!(!overflow.has_happened());
        // 3 × 314 queued: the fourth would pass 1000.
        tx.send(text(250));
        assert!(overflow.has_happened());
        // Signalled even though nobody was waiting then.
        tokio::time::timeout(std::time::Duration::from_millis(100), overflow.happened())
            .await
            .expect("the overflow is signalled");
        // Room again, but the client has missed a message: nothing more is taken.
        assert_eq!(rx.recv().await, Some(text(250)));
        tx.send(text(10));
        let close = Outbound::Close {
            code: 4002,
            message: json!({"type": "closing"}),
        };
        tx.send(close.clone());
        assert_eq!(rx.recv().await, Some(text(250)));
        assert_eq!(rx.recv().await, Some(text(250)));
        assert_eq!(rx.recv().await, Some(close));
        assert_eq!(rx.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn every_waiter_hears_of_the_overflow() {
        let (tx, rx) = outbox(100);
        let (a, b) = (rx.overflow(), rx.overflow());
        let waiting = tokio::spawn(async move { a.happened().await });
        tokio::task::yield_now().await;
        tx.send(text(50));
        tx.send(text(50));
        let wait = std::time::Duration::from_millis(100);
        tokio::time::timeout(wait, waiting)
            .await
            .expect("the first waiter woke")
            .unwrap();
        tokio::time::timeout(wait, b.happened())
            .await
            .expect("and the second");
    }

    #[tokio::test]
    async fn one_message_larger_than_the_limit_goes_into_an_empty_queue() {
        let (tx, mut rx) = outbox(100);
        tx.send(text(500));
        assert!(!rx.overflow().has_happened());
        assert_eq!(rx.recv().await, Some(text(500)));
        // Not behind another.
        tx.send(text(10));
        tx.send(text(500));
        assert!(rx.overflow().has_happened());
    }

    #[tokio::test]
    async fn a_close_behind_an_overflow_is_found() {
        let (tx, mut rx) = outbox(200);
        tx.send(text(100));
        tx.send(text(100));
        let close = Outbound::Close {
            code: 4004,
            message: json!({"type": "closing", "reason": "replaced"}),
        };
        tx.send(close.clone());
        assert!(rx.overflow().has_happened());
        assert_eq!(rx.take_close(), Some(close));
        assert_eq!(rx.queued_bytes(), 0);
    }
}
