//! One participant's WebSocket: carries SDP between the client and the SFU, clinicians'
//! actions, and chat; ends with the connection (or when the server closes it: denied,
//! removed, meeting ended, replaced by a newer connection of the same person). A socket that
//! drops without a `leave` parks its participant for a resume ([`crate::session_resume`]).

use crate::app_state::AppState;
use crate::audit::{audit, audit_all, session_event};
use crate::carried_session::{CarriedSession, KeptMedia};
use crate::meeting_actions::ActionError;
use crate::meeting_room::{Action, MeetingRoom, Outbound, RequestError};
use crate::meetings::Arrival;
use crate::message_budget::MessageBudget;
use crate::offered_video::OfferedVideo;
use crate::pending_join::{PendingJoin, record_join};
use crate::session_resume::{Parked, RESUME_WINDOW, Resumable, ResumeSlots, TAKEOVER_TIMEOUT};
use crate::session_token::Session;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;
use sfu_core::remote_description::RemoteDescription;
use sfu_proto::{ParticipantId, VideoLayer};
use std::sync::Arc;

/// Largest client message: an SDP offer with many m-lines fits well within this.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// Largest frame read at all (tungstenite's default, 16 MiB, is buffered whole before the
/// message limit applies). Frames up to this are read, so that the client hears the 1009
/// close; a larger one is not read: the connection is reset.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    /// `restart`: the client's media session broke and this offer starts a new one.
    Offer {
        sdp: String,
        #[serde(default)]
        restart: bool,
    },
    Answer {
        sdp: String,
    },
    /// The client cannot apply the SFU's outstanding offer: the SFU gives it up at once
    /// (`offer_unanswered` comes back) and the client starts a new media session.
    RejectOffer {},
    /// Trickled candidates are accepted and not needed: the SFU is ICE-lite and learns the
    /// client's address from its connectivity checks.
    Candidate {},
    Leave {},
    Ping {},
    Chat {
        text: String,
    },
    /// `with_companions`: the companions waiting with this patient come in too.
    Admit {
        participant: ParticipantId,
        #[serde(default)]
        with_companions: bool,
    },
    Deny {
        participant: ParticipantId,
    },
    ToLobby {
        participant: ParticipantId,
    },
    Remove {
        participant: ParticipantId,
    },
    EndMeeting {},
    /// Drop-in: take the first patient in the queue into a private visit.
    TakeNext {},
    /// A consultant of another unit may join this visit (answered with their link when this
    /// service mints tokens).
    InviteConsultant {
        hsa: String,
        unit: String,
        name: String,
    },
    /// The highest simulcast layer wanted of the video received on one m-line (`mid`), or of
    /// all video now and later (`mid` absent): small tiles and data-saving phones ask for less.
    PreferredLayer {
        #[serde(default)]
        mid: Option<String>,
        layer: VideoLayer,
    },
    /// What the SFU knows of this connection's link (answered with `link_report`), for the
    /// client's diagnostics view.
    LinkReport {},
}

fn error_text(code: &str, message: &str) -> String {
    json!({"type": "error", "code": code, "message": message}).to_string()
}

fn request_error(e: RequestError) -> String {
    error_text(e.code(), &e.to_string())
}

/// How a connection starts: a new participant, or one taken over with a resume key.
pub enum Start {
    Join(ParticipantId, PendingJoin),
    Resume(Resumable),
    /// Back with the resume key of a connection the service's last run had open.
    Carried(CarriedSession, PendingJoin),
}

/// How long one message may take to reach the socket. A client that stops reading (its
/// buffers full: a zero TCP window) would otherwise hold its connection task, socket and
/// place for good, out of reach of the idle check and of a `replaced` close; past this it
/// counts as dropped.
pub(crate) const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Sends one message within `SEND_TIMEOUT`; an error or a timeout is a failure.
pub(crate) async fn send_within<T>(sink: &mut (impl SinkExt<T> + Unpin), msg: T) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Closes a connection that could not start with a `closing` message and code 4006.
async fn refuse_start(sink: &mut (impl SinkExt<Message> + Unpin), code: &str, message: &str) {
    let msg = json!({"type": "closing", "reason": code, "message": message});
    let _ = send_within(sink, Message::Text(msg.to_string().into())).await;
    let _ = send_within(
        sink,
        Message::Close(Some(CloseFrame {
            code: 4006,
            reason: code.to_owned().into(),
        })),
    )
    .await;
}

const AUDIT_UNAVAILABLE: &str = "Det gick inte att ansluta just nu. Försök igen om en stund.";

/// The participant a resume takes over: parked already, or handed over by its still open
/// connection. `None` when that connection did not let go in time or the participant is no
/// longer in a meeting (replaced, removed, the meeting ended).
async fn resumed_participant(state: &AppState, r: Resumable) -> Option<Parked> {
    let parked = match r {
        Resumable::Parked(p) => p,
        Resumable::Live(takeover, _) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            takeover.send(tx).await.ok()?;
            tokio::time::timeout(TAKEOVER_TIMEOUT, rx)
                .await
                .ok()?
                .ok()?
        }
    };
    // (Removed, replaced or ended meanwhile: out of its room, though perhaps still bound to it.)
    let present = state
        .meetings
        .room_of(&parked.id)
        .is_some_and(|room| room.lock().member(&parked.id).is_some());
    if !present {
        // What is left of it goes (a member no more: nothing to record).
        let _ = state
            .meetings
            .leave(&parked.id, false, Timestamp::now(), state.sfu.as_ref());
        return None;
    }
    Some(parked)
}

pub async fn connection(
    state: Arc<AppState>,
    session: Session,
    room: Arc<MeetingRoom>,
    start: Start,
    socket: WebSocket,
) {
    // (Counted until its last line is written, whichever way it ends.)
    let _running = state.connection_tasks.start();
    let (mut sink, mut stream) = socket.split();
    let mut carried = None;
    // The node a carried session ran on: where it runs until a node's report says otherwise.
    let mut carried_node = None;
    // A `join` written for a participant not yet in the meeting (its `leave` if it never is).
    let mut pending_join = None;
    let (id, resumed) = match start {
        Start::Join(id, join) => {
            pending_join = Some(join);
            (id, None)
        }
        Start::Carried(c, join) => {
            let id = c.participant.clone();
            carried_node = c.node.clone();
            carried = Some(c);
            pending_join = Some(join);
            (id, None)
        }
        Start::Resume(r) => match resumed_participant(&state, r).await {
            Some(p) => {
                // (Named by the meeting resumed: a drop-in's private visit, not its queue.)
                let mut resume = session_event("resume", &session, Some(&p.id));
                let resumed_in = state.meetings.room_of(&p.id);
                resume.meeting = Some(resumed_in.map_or_else(|| room.id.clone(), |r| r.id.clone()));
                if audit(&state, resume).await.is_err() {
                    // Not recorded, so not resumed: the participant ends as if it had left.
                    if let Some(events) =
                        state
                            .meetings
                            .leave(&p.id, false, Timestamp::now(), state.sfu.as_ref())
                    {
                        let _ = audit_all(&state, events).await;
                    }
                    refuse_start(&mut sink, "audit_unavailable", AUDIT_UNAVAILABLE).await;
                    return;
                }
                (p.id.clone(), Some(p))
            }
            // Nothing to resume: a new participant, as on a first join.
            None => {
                let id = crate::server::new_participant_id(rand::random());
                let Ok(join) = record_join(&state, &session, &room.id, &id).await else {
                    refuse_start(&mut sink, "audit_unavailable", AUDIT_UNAVAILABLE).await;
                    return;
                };
                pending_join = Some(join);
                (id, None)
            }
        },
    };
    // Before the welcome (which starts the client's peer connection): the relay it may use.
    let ice_servers: Vec<_> = state
        .turn
        .iter()
        .map(|t| t.credentials(id.as_str(), std::time::SystemTime::now()))
        .collect();
    let msg = json!({"type": "ice_servers", "ice_servers": ice_servers});
    if send_within(&mut sink, Message::Text(msg.to_string().into()))
        .await
        .is_err()
    {
        if let Some(p) = resumed {
            // Gone again at once: it leaves as a dropped connection does (admission kept for
            // the reconnect grace).
            leave(&state, &p.id, &room, false).await;
        }
        if let Some(c) = carried {
            // Not claimed yet: kept for the client's next try (as a failed upgrade would).
            state.meetings.return_carried(&room.id, c);
        }
        return;
    }
    let (mut out_rx, mut sdp_budget) = match resumed {
        Some(p) => {
            let msg = json!({"type": "resumed", "participant": id});
            let _ = send_within(&mut sink, Message::Text(msg.to_string().into())).await;
            tracing::info!(participant = %id, meeting = %room.id, "resumed");
            (p.outbox, p.sdp_budget)
        }
        None => {
            let (out_tx, out_rx) = crate::outbox::outbox(state.outbox_limit_bytes);
            // A carried session goes on if the SFU still runs it (or a node may yet report it).
            let kept = carried
                .filter(|c| state.sfu.claim_session(&c.participant, c.media_session))
                .map(|c| KeptMedia {
                    session: c.media_session,
                    connected: c.media_connected,
                });
            // A kept session whose join is refused below ends with it.
            let release_kept = || {
                if kept.is_some() {
                    state.sfu.send(sfu_proto::Command::RemoveParticipant {
                        participant: id.clone(),
                    });
                }
            };
            let fresh = kept.is_none();
            let arrival = Arrival {
                id: &id,
                session: &session,
                kept,
            };
            let joined =
                state
                    .meetings
                    .join(&room, arrival, out_tx, Timestamp::now(), state.sfu.as_ref());
            let (outcome, joined_events) = match joined {
                Ok(o) => o,
                Err(r) => {
                    // Checked before the upgrade; the meeting changed in between (it filled
                    // up, ended).
                    release_kept();
                    let mut event = session_event("join_refused", &session, Some(&id));
                    event.meeting = Some(room.id.clone());
                    event.code = Some(r.code().into());
                    let _ = audit(&state, event).await;
                    refuse_start(&mut sink, r.code(), &r.message()).await;
                    return;
                }
            };
            if audit_all(&state, joined_events).await.is_err() {
                // Entering the lobby or the meeting could not be recorded: it does not happen,
                // and what the person had (an admission within its grace, a place in the
                // queue) is theirs on the next try, as after a dropped connection.
                state
                    .meetings
                    .leave(&id, false, Timestamp::now(), state.sfu.as_ref());
                state.meetings.changed(&room.id);
                refuse_start(&mut sink, "audit_unavailable", AUDIT_UNAVAILABLE).await;
                return;
            }
            if let Some(join) = pending_join.take() {
                join.entered();
            }
            if fresh {
                // A new connection of this person, in the meeting, takes the place of a media
                // session of theirs carried through a restart and not claimed (as it would of a
                // live one): kept, it would go on with the permissions it had until the
                // take-over window ran out — a move to the lobby or a removal of this
                // connection would not reach it.
                state
                    .meetings
                    .end_carried_of(&session.claims.sub, &room.id, state.sfu.as_ref());
            }
            if !outcome.admitted {
                // A place in the queue, recorded: stored too (replicas), to outlive a crash.
                state.meetings.changed(&room.id);
            }
            tracing::info!(participant = %id, meeting = %room.id, role = ?session.role, admitted = outcome.admitted, "joined");
            // Offers and answers cost the SFU a parse each: a connection gets a budget of
            // them, in the lobby as much as in the meeting.
            (out_rx, MessageBudget::sdp())
        }
    };
    // The key a new connection resumes this participant with, should this one drop.
    let resume_key = ResumeSlots::new_key();
    let (takeover_tx, mut takeover_rx) = tokio::sync::mpsc::channel(1);
    // Kept so the channel never closes: `recv` then only ever yields a takeover.
    let _takeover_keep = takeover_tx.clone();
    state.resume.live(
        &resume_key,
        &session.claims.sub,
        &session.claims.mtg,
        &id,
        takeover_tx,
    );
    state.meetings.key_issued(
        &id,
        &resume_key,
        &session.claims.sub,
        &session.claims.mtg,
        state.sfu.node_of(&id).or(carried_node),
    );
    let msg =
        json!({"type": "resume_key", "key": resume_key, "window_secs": RESUME_WINDOW.as_secs()});
    if send_within(&mut sink, Message::Text(msg.to_string().into()))
        .await
        .is_err()
    {
        let parked = Parked {
            id,
            outbox: out_rx,
            sdp_budget,
        };
        drop((sink, stream));
        park(&state, &session, &room, parked, &resume_key).await;
        return;
    }

    let overflow = out_rx.overflow();
    let mut too_slow = false;
    let mut explicit_leave = false;
    // Whether the connection ended on purpose (a close by either side) rather than dropped.
    let mut closed = false;
    let mut handoff = None;
    // A peer that vanished without closing (a phone out of coverage) would hold the socket
    // forever: ping it, and close a connection that stays silent.
    let mut ping = tokio::time::interval(state.ws_idle / 3);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    // Every message costs a parse, many a turn of the meeting's lock, some a reply: past its
    // allowance a connection is read more slowly (the socket's own flow control holds the rest
    // at the client), not answered in kind.
    let mut reads = MessageBudget::socket_reads();
    let mut reads_paused_until: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            // A new connection resumes this participant: hand it over, leave nothing.
            Some(reply) = takeover_rx.recv() => {
                handoff = Some(reply);
                break;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= state.ws_idle {
                    let msg = json!({"type": "closing", "reason": "idle",
                                     "message": "Anslutningen var tyst för länge. Anslut igen."});
                    send_close(&mut sink, 4007, &msg).await;
                    closed = true;
                    break;
                }
                if send_within(&mut sink, Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            // Messages waited past the limit (a client that stopped reading) and some were
            // dropped: its view of the meeting is incomplete, and it joins again afresh.
            // Not parked: a resume would continue from the incomplete view. It leaves as a
            // dropped connection does (its admission kept for the reconnect grace).
            () = overflow.happened() => {
                // (A close queued behind the overflow is what the client hears instead.)
                if let Some(Outbound::Close { code, message }) = out_rx.take_close() {
                    send_close(&mut sink, code, &message).await;
                } else {
                    too_slow = true;
                }
                closed = true;
                break;
            }
            out = out_rx.recv() => match out {
                Some(Outbound::Text(text)) => {
                    // (A send waiting on a client that does not read is where the queue
                    // overflows: that ends the wait.)
                    tokio::select! {
                        sent = send_within(&mut sink, Message::Text(text.into())) => {
                            if sent.is_err() {
                                break;
                            }
                        }
                        () = overflow.happened() => {
                            too_slow = true;
                            closed = true;
                            break;
                        }
                    }
                }
                Some(Outbound::Close { code, message }) => {
                    send_close(&mut sink, code, &message).await;
                    closed = true;
                    break;
                }
                None => {
                    closed = true;
                    break;
                }
            },
            () = async {
                if let Some(until) = reads_paused_until {
                    tokio::time::sleep_until(until).await;
                }
            }, if reads_paused_until.is_some() => {
                reads_paused_until = None;
            }
            msg = stream.next(), if reads_paused_until.is_none() => {
                last_heard = tokio::time::Instant::now();
                if !reads.take(Timestamp::now()) {
                    // (This one is handled; the next is read after a message's share of a
                    // second.)
                    reads_paused_until = Some(last_heard + MessageBudget::socket_read_interval());
                    metrics::counter!("signaling_ws_reads_throttled_total").increment(1);
                }
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Err(e)) => {
                        if is_too_large(e) {
                            // RFC 6455 §7.4.1: 1009, the message is too big to process.
                            let msg = json!({"type": "closing", "reason": "message_too_large",
                                             "message": format!("a message is at most {} KiB", MAX_MESSAGE_BYTES / 1024)});
                            let _ = send_within(&mut sink, Message::Text(msg.to_string().into())).await;
                            let _ = send_within(&mut sink, Message::Close(Some(CloseFrame { code: 1009, reason: "message too large".into() }))).await;
                            closed = true;
                        }
                        break;
                    }
                    // The client closed the socket itself (a page closed or navigated away).
                    Some(Ok(Message::Close(_))) => {
                        closed = true;
                        break;
                    }
                    // Dropped: a network change or loss of coverage.
                    None => break,
                    Some(Ok(Message::Binary(_))) => {
                        let _ = send_within(&mut sink, Message::Text(error_text("bad_message", "binary messages are not used").into())).await;
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(ClientMessage::Leave {}) => {
                        explicit_leave = true;
                        closed = true;
                        break;
                    }
                    Ok(m) => {
                        if let Some(reply) = handle(&state, &id, m, &mut sdp_budget).await
                            && send_within(&mut sink, Message::Text(reply.into())).await.is_err()
                        {
                            break;
                        }
                    }
                    // Reported to this client only; nobody else is affected.
                    Err(e) => {
                        // (Its first 200 characters: serde quotes what it could not read,
                        // which may be most of the message.)
                        let why: String = e.to_string().chars().take(200).collect();
                        let reply = error_text("bad_message", &format!("unreadable message: {why}"));
                        if send_within(&mut sink, Message::Text(reply.into())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }

    if let Some(reply) = handoff {
        let parked = Parked {
            id: id.clone(),
            outbox: out_rx,
            sdp_budget,
        };
        // The old socket is most likely dead: dropped, not closed (a close could wait on it).
        drop((sink, stream));
        if let Err(parked) = reply.send(parked) {
            // The new connection gave up waiting: park it for its next try.
            park(&state, &session, &room, parked, &resume_key).await;
        }
        tracing::info!(participant = %id, meeting = %room.id, "handed over");
        return;
    }
    if !closed {
        // The socket and its descriptor go now, not after the window: a flood of dropped
        // connections holds no file descriptors.
        drop((sink, stream));
        park(
            &state,
            &session,
            &room,
            Parked {
                id,
                outbox: out_rx,
                sdp_budget,
            },
            &resume_key,
        )
        .await;
        return;
    }
    state.resume.forget(&resume_key);
    leave(&state, &id, &room, explicit_leave).await;
    if too_slow {
        // Told after it left: the client is not reading, and these may wait their time out.
        metrics::counter!("signaling_connections_too_slow_total").increment(1);
        tracing::warn!(participant = %id, meeting = %room.id, "closed: messages waited past the limit");
        let msg = json!({"type": "closing", "reason": "too_slow",
                         "message": "Anslutningen hann inte ta emot meddelandena. Ansluter igen."});
        send_close(&mut sink, 4008, &msg).await;
    }
    if explicit_leave {
        // A leave the client asked for ends cleanly: a last word and a normal close.
        let msg = json!({"type": "closing", "reason": "left", "message": "Du har lämnat besöket."});
        send_close(&mut sink, 1000, &msg).await;
    }
    // (Closing flushes: bounded as any send.)
    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.close()).await;
}

/// A last `closing` message and the close frame with its code (each bounded as any send).
async fn send_close(
    sink: &mut (impl SinkExt<Message> + Unpin),
    code: u16,
    message: &serde_json::Value,
) {
    let reason = message["reason"].as_str().unwrap_or("closed").to_owned();
    let _ = send_within(sink, Message::Text(message.to_string().into())).await;
    let close = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = send_within(sink, Message::Close(Some(close))).await;
}

/// Takes a connection's participant out of whichever meeting it is in now (a take may have
/// moved it) and records it.
async fn leave(state: &AppState, id: &ParticipantId, room: &MeetingRoom, explicit: bool) {
    let left = state
        .meetings
        .leave(id, explicit, Timestamp::now(), state.sfu.as_ref());
    if let Some(events) = left {
        let _ = audit_all(state, events).await;
    }
    // Someone who left on purpose gets no place back (a dropped one keeps theirs), and
    // either's media session is carried no longer.
    state.meetings.changed(&room.id);
    tracing::info!(participant = %id, meeting = %room.id, "left");
}

/// The socket dropped: the participant stays (media session, admission, place in the
/// meeting; messages queue) for [`RESUME_WINDOW`], then leaves unless a new connection took it.
pub(crate) async fn park(
    state: &AppState,
    session: &Session,
    room: &MeetingRoom,
    parked: Parked,
    key: &str,
) {
    let id = parked.id.clone();
    tracing::info!(participant = %id, meeting = %room.id, "dropped; waiting for a resume");
    let overflow = parked.outbox.overflow();
    state
        .resume
        .park(key, &session.claims.sub, &session.claims.mtg, parked);
    // Messages that waited past the limit were dropped: a resume would continue from an
    // incomplete view of the meeting, so the window ends there (the client joins afresh).
    tokio::select! {
        () = tokio::time::sleep(RESUME_WINDOW) => {}
        () = overflow.happened() => {}
    }
    if state.resume.expire(key).is_some() {
        leave(state, &id, room, false).await;
    }
}

/// Whether a read failed because the client's message (or frame) exceeds the limit.
pub(crate) fn is_too_large(e: axum::Error) -> bool {
    e.into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

/// Carries out one request; returns the reply for this client, if any.
async fn handle(
    state: &AppState,
    id: &ParticipantId,
    msg: ClientMessage,
    sdp_budget: &mut MessageBudget,
) -> Option<String> {
    let Some(room) = state.meetings.room_of(id) else {
        return Some(error_text(
            "not_in_meeting",
            "this connection is no longer in a meeting",
        ));
    };
    let sfu = state.sfu.as_ref();
    let now = Timestamp::now();
    let action = match msg {
        ClientMessage::Offer { sdp, restart } => {
            let video = match checked_sdp(&sdp, sdp_budget) {
                Ok(d) => OfferedVideo::of(&d),
                Err(reply) => return Some(reply),
            };
            return state
                .meetings
                .with_room(&room, sfu, |s, fx| {
                    s.offer(id, sdp, &video, restart, now, fx)
                })
                .0
                .err()
                .map(request_error);
        }
        ClientMessage::Answer { sdp } => {
            if let Err(reply) = checked_sdp(&sdp, sdp_budget) {
                return Some(reply);
            }
            return state
                .meetings
                .with_room(&room, sfu, |s, fx| s.answer(id, sdp, fx))
                .0
                .err()
                .map(request_error);
        }
        ClientMessage::RejectOffer {} => {
            if !sdp_budget.take(Timestamp::now()) {
                return Some(request_error(RequestError::SdpRate));
            }
            return state
                .meetings
                .with_room(&room, sfu, |s, fx| s.reject_offer(id, fx))
                .0
                .err()
                .map(request_error);
        }
        ClientMessage::PreferredLayer { mid, layer } => {
            return state
                .meetings
                .with_room(&room, sfu, |s, fx| s.prefer_layer(id, mid, layer, now, fx))
                .0
                .err()
                .map(request_error);
        }
        ClientMessage::LinkReport {} => {
            return state
                .meetings
                .with_room(&room, sfu, |s, fx| s.request_link_report(id, now, fx))
                .0
                .err()
                .map(request_error);
        }
        ClientMessage::Candidate {} | ClientMessage::Leave {} => return None,
        ClientMessage::Ping {} => return Some(json!({"type": "pong"}).to_string()),
        ClientMessage::Chat { text } => {
            return state
                .meetings
                .with_room(&room, sfu, |s, fx| s.chat(id, &text, now, fx))
                .0
                .err()
                .map(request_error);
        }
        ClientMessage::TakeNext {} => {
            return crate::meeting_actions::take_next(state, &room, id, now)
                .await
                .err()
                .map(action_error);
        }
        ClientMessage::Admit {
            participant,
            with_companions,
        } => {
            if with_companions {
                Action::AdmitWithCompanions(participant)
            } else {
                Action::Admit(participant)
            }
        }
        ClientMessage::InviteConsultant { hsa, unit, name } => {
            let hsa = hsa.trim().to_owned();
            let action = Action::InviteConsultant {
                hsa: hsa.clone(),
                unit: unit.trim().to_owned(),
                name: name.trim().to_owned(),
            };
            if let Err(e) = crate::meeting_actions::act(state, &room, id, action, now).await {
                return Some(action_error(e));
            }
            return Some(consultant_link(
                state,
                &room,
                &hsa,
                unit.trim(),
                name.trim(),
            ));
        }
        ClientMessage::Deny { participant } => Action::Deny(participant),
        ClientMessage::ToLobby { participant } => Action::ToLobby(participant),
        ClientMessage::Remove { participant } => Action::Remove(participant),
        ClientMessage::EndMeeting {} => Action::EndMeeting,
    };
    crate::meeting_actions::act(state, &room, id, action, now)
        .await
        .err()
        .map(action_error)
}

/// The answer to an invitation: the consultant's link when this service mints tokens (else
/// the region's issuer gives the consultant a token with role `consultant` for this meeting).
fn consultant_link(
    state: &AppState,
    room: &MeetingRoom,
    hsa: &str,
    unit: &str,
    name: &str,
) -> String {
    let mut reply = json!({"type": "consultant_invited", "hsa": hsa, "name": name, "url": null});
    if let Some(minter) = &state.minter {
        let expires = room.lock().record.closes_at(state.meetings.policy());
        let claims = crate::session_token::Claims {
            sub: hsa.to_owned(),
            name: name.to_owned(),
            role: "consultant".into(),
            hsa: Some(hsa.to_owned()),
            unit: Some(unit.to_owned()),
            ..crate::meetings_api::link_claims(state, &room.id, expires)
        };
        match minter.mint(&claims) {
            Ok(token) => {
                reply["url"] = json!(crate::meetings_api::link_url(state, &room.id, &token));
            }
            Err(e) => tracing::error!(error = %e, "minting a consultant's link failed"),
        }
    }
    reply.to_string()
}

fn action_error(e: ActionError) -> String {
    match e {
        ActionError::Refused(e) => request_error(e),
        ActionError::AuditUnavailable => error_text(
            "audit_unavailable",
            "the action could not be recorded; try again",
        ),
    }
}

/// An offer or answer within the connection's budget, read as the SFU will read it (outside
/// the meeting's lock): one that is too large or does not parse is refused here, with the
/// reason, and never reaches the SFU.
fn checked_sdp(sdp: &str, budget: &mut MessageBudget) -> Result<RemoteDescription, String> {
    if !budget.take(Timestamp::now()) {
        return Err(request_error(RequestError::SdpRate));
    }
    let description =
        RemoteDescription::parse(sdp).map_err(|e| error_text("bad_sdp", &e.to_string()))?;
    // What the SFU refuses anyway, refused before it reaches the SFU.
    if description.media.len() > sfu_core::sfu::MAX_LINES_PER_PARTICIPANT {
        return Err(error_text(
            "bad_sdp",
            &format!(
                "an offer may hold at most {} m-lines",
                sfu_core::sfu::MAX_LINES_PER_PARTICIPANT
            ),
        ));
    }
    Ok(description)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A socket whose reader stopped reading: nothing it is given ever leaves.
    struct Stalled;

    impl futures_util::Sink<Message> for Stalled {
        type Error = ();
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Pending
        }
        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), ()> {
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_to_a_reader_that_stopped_gives_up_after_the_send_timeout() {
        let started = tokio::time::Instant::now();
        let sent = send_within(&mut Stalled, Message::Text("x".into())).await;
        assert!(sent.is_err());
        assert_eq!(started.elapsed(), SEND_TIMEOUT);
    }
}
