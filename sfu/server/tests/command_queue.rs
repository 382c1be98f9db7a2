//! A burst of client requests larger than a worker's queue: the excess is refused at once
//! ("busy"), every request gets an outcome, and the worker keeps answering.

use sfu_proto::{Command, Event, ParticipantId, Permissions, RoomId};
use sfu_server::{MAX_PENDING_REQUESTS, NodeConfig, SfuNode};
use sfu_testkit::SimPeer;
use std::time::{Duration, Instant};

#[test]
fn requests_past_the_queue_bound_are_refused_and_the_rest_answered() {
    let (tx, rx) = std::sync::mpsc::channel();
    let node = SfuNode::start(
        &NodeConfig {
            workers: 1,
            ..Default::default()
        },
        move |e| {
            let _ = tx.send(e);
        },
    )
    .unwrap();
    let mut peer = SimPeer::new("p", "127.0.0.1:9".parse().unwrap(), Instant::now());
    peer.add_track(sfu_proto::MediaKind::Audio);
    peer.add_track(sfu_proto::MediaKind::Video);
    let offer = peer.offer();
    let sent = 4 * MAX_PENDING_REQUESTS;
    for i in 0..sent {
        node.send(Command::AddParticipant {
            room: RoomId(format!("room-{i}")),
            participant: ParticipantId(format!("p-{i}")),
            offer_sdp: offer.clone(),
            session: 1,
            permissions: Permissions::default(),
        });
    }
    let (mut answers, mut busy) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while answers + busy < sent && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Event::Answer { .. }) => answers += 1,
            Ok(Event::CommandFailed { command, error, .. }) => {
                assert_eq!(command, "add_participant");
                assert!(error.contains("busy"), "{error}");
                busy += 1;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(answers + busy, sent, "every request has an outcome");
    assert!(busy > 0, "a burst of {sent} overflows the queue");
    assert!(
        answers >= MAX_PENDING_REQUESTS,
        "the queue's worth is answered ({answers})"
    );
    // Refused adds left no placement behind; the worker still takes new work.
    node.send(Command::AddParticipant {
        room: RoomId("after".into()),
        participant: ParticipantId("p-after".into()),
        offer_sdp: offer,
        session: 1,
        permissions: Permissions::default(),
    });
    let after = loop {
        match rx.recv_timeout(Duration::from_secs(5)).expect("an outcome") {
            Event::Answer { participant, .. } if participant.0 == "p-after" => break true,
            Event::CommandFailed { participant, .. }
                if participant.as_ref().is_some_and(|p| p.0 == "p-after") =>
            {
                break false;
            }
            _ => {}
        }
    };
    assert!(after, "the worker answers once the burst is through");
}
