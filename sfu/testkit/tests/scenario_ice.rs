//! Scenario tests of the SFU's ICE-lite side on virtual time: a browser that nominates another
//! path (a second interface), an ICE restart in place after a network change, and what must
//! not happen meanwhile (a consent timeout, a renegotiation of tracks, a long gap in media).

use sfu_proto::{Event, MediaKind, Permissions};
use sfu_testkit::{Link, SimNetwork};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const BOTH: Permissions = Permissions {
    publish: true,
    subscribe: true,
};

/// Video at ~30 fps from each publisher, one packet a frame.
fn send_video(net: &mut SimNetwork, publishers: &[usize], tick: &mut u64) {
    *tick += 1;
    if (*tick).is_multiple_of(33) {
        for &p in publishers {
            let mut payload = vec![0x90, 0x80, 0, p as u8];
            payload.extend_from_slice(&tick.to_be_bytes());
            payload.resize(600, 0xab);
            net.peers[p].send_media(1, &payload, true, 3000);
        }
    }
}

/// A publisher ("pub") and a subscriber ("sub") connected, video flowing for a second.
fn call(seed: u64) -> (SimNetwork, u64) {
    let mut net = SimNetwork::new(seed, |_| {});
    net.add_peer("pub", &[MediaKind::Audio, MediaKind::Video]);
    net.add_peer("sub", &[MediaKind::Audio, MediaKind::Video]);
    net.join(0, "visit", BOTH);
    net.join(1, "visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    let mut tick = 0;
    net.run(Duration::from_secs(1), |n| {
        send_video(n, &[0, 1], &mut tick)
    });
    (net, tick)
}

/// Arrival times of the video `receiver` got from `publisher`.
fn arrivals(net: &SimNetwork, receiver: usize, publisher: &str) -> Vec<Instant> {
    let ssrc = net.peers[receiver]
        .incoming_from(publisher, MediaKind::Video)
        .expect("video line")
        .ssrc;
    net.peers[receiver]
        .received
        .get(&ssrc)
        .map(|v| v.iter().map(|p| p.at).collect())
        .unwrap_or_default()
}

/// The longest time without video in `[from, to]` (the edges count as arrivals).
fn longest_gap(times: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &t in times.iter().filter(|&&t| t >= from && t <= to) {
        gap = gap.max(t - last);
        last = t;
    }
    gap.max(to - last)
}

/// The subscriber's video came back within half a second of a network change at
/// `changed_at`, and has not stopped for 300 ms since.
fn assert_video_resumed(net: &SimNetwork, changed_at: Instant) {
    let got = arrivals(net, 1, "pub");
    let first = got
        .iter()
        .find(|&&t| t > changed_at)
        .expect("video after the restart");
    assert!(
        *first - changed_at < Duration::from_millis(500),
        "first video {:?} after the change",
        *first - changed_at
    );
    let gap = longest_gap(&got, *first, net.now);
    assert!(
        gap < Duration::from_millis(300),
        "video stopped for {gap:?}"
    );
}

fn offers_to(net: &SimNetwork, who: &str) -> usize {
    net.events
        .iter()
        .filter(|e| matches!(e, Event::Offer { participant, .. } if participant.as_str() == who))
        .count()
}

#[test]
fn a_later_nomination_moves_media_to_that_path_and_consent_follows_it() {
    let (mut net, mut tick) = call(31);
    // The subscriber's browser switches to its other interface and nominates that pair; from
    // then on it sends (and keeps consent) only there.
    let other: SocketAddr = "10.0.7.2:6000".parse().unwrap();
    net.peers[1].addr = other;
    let check = net.peers[1].connectivity_check(true);
    net.inject_to_sfu(other, check);
    let moved_at = net.now;
    net.run(Duration::from_secs(20), |n| {
        send_video(n, &[0, 1], &mut tick)
    });
    assert!(
        net.disconnected().is_empty(),
        "nobody may be timed out: {:?}",
        net.disconnected()
    );
    // Media reaches the new path at once and never stops for long (30 fps: 33 ms apart).
    let got = arrivals(&net, 1, "pub");
    let gap = longest_gap(&got, moved_at, net.now);
    assert!(
        gap < Duration::from_millis(300),
        "video stopped for {gap:?}"
    );
    // And the subscriber's own media, now from the new address, still reaches the publisher.
    let sent = arrivals(&net, 0, "sub");
    let gap = longest_gap(&sent, moved_at + Duration::from_millis(100), net.now);
    assert!(
        gap < Duration::from_millis(300),
        "uplink stopped for {gap:?}"
    );
    assert_eq!(net.sfu.counters.path_changes, 1);
}

#[test]
fn an_ice_restart_in_place_resumes_media_without_renegotiating_tracks() {
    let (mut net, mut tick) = call(32);
    let offers_before = offers_to(&net, "sub");
    let lines_before: Vec<_> = net.peers[1]
        .incoming
        .iter()
        .map(|l| (l.mid.clone(), l.ssrc))
        .collect();
    // Wi-Fi to cellular: the old address is gone at once, and the page restarts ICE.
    let cellular: SocketAddr = "10.0.8.2:7000".parse().unwrap();
    let changed_at = net.now;
    net.restart_ice(1, cellular);
    net.run(Duration::from_secs(15), |n| {
        send_video(n, &[0, 1], &mut tick)
    });
    assert!(net.disconnected().is_empty(), "{:?}", net.disconnected());
    assert_video_resumed(&net, changed_at);
    let sent = arrivals(&net, 0, "sub");
    assert!(
        sent.iter()
            .any(|&t| t > changed_at + Duration::from_secs(1)),
        "the restarted peer's own video reaches the other side"
    );
    // Nothing about tracks changed: no SFU offer, the same lines and SSRCs.
    assert_eq!(offers_to(&net, "sub"), offers_before);
    let lines_after: Vec<_> = net.peers[1]
        .incoming
        .iter()
        .map(|l| (l.mid.clone(), l.ssrc))
        .collect();
    assert_eq!(lines_after, lines_before);
    assert_eq!(net.sfu.counters.ice_restarts, 1);
}

#[test]
fn the_answer_to_a_restart_carries_new_credentials_and_old_ones_stop_working() {
    let (mut net, mut tick) = call(33);
    let before = net.peers[1].connectivity_check(true);
    let answers = |n: &SimNetwork| -> Vec<String> {
        n.events
            .iter()
            .filter_map(|e| match e {
                Event::Answer {
                    participant,
                    answer_sdp,
                } if participant.as_str() == "sub" => Some(answer_sdp.clone()),
                _ => None,
            })
            .collect()
    };
    let ufrag = |sdp: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .map(str::to_owned)
    };
    // The UDP candidate's priority (the fourth field of `a=candidate:`).
    let priority = |sdp: &str| -> u32 {
        let line = sdp
            .lines()
            .find(|l| l.starts_with("a=candidate:") && l.contains(" udp "))
            .expect("a UDP candidate");
        line.split(' ').nth(3).unwrap().parse().unwrap()
    };
    let old = ufrag(answers(&net).last().unwrap());
    let old_priority = priority(answers(&net).last().unwrap());
    let cellular: SocketAddr = "10.0.8.3:7000".parse().unwrap();
    net.restart_ice(1, cellular);
    let new = ufrag(answers(&net).last().unwrap());
    assert_ne!(old, new, "the restart's answer has new ICE credentials");
    // …and a candidate ranked above the old one, so a browser's pairs on the restarted path
    // outrank the dead path's and it moves its sending at once.
    assert!(
        priority(answers(&net).last().unwrap()) > old_priority,
        "the restart's candidate outranks the first"
    );
    net.run(Duration::from_secs(2), |n| {
        send_video(n, &[0, 1], &mut tick)
    });
    // The restart completed under the new credentials: a check under the old ones (replayed
    // from anywhere) is refused and moves nothing.
    let refused = net.sfu.counters.stun_refused;
    let stranger: SocketAddr = "10.9.9.9:9999".parse().unwrap();
    net.inject_to_sfu(stranger, before);
    net.run(Duration::from_millis(50), |_| {});
    assert_eq!(net.sfu.counters.stun_refused, refused + 1);
    assert_eq!(net.sfu.counters.path_changes, 1);
}

#[test]
fn an_offer_with_another_certificate_is_refused_and_the_session_goes_on() {
    let (mut net, mut tick) = call(34);
    let offer = net.peers[1].offer();
    let line = offer
        .lines()
        .find(|l| l.starts_with("a=fingerprint:sha-256 "))
        .unwrap();
    let mut other = line.to_owned();
    let last = other.pop().unwrap();
    other.push(if last == '0' { '1' } else { '0' });
    net.command(sfu_proto::Command::Offer {
        participant: net.id(1).clone(),
        offer_sdp: offer.replace(line, &other),
    });
    assert!(net.events.iter().any(|e| matches!(
        e,
        Event::CommandFailed { error, .. } if error.contains("fingerprint changed")
    )));
    let at = net.now;
    net.run(Duration::from_secs(1), |n| {
        send_video(n, &[0, 1], &mut tick)
    });
    assert!(arrivals(&net, 1, "pub").iter().any(|&t| t > at));
}

/// A client's first DTLS flight leaves as soon as its check is answered, and so reaches the
/// SFU before the answer to the SFU's own check proves the address. Dropped, it waits for the
/// client's retransmission: a second (RFC 6347's initial timer, which non-browser stacks
/// keep) on every join and every move to another node.
#[test]
fn a_client_hello_that_outruns_the_proof_of_its_address_is_not_lost() {
    let mut net = SimNetwork::new(11, |_| {});
    net.add_peer("patient", &[MediaKind::Audio, MediaKind::Video]);
    let start = net.now;
    net.join(0, "visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    let took = net.now - start;
    eprintln!("join to SRTP keys: {took:?} over a 20 ms round trip");
    // The test peer's ICE agent nominates on its second check, 200 ms after the first; the
    // retransmission would have come 1 s after the first flight.
    assert!(
        took < Duration::from_millis(700),
        "the handshake waited for a retransmission: {took:?}"
    );
    let held = net.sfu.counters.dtls_held_until_proven;
    assert!(held >= 1, "the first flight came before the proof");
    let dropped = net.sfu.counters.dropped_unknown_source;
    // From an address no session nominated, DTLS is still dropped, and nothing is kept.
    let stranger: SocketAddr = "10.9.9.9:5000".parse().unwrap();
    let mut hello = vec![22, 0xfe, 0xfd];
    hello.resize(149, 0);
    net.inject_to_sfu(stranger, hello);
    net.run(Duration::from_millis(50), |_| {});
    assert_eq!(net.sfu.counters.dropped_unknown_source, dropped + 1);
    assert_eq!(net.sfu.counters.dtls_held_until_proven, held);
}

/// The patient's join to its SRTP keys, with its answers 300 ms on the way (a slow uplink) and,
/// if `forging`, two sessions of an intruder's nominating the patient's address from a forged
/// source meanwhile; and whether anything of the intruder's moved to that address.
fn join_amid_forged_nominations(forging: bool) -> (Duration, u64) {
    let mut net = SimNetwork::new(12, |_| {});
    net.add_peer("intruder", &[MediaKind::Audio]);
    net.join(0, "other-visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    // A second session of the intruder's that never completes its handshake (one not yet
    // secured may hold an early DTLS flight).
    net.add_peer("half-open", &[MediaKind::Audio]);
    net.peers[1].silent = true;
    net.join(1, "other-visit", BOTH);
    net.add_peer("patient", &[MediaKind::Audio, MediaKind::Video]);
    net.set_uplink(
        2,
        Link {
            delay: Duration::from_millis(300),
            ..Link::default()
        },
    );
    // The intruder knows only its own sessions' credentials and the patient's address. Each
    // session nominates that address from a forged source after eight fresh ones (so that it
    // forgets the address and checks it again), one check every 20 ms (within what the SFU
    // handles of a session): the SFU then sends checks of the intruder's sessions to the
    // patient's address every 90 ms, as the patient's own session does once.
    let victim = net.peers[2].addr;
    let start = net.now;
    net.join(2, "visit", BOTH);
    let mut n = 0u16;
    let mut secured_at = None;
    while net.now - start < Duration::from_secs(8) {
        n = n.wrapping_add(1);
        if forging && n.is_multiple_of(10) {
            let intruder = usize::from(n.is_multiple_of(20));
            let from = if (n / 20) % 9 == 8 {
                victim
            } else {
                SocketAddr::from(([10, 0, 8, 1], 1000 + n % 5000))
            };
            let check = net.peers[intruder].connectivity_check(true);
            net.inject_to_sfu(from, check);
        }
        net.run(Duration::from_millis(1), |_| {});
        if secured_at.is_none() && net.peers[2].is_secured() {
            secured_at = Some(net.now - start);
        }
    }
    assert!(
        !net.disconnected().contains_key(net.id(2)),
        "{:?}",
        net.disconnected()
    );
    let took = secured_at.expect("the patient never got its SRTP keys");
    (took, net.sfu.counters.path_changes)
}

#[test]
fn a_session_that_has_the_sfu_check_another_address_cannot_stall_that_address_s_join() {
    let (alone, _) = join_amid_forged_nominations(false);
    let (forged, moved) = join_amid_forged_nominations(true);
    eprintln!(
        "join to SRTP keys over a 300 ms uplink: {alone:?}, amid forged nominations {forged:?}"
    );
    assert!(
        forged <= alone + Duration::from_millis(50),
        "the join waited: {forged:?} against {alone:?}"
    );
    // The intruder moved nothing of its own onto the patient's address: the patient did not
    // answer its checks (they are signed with the intruder's password).
    assert_eq!(moved, 0);
}

#[test]
fn a_client_flooding_valid_checks_is_answered_at_an_agent_s_pace_and_keeps_its_call() {
    let (mut net, mut tick) = call(33);
    let refused = net.sfu.counters.stun_refused;
    // 10,000 signed checks in one second, from its own address and (as a reflection attack
    // would) from a stranger's.
    let stranger: SocketAddr = "10.0.9.9:7000".parse().unwrap();
    let own = net.peers[1].addr;
    net.run(Duration::from_secs(1), |n| {
        for i in 0..10 {
            let check = n.peers[1].connectivity_check(i % 2 == 0);
            n.inject_to_sfu(if i % 2 == 0 { stranger } else { own }, check);
        }
        send_video(n, &[0, 1], &mut tick);
    });
    let refused = net.sfu.counters.stun_refused - refused;
    eprintln!("of 10,000 checks in a second, {refused} refused");
    // From the stranger's address a burst of 200 and 100 a second are handled, the rest cost
    // a hash lookup; those from the path in use (its consent) are all handled.
    assert!((4_650..=4_800).contains(&refused), "{refused} refused");
    let flood_end = net.now;
    net.run(Duration::from_secs(5), |n| {
        send_video(n, &[0, 1], &mut tick)
    });
    assert!(net.disconnected().is_empty(), "{:?}", net.disconnected());
    assert_eq!(
        net.sfu.counters.path_changes, 0,
        "nothing moved to the stranger"
    );
    let got = arrivals(&net, 1, "pub");
    let gap = longest_gap(&got, flood_end, net.now);
    assert!(
        gap < Duration::from_millis(300),
        "video stopped for {gap:?}"
    );
}

/// Someone who can send from a participant's address (on the same Wi-Fi, or spoofing it) but
/// holds none of its DTLS keys forges plaintext alerts — epoch 0, the handshake's — after the
/// handshake: a close_notify, a fatal one, and records of other kinds. The association must not
/// act on them (RFC 6347 4.1.2.7: a stale or forged old-epoch record is discarded): the call
/// goes on, media and all, and nobody is disconnected.
#[test]
fn forged_plaintext_alerts_after_the_handshake_do_not_end_the_call() {
    let (mut net, mut tick) = call(35);
    let victim = net.peers[1].addr;
    // A DTLS 1.2 record: type, version, epoch 0, a 48-bit sequence number, length, body.
    let record = |content_type: u8, seq: u64, body: &[u8]| {
        let mut r = vec![content_type, 0xfe, 0xfd, 0, 0];
        r.extend_from_slice(&seq.to_be_bytes()[2..]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    };
    let at = net.now;
    // (From 2⁴⁸ − 1 the numbers after wrap to 0–3 in the record's 48 bits: old ones too.)
    for seq in [1_000u64, 1_001, 50_000, (1 << 48) - 1] {
        // close_notify (warning), then a fatal handshake_failure and a fatal decode_error.
        net.inject_to_sfu(victim, record(21, seq, &[1, 0]));
        net.inject_to_sfu(victim, record(21, seq + 1, &[2, 40]));
        net.inject_to_sfu(victim, record(21, seq + 2, &[2, 50]));
        // A ChangeCipherSpec and application data in the clear.
        net.inject_to_sfu(victim, record(20, seq + 3, &[1]));
        net.inject_to_sfu(victim, record(23, seq + 4, b"hello"));
    }
    net.run(Duration::from_secs(2), |n| {
        send_video(n, &[0, 1], &mut tick)
    });
    assert!(
        net.disconnected().is_empty(),
        "disconnected: {:?}",
        net.disconnected()
    );
    let to = net.now;
    // Both ways: the victim still receives video, and still sends it.
    assert!(
        longest_gap(&arrivals(&net, 1, "pub"), at, to) < Duration::from_millis(200),
        "the victim's picture stopped"
    );
    assert!(
        longest_gap(&arrivals(&net, 0, "sub"), at, to) < Duration::from_millis(200),
        "the victim's video stopped reaching the other"
    );
}

/// Someone on the Wi-Fi a phone is leaving read one of its checks there (STUN travels in the
/// clear) and replays it from elsewhere, 100,000 a second, before and after the phone moves to
/// cellular and restarts ICE. The restart's checks, under new credentials, have a budget of
/// their own: media resumes as after any restart (before, the replayed checks used up the one
/// budget both shared, and the restart's were refused).
#[test]
fn a_flood_replaying_the_old_credentials_does_not_stall_an_ice_restart() {
    let (mut net, mut tick) = call(34);
    let sniffed = net.peers[1].connectivity_check(false);
    let elsewhere: SocketAddr = "10.0.9.9:7000".parse().unwrap();
    let flood = |n: &mut SimNetwork, tick: &mut u64| {
        for _ in 0..100 {
            n.inject_to_sfu(elsewhere, sniffed.clone());
        }
        send_video(n, &[0, 1], tick);
    };
    net.run(Duration::from_secs(1), |n| flood(n, &mut tick));
    let cellular: SocketAddr = "10.0.8.2:7000".parse().unwrap();
    let changed_at = net.now;
    net.restart_ice(1, cellular);
    // Checks of the new credentials from the new network before that path is proven, each
    // in a millisecond of its own right after the replay's burst: handled, not refused for
    // a budget the replay used up (as the replay outnumbers them on a real network).
    let username = |check: &[u8]| -> Vec<u8> {
        let mut at = 20;
        while at + 4 <= check.len() {
            let kind = u16::from_be_bytes([check[at], check[at + 1]]);
            let len = usize::from(u16::from_be_bytes([check[at + 2], check[at + 3]]));
            if kind == 0x0006 {
                return check[at + 4..at + 4 + len].to_vec();
            }
            at += 4 + len.div_ceil(4) * 4;
        }
        Vec::new()
    };
    let old_username = username(&sniffed);
    let (mut measured, mut refused_own) = (0, 0);
    while net.sfu.counters.path_changes == 0 && net.now < changed_at + Duration::from_secs(1) {
        net.run(Duration::from_millis(1), |n| flood(n, &mut tick));
        let own = net.peers[1].connectivity_check(false);
        if own.is_empty() || username(&own) == old_username {
            continue;
        }
        let before = net.sfu.counters.stun_refused;
        net.inject_to_sfu(cellular, own);
        net.run(Duration::from_millis(1), |_| {});
        refused_own += net.sfu.counters.stun_refused - before;
        measured += 1;
    }
    assert!(
        measured > 0,
        "no check of the new credentials before the move"
    );
    assert_eq!(
        refused_own, 0,
        "of {measured} checks of the restarting path, {refused_own} refused"
    );
    net.run(Duration::from_secs(5), |n| flood(n, &mut tick));
    assert!(net.disconnected().is_empty(), "{:?}", net.disconnected());
    assert_eq!(net.sfu.counters.path_changes, 1, "the move to cellular");
    assert_video_resumed(&net, changed_at);
}

/// A client restarting ICE in a loop while it floods checks from a stranger's address (to
/// have the SFU answer the stranger): a restart renews its budget at most every 5 s, so ten
/// restarts in a second get it no more answered than one would (each renewing it, they got
/// 200 more each).
#[test]
fn restarting_ice_in_a_loop_does_not_multiply_the_checks_answered_elsewhere() {
    let (mut net, mut tick) = call(35);
    let stranger: SocketAddr = "10.0.9.9:7000".parse().unwrap();
    let own = net.peers[1].addr;
    let refused_before = net.sfu.counters.stun_refused;
    let mut sent = 0u64;
    for _ in 0..10 {
        net.restart_ice(1, own);
        net.run(Duration::from_millis(100), |n| {
            for _ in 0..10 {
                let check = n.peers[1].connectivity_check(false);
                if !check.is_empty() {
                    n.inject_to_sfu(stranger, check);
                    sent += 1;
                }
            }
            send_video(n, &[0, 1], &mut tick);
        });
    }
    let answered = sent - (net.sfu.counters.stun_refused - refused_before);
    // One budget (200, then 100 a second) and the old credentials' small ones (20 each).
    assert!(
        answered <= 200 + 100 + 10 * 20 + 20,
        "{answered} of {sent} checks from a stranger handled in a second"
    );
    assert!(net.disconnected().is_empty(), "{:?}", net.disconnected());
}
