//! What a client's SDP does to a running `Sfu`: renegotiation offers, **ICE restarts in place**
//! (an offer with new `ice-ufrag`/`ice-pwd` on a live session), answers to the SFU's offers, and
//! first offers of a new participant. Every one of them comes from a browser over the
//! WebSocket, so every one is hostile input. It must never panic, and every offer gets exactly
//! one reply: an `Answer` or a `CommandFailed` naming the participant.
//!
//! Set-up, built once per process (lazily) and rebuilt when the session is no longer healthy:
//! an `Sfu` with one room, a publisher (audio and video) and a subscriber, connected for real
//! over `sfu_testkit::SimNetwork` (ICE, DTLS, SRTP, the subscriber's renegotiation).
//!
//! The input's first byte picks what the rest becomes (lossy UTF-8 text `t`):
//! - 0: `t` as the publisher's offer;
//! - 1: an ICE restart: the publisher's real offer with its `a=ice-ufrag`/`a=ice-pwd` values
//!   replaced by the first two lines of `t`, and a valid check under the new credentials;
//! - 2: the publisher's real offer with `t`'s lines spliced in after the line the second byte
//!   picks (attributes in the middle of a section, duplicated or contradicting lines);
//! - 3: `t` as the subscriber's answer (to an SFU offer that may or may not be out);
//! - 4: `t` as the first offer of a third participant in the room, who is then removed;
//! - 5: the subscriber declines the SFU's offer (`RejectOffer`), with or without one out:
//!   exactly one `CommandFailed` comes back (the offer given up, or "no offer is outstanding").
//!
//! Then `handle_timeout` and 1 ms of virtual time. The SFU's answers are not applied to the
//! test peers (a fuzzed answer could not be), so after an accepted offer or answer the session
//! is rebuilt; after a refused one it goes on (a refusal must change nothing).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu_core::TransmitBatch;
use sfu_proto::{Command, Event, MediaKind, ParticipantId, Permissions, RoomId};
use sfu_testkit::SimNetwork;
use std::cell::RefCell;
use std::time::Duration;

const PUBLISHER: usize = 0;
const SUBSCRIBER: usize = 1;
const BOTH: Permissions = Permissions {
    publish: true,
    subscribe: true,
};

struct Harness {
    net: SimNetwork,
    batch: TransmitBatch,
    broken: bool,
}

impl Harness {
    fn build() -> Self {
        let mut net = SimNetwork::new(2, |_| {});
        net.add_peer("neg-pub", &[MediaKind::Audio, MediaKind::Video]);
        net.add_peer("neg-sub", &[]);
        net.join(PUBLISHER, "neg-room", BOTH);
        net.join(SUBSCRIBER, "neg-room", BOTH);
        net.connect_all(Duration::from_secs(5));
        net.events.clear();
        Self {
            net,
            batch: TransmitBatch::new(),
            broken: false,
        }
    }

    fn healthy(&self) -> bool {
        !self.broken
            && self.net.sfu.participant_count() == 2
            && self.net.peers.iter().all(|p| p.is_secured())
    }

    /// Hands `command` to the SFU and returns its events (not applied to the peers).
    fn command(&mut self, command: Command) -> Vec<Event> {
        let now = self.net.now;
        self.net.sfu.handle_command(now, command, &mut self.batch);
        self.batch.clear();
        let mut events = Vec::new();
        while let Some(e) = self.net.sfu.poll_event() {
            events.push(e);
        }
        events
    }

    /// An offer from `participant`: exactly one answer or one refusal comes back for it.
    fn offer(&mut self, participant: ParticipantId, command: Command) {
        let events = self.command(command);
        let replies = events
            .iter()
            .filter(|e| match e {
                Event::Answer { participant: p, .. } => *p == participant,
                Event::CommandFailed {
                    participant: Some(p),
                    ..
                } => *p == participant,
                _ => false,
            })
            .count();
        assert_eq!(replies, 1, "one reply to an offer: {events:?}");
        // An accepted offer changed the session behind the test peer's back: rebuilt before
        // the next input. A refused one must have changed nothing, so the session goes on.
        self.broken |= events.iter().any(|e| matches!(e, Event::Answer { .. }));
    }

    fn one(&mut self, input: &[u8]) {
        let Some((&mode, rest)) = input.split_first() else {
            return;
        };
        let text = String::from_utf8_lossy(rest).into_owned();
        let publisher = self.net.id(PUBLISHER).clone();
        match mode % 6 {
            0 => self.offer(
                publisher.clone(),
                Command::Offer {
                    participant: publisher,
                    offer_sdp: text,
                },
            ),
            1 => {
                let mut lines = text.lines();
                let ufrag = lines.next().unwrap_or_default();
                let pwd = lines.next().unwrap_or_default();
                let offer = self.net.peers[PUBLISHER]
                    .offer()
                    .split("\r\n")
                    .map(|l| {
                        if l.starts_with("a=ice-ufrag:") {
                            format!("a=ice-ufrag:{ufrag}")
                        } else if l.starts_with("a=ice-pwd:") {
                            format!("a=ice-pwd:{pwd}")
                        } else {
                            l.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\r\n");
                self.offer(
                    publisher.clone(),
                    Command::Offer {
                        participant: publisher,
                        offer_sdp: offer,
                    },
                );
                // A check under whatever the answer gave (the restart's path proving itself).
                let check = self.net.peers[PUBLISHER].connectivity_check(true);
                if !check.is_empty() {
                    let now = self.net.now;
                    let from = self.net.peers[PUBLISHER].addr;
                    let mut check = check;
                    self.net
                        .sfu
                        .handle_datagram(now, from, &mut check, &mut self.batch);
                    self.batch.clear();
                }
            }
            2 => {
                let offer = self.net.peers[PUBLISHER].offer();
                let mut lines: Vec<&str> = offer.split("\r\n").collect();
                let at = rest.first().map_or(0, |&b| b as usize % lines.len().max(1));
                for (i, l) in text.lines().enumerate() {
                    lines.insert((at + i).min(lines.len()), l);
                }
                let offer = lines.join("\r\n");
                self.offer(
                    publisher.clone(),
                    Command::Offer {
                        participant: publisher,
                        offer_sdp: offer,
                    },
                );
            }
            3 => {
                let subscriber = self.net.id(SUBSCRIBER).clone();
                let events = self.command(Command::Answer {
                    participant: subscriber,
                    answer_sdp: text,
                });
                self.broken |= !events
                    .iter()
                    .any(|e| matches!(e, Event::CommandFailed { .. }));
            }
            5 => {
                let subscriber = self.net.id(SUBSCRIBER).clone();
                let events = self.command(Command::RejectOffer {
                    participant: subscriber.clone(),
                });
                let failed = events
                    .iter()
                    .filter(|e| {
                        matches!(e, Event::CommandFailed { participant: Some(p), .. } if *p == subscriber)
                    })
                    .count();
                assert_eq!(failed, 1, "one reply to a decline: {events:?}");
                self.broken |= events.iter().any(|e| {
                    matches!(e, Event::CommandFailed { command, .. } if command == "sfu_offer")
                });
            }
            _ => {
                let newcomer = ParticipantId::from("neg-new");
                self.offer(
                    newcomer.clone(),
                    Command::AddParticipant {
                        room: RoomId::from("neg-room"),
                        participant: newcomer.clone(),
                        offer_sdp: text,
                        permissions: BOTH,
                        session: 7,
                    },
                );
                self.command(Command::RemoveParticipant {
                    participant: newcomer,
                });
            }
        }
        let now = self.net.now;
        self.net.sfu.handle_timeout(now, &mut self.batch);
        self.batch.clear();
        while self.net.sfu.poll_event().is_some() {}
        self.net.run(Duration::from_millis(1), |_| {});
        self.net.events.clear();
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !slot.as_ref().is_some_and(Harness::healthy) {
            *slot = Some(Harness::build());
        }
        slot.as_mut().expect("built").one(data);
    });
});
