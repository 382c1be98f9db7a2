//! The live state of one meeting: who is connected, who waits in the lobby and in what order,
//! who is admitted, and what each clinician action does to it. Every rule of the waiting room
//! is here; the SFU is told the matching permissions so media follows admission.
//!
//! The rules are a function of the meeting's state, the input and the time: methods run under
//! the meeting's own lock, change the state, and describe what follows in [`Effects`]
//! (messages to whom, SFU commands, audit records). They hold no connection and no SFU handle
//! and read no clock; `Meetings` delivers the effects.

use crate::audit_log::AuditEvent;
use crate::carried_session::KeptMedia;
use crate::join_refusal::JoinRefusal;
use crate::meeting::{MeetingKind, MeetingPolicy, MeetingRecord, QueuePlace, Readmission};
pub use crate::meeting_effects::{Effects, Observation, Outbound};
use crate::message_budget::MessageBudget;
use crate::offered_video::OfferedVideo;
use crate::session_token::{Role, Session};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sfu_proto::{Command, ParticipantId, Permissions, RoomId, VideoLayer};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

/// Longest chat message, in characters.
pub const MAX_CHAT_CHARS: usize = 1000;
/// Shortest time between two media-session restarts of one connection: each restart adds
/// m-lines to everyone else's session, so a client restarting in a loop is slowed down.
const MIN_RESTART_INTERVAL: SignedDuration = SignedDuration::from_secs(5);
/// Video lines a media session may have published on (the SFU holds at most 64 m-lines).
const MAX_VIDEO_LINES: usize = 64;

/// Why the server closes a connection (also the WebSocket close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Denied,
    Removed,
    MeetingEnded,
    MeetingCancelled,
    Replaced,
    /// The service is stopping (a restart or an upgrade): connect again (close 1012).
    Restarting,
}

impl CloseReason {
    pub fn code(self) -> &'static str {
        match self {
            CloseReason::Denied => "denied",
            CloseReason::Removed => "removed",
            CloseReason::MeetingEnded => "meeting_ended",
            CloseReason::MeetingCancelled => "meeting_cancelled",
            CloseReason::Replaced => "replaced",
            CloseReason::Restarting => "restarting",
        }
    }

    pub fn ws_code(self) -> u16 {
        match self {
            CloseReason::Denied => 4001,
            CloseReason::Removed => 4002,
            CloseReason::MeetingEnded => 4003,
            CloseReason::MeetingCancelled => 4004,
            CloseReason::Replaced => 4005,
            // RFC 6455's "Service Restart": not a 4001–4006 ending; clients reconnect.
            CloseReason::Restarting => 1012,
        }
    }

    fn message(self) -> &'static str {
        match self {
            CloseReason::Denied => "Vårdpersonalen har inte släppt in dig i besöket.",
            CloseReason::Removed => "Du har tagits bort från besöket.",
            CloseReason::MeetingEnded => "Besöket är avslutat. Du kan stänga fönstret.",
            CloseReason::MeetingCancelled => "Besöket är avbokat.",
            CloseReason::Replaced => {
                "Du anslöt från en annan enhet; den här anslutningen är stängd."
            }
            CloseReason::Restarting => "Tjänsten startas om. Du ansluts igen strax.",
        }
    }

    pub fn outbound(self) -> Outbound {
        Outbound::Close {
            code: self.ws_code(),
            message: json!({"type": "closing", "reason": self.code(), "message": self.message()}),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admission {
    /// In the lobby since `since`; `order` ranks the queue.
    Waiting {
        since: Timestamp,
        order: u64,
    },
    Admitted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub sub: String,
    pub name: String,
    pub role: Role,
    pub hsa: Option<String>,
    pub unit: Option<String>,
    /// A companion's patient (`sub`): admitted with them when the clinician chooses.
    #[serde(default)]
    pub companion_of: Option<String>,
    pub admission: Admission,
    /// The SFU holds a media session for this connection.
    pub sfu_joined: bool,
    /// The number of the latest media session started for this connection: SFU events about
    /// an earlier one (a restart replaced it meanwhile) are stale and ignored.
    #[serde(default)]
    pub media_session: u32,
    /// The mids of the video lines its media session publishes on (a patient's at most one).
    #[serde(default)]
    video_mids: Vec<String>,
    /// The SFU reports the media path up.
    pub media_connected: bool,
    /// Media flows (connected and admitted) — recorded as `media_start` in the audit log.
    pub media_started: bool,
    /// When the member joined admitted, or was admitted: the start of its join → media time
    /// (taken when media first flows).
    #[serde(default)]
    admitted_at: Option<Timestamp>,
    last_restart: Option<Timestamp>,
    chat: MessageBudget,
    layer_requests: MessageBudget,
    /// The lobby position last told (told again only when it changes).
    position_told: Option<usize>,
}

impl Member {
    pub fn new(session: &Session) -> Self {
        let c = &session.claims;
        Self {
            sub: c.sub.clone(),
            name: c.name.clone(),
            role: session.role,
            hsa: c.hsa.clone(),
            unit: c.unit.clone(),
            companion_of: c.companion_of.clone(),
            admission: Admission::Admitted,
            sfu_joined: false,
            media_session: 0,
            video_mids: Vec::new(),
            media_connected: false,
            media_started: false,
            admitted_at: None,
            last_restart: None,
            chat: MessageBudget::chat(),
            layer_requests: MessageBudget::layer_requests(),
            position_told: None,
        }
    }

    fn is_admitted(&self) -> bool {
        self.admission == Admission::Admitted
    }

    fn is_clinician(&self) -> bool {
        self.role == Role::Clinician
    }

    /// Staff: the visit's clinicians and invited consultants. They enter admitted and are
    /// never sent to the lobby.
    fn is_staff(&self) -> bool {
        matches!(self.role, Role::Clinician | Role::Consultant)
    }

    fn entry(&self, id: &ParticipantId) -> Value {
        json!({"participant": id, "name": self.name, "role": self.role})
    }

    /// What the admitted are told when this member joins them.
    fn joined_message(&self, id: &ParticipantId) -> Value {
        json!({"type": "participant_joined", "participant": id, "name": self.name, "role": self.role})
    }

    /// Gives or takes this member's media in the SFU (when it has a media session there).
    fn set_media(&self, id: &ParticipantId, on: bool, fx: &mut Effects) {
        if self.sfu_joined {
            fx.command(Command::SetPermissions {
                participant: id.clone(),
                permissions: Permissions {
                    publish: on,
                    subscribe: on,
                },
            });
        }
    }
}

/// A clinician's action on the meeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Admit(ParticipantId),
    /// A patient and the companions waiting with them ("Släpp in Anna och anhörig").
    AdmitWithCompanions(ParticipantId),
    /// [`Action::AdmitWithCompanions`] resolved under the lock: exactly these companions,
    /// recorded in the plan, are admitted with the patient (one who arrives meanwhile is not).
    AdmitGroup {
        patient: ParticipantId,
        companions: Vec<ParticipantId>,
    },
    /// A consultant of another unit (by HSA-id) may join this visit.
    InviteConsultant {
        hsa: String,
        unit: String,
        name: String,
    },
    Deny(ParticipantId),
    ToLobby(ParticipantId),
    Remove(ParticipantId),
    EndMeeting,
}

impl Action {
    /// The participant it acts on, if any.
    pub fn target(&self) -> Option<&ParticipantId> {
        match self {
            Action::Admit(t)
            | Action::AdmitWithCompanions(t)
            | Action::AdmitGroup { patient: t, .. }
            | Action::Deny(t)
            | Action::ToLobby(t)
            | Action::Remove(t) => Some(t),
            Action::InviteConsultant { .. } | Action::EndMeeting => None,
        }
    }

    /// The same action on `to` instead of its target.
    fn retargeted(self, to: ParticipantId) -> Self {
        match self {
            Action::Admit(_) => Action::Admit(to),
            Action::AdmitWithCompanions(_) => Action::AdmitWithCompanions(to),
            Action::AdmitGroup { companions, .. } => Action::AdmitGroup {
                patient: to,
                companions,
            },
            Action::Deny(_) => Action::Deny(to),
            Action::ToLobby(_) => Action::ToLobby(to),
            Action::Remove(_) => Action::Remove(to),
            other => other,
        }
    }

    fn audit_name(&self) -> &'static str {
        match self {
            Action::Admit(_) | Action::AdmitWithCompanions(_) | Action::AdmitGroup { .. } => {
                "admit"
            }
            Action::InviteConsultant { .. } => "consultant_invited",
            Action::Deny(_) => "deny",
            Action::ToLobby(_) => "back_to_lobby",
            Action::Remove(_) => "remove",
            Action::EndMeeting => "meeting_end",
        }
    }
}

/// Why a client's request was not carried out (sent back as an `error` message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("only a clinician may do this")]
    NotAllowed,
    #[error("no such participant in this meeting")]
    NoSuchParticipant,
    #[error("the participant is not waiting in the lobby")]
    NotWaiting,
    #[error("the participant is not admitted")]
    NotAdmitted,
    #[error("a clinician or consultant cannot be sent to the lobby")]
    TargetIsClinician,
    #[error("an invitation names the consultant's HSA-id, care unit and name, and is for a visit")]
    BadInvite,
    #[error("a visit takes at most 10 invited consultants")]
    InviteLimit,
    #[error("you cannot do this to yourself")]
    SelfTarget,
    #[error("a drop-in queue is served with take_next, not admit")]
    QueueNotAdmit,
    #[error("this is not a drop-in queue")]
    NotAQueue,
    #[error("nobody is waiting in the queue")]
    QueueEmpty,
    #[error("a drop-in queue closes at its end time; it cannot be ended by one clinician")]
    QueueCannotEnd,
    #[error("you are not admitted to the meeting yet")]
    WaitingForAdmission,
    #[error("the message is empty or longer than 1000 characters")]
    ChatSize,
    #[error("too many chat messages; wait a moment")]
    ChatRate,
    #[error("wait a few seconds before reconnecting again")]
    RestartTooSoon,
    #[error("only a clinician or consultant may share a screen (one video track)")]
    ScreenShareNotAllowed,
    #[error("a media session holds at most 64 video lines")]
    TooManyVideoLines,
    #[error("the media session has not started; send an offer first")]
    NoMediaSession,
    #[error("a mid names an m-line in at most 32 characters")]
    BadMid,
    #[error("too many layer requests; wait a moment")]
    LayerRate,
    #[error("too many offers and answers; wait a moment")]
    SdpRate,
    #[error("the service is restarting; do it again once reconnected")]
    Restarting,
}

impl RequestError {
    pub fn code(self) -> &'static str {
        match self {
            RequestError::NotAllowed => "not_allowed",
            RequestError::NoSuchParticipant => "no_such_participant",
            RequestError::NotWaiting => "not_waiting",
            RequestError::NotAdmitted => "not_admitted",
            RequestError::TargetIsClinician => "target_is_clinician",
            RequestError::BadInvite => "bad_invite",
            RequestError::InviteLimit => "invite_limit",
            RequestError::SelfTarget => "self_target",
            RequestError::QueueNotAdmit => "queue_not_admit",
            RequestError::NotAQueue => "not_a_queue",
            RequestError::QueueEmpty => "queue_empty",
            RequestError::QueueCannotEnd => "queue_cannot_end",
            RequestError::WaitingForAdmission => "waiting_for_admission",
            RequestError::ChatSize => "chat_size",
            RequestError::ChatRate => "chat_rate",
            RequestError::RestartTooSoon => "restart_too_soon",
            RequestError::ScreenShareNotAllowed => "screen_share_not_allowed",
            RequestError::TooManyVideoLines => "bad_sdp",
            RequestError::NoMediaSession => "no_media_session",
            RequestError::BadMid => "bad_mid",
            RequestError::LayerRate => "layer_rate",
            RequestError::SdpRate => "sdp_rate",
            RequestError::Restarting => "restarting",
        }
    }
}

/// What a join did (its audit records are in the effects).
#[derive(Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    pub admitted: bool,
}

/// One participant as the meetings API lists them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParticipantView {
    pub participant: ParticipantId,
    pub subject: String,
    pub name: String,
    pub role: Role,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<Timestamp>,
    pub media: bool,
}

pub struct MeetingRoom {
    pub id: String,
    state: Mutex<RoomState>,
}

impl std::fmt::Debug for MeetingRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeetingRoom").field("id", &self.id).finish()
    }
}

impl MeetingRoom {
    pub fn new(mut record: MeetingRecord) -> Self {
        // People admitted when the service last stopped come back past the waiting room
        // within the reconnect grace, as after any dropped connection.
        let admitted = std::mem::take(&mut record.readmit)
            .into_iter()
            .map(|r| (r.sub, Some(r.until)))
            .collect();
        // So are the places of those who were waiting, in the order they had.
        let queue = std::mem::take(&mut record.queue);
        // And those taken from a drop-in queue into private visits follow their link there.
        let forwarded = std::mem::take(&mut record.forwards)
            .into_iter()
            .map(|f| (f.sub, (f.to, f.until)))
            .collect();
        let next_order = queue.len() as u64;
        let lobby_places = queue
            .into_iter()
            .zip(0..)
            .map(|(p, order)| (p.sub, (p.since, order, p.until)))
            .collect();
        Self {
            id: record.id.clone(),
            state: Mutex::new(RoomState {
                record,
                members: HashMap::new(),
                admitted,
                forwarded,
                lobby_places,
                next_order,
                last_active: Timestamp::now(),
                budgets_left: HashMap::new(),
                left_on_purpose: HashSet::new(),
            }),
        }
    }

    /// The meeting's state. Held briefly: nothing under it awaits or blocks.
    pub fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, if nobody holds it (the sweeper never waits for a busy meeting).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, RoomState>> {
        match self.state.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomState {
    pub record: MeetingRecord,
    members: HashMap<ParticipantId, Member>,
    /// Subjects admitted to this meeting; with a deadline once their connection dropped.
    admitted: HashMap<String, Option<Timestamp>>,
    /// Drop-in: subjects taken into a private visit, with that visit's id and until when a
    /// reconnect with the queue token follows them there.
    forwarded: HashMap<String, (String, Timestamp)>,
    /// Places in the lobby kept for subjects whose connection dropped, until the grace ends:
    /// a phone that loses the network does not go to the back of the queue.
    lobby_places: HashMap<String, (Timestamp, u64, Timestamp)>,
    next_order: u64,
    /// When someone was last connected (for forgetting unbooked meetings).
    pub last_active: Timestamp,
    /// What subjects who left lately had left of their budgets (chat, layer requests, the
    /// last media restart), for their next connection: a fresh one each time would let a
    /// client that reconnects in a loop chat and restart media as fast as it reconnects.
    #[serde(default)]
    budgets_left: HashMap<String, LeftBudgets>,
    /// Subjects who left on purpose (`leave`) and have not come back: a drop-in clinician who
    /// hung up goes on to the queue with its link, not back into this private visit.
    #[serde(default)]
    left_on_purpose: HashSet<String>,
}

/// A member's message budgets and last media restart, kept when it leaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LeftBudgets {
    chat: MessageBudget,
    layer_requests: MessageBudget,
    last_restart: Option<Timestamp>,
    left_at: Timestamp,
}

impl LeftBudgets {
    fn of(m: &Member, now: Timestamp) -> Self {
        Self {
            chat: m.chat.clone(),
            layer_requests: m.layer_requests.clone(),
            last_restart: m.last_restart,
            left_at: now,
        }
    }

    /// The person's next connection goes on from here.
    fn restore(self, m: &mut Member) {
        m.chat = self.chat;
        m.layer_requests = self.layer_requests;
        m.last_restart = self.last_restart;
    }
}

/// How long budgets are kept after a member leaves: by then they would have refilled.
const BUDGETS_KEPT: SignedDuration = SignedDuration::from_secs(60);

impl RoomState {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member(&self, id: &ParticipantId) -> Option<&Member> {
        self.members.get(id)
    }

    pub fn is_admitted(&self, id: &ParticipantId) -> bool {
        self.members.get(id).is_some_and(Member::is_admitted)
    }

    /// Whether this private visit takes back a clinician `sub` who comes with the queue's link:
    /// while anyone else is here, or admitted and expected back within the reconnect grace —
    /// unless the clinician left it on purpose (then the link leads to the queue, to take the
    /// next patient).
    pub fn takes_back_clinician(&self, sub: &str, now: Timestamp) -> bool {
        !self.left_on_purpose.contains(sub)
            && (self.members.values().any(|m| m.sub != sub)
                || self
                    .admitted
                    .iter()
                    .any(|(s, until)| s != sub && until.is_none_or(|u| u >= now)))
    }

    /// Who is followed into which private visit, as stored with the queue.
    pub fn forwards(&self, now: Timestamp) -> Vec<crate::meeting::Forward> {
        let mut v: Vec<_> = self
            .forwarded
            .iter()
            .filter(|(_, (_, until))| *until >= now)
            .map(|(sub, (to, until))| crate::meeting::Forward {
                sub: sub.clone(),
                to: to.clone(),
                until: *until,
            })
            .collect();
        v.sort_by(|a, b| a.sub.cmp(&b.sub));
        v
    }

    /// The private visit a drop-in patient or clinician was taken into, if still followed.
    pub fn forwarded_to(&self, sub: &str, now: Timestamp) -> Option<String> {
        self.forwarded
            .get(sub)
            .filter(|(_, until)| *until >= now)
            .map(|(id, _)| id.clone())
    }

    /// `event` for `id` with why its connection ended (`leave` with `removed`, …): every
    /// `join` line has its end in the log.
    fn ended(&self, event: &str, id: &ParticipantId, m: &Member, code: &str) -> AuditEvent {
        let mut e = self.audit(event, id, m);
        e.code = Some(code.into());
        e
    }

    fn audit(&self, event: &str, id: &ParticipantId, m: &Member) -> AuditEvent {
        AuditEvent {
            event: event.into(),
            meeting: Some(self.record.id.clone()),
            subject: Some(m.sub.clone()),
            role: Some(role_name(m.role).into()),
            hsa: m.hsa.clone(),
            unit: m.unit.clone(),
            participant: Some(id.to_string()),
            ..Default::default()
        }
    }

    fn audit_by(
        &self,
        event: &str,
        id: &ParticipantId,
        target: &Member,
        actor: &Member,
    ) -> AuditEvent {
        AuditEvent {
            actor_hsa: actor.hsa.clone(),
            actor_unit: actor.unit.clone(),
            ..self.audit(event, id, target)
        }
    }

    /// Whether `session` may enter now (checked before the WebSocket opens, and again when
    /// it joins).
    pub fn check_entry(
        &self,
        session: &Session,
        now: Timestamp,
        policy: &MeetingPolicy,
    ) -> Result<(), JoinRefusal> {
        let clinician = session.role == Role::Clinician;
        self.record.check_entry(now, clinician, policy)?;
        if self.record.denied.contains(&session.claims.sub) {
            return Err(JoinRefusal::Denied);
        }
        // A consultant comes by a clinician's invitation of their HSA-id, to a visit.
        if session.role == Role::Consultant
            && (self.record.kind != MeetingKind::Visit
                || !session
                    .claims
                    .hsa
                    .as_ref()
                    .is_some_and(|h| self.record.invited.contains(h)))
        {
            return Err(JoinRefusal::NotInvited);
        }
        if self.record.kind == MeetingKind::DropIn
            && clinician
            && session.claims.unit.as_deref() != Some(self.record.unit.as_str())
        {
            return Err(JoinRefusal::WrongUnit);
        }
        // A token of another care unit than the meeting's: one unit's API key could otherwise
        // book an id another unit's tokens name, and have their patients come to its meeting
        // (its key reading who came, its minted clinician admitting them). A consultant comes
        // from their own unit, by invitation.
        // (An unbooked meeting's unit is its first token's: only a booking says whose it is.)
        if session.role != Role::Consultant
            && self.record.booked
            && !self.record.unit.is_empty()
            && session
                .claims
                .unit
                .as_deref()
                .is_some_and(|u| u != self.record.unit)
        {
            return Err(JoinRefusal::WrongUnit);
        }
        // Someone coming back to a place kept for them (in the queue, or admitted within the
        // reconnect grace) is not turned away: that place was counted while they were gone.
        let sub = session.claims.sub.as_str();
        if self.holds_place(sub, now) {
            return Ok(());
        }
        // A second connection of the same subject replaces the first: it does not count.
        // Places kept for people whose connection dropped (after a crash: restored from the
        // store) count as taken, so newcomers cannot fill a queue ahead of them.
        let present: std::collections::HashSet<&str> =
            self.members.values().map(|m| m.sub.as_str()).collect();
        let others = self.members.values().filter(|m| m.sub != sub).count();
        let kept = self
            .kept_places(now)
            .filter(|s| *s != sub && !present.contains(s))
            .count();
        if others + kept >= self.record.max_participants(policy) as usize {
            return Err(JoinRefusal::MeetingFull);
        }
        Ok(())
    }

    /// Subjects whose place is kept while their connection is gone: a waiting place, or an
    /// admission within its reconnect grace.
    fn kept_places(&self, now: Timestamp) -> impl Iterator<Item = &str> {
        let waiting = self
            .lobby_places
            .iter()
            .filter(move |(_, (_, _, until))| *until >= now)
            .map(|(s, _)| s.as_str());
        let admitted = self
            .admitted
            .iter()
            .filter(move |(_, until)| until.is_some_and(|u| u >= now))
            .map(|(s, _)| s.as_str());
        waiting.chain(admitted)
    }

    fn holds_place(&self, sub: &str, now: Timestamp) -> bool {
        !self.members.values().any(|m| m.sub == sub) && self.kept_places(now).any(|s| s == sub)
    }

    /// Adds a connection. Clinicians are admitted; others wait in the lobby unless they were
    /// admitted and are back within the reconnect grace (or replace their own connection).
    pub fn join(
        &mut self,
        id: ParticipantId,
        session: &Session,
        now: Timestamp,
        policy: &MeetingPolicy,
        fx: &mut Effects,
    ) -> Result<JoinOutcome, JoinRefusal> {
        self.join_keeping(id, session, now, policy, None, fx)
    }

    /// [`Self::join`] for a connection that keeps the media session `kept` the SFU ran for it
    /// before this service restarted: it gets the permissions this run decides, and its
    /// welcome says `"media": "kept"` (the client keeps its peer connection).
    pub fn join_keeping(
        &mut self,
        id: ParticipantId,
        session: &Session,
        now: Timestamp,
        policy: &MeetingPolicy,
        kept: Option<KeptMedia>,
        fx: &mut Effects,
    ) -> Result<JoinOutcome, JoinRefusal> {
        self.check_entry(session, now, policy)?;
        let mut member = Member::new(session);
        self.left_on_purpose.remove(&member.sub);

        let previous = self
            .members
            .iter()
            .find(|(_, m)| m.sub == member.sub)
            .map(|(k, _)| k.clone());
        let mut was_admitted = false;
        // A waiting person coming back (new device, or back within the grace) keeps their place.
        let mut place = self
            .lobby_places
            .remove(&member.sub)
            .filter(|(_, _, until)| *until >= now)
            .map(|(since, order, _)| (since, order));
        // The same person's budgets carry over from a connection it replaces, or one that
        // left lately.
        if let Some(b) = self.budgets_left.remove(&member.sub) {
            b.restore(&mut member);
        }
        if let Some(old_id) = previous {
            let old = self.detach(&old_id, fx);
            if let Some(old) = old {
                LeftBudgets::of(&old, now).restore(&mut member);
                was_admitted = old.is_admitted();
                if let Admission::Waiting { since, order } = old.admission {
                    place = Some((since, order));
                }
                fx.close(&old_id, CloseReason::Replaced.outbound());
                fx.record(self.ended("replaced", &old_id, &old, &format!("by {id}")));
            }
        }
        let grace = match self.admitted.get(&member.sub) {
            Some(None) => true,
            Some(Some(until)) => *until >= now,
            None => false,
        };
        let admitted = member.is_staff()
            || (self.record.kind == MeetingKind::Visit && (was_admitted || grace));
        if admitted {
            member.admission = Admission::Admitted;
            member.admitted_at = Some(now);
            if !member.is_staff() {
                self.admitted.insert(member.sub.clone(), None);
                let mut e = self.audit("admit", &id, &member);
                e.code = Some("reconnect".into());
                fx.record(e);
            }
        } else {
            let (since, order) = place.unwrap_or_else(|| {
                self.next_order += 1;
                (now, self.next_order - 1)
            });
            member.admission = Admission::Waiting { since, order };
            fx.record(self.audit("lobby_enter", &id, &member));
        }

        let mut welcome = json!({
            "type": "welcome",
            "participant": id,
            "meeting": self.record.id,
            "kind": self.record.kind,
            "name": member.name,
            "role": member.role,
            "state": if admitted { "admitted" } else { "waiting" },
            "starts_at": self.record.start.to_string(),
        });
        if admitted {
            welcome["participants"] = self.roster(None);
        }
        let mut media_start = false;
        if let Some(k) = kept {
            member.sfu_joined = true;
            member.media_session = k.session;
            member.media_connected = k.connected;
            media_start = k.connected && admitted && self.record.kind == MeetingKind::Visit;
            member.media_started = media_start;
            if media_start {
                member.admitted_at = None;
            }
            welcome["media"] = json!("kept");
            // The SFU still applies the last run's permissions: this run's decision goes to it.
            fx.command(Command::SetPermissions {
                participant: id.clone(),
                permissions: self.permissions(&member),
            });
        }
        fx.send(&id, &welcome);
        let joined = member.joined_message(&id);
        if media_start {
            let mut e = self.audit("media_start", &id, &member);
            e.code = Some("kept".into());
            fx.record(e);
        }
        self.members.insert(id.clone(), member);
        self.last_active = now;
        if admitted {
            self.broadcast_admitted(Some(&id), &joined, fx);
        }
        // Clinicians (the newcomer too) learn the lobby; waiting people their place.
        self.lobby_changed(fx);
        Ok(JoinOutcome { admitted })
    }

    /// Takes a connection out of the meeting (its media session too) and tells the others.
    /// Returns the member when it was still here.
    fn detach(&mut self, id: &ParticipantId, fx: &mut Effects) -> Option<Member> {
        let m = self.members.remove(id)?;
        // Also without a session known to run: a removal of nothing costs nothing, and one
        // that the SFU does hold must never be left behind.
        fx.command(Command::RemoveParticipant {
            participant: id.clone(),
        });
        if m.media_started {
            fx.record(self.audit("media_stop", id, &m));
        }
        if m.is_admitted() {
            self.broadcast_admitted(
                None,
                &json!({"type": "participant_left", "participant": id}),
                fx,
            );
        } else {
            self.lobby_changed(fx);
        }
        Some(m)
    }

    /// The connection ended. `explicit`: the person left (admission is forgotten); otherwise
    /// it dropped, and an admitted person coming back within the grace skips the lobby.
    /// Returns whether it was still here.
    pub fn leave(
        &mut self,
        id: &ParticipantId,
        explicit: bool,
        now: Timestamp,
        policy: &MeetingPolicy,
        fx: &mut Effects,
    ) -> bool {
        let Some(m) = self.detach(id, fx) else {
            return false;
        };
        if m.is_admitted() && !m.is_clinician() {
            if explicit {
                self.admitted.remove(&m.sub);
            } else {
                self.admitted
                    .insert(m.sub.clone(), Some(now + policy.reconnect_grace));
            }
        }
        if explicit {
            self.left_on_purpose.insert(m.sub.clone());
        }
        if let Admission::Waiting { since, order } = m.admission
            && !explicit
        {
            self.lobby_places
                .insert(m.sub.clone(), (since, order, now + policy.reconnect_grace));
        }
        fx.record(self.audit("leave", id, &m));
        self.budgets_left
            .retain(|_, b| now.duration_since(b.left_at) < BUDGETS_KEPT);
        self.budgets_left
            .insert(m.sub.clone(), LeftBudgets::of(&m, now));
        self.last_active = now;
        true
    }

    /// Checks a clinician's action and describes it for the audit log, changing nothing:
    /// the caller records it, then calls [`apply`](Self::apply).
    pub fn plan(
        &self,
        actor: &ParticipantId,
        action: &Action,
    ) -> Result<Vec<AuditEvent>, RequestError> {
        let a = self.actor(actor)?;
        match action {
            // A unit's queue closes at its end (or is cancelled by the booking system); one
            // clinician does not close it for everyone.
            Action::EndMeeting if self.record.kind == MeetingKind::DropIn => {
                Err(RequestError::QueueCannotEnd)
            }
            Action::EndMeeting => {
                let mut e = self.audit("meeting_end", actor, a);
                e.actor_hsa = a.hsa.clone();
                e.actor_unit = a.unit.clone();
                Ok(vec![e])
            }
            Action::Admit(t) | Action::Deny(t) | Action::ToLobby(t) | Action::Remove(t) => {
                let target = self.target(actor, action)?;
                Ok(vec![self.audit_by(action.audit_name(), t, target, a)])
            }
            Action::AdmitWithCompanions(_) => self.plan(actor, &self.resolved(action.clone())),
            Action::AdmitGroup {
                patient,
                companions,
            } => {
                let target = self.target(actor, action)?;
                let mut events = vec![self.audit_by("admit", patient, target, a)];
                for id in companions {
                    if let Some(c) = self.members.get(id) {
                        let mut e = self.audit_by("admit", id, c, a);
                        e.code = Some(format!("with {patient}"));
                        events.push(e);
                    }
                }
                Ok(events)
            }
            Action::InviteConsultant { hsa, unit, name } => {
                self.check_invite(hsa, unit, name)?;
                Ok(vec![AuditEvent {
                    event: "consultant_invited".into(),
                    meeting: Some(self.record.id.clone()),
                    role: Some("consultant".into()),
                    hsa: Some(hsa.clone()),
                    unit: Some(unit.clone()),
                    actor_hsa: a.hsa.clone(),
                    actor_unit: a.unit.clone(),
                    ..Default::default()
                }])
            }
        }
    }

    /// `action`, its target followed to the connection of the same person (`sub`) that
    /// replaced it meanwhile (a reconnect while the action was being recorded): a removal or
    /// a denial planned for a connection is not undone by the person reconnecting.
    pub fn followed(&self, action: Action, sub: Option<&str>) -> Action {
        let (Some(target), Some(sub)) = (action.target(), sub) else {
            return action;
        };
        if self.members.contains_key(target) {
            return action;
        }
        match self.members.iter().find(|(_, m)| m.sub == sub) {
            Some((id, _)) => {
                let id = id.clone();
                action.retargeted(id)
            }
            None => action,
        }
    }

    /// `action` on a person none of whose connections is here any more: theirs closed while the
    /// action was being recorded (and `followed` found no later one). A removal, a move to the
    /// waiting room or a denial still takes their standing — the admission kept for their
    /// reconnect grace, which closing the socket in time would otherwise have saved past the
    /// waiting room. Whether it applied.
    /// (`consultant_hsa`: the target was an invited consultant, whose removal withdraws the
    /// invitation — staff come in on it, not on an admission.)
    pub fn apply_to_absent(
        &mut self,
        action: &Action,
        sub: &str,
        consultant_hsa: Option<&str>,
    ) -> bool {
        if self.members.values().any(|m| m.sub == sub) {
            return false;
        }
        match action {
            Action::Remove(_) => {
                self.admitted.remove(sub);
                if let Some(hsa) = consultant_hsa {
                    self.record.invited.retain(|h| h != hsa);
                }
                true
            }
            Action::ToLobby(_) => {
                self.admitted.remove(sub);
                true
            }
            Action::Deny(_) => {
                self.admitted.remove(sub);
                self.lobby_places.remove(sub);
                if !self.record.denied.iter().any(|d| d == sub) {
                    self.record.denied.push(sub.to_owned());
                }
                true
            }
            _ => false,
        }
    }

    /// An action as it will be planned and applied: "admit with companions" becomes the
    /// patient and the companions waiting with them now.
    pub fn resolved(&self, action: Action) -> Action {
        match action {
            Action::AdmitWithCompanions(patient) => {
                let companions = self
                    .members
                    .get(&patient)
                    .map(|p| {
                        self.waiting_companions(&p.sub)
                            .into_iter()
                            .map(|(id, _)| id.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                Action::AdmitGroup {
                    patient,
                    companions,
                }
            }
            other => other,
        }
    }

    /// Companions of the patient `sub` waiting in the lobby, in queue order.
    fn waiting_companions(&self, sub: &str) -> Vec<(&ParticipantId, &Member)> {
        self.waiting()
            .into_iter()
            .filter(|(_, m, ..)| {
                m.role == Role::Companion && m.companion_of.as_deref() == Some(sub)
            })
            .map(|(id, m, ..)| (id, m))
            .collect()
    }

    fn check_invite(&self, hsa: &str, unit: &str, name: &str) -> Result<(), RequestError> {
        let unit_ok = (1..=64).contains(&unit.len())
            && !crate::identity_number::looks_like_identity_number(unit);
        let name_ok = (1..=100).contains(&name.trim().chars().count())
            && !crate::identity_number::looks_like_identity_number(name);
        if self.record.kind != MeetingKind::Visit
            || !crate::session_token::is_hsa_id(hsa)
            || crate::identity_number::looks_like_identity_number(hsa)
            || !unit_ok
            || !name_ok
        {
            return Err(RequestError::BadInvite);
        }
        if self.record.invited.len() >= 10 && !self.record.invited.iter().any(|h| h == hsa) {
            return Err(RequestError::InviteLimit);
        }
        Ok(())
    }

    fn actor(&self, actor: &ParticipantId) -> Result<&Member, RequestError> {
        let a = self
            .members
            .get(actor)
            .ok_or(RequestError::NoSuchParticipant)?;
        if !a.is_clinician() {
            return Err(RequestError::NotAllowed);
        }
        Ok(a)
    }

    fn target(&self, actor: &ParticipantId, action: &Action) -> Result<&Member, RequestError> {
        let (Action::Admit(t)
        | Action::AdmitWithCompanions(t)
        | Action::AdmitGroup { patient: t, .. }
        | Action::Deny(t)
        | Action::ToLobby(t)
        | Action::Remove(t)) = action
        else {
            return Err(RequestError::NoSuchParticipant);
        };
        if t == actor {
            return Err(RequestError::SelfTarget);
        }
        let target = self.members.get(t).ok_or(RequestError::NoSuchParticipant)?;
        match action {
            Action::Admit(_) | Action::AdmitWithCompanions(_) | Action::AdmitGroup { .. }
                if self.record.kind == MeetingKind::DropIn =>
            {
                Err(RequestError::QueueNotAdmit)
            }
            Action::Admit(_)
            | Action::AdmitWithCompanions(_)
            | Action::AdmitGroup { .. }
            | Action::Deny(_)
                if target.is_admitted() =>
            {
                Err(RequestError::NotWaiting)
            }
            Action::ToLobby(_) if target.is_staff() => Err(RequestError::TargetIsClinician),
            Action::ToLobby(_) if !target.is_admitted() => Err(RequestError::NotAdmitted),
            _ => Ok(target),
        }
    }

    /// Carries out an action checked by [`plan`](Self::plan) (checked again: the meeting may
    /// have changed meanwhile). Returns further audit events (media stopping or starting).
    pub fn apply(
        &mut self,
        actor: &ParticipantId,
        action: &Action,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<(), RequestError> {
        self.actor(actor)?;
        match action {
            Action::EndMeeting if self.record.kind == MeetingKind::DropIn => {
                return Err(RequestError::QueueCannotEnd);
            }
            Action::EndMeeting => {
                self.record.ended_at = Some(now);
                self.close_all(CloseReason::MeetingEnded, fx);
            }
            Action::Admit(t) => {
                self.target(actor, action)?;
                self.admit(t, now, fx);
            }
            Action::AdmitWithCompanions(_) => {
                let group = self.resolved(action.clone());
                return self.apply(actor, &group, now, fx);
            }
            Action::AdmitGroup {
                patient,
                companions,
            } => {
                self.target(actor, action)?;
                self.admit(patient, now, fx);
                // Only those planned (and recorded), and only if they still wait; the `admit`
                // line written for one who no longer does says it did not happen.
                for c in companions {
                    if self.members.get(c).is_some_and(|m| !m.is_admitted()) {
                        self.admit(c, now, fx);
                    } else {
                        let a = self.member(actor);
                        fx.record(AuditEvent {
                            event: "admit_not_applied".into(),
                            meeting: Some(self.record.id.clone()),
                            participant: Some(c.to_string()),
                            actor_hsa: a.and_then(|a| a.hsa.clone()),
                            actor_unit: a.and_then(|a| a.unit.clone()),
                            code: Some("not_waiting".into()),
                            ..Default::default()
                        });
                    }
                }
            }
            Action::InviteConsultant { hsa, unit, name } => {
                self.check_invite(hsa, unit, name)?;
                if !self.record.invited.contains(hsa) {
                    self.record.invited.push(hsa.clone());
                }
            }
            Action::Deny(t) => {
                self.target(actor, action)?;
                if let Some(m) = self.detach(t, fx) {
                    fx.record(self.ended("leave", t, &m, CloseReason::Denied.code()));
                    if !self.record.denied.contains(&m.sub) {
                        self.record.denied.push(m.sub.clone());
                    }
                    self.admitted.remove(&m.sub);
                    fx.close(t, CloseReason::Denied.outbound());
                }
            }
            Action::ToLobby(t) => {
                self.target(actor, action)?;
                self.send_to_lobby(t, now, fx);
            }
            Action::Remove(t) => {
                self.target(actor, action)?;
                if let Some(m) = self.detach(t, fx) {
                    fx.record(self.ended("leave", t, &m, CloseReason::Removed.code()));
                    self.admitted.remove(&m.sub);
                    // A consultant removed is no longer invited: their link stops working.
                    if m.role == Role::Consultant
                        && let Some(hsa) = &m.hsa
                    {
                        self.record.invited.retain(|h| h != hsa);
                    }
                    fx.close(t, CloseReason::Removed.outbound());
                }
            }
        }
        Ok(())
    }

    fn admit(&mut self, id: &ParticipantId, now: Timestamp, fx: &mut Effects) {
        let roster = self.roster(Some(id));
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        if let Admission::Waiting { since, .. } = m.admission {
            fx.observe(Observation::LobbyWait(elapsed(since, now)));
        }
        m.admission = Admission::Admitted;
        m.admitted_at = Some(now);
        m.position_told = None;
        let sub = m.sub.clone();
        m.set_media(id, true, fx);
        fx.send(id, &json!({"type": "admitted", "participants": roster}));
        let joined = m.joined_message(id);
        let start = m.media_connected && !m.media_started;
        if start {
            m.media_started = true;
            // Its media session was up in the waiting room: media flows at admission.
            if m.admitted_at.take().is_some() {
                fx.observe(Observation::JoinToMedia(std::time::Duration::ZERO));
            }
        }
        self.admitted.insert(sub, None);
        if start && let Some(m) = self.members.get(id) {
            fx.record(self.audit("media_start", id, m));
        }
        self.broadcast_admitted(Some(id), &joined, fx);
        self.lobby_changed(fx);
    }

    fn send_to_lobby(&mut self, id: &ParticipantId, now: Timestamp, fx: &mut Effects) {
        let order = self.next_order;
        self.next_order += 1;
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        m.admission = Admission::Waiting { since: now, order };
        let sub = m.sub.clone();
        m.set_media(id, false, fx);
        let stopped = std::mem::take(&mut m.media_started);
        self.admitted.remove(&sub);
        if stopped && let Some(m) = self.members.get(id) {
            fx.record(self.audit("media_stop", id, m));
        }
        let position = self.position(id);
        if let Some(m) = self.members.get_mut(id) {
            m.position_told = position;
            fx.send(
                id,
                &json!({"type": "returned_to_lobby", "position": position}),
            );
        }
        self.broadcast_admitted(
            None,
            &json!({"type": "participant_left", "participant": id}),
            fx,
        );
        self.lobby_changed(fx);
    }

    /// Disconnects everyone (meeting ended or cancelled) and closes the SFU room.
    pub fn close_all(&mut self, reason: CloseReason, fx: &mut Effects) {
        let members: Vec<(ParticipantId, Member)> = self.members.drain().collect();
        for (id, m) in &members {
            if m.media_started {
                fx.record(self.audit("media_stop", id, m));
            }
            fx.record(self.ended("leave", id, m, reason.code()));
            fx.close(id, reason.outbound());
        }
        self.admitted.clear();
        fx.command(Command::CloseRoom {
            room: RoomId(self.record.id.clone()),
        });
    }

    /// The permissions a new media session of `id` gets: media only once admitted, and none
    /// in a drop-in queue (nobody meets anybody there).
    fn permissions(&self, m: &Member) -> Permissions {
        let on = m.is_admitted() && self.record.kind == MeetingKind::Visit;
        Permissions {
            publish: on,
            subscribe: on,
        }
    }

    /// A client's SDP offer: starts its media session (or restarts it) or renegotiates.
    /// `video` is what it publishes video on ([`OfferedVideo`], the SFU's own reading of the
    /// offer).
    pub fn offer(
        &mut self,
        id: &ParticipantId,
        sdp: String,
        video: &OfferedVideo,
        restart: bool,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<(), RequestError> {
        let m = self
            .members
            .get(id)
            .ok_or(RequestError::NoSuchParticipant)?;
        // A new media session publishes what its offer says; a renegotiation keeps, besides,
        // the lines the offer leaves out.
        let publishing = if restart || !m.sfu_joined {
            video.sending.clone()
        } else {
            video.publishing_after(&m.video_mids)
        };
        // One camera for patients, companions and interpreters; screen sharing is staff's
        // (a consultant shows images at a conference).
        if !m.is_staff() && publishing.len() > 1 {
            return Err(RequestError::ScreenShareNotAllowed);
        }
        let permissions = self.permissions(m);
        let room = RoomId(self.record.id.clone());
        let Some(m) = self.members.get_mut(id) else {
            return Err(RequestError::NoSuchParticipant);
        };
        if restart && m.sfu_joined {
            if m.last_restart
                .is_some_and(|t| now.duration_since(t) < MIN_RESTART_INTERVAL)
            {
                return Err(RequestError::RestartTooSoon);
            }
            m.last_restart = Some(now);
            // A new media session under the same identity: the old one goes first.
            fx.command(Command::RemoveParticipant {
                participant: id.clone(),
            });
            m.sfu_joined = false;
            m.media_connected = false;
        }
        // (Kept with the lines before until the SFU is known to have taken the offer: one it
        // refuses leaves them publishing. A session holds at most 64 lines at the SFU: more
        // names than that are offers it refused, one new mid each, and are not kept.)
        if restart || !m.sfu_joined {
            m.video_mids = publishing;
        } else {
            let added: Vec<String> = publishing
                .into_iter()
                .filter(|mid| !m.video_mids.contains(mid))
                .collect();
            if m.video_mids.len() + added.len() > MAX_VIDEO_LINES {
                return Err(RequestError::TooManyVideoLines);
            }
            m.video_mids.extend(added);
        }
        let command = if m.sfu_joined {
            Command::Offer {
                participant: id.clone(),
                offer_sdp: sdp,
            }
        } else {
            m.sfu_joined = true;
            m.media_session = m.media_session.wrapping_add(1);
            Command::AddParticipant {
                room,
                participant: id.clone(),
                offer_sdp: sdp,
                permissions,
                session: m.media_session,
            }
        };
        fx.command(command);
        Ok(())
    }

    /// The SFU refused to start `id`'s media session `session` (`None`: a node that does not
    /// say which). A refusal of an earlier session than the member's current one changes
    /// nothing: that one runs, and must stay known as running (removals, moves to the lobby
    /// and permission changes are sent only for a session that runs).
    /// Returns whether it concerned the member's current session (false: an earlier one, or
    /// no such member).
    pub fn media_session_refused(&mut self, id: &ParticipantId, session: Option<u32>) -> bool {
        let Some(m) = self.members.get_mut(id) else {
            return false;
        };
        let current = session.is_none_or(|s| s == m.media_session);
        if current {
            m.sfu_joined = false;
            m.media_connected = false;
        }
        current
    }

    /// A member whose media session has started (what answers and layer requests are about).
    fn with_media(&mut self, id: &ParticipantId) -> Result<&mut Member, RequestError> {
        let m = self
            .members
            .get_mut(id)
            .ok_or(RequestError::NoSuchParticipant)?;
        if !m.sfu_joined {
            return Err(RequestError::NoMediaSession);
        }
        Ok(m)
    }

    pub fn answer(
        &mut self,
        id: &ParticipantId,
        sdp: String,
        fx: &mut Effects,
    ) -> Result<(), RequestError> {
        self.with_media(id)?;
        fx.command(Command::Answer {
            participant: id.clone(),
            answer_sdp: sdp,
        });
        Ok(())
    }

    /// The client declines the SFU's outstanding offer.
    pub fn reject_offer(
        &mut self,
        id: &ParticipantId,
        fx: &mut Effects,
    ) -> Result<(), RequestError> {
        self.with_media(id)?;
        fx.command(Command::RejectOffer {
            participant: id.clone(),
        });
        Ok(())
    }

    /// Which simulcast layer a participant wants of what it receives (passed to the SFU,
    /// which also lowers it for a lossy link or a layer the publisher stopped sending).
    pub fn prefer_layer(
        &mut self,
        id: &ParticipantId,
        mid: Option<String>,
        layer: VideoLayer,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<(), RequestError> {
        self.take_layer_request(id, now)?;
        if mid.as_ref().is_some_and(|m| m.len() > 32) {
            return Err(RequestError::BadMid);
        }
        fx.command(Command::SetPreferredLayer {
            participant: id.clone(),
            mid,
            layer,
        });
        Ok(())
    }

    /// One of a member's layer requests (and link reports): a member with a media session,
    /// within its budget.
    fn take_layer_request(
        &mut self,
        id: &ParticipantId,
        now: Timestamp,
    ) -> Result<(), RequestError> {
        if self.with_media(id)?.layer_requests.take(now) {
            Ok(())
        } else {
            Err(RequestError::LayerRate)
        }
    }

    /// What the SFU knows of a participant's link, for its client's diagnostics view (from
    /// the same budget as layer requests).
    pub fn request_link_report(
        &mut self,
        id: &ParticipantId,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<(), RequestError> {
        self.take_layer_request(id, now)?;
        fx.command(Command::ReportLink {
            participant: id.clone(),
        });
        Ok(())
    }

    /// A chat message: from and to admitted participants only; never stored or logged.
    pub fn chat(
        &mut self,
        id: &ParticipantId,
        text: &str,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<(), RequestError> {
        let m = self
            .members
            .get_mut(id)
            .ok_or(RequestError::NoSuchParticipant)?;
        if !m.is_admitted() || self.record.kind == MeetingKind::DropIn {
            return Err(RequestError::WaitingForAdmission);
        }
        let text = text.trim();
        if text.is_empty() || text.chars().count() > MAX_CHAT_CHARS {
            return Err(RequestError::ChatSize);
        }
        if !m.chat.take(now) {
            return Err(RequestError::ChatRate);
        }
        let msg = json!({"type": "chat", "from": id, "name": m.name, "text": text, "at": now.to_string()});
        self.broadcast_admitted(None, &msg, fx);
        Ok(())
    }

    /// Whether `id` is a connection of this meeting (messages about its media session go to
    /// it).
    pub fn has_member(&self, id: &ParticipantId) -> bool {
        self.members.contains_key(id)
    }

    /// Sends to everyone admitted (the lobby learns nothing of the meeting).
    pub fn broadcast_admitted(
        &self,
        except: Option<&ParticipantId>,
        msg: &Value,
        fx: &mut Effects,
    ) {
        for (id, m) in &self.members {
            if m.is_admitted() && Some(id) != except {
                fx.send(id, msg);
            }
        }
    }

    /// The SFU reports `id`'s media path up.
    /// The SFU reports media session `session` of `id` connected.
    pub fn media_connected(
        &mut self,
        id: &ParticipantId,
        session: u32,
        now: Timestamp,
        fx: &mut Effects,
    ) {
        let kind = self.record.kind;
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        if m.media_session != session {
            return;
        }
        m.media_connected = true;
        fx.send(id, &json!({"type": "media_connected"}));
        if m.is_admitted() && kind == MeetingKind::Visit && !m.media_started {
            m.media_started = true;
            if let Some(since) = m.admitted_at.take() {
                fx.observe(Observation::JoinToMedia(elapsed(since, now)));
            }
            if let Some(m) = self.members.get(id) {
                fx.record(self.audit("media_start", id, m));
            }
        }
    }

    /// The SFU lost `id`'s media session `session` (consent timeout, transport closed, its node
    /// gone). The session no longer exists there: the client's next offer starts a new one.
    /// News of a session a restart has already replaced is stale: the client is not told.
    pub fn media_lost(
        &mut self,
        id: &ParticipantId,
        session: u32,
        reason: &Value,
        fx: &mut Effects,
    ) {
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        if m.media_session != session {
            return;
        }
        m.media_connected = false;
        m.sfu_joined = false;
        fx.send(id, &json!({"type": "media_disconnected", "reason": reason}));
        if std::mem::take(&mut m.media_started)
            && let Some(m) = self.members.get(id)
        {
            fx.record(self.audit("media_stop", id, m));
        }
    }

    fn waiting(&self) -> Vec<(&ParticipantId, &Member, Timestamp, u64)> {
        let mut w: Vec<_> = self
            .members
            .iter()
            .filter_map(|(id, m)| match m.admission {
                Admission::Waiting { since, order } => Some((id, m, since, order)),
                Admission::Admitted => None,
            })
            .collect();
        w.sort_by_key(|(_, _, _, order)| *order);
        w
    }

    /// 1-based place in the lobby queue.
    pub fn position(&self, id: &ParticipantId) -> Option<usize> {
        self.waiting()
            .iter()
            .position(|(w, ..)| *w == id)
            .map(|p| p + 1)
    }

    /// The first in the queue (drop-in's "take next").
    pub fn first_waiting(&self) -> Option<ParticipantId> {
        self.waiting().first().map(|(id, ..)| (*id).clone())
    }

    fn lobby_message(&self) -> Value {
        let waiting: Vec<Value> = self
            .waiting()
            .iter()
            .map(|(id, m, since, _)| {
                let mut entry = json!({"participant": id, "name": m.name, "role": m.role, "since": since.to_string()});
                // A companion is shown with their patient, when the patient is here.
                if let Some((pid, p)) = m.companion_of.as_ref().and_then(|sub| {
                    self.members
                        .iter()
                        .find(|(_, p)| p.role == Role::Patient && &p.sub == sub)
                }) {
                    entry["with"] = json!(pid);
                    entry["with_name"] = json!(p.name);
                }
                entry
            })
            .collect();
        json!({"type": "lobby", "waiting": waiting})
    }

    /// Tells clinicians who waits, and each waiting person their place when it changed.
    fn lobby_changed(&mut self, fx: &mut Effects) {
        let lobby = self.lobby_message();
        for (id, _) in self.members.iter().filter(|(_, m)| m.is_clinician()) {
            fx.send(id, &lobby);
        }
        let order: Vec<ParticipantId> = self
            .waiting()
            .iter()
            .map(|(id, ..)| (*id).clone())
            .collect();
        for (i, id) in order.iter().enumerate() {
            if let Some(m) = self.members.get_mut(id)
                && m.position_told != Some(i + 1)
            {
                m.position_told = Some(i + 1);
                fx.send(id, &json!({"type": "lobby_position", "position": i + 1}));
            }
        }
    }

    /// Admitted participants (but `except`), as clients list them.
    fn roster(&self, except: Option<&ParticipantId>) -> Value {
        Value::Array(
            self.members
                .iter()
                .filter(|(id, m)| m.is_admitted() && Some(*id) != except)
                .map(|(id, m)| m.entry(id))
                .collect(),
        )
    }

    /// Moves `id` out of this meeting (a drop-in take): its media session ends here and the
    /// client starts a new one in the private visit.
    pub fn take_out(
        &mut self,
        id: &ParticipantId,
        to: &str,
        until: Timestamp,
        fx: &mut Effects,
    ) -> Option<Member> {
        let mut m = self.detach(id, fx)?;
        // Whoever drops comes back into the private visit with their queue link: a patient
        // while it is open, a clinician while someone else is still in it (else the queue
        // link leads to the queue again, to take the next one: `Meetings::room_for`).
        self.forwarded.insert(m.sub.clone(), (to.to_owned(), until));
        m.sfu_joined = false;
        m.media_connected = false;
        m.media_started = false;
        Some(m)
    }

    /// Puts a member taken from a queue into this (private) meeting, admitted.
    pub fn put_in(&mut self, id: ParticipantId, mut m: Member, now: Timestamp, fx: &mut Effects) {
        if let Admission::Waiting { since, .. } = m.admission {
            fx.observe(Observation::LobbyWait(elapsed(since, now)));
        }
        m.admission = Admission::Admitted;
        m.admitted_at = Some(now);
        self.admitted.insert(m.sub.clone(), None);
        fx.send(
            &id,
            &json!({"type": "moved", "meeting": self.record.id, "kind": self.record.kind,
                       "participants": self.roster(None), "state": "admitted"}),
        );
        let joined = m.joined_message(&id);
        self.members.insert(id.clone(), m);
        self.broadcast_admitted(Some(&id), &joined, fx);
    }

    /// Everyone admitted — connected now, or gone within their grace — to let back in past
    /// the waiting room after a restart: the connected until `now + grace`, the others until
    /// their grace ends.
    pub fn readmissions(&self, now: Timestamp, grace: SignedDuration) -> Vec<Readmission> {
        let mut list: Vec<Readmission> = self
            .admitted
            .iter()
            .filter_map(|(sub, until)| {
                let until = until.unwrap_or(now + grace);
                (until >= now).then(|| Readmission {
                    sub: sub.clone(),
                    until,
                })
            })
            .collect();
        list.sort_by(|a, b| a.sub.cmp(&b.sub));
        list
    }

    /// Everyone in the meeting here (connected, or parked for a resume).
    pub fn member_ids(&self) -> impl Iterator<Item = &ParticipantId> {
        self.members.keys()
    }

    /// The members the SFU runs a media session for: (participant, session, connected).
    pub fn media_sessions(&self) -> impl Iterator<Item = (&ParticipantId, u32, bool)> {
        self.members
            .iter()
            .filter(|(_, m)| m.sfu_joined)
            .map(|(id, m)| (id, m.media_session, m.media_connected))
    }

    /// The waiting room's queue to store, first first: everyone waiting now (their place kept
    /// until `now + grace`) and the places kept for those whose connection dropped.
    pub fn queue_places(&self, now: Timestamp, grace: SignedDuration) -> Vec<QueuePlace> {
        let mut places: Vec<(u64, QueuePlace)> = self
            .waiting()
            .iter()
            .map(|(_, m, since, order)| {
                let place = QueuePlace {
                    sub: m.sub.clone(),
                    since: *since,
                    until: now + grace,
                };
                (*order, place)
            })
            .chain(
                self.lobby_places
                    .iter()
                    .filter(|(_, (_, _, until))| *until >= now)
                    .map(|(sub, (since, order, until))| {
                        let place = QueuePlace {
                            sub: sub.clone(),
                            since: *since,
                            until: *until,
                        };
                        (*order, place)
                    }),
            )
            .collect();
        places.sort_by_key(|(order, _)| *order);
        places.into_iter().map(|(_, p)| p).collect()
    }

    /// The service is stopping: every connection is told to connect again (who is admitted
    /// and who waits where is what the store keeps, see [`RoomState::readmissions`] and
    /// [`RoomState::queue_places`]).
    pub fn hand_over(&mut self, fx: &mut Effects) {
        for (id, m) in &self.members {
            // This replica's access ends here; the owner records the person's next one.
            fx.record(self.ended("leave", id, m, "handed_over"));
            fx.close(id, CloseReason::Restarting.outbound());
        }
    }

    pub fn audit_take(
        &self,
        patient: &ParticipantId,
        actor: &ParticipantId,
        to: &str,
    ) -> Option<AuditEvent> {
        let p = self.members.get(patient)?;
        let a = self.members.get(actor)?;
        let mut e = self.audit_by("admit", patient, p, a);
        e.code = Some(format!("drop_in_take to {to}"));
        Some(e)
    }

    pub fn participants(&self) -> Vec<ParticipantView> {
        let mut v: Vec<ParticipantView> = self
            .members
            .iter()
            .map(|(id, m)| ParticipantView {
                participant: id.clone(),
                subject: m.sub.clone(),
                name: m.name.clone(),
                role: m.role,
                state: if m.is_admitted() {
                    "admitted"
                } else {
                    "waiting"
                },
                waiting_since: match m.admission {
                    Admission::Waiting { since, .. } => Some(since),
                    Admission::Admitted => None,
                },
                media: m.media_started,
            })
            .collect();
        v.sort_by(|a, b| a.participant.0.cmp(&b.participant.0));
        v
    }

    /// Who a photo shared by `id` (subject `sub`) goes to: everyone else admitted now, by
    /// connection and subject. Only the admitted share (`waiting_for_admission`).
    pub fn image_recipients(
        &self,
        id: &ParticipantId,
        sub: &str,
    ) -> Result<Vec<(ParticipantId, String)>, RequestError> {
        let m = self
            .members
            .get(id)
            .ok_or(RequestError::NoSuchParticipant)?;
        if m.sub != sub {
            return Err(RequestError::NoSuchParticipant);
        }
        if !m.is_admitted() {
            return Err(RequestError::WaitingForAdmission);
        }
        Ok(self
            .members
            .iter()
            .filter(|(other, o)| *other != id && o.is_admitted())
            .map(|(other, o)| (other.clone(), o.sub.clone()))
            .collect())
    }

    /// Whether someone with subject `sub` is admitted here now.
    pub fn admitted_subject(&self, sub: &str) -> bool {
        self.members
            .values()
            .any(|m| m.sub == sub && m.is_admitted())
    }

    /// Tells the recipients still here of a shared photo; how many were told.
    pub fn announce_image(
        &self,
        from: &ParticipantId,
        image: &str,
        mime: &str,
        bytes: usize,
        to: &[(ParticipantId, String)],
        fx: &mut Effects,
    ) -> usize {
        let name = self
            .members
            .get(from)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let msg = json!({"type": "image_shared", "image": image, "from": from, "name": name,
                         "mime": mime, "bytes": bytes});
        let mut told = 0;
        for (id, _) in to.iter().filter(|(id, _)| self.is_admitted(id)) {
            fx.send(id, &msg);
            told += 1;
        }
        told
    }

    /// The actor is a clinician here (drop-in take).
    pub fn check_clinician(&self, id: &ParticipantId) -> Result<(), RequestError> {
        self.actor(id).map(|_| ())
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Clinician => "clinician",
        Role::Patient => "patient",
        Role::Companion => "companion",
        Role::Interpreter => "interpreter",
        Role::Consultant => "consultant",
    }
}

/// Time from `from` to `to`; none when the clock went back.
fn elapsed(from: Timestamp, to: Timestamp) -> std::time::Duration {
    std::time::Duration::try_from(to.duration_since(from)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    //! The rules on their own: state in, input and time in, effects out. No connection, no
    //! SFU, no clock.
    use super::*;
    use crate::dev_issuer::dev_claims;

    const T0: &str = "2030-05-02T12:00:00Z";

    fn at(secs: i64) -> Timestamp {
        T0.parse::<Timestamp>().unwrap() + SignedDuration::from_secs(secs)
    }

    fn session(sub: &str, role: Role) -> Session {
        let (r, hsa) = match role {
            Role::Clinician => ("clinician", Some("SE2321000016-D1")),
            _ => ("patient", None),
        };
        Session {
            claims: dev_claims("m1", sub, sub, r, hsa, Some("unit-1"), 0, 3600),
            role,
        }
    }

    fn visit() -> RoomState {
        MeetingRoom::new(crate::meeting::booked_visit(at(0)))
            .lock()
            .clone()
    }

    /// `id` (subject `sub`) joins at `secs`; the join's effects.
    fn join(s: &mut RoomState, id: &ParticipantId, sub: &str, role: Role, secs: i64) -> Effects {
        let mut fx = Effects::default();
        let joined = s.join(
            id.clone(),
            &session(sub, role),
            at(secs),
            &MeetingPolicy::default(),
            &mut fx,
        );
        assert_eq!(
            joined,
            Ok(JoinOutcome {
                admitted: role == Role::Clinician
            })
        );
        fx
    }

    #[test]
    fn a_reconnect_does_not_refill_the_chat_budget() {
        let mut s = visit();
        let policy = MeetingPolicy::default();
        let doc = ParticipantId("p-doc".into());
        join(&mut s, &doc, "doc", Role::Clinician, 0);
        let admit = |s: &mut RoomState, id: &ParticipantId| {
            s.apply(
                &doc,
                &Action::Admit(id.clone()),
                at(3),
                &mut Effects::default(),
            )
            .unwrap();
        };
        let chat = |s: &mut RoomState, id: &ParticipantId, secs: i64| {
            s.chat(id, "hej", at(secs), &mut Effects::default())
        };
        let pat = ParticipantId("p-pat".into());
        join(&mut s, &pat, "pat", Role::Patient, 1);
        admit(&mut s, &pat);
        for _ in 0..5 {
            assert_eq!(chat(&mut s, &pat, 3), Ok(()));
        }
        assert_eq!(chat(&mut s, &pat, 3), Err(RequestError::ChatRate));
        // A new connection replacing the old one: the budget goes with the person.
        let second = ParticipantId("p-pat-2".into());
        s.join(
            second.clone(),
            &session("pat", Role::Patient),
            at(3),
            &policy,
            &mut Effects::default(),
        )
        .unwrap();
        assert_eq!(chat(&mut s, &second, 3), Err(RequestError::ChatRate));
        // And across a leave and a join again.
        assert!(s.leave(&second, true, at(3), &policy, &mut Effects::default()));
        let third = ParticipantId("p-pat-3".into());
        join(&mut s, &third, "pat", Role::Patient, 3);
        admit(&mut s, &third);
        assert_eq!(chat(&mut s, &third, 3), Err(RequestError::ChatRate));
        // It refills with time, as it would have.
        assert_eq!(chat(&mut s, &third, 4), Ok(()));
    }

    #[test]
    fn a_restart_keeps_who_was_admitted_for_the_reconnect_grace() {
        let mut s = visit();
        let doc = ParticipantId("p-doc".into());
        let (pat, other) = (ParticipantId("p-pat".into()), ParticipantId("p-oth".into()));
        join(&mut s, &doc, "doc", Role::Clinician, 0);
        join(&mut s, &pat, "pat", Role::Patient, 1);
        join(&mut s, &other, "other", Role::Patient, 2);
        s.apply(
            &doc,
            &Action::Admit(pat.clone()),
            at(3),
            &mut Effects::default(),
        )
        .unwrap();
        let mut fx = Effects::default();
        s.hand_over(&mut fx);
        let grace = SignedDuration::from_secs(60);
        assert_eq!(
            s.readmissions(at(10), grace),
            [Readmission {
                sub: "pat".into(),
                until: at(70)
            }]
        );
        for id in [&doc, &pat, &other] {
            assert!(matches!(
                fx.to(id)[..],
                [Outbound::Close { code: 1012, .. }]
            ));
        }
        s.record.readmit = s.readmissions(at(10), grace);
        // The record as stored, loaded by the restarted service.
        let stored: MeetingRecord =
            serde_json::from_str(&serde_json::to_string(&s.record).unwrap()).unwrap();
        let policy = MeetingPolicy::default();
        let rejoin = |record: &MeetingRecord, sub: &str, secs: i64| {
            MeetingRoom::new(record.clone()).lock().join(
                ParticipantId(format!("p-{sub}-2")),
                &session(sub, Role::Patient),
                at(secs),
                &policy,
                &mut Effects::default(),
            )
        };
        assert_eq!(
            rejoin(&stored, "pat", 40),
            Ok(JoinOutcome { admitted: true })
        );
        assert_eq!(
            rejoin(&stored, "other", 40),
            Ok(JoinOutcome { admitted: false })
        );
        // Past the grace: the waiting room again.
        assert_eq!(
            rejoin(&stored, "pat", 71),
            Ok(JoinOutcome { admitted: false })
        );
        // A clinician who sends the patient back to the waiting room while the service stops
        // is not undone by the restart.
        s.apply(
            &doc,
            &Action::ToLobby(pat.clone()),
            at(11),
            &mut Effects::default(),
        )
        .unwrap();
        assert!(s.readmissions(at(11), grace).is_empty());
    }

    /// The waiting room's order outlives the process that held it (a restart, or another
    /// replica taking the meeting over after a crash): people come back in any order and
    /// get their places, newcomers queue behind them, and a place is kept only within the
    /// reconnect grace.
    #[test]
    fn the_queue_order_is_stored_and_people_coming_back_get_their_places() {
        let policy = MeetingPolicy::default();
        let mut s = visit();
        let doc = ParticipantId("p-doc".into());
        join(&mut s, &doc, "doc", Role::Clinician, 0);
        let ids: Vec<ParticipantId> = ["a", "b", "c"]
            .iter()
            .map(|sub| ParticipantId(format!("p-{sub}")))
            .collect();
        for (i, sub) in ["a", "b", "c"].iter().enumerate() {
            join(&mut s, &ids[i], sub, Role::Patient, 1 + i as i64);
        }
        // b's phone lost the network: its place is kept for the grace, not dropped.
        assert!(s.leave(&ids[1], false, at(5), &policy, &mut Effects::default()));
        let places = s.queue_places(at(10), policy.reconnect_grace);
        let subs: Vec<&str> = places.iter().map(|p| p.sub.as_str()).collect();
        assert_eq!(subs, ["a", "b", "c"]);
        assert_eq!(places[1].until, at(65), "b's place lasts its own grace");
        assert_eq!(
            places[0].until,
            at(70),
            "a is connected: a grace from the write"
        );

        let mut record = s.record.clone();
        record.queue = places;
        let stored: MeetingRecord =
            serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        let mut after = MeetingRoom::new(stored).lock().clone();
        let back = |s: &mut RoomState, sub: &str, secs: i64| {
            let id = ParticipantId(format!("p-{sub}-2"));
            let joined = s.join(
                id.clone(),
                &session(sub, Role::Patient),
                at(secs),
                &policy,
                &mut Effects::default(),
            );
            assert_eq!(joined, Ok(JoinOutcome { admitted: false }));
            id
        };
        let c = back(&mut after, "c", 20);
        let d = back(&mut after, "d", 21);
        let a = back(&mut after, "a", 22);
        let b = back(&mut after, "b", 23);
        assert_eq!(after.first_waiting(), Some(a.clone()));
        let order: Vec<Option<usize>> = [&a, &b, &c, &d]
            .iter()
            .map(|id| after.position(id))
            .collect();
        assert_eq!(order, [Some(1), Some(2), Some(3), Some(4)]);
        // Waiting since their first arrival, not since they came back.
        assert!(matches!(
            after.member(&a).unwrap().admission,
            Admission::Waiting { since, .. } if since == at(1)
        ));

        // Past its grace a place is gone: b, back after its grace, queues behind c, who is
        // back within hers (a kept place would put b ahead of c).
        let mut late = MeetingRoom::new(
            serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap(),
        )
        .lock()
        .clone();
        let c = back(&mut late, "c", 66);
        let b = back(&mut late, "b", 67);
        let a = back(&mut late, "a", 68);
        let order: Vec<Option<usize>> = [&a, &c, &b].iter().map(|id| late.position(id)).collect();
        assert_eq!(order, [Some(1), Some(2), Some(3)]);
    }

    /// A place kept for someone whose connection dropped counts towards the meeting's limit,
    /// also after a restart restored it from the store: a newcomer cannot take it, and the
    /// person coming back is not refused as "full". Past the grace it is free again.
    #[test]
    fn kept_places_count_towards_the_limit_and_their_holders_get_back_in() {
        let policy = MeetingPolicy::default();
        let mut record = crate::meeting::booked_visit(at(0));
        record.max_participants = Some(3);
        let mut s = MeetingRoom::new(record).lock().clone();
        let doc = ParticipantId("p-doc".into());
        join(&mut s, &doc, "doc", Role::Clinician, 0);
        join(&mut s, &ParticipantId("p-a".into()), "a", Role::Patient, 1);
        join(&mut s, &ParticipantId("p-b".into()), "b", Role::Patient, 2);
        let try_join = |s: &mut RoomState, sub: &str, secs: i64| {
            s.join(
                ParticipantId(format!("p-{sub}-{secs}")),
                &session(sub, Role::Patient),
                at(secs),
                &policy,
                &mut Effects::default(),
            )
        };
        // b's phone lost the network: its place is kept.
        assert!(s.leave(
            &ParticipantId("p-b".into()),
            false,
            at(5),
            &policy,
            &mut Effects::default()
        ));
        assert_eq!(try_join(&mut s, "c", 10), Err(JoinRefusal::MeetingFull));
        let mut stored = s.record.clone();
        stored.queue = s.queue_places(at(10), policy.reconnect_grace);
        // b comes back (to its place, second in the queue).
        assert_eq!(
            try_join(&mut s, "b", 20),
            Ok(JoinOutcome { admitted: false })
        );
        assert_eq!(s.position(&ParticipantId("p-b-20".into())), Some(2));

        // The same after a restart: the restored places of a and b count while their grace
        // lasts (the clinician is back first).
        let mut after = MeetingRoom::new(
            serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap(),
        )
        .lock()
        .clone();
        join(
            &mut after,
            &ParticipantId("p-doc-2".into()),
            "doc",
            Role::Clinician,
            15,
        );
        assert_eq!(try_join(&mut after, "c", 16), Err(JoinRefusal::MeetingFull));
        assert_eq!(
            try_join(&mut after, "b", 17),
            Ok(JoinOutcome { admitted: false })
        );
        assert_eq!(
            try_join(&mut after, "a", 18),
            Ok(JoinOutcome { admitted: false })
        );
        // Past a's and b's grace (a never came back here): their places are free again.
        let mut late = MeetingRoom::new(
            serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap(),
        )
        .lock()
        .clone();
        join(
            &mut late,
            &ParticipantId("p-doc-3".into()),
            "doc",
            Role::Clinician,
            100,
        );
        assert_eq!(
            try_join(&mut late, "c", 101),
            Ok(JoinOutcome { admitted: false })
        );
    }

    /// After a restart, a connection back with its carried media session keeps it: its
    /// welcome says so, the SFU gets this run's permissions for it (media only if still
    /// admitted), and media flowing on is recorded; the next offer renegotiates the same
    /// session instead of starting one.
    #[test]
    fn a_kept_media_session_goes_on_with_this_runs_permissions() {
        let record = crate::meeting::booked_visit(at(0));
        let mut stored = record.clone();
        stored.readmit = vec![Readmission {
            sub: "pat".into(),
            until: at(100),
        }];
        let policy = MeetingPolicy::default();
        let rejoin = |record: &MeetingRecord, sub: &str, session: u32| {
            let mut s = MeetingRoom::new(record.clone()).lock().clone();
            let mut fx = Effects::default();
            let id = ParticipantId(format!("p-{sub}"));
            let kept = KeptMedia {
                session,
                connected: true,
            };
            s.join_keeping(
                id.clone(),
                &session_of(sub),
                at(40),
                &policy,
                Some(kept),
                &mut fx,
            )
            .unwrap();
            (s, fx, id)
        };
        fn session_of(sub: &str) -> Session {
            session(sub, Role::Patient)
        }
        let (mut s, fx, pat) = rejoin(&stored, "pat", 7);
        let welcome = &texts(&fx, &pat)[0];
        assert_eq!(
            (welcome["type"].as_str(), welcome["media"].as_str()),
            (Some("welcome"), Some("kept"))
        );
        assert_eq!(welcome["state"], "admitted");
        assert_eq!(
            fx.commands,
            [Command::SetPermissions {
                participant: pat.clone(),
                permissions: Permissions {
                    publish: true,
                    subscribe: true
                }
            }]
        );
        let started: Vec<_> = fx
            .audit
            .iter()
            .filter(|e| e.event == "media_start")
            .collect();
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].code.as_deref(), Some("kept"));
        let mut fx = Effects::default();
        s.offer(
            &pat,
            "v=0".into(),
            &OfferedVideo::sending_lines(1),
            false,
            at(41),
            &mut fx,
        )
        .unwrap();
        assert!(
            matches!(&fx.commands[..], [Command::Offer { .. }]),
            "the same session renegotiated: {:?}",
            fx.commands
        );
        // Not readmitted (the grace ran out, or a clinician sent them back): the kept session
        // loses its media at once.
        let (_, fx, pat) = rejoin(&record, "pat", 7);
        assert_eq!(texts(&fx, &pat)[0]["state"], "waiting");
        assert_eq!(
            fx.commands,
            [Command::SetPermissions {
                participant: pat.clone(),
                permissions: Permissions::default()
            }]
        );
        assert!(!fx.audit.iter().any(|e| e.event == "media_start"));
    }

    fn texts(fx: &Effects, id: &ParticipantId) -> Vec<Value> {
        fx.to(id)
            .into_iter()
            .filter_map(|o| match o {
                Outbound::Text(t) => serde_json::from_str(t).ok(),
                Outbound::Close { .. } => None,
            })
            .collect()
    }

    fn types(fx: &Effects, id: &ParticipantId) -> Vec<String> {
        texts(fx, id)
            .iter()
            .map(|v| v["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn a_patient_waits_unseen_until_admitted_and_media_follows_admission() {
        let mut s = visit();
        let (doc, pat) = (ParticipantId("p-doc".into()), ParticipantId("p-pat".into()));
        let fx = join(&mut s, &doc, "doc", Role::Clinician, 0);
        assert_eq!(types(&fx, &doc), ["welcome", "lobby"]);

        let fx = join(&mut s, &pat, "pat", Role::Patient, 5);
        assert_eq!(types(&fx, &pat), ["welcome", "lobby_position"]);
        let lobby = &texts(&fx, &doc)[0];
        assert_eq!(lobby["waiting"][0]["participant"], "p-pat");
        assert_eq!(fx.audit[0].event, "lobby_enter");
        assert!(fx.commands.is_empty());

        // The waiting patient's media session has no permissions.
        let mut fx = Effects::default();
        s.offer(
            &pat,
            "sdp".into(),
            &OfferedVideo::sending_lines(1),
            false,
            at(6),
            &mut fx,
        )
        .unwrap();
        assert!(
            matches!(&fx.commands[..], [Command::AddParticipant { permissions, .. }]
            if *permissions == Permissions::default())
        );
        // Nor may they act or chat.
        assert_eq!(
            s.plan(&pat, &Action::Admit(doc.clone())),
            Err(RequestError::NotAllowed)
        );
        assert_eq!(
            s.chat(&pat, "hej", at(7), &mut Effects::default()),
            Err(RequestError::WaitingForAdmission)
        );

        // Admission: planned (and recorded) first, then applied.
        let planned = s.plan(&doc, &Action::Admit(pat.clone())).unwrap();
        assert_eq!(planned[0].event, "admit");
        assert_eq!(planned[0].actor_hsa.as_deref(), Some("SE2321000016-D1"));
        let mut fx = Effects::default();
        s.apply(&doc, &Action::Admit(pat.clone()), at(10), &mut fx)
            .unwrap();
        assert!(
            matches!(&fx.commands[..], [Command::SetPermissions { participant, permissions }]
            if *participant == pat && permissions.publish && permissions.subscribe)
        );
        assert_eq!(types(&fx, &pat), ["admitted"]);
        assert!(types(&fx, &doc).contains(&"participant_joined".to_owned()));
        // Five seconds in the waiting room.
        assert_eq!(
            fx.observations,
            [Observation::LobbyWait(std::time::Duration::from_secs(5))]
        );
        // Media connected now starts media in the record, two seconds after admission.
        let mut fx = Effects::default();
        s.media_connected(&pat, 1, at(12), &mut fx);
        assert_eq!(fx.audit[0].event, "media_start");
        assert_eq!(
            fx.observations,
            [Observation::JoinToMedia(std::time::Duration::from_secs(2))]
        );
        // Only the first time media flows after admission counts.
        let mut fx = Effects::default();
        s.media_lost(&pat, 1, &json!("consent_timeout"), &mut fx);
        s.offer(
            &pat,
            "sdp".into(),
            &OfferedVideo::sending_lines(1),
            false,
            at(20),
            &mut fx,
        )
        .unwrap();
        s.media_connected(&pat, 2, at(21), &mut fx);
        assert!(fx.observations.is_empty());
    }

    /// A removal (or a move to the waiting room) recorded while the patient's socket closed:
    /// their connection is gone, but the admission kept for their reconnect grace goes with
    /// the action — before, reconnecting within the grace let them back in past the waiting
    /// room, the removal `remove_not_applied`.
    #[test]
    fn a_removal_is_not_dodged_by_closing_the_socket_while_it_is_recorded() {
        for action in [Action::Remove, Action::ToLobby, Action::Deny] {
            let (mut s, doc, pat) = clinician_and_admitted_patient();
            if matches!(action(pat.clone()), Action::Deny(_)) {
                // (A denial is of someone waiting: this one back in the lobby first.)
                let mut fx = Effects::default();
                s.apply(&doc, &Action::ToLobby(pat.clone()), at(2), &mut fx)
                    .unwrap();
            }
            let planned = action(pat.clone());
            s.plan(&doc, &planned).unwrap();
            let mut fx = Effects::default();
            s.leave(&pat, false, at(3), &MeetingPolicy::default(), &mut fx);
            let applied = s.apply(
                &doc,
                &s.followed(planned.clone(), Some("pat")),
                at(4),
                &mut fx,
            );
            assert_eq!(applied, Err(RequestError::NoSuchParticipant));
            assert!(s.apply_to_absent(&planned, "pat", None));
            let back = ParticipantId("p-pat-2".into());
            let (joined, _) = join_as(&mut s, &back, &session("pat", Role::Patient));
            match planned {
                Action::Deny(_) => assert_eq!(joined, Err(JoinRefusal::Denied)),
                _ => assert_eq!(joined, Ok(JoinOutcome { admitted: false })),
            }
        }
    }

    /// The same for an invited consultant, who comes in on the invitation, not an admission:
    /// the removal withdraws it.
    #[test]
    fn a_consultants_removal_is_not_dodged_by_closing_the_socket_either() {
        let (mut s, doc, _) = clinician_and_admitted_patient();
        let hsa = "SE2321000016-K9";
        s.record.invited.push(hsa.into());
        let consultant = member_session("cons-1", Role::Consultant, Some(hsa), "unit-9");
        let k = pid("k");
        assert_eq!(
            join_as(&mut s, &k, &consultant).0,
            Ok(JoinOutcome { admitted: true })
        );
        let planned = Action::Remove(k.clone());
        s.plan(&doc, &planned).unwrap();
        let mut fx = Effects::default();
        s.leave(&k, false, at(11), &MeetingPolicy::default(), &mut fx);
        assert!(s.apply_to_absent(&planned, "cons-1", Some(hsa)));
        let back = pid("k2");
        assert_eq!(
            join_as(&mut s, &back, &consultant).0,
            Err(JoinRefusal::NotInvited)
        );
    }

    /// A visit with its clinician (`p-doc`, at 0 s) and a patient (`p-pat`) admitted at 2 s.
    fn clinician_and_admitted_patient() -> (RoomState, ParticipantId, ParticipantId) {
        let mut s = visit();
        let (doc, pat) = (ParticipantId("p-doc".into()), ParticipantId("p-pat".into()));
        join(&mut s, &doc, "doc", Role::Clinician, 0);
        join(&mut s, &pat, "pat", Role::Patient, 1);
        s.apply(
            &doc,
            &Action::Admit(pat.clone()),
            at(2),
            &mut Effects::default(),
        )
        .unwrap();
        (s, doc, pat)
    }

    /// The SFU's refusal of an earlier media session, arriving after the client started a
    /// later one, leaves the later one known as running: a move to the lobby still takes its
    /// media. (Before, any refused add marked the member as having no session, and the move
    /// sent the SFU nothing while the later session went on sending and receiving.)
    #[test]
    fn a_late_refusal_of_an_earlier_media_session_leaves_the_later_one_governed() {
        let (mut s, doc, pat) = clinician_and_admitted_patient();
        let camera = OfferedVideo::sending_lines(1);
        let mut fx = Effects::default();
        s.offer(&pat, "one".into(), &camera, false, at(3), &mut fx)
            .unwrap();
        s.offer(&pat, "two".into(), &camera, true, at(3), &mut fx)
            .unwrap();
        let sessions: Vec<u32> = fx.commands.iter().filter_map(|c| c.session()).collect();
        assert_eq!(sessions, [1, 2]);
        assert!(
            !s.media_session_refused(&pat, Some(1)),
            "an earlier session"
        );
        let mut fx = Effects::default();
        s.apply(&doc, &Action::ToLobby(pat.clone()), at(4), &mut fx)
            .unwrap();
        assert!(
            fx.commands.iter().any(|c| matches!(c,
                Command::SetPermissions { participant, permissions }
                    if *participant == pat && !permissions.publish && !permissions.subscribe)),
            "{:?}",
            fx.commands
        );
        // The refusal of the session that runs does end it.
        let mut fx = Effects::default();
        s.offer(&pat, "three".into(), &camera, true, at(20), &mut fx)
            .unwrap();
        assert!(s.media_session_refused(&pat, Some(3)), "the current one");
        assert!(!s.member(&pat).unwrap().sfu_joined);
        // A removal is sent whatever is known of the session.
        let mut fx = Effects::default();
        s.apply(&doc, &Action::Remove(pat.clone()), at(21), &mut fx)
            .unwrap();
        assert!(fx.commands.iter().any(|c| matches!(c,
            Command::RemoveParticipant { participant } if *participant == pat)));
    }

    /// A removal planned (and recorded) for a connection whose person reconnects before it is
    /// applied removes the new connection: reconnecting in a loop does not dodge it.
    #[test]
    fn an_action_follows_its_target_to_the_connection_that_replaced_it() {
        let (mut s, doc, pat) = clinician_and_admitted_patient();
        let planned = Action::Remove(pat.clone());
        s.plan(&doc, &planned).unwrap();
        let sub = s.member(&pat).map(|m| m.sub.clone());
        // Meanwhile (while the removal is written to the audit log) the patient reconnects.
        let again = ParticipantId("p-pat-2".into());
        let rejoined = s.join(
            again.clone(),
            &session("pat", Role::Patient),
            at(3),
            &MeetingPolicy::default(),
            &mut Effects::default(),
        );
        assert_eq!(
            rejoined,
            Ok(JoinOutcome { admitted: true }),
            "admitted still"
        );
        assert!(s.member(&pat).is_none() && s.member(&again).is_some());
        assert_eq!(
            s.apply(&doc, &planned, at(4), &mut Effects::default()),
            Err(RequestError::NoSuchParticipant),
            "by connection id alone, the removal misses"
        );
        let followed = s.followed(planned, sub.as_deref());
        assert_eq!(followed, Action::Remove(again.clone()));
        s.apply(&doc, &followed, at(4), &mut Effects::default())
            .unwrap();
        assert!(s.member(&again).is_none(), "removed");
        // Someone else's connection is never a target of it.
        assert_eq!(
            s.followed(Action::Remove(pat.clone()), Some("nobody")),
            Action::Remove(pat)
        );
    }

    #[test]
    fn a_denied_patient_is_closed_out_and_refused_back() {
        let policy = MeetingPolicy::default();
        let mut s = visit();
        let (doc, pat) = (ParticipantId("p-doc".into()), ParticipantId("p-pat".into()));
        join(&mut s, &doc, "doc", Role::Clinician, 0);
        join(&mut s, &pat, "pat", Role::Patient, 1);
        let mut fx = Effects::default();
        s.apply(&doc, &Action::Deny(pat.clone()), at(2), &mut fx)
            .unwrap();
        assert!(matches!(
            fx.to(&pat)[..],
            [Outbound::Close { code: 4001, .. }]
        ));
        assert_eq!(s.record.denied, ["pat"]);
        assert_eq!(
            s.check_entry(&session("pat", Role::Patient), at(3), &policy),
            Err(JoinRefusal::Denied)
        );
    }

    /// Those taken from a drop-in queue into private visits are stored with the queue: after
    /// a restart (or another replica taking the queue over) their queue link still leads
    /// into their visit, where their carried media session and admission wait.
    #[test]
    fn people_followed_from_a_queue_into_their_visits_are_followed_after_a_restart() {
        let (mut s, _doc, pat) = clinician_and_admitted_patient();
        let until = at(3600);
        s.take_out(&pat, "private-1", until, &mut Effects::default())
            .unwrap();
        let mut record = s.record.clone();
        record.forwards = s.forwards(at(10));
        assert_eq!(
            record.forwards,
            [crate::meeting::Forward {
                sub: "pat".into(),
                to: "private-1".into(),
                until,
            }]
        );
        let stored: crate::meeting::MeetingRecord =
            serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        let room = MeetingRoom::new(stored);
        assert_eq!(
            room.lock().forwarded_to("pat", at(20)).as_deref(),
            Some("private-1")
        );
        assert_eq!(room.lock().forwarded_to("pat", at(3601)), None);
        assert!(
            room.lock().forwards(at(3601)).is_empty(),
            "expired ones are not stored"
        );
    }

    /// Every `join` line has its end: a person turned away, removed, in a meeting that ends or
    /// is cancelled, or in one another replica takes over gets a `leave` with why (their
    /// connection's own ending then finds nothing left to record).
    #[test]
    fn each_way_out_of_a_meeting_leaves_a_leave_line_naming_it() {
        let leaves = |fx: &Effects| -> Vec<(String, Option<String>)> {
            fx.audit
                .iter()
                .filter(|e| e.event == "leave")
                .map(|e| (e.participant.clone().unwrap_or_default(), e.code.clone()))
                .collect()
        };
        let code = |c: &str| Some(c.to_string());
        for (action, expected) in [
            (Action::Deny(pid("p-pat")), "denied"),
            (Action::Remove(pid("p-pat")), "removed"),
        ] {
            let mut s = visit();
            join(&mut s, &pid("p-doc"), "doc", Role::Clinician, 0);
            join(&mut s, &pid("p-pat"), "pat", Role::Patient, 1);
            if matches!(action, Action::Remove(_)) {
                s.apply(
                    &pid("p-doc"),
                    &Action::Admit(pid("p-pat")),
                    at(2),
                    &mut Effects::default(),
                )
                .unwrap();
            }
            let mut fx = Effects::default();
            s.apply(&pid("p-doc"), &action, at(3), &mut fx).unwrap();
            assert_eq!(leaves(&fx), [("p-pat".to_string(), code(expected))]);
            // The closed connection's own leave finds no member: one line, not two.
            let mut after = Effects::default();
            assert!(!s.leave(
                &pid("p-pat"),
                false,
                at(4),
                &MeetingPolicy::default(),
                &mut after
            ));
            assert!(leaves(&after).is_empty());
        }
        for reason in [CloseReason::MeetingEnded, CloseReason::MeetingCancelled] {
            let (mut s, doc, pat) = clinician_and_admitted_patient();
            let mut fx = Effects::default();
            s.close_all(reason, &mut fx);
            let mut got = leaves(&fx);
            got.sort();
            assert_eq!(
                got,
                [
                    (doc.0.clone(), code(reason.code())),
                    (pat.0.clone(), code(reason.code()))
                ]
            );
        }
        let (mut s, doc, pat) = clinician_and_admitted_patient();
        let mut fx = Effects::default();
        s.hand_over(&mut fx);
        let mut got = leaves(&fx);
        got.sort();
        assert_eq!(
            got,
            [
                (doc.0.clone(), code("handed_over")),
                (pat.0.clone(), code("handed_over"))
            ]
        );
    }

    #[test]
    fn a_patient_cannot_add_a_second_camera_by_leaving_the_first_out_of_an_offer() {
        let mut s = visit();
        let pat = ParticipantId("p-pat".into());
        let doc = ParticipantId("p-doc".into());
        let mut fx = join(&mut s, &pat, "pat", Role::Patient, 0);
        s.offer(
            &pat,
            "a".into(),
            &OfferedVideo::sending_lines(2),
            false,
            at(1),
            &mut fx,
        )
        .expect_err("two cameras in one offer");
        let camera = OfferedVideo {
            sending: vec!["1".into()],
            lines: vec!["0".into(), "1".into()],
        };
        s.offer(&pat, "a".into(), &camera, false, at(1), &mut fx)
            .unwrap();
        // The SFU keeps line 1 publishing when an offer leaves it out: that is two.
        let second = OfferedVideo {
            sending: vec!["2".into()],
            lines: vec!["0".into(), "2".into()],
        };
        assert_eq!(
            s.offer(&pat, "b".into(), &second, false, at(2), &mut fx),
            Err(RequestError::ScreenShareNotAllowed)
        );
        // Stopping the camera's line and starting another is one.
        let moved = OfferedVideo {
            sending: vec!["2".into()],
            lines: vec!["0".into(), "1".into(), "2".into()],
        };
        s.offer(&pat, "c".into(), &moved, false, at(3), &mut fx)
            .unwrap();
        // Offers the SFU refused, a new mid each, are not remembered without end.
        let mut refused = 0;
        for n in 3..100 {
            let next = OfferedVideo {
                sending: vec![n.to_string()],
                lines: (0..=n).map(|i| i.to_string()).collect(),
            };
            if s.offer(&pat, "x".into(), &next, false, at(3), &mut fx)
                == Err(RequestError::TooManyVideoLines)
            {
                refused += 1;
            }
        }
        assert!(refused > 0 && s.member(&pat).unwrap().video_mids.len() <= MAX_VIDEO_LINES);
        // A new media session publishes what its offer says.
        s.offer(&pat, "d".into(), &camera, true, at(9), &mut fx)
            .unwrap();
        // Staff may share a screen besides their camera.
        let mut fx = join(&mut s, &doc, "doc", Role::Clinician, 10);
        s.offer(&doc, "a".into(), &camera, false, at(10), &mut fx)
            .unwrap();
        s.offer(&doc, "b".into(), &second, false, at(11), &mut fx)
            .unwrap();
    }

    #[test]
    fn restarts_are_paced_by_the_time_given() {
        let mut s = visit();
        let doc = ParticipantId("p-doc".into());
        let mut fx = join(&mut s, &doc, "doc", Role::Clinician, 0);
        s.offer(
            &doc,
            "a".into(),
            &OfferedVideo::sending_lines(1),
            false,
            at(1),
            &mut fx,
        )
        .unwrap();
        s.offer(
            &doc,
            "b".into(),
            &OfferedVideo::sending_lines(1),
            true,
            at(2),
            &mut fx,
        )
        .unwrap();
        assert_eq!(
            s.offer(
                &doc,
                "c".into(),
                &OfferedVideo::sending_lines(1),
                true,
                at(4),
                &mut fx
            ),
            Err(RequestError::RestartTooSoon)
        );
        let mut fx = Effects::default();
        s.offer(
            &doc,
            "d".into(),
            &OfferedVideo::sending_lines(1),
            true,
            at(8),
            &mut fx,
        )
        .unwrap();
        assert!(matches!(
            &fx.commands[..],
            [
                Command::RemoveParticipant { .. },
                Command::AddParticipant { .. }
            ]
        ));
    }

    fn session_of(fx: &Effects) -> Option<u32> {
        fx.commands.iter().find_map(|c| match c {
            Command::AddParticipant { session, .. } => Some(*session),
            _ => None,
        })
    }

    /// A client that closes its old peer connection before sending its `restart` offer: the SFU
    /// reports that session's transport closed; the restart that follows starts a new session
    /// at once (no `restart_too_soon`, no removal of a session that is gone), and news of the
    /// replaced session arriving late neither reaches the client nor touches the new one.
    #[test]
    fn a_lost_media_session_is_replaced_without_pacing_and_late_news_of_it_is_ignored() {
        let mut s = visit();
        let doc = ParticipantId("p-doc".into());
        let mut fx = join(&mut s, &doc, "doc", Role::Clinician, 0);
        s.offer(
            &doc,
            "a".into(),
            &OfferedVideo::sending_lines(1),
            false,
            at(1),
            &mut fx,
        )
        .unwrap();
        let first = session_of(&fx).unwrap();
        // A restart (its peer connection failed), then the old one closed a second later.
        let mut fx = Effects::default();
        s.offer(
            &doc,
            "b".into(),
            &OfferedVideo::sending_lines(1),
            true,
            at(10),
            &mut fx,
        )
        .unwrap();
        let second = session_of(&fx).unwrap();
        assert_ne!(first, second);
        let mut fx = Effects::default();
        s.media_lost(&doc, second, &json!("transport_closed"), &mut fx);
        assert_eq!(types(&fx, &doc), ["media_disconnected"]);
        let mut fx = Effects::default();
        s.offer(
            &doc,
            "c".into(),
            &OfferedVideo::sending_lines(1),
            true,
            at(11),
            &mut fx,
        )
        .unwrap();
        assert!(
            matches!(&fx.commands[..], [Command::AddParticipant { .. }]),
            "the lost session is not removed again: {:?}",
            fx.commands
        );
        let third = session_of(&fx).unwrap();
        // The SFU's news of the first two sessions, late: nothing changes.
        let mut fx = Effects::default();
        s.media_lost(&doc, second, &json!("consent_timeout"), &mut fx);
        s.media_connected(&doc, first, at(11), &mut fx);
        assert!(types(&fx, &doc).is_empty());
        assert!(fx.audit.is_empty());
        // The current one connects; its renegotiation is an offer to that session.
        s.media_connected(&doc, third, at(11), &mut fx);
        assert_eq!(types(&fx, &doc), ["media_connected"]);
        let mut fx = Effects::default();
        s.offer(
            &doc,
            "d".into(),
            &OfferedVideo::sending_lines(1),
            false,
            at(12),
            &mut fx,
        )
        .unwrap();
        assert!(matches!(&fx.commands[..], [Command::Offer { .. }]));
    }

    #[test]
    fn the_state_is_plain_data() {
        let mut s = visit();
        join(&mut s, &ParticipantId("p-a".into()), "a", Role::Patient, 0);
        let json = serde_json::to_string(&s).unwrap();
        let back: RoomState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    fn pid(s: &str) -> ParticipantId {
        ParticipantId(s.into())
    }

    fn member_session(sub: &str, role: Role, hsa: Option<&str>, unit: &str) -> Session {
        Session {
            claims: dev_claims("m1", sub, sub, role_name(role), hsa, Some(unit), 0, 3600),
            role,
        }
    }

    fn join_as(
        s: &mut RoomState,
        id: &ParticipantId,
        session: &Session,
    ) -> (Result<JoinOutcome, JoinRefusal>, Effects) {
        let mut fx = Effects::default();
        let r = s.join(
            id.clone(),
            session,
            at(10),
            &MeetingPolicy::default(),
            &mut fx,
        );
        (r, fx)
    }

    fn act(
        s: &mut RoomState,
        actor: &ParticipantId,
        action: Action,
    ) -> Result<(Vec<AuditEvent>, Effects), RequestError> {
        let events = s.plan(actor, &action)?;
        let mut fx = Effects::default();
        s.apply(actor, &action, at(20), &mut fx)?;
        Ok((events, fx))
    }

    #[test]
    fn an_interpreter_comes_in_first_and_a_companion_with_their_patient() {
        let mut s = visit();
        let (c, p, rel, other, tolk) = (pid("c"), pid("p"), pid("rel"), pid("other"), pid("tolk"));
        join(&mut s, &c, "doc", Role::Clinician, 10);
        join(&mut s, &p, "pat-1", Role::Patient, 10);
        let mut companion = member_session("rel-1", Role::Companion, None, "unit-1");
        companion.claims.companion_of = Some("pat-1".into());
        let (joined, fx) = join_as(&mut s, &rel, &companion);
        assert_eq!(joined, Ok(JoinOutcome { admitted: false }));
        let lobby = texts(&fx, &c)
            .into_iter()
            .rfind(|m| m["type"] == "lobby")
            .unwrap();
        let entry = lobby["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["participant"] == "rel")
            .unwrap()
            .clone();
        assert_eq!(
            (entry["with"].as_str(), entry["with_name"].as_str()),
            (Some("p"), Some("pat-1"))
        );
        let mut stranger = member_session("rel-2", Role::Companion, None, "unit-1");
        stranger.claims.companion_of = Some("pat-2".into());
        join_as(&mut s, &other, &stranger).0.unwrap();
        join_as(
            &mut s,
            &tolk,
            &member_session("tolk-1", Role::Interpreter, None, "unit-1"),
        )
        .0
        .unwrap();

        // The interpreter first, the patient still waiting.
        act(&mut s, &c, Action::Admit(tolk.clone())).unwrap();
        assert!(s.is_admitted(&tolk) && !s.is_admitted(&p));

        // The patient with their companion: both in, each recorded; another's companion waits.
        let (events, _) = act(&mut s, &c, Action::AdmitWithCompanions(p.clone())).unwrap();
        let admitted: Vec<_> = events
            .iter()
            .map(|e| (e.event.as_str(), e.subject.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(admitted, [("admit", "pat-1"), ("admit", "rel-1")]);
        assert_eq!(events[1].code.as_deref(), Some("with p"));
        assert!(
            events
                .iter()
                .all(|e| e.actor_hsa.as_deref() == Some("SE2321000016-D1"))
        );
        assert!(s.is_admitted(&p) && s.is_admitted(&rel) && !s.is_admitted(&other));
    }

    /// "Admit with companions" is recorded with a line per person before it is carried out; a
    /// companion who left meanwhile is not admitted, and the record says so (before, their
    /// `admit` line stood alone: an admission that never happened).
    #[test]
    fn a_companion_who_left_while_the_admission_was_recorded_is_recorded_not_admitted() {
        let mut s = visit();
        let (c, p, rel) = (pid("c"), pid("p"), pid("rel"));
        join(&mut s, &c, "doc", Role::Clinician, 10);
        join(&mut s, &p, "pat-1", Role::Patient, 10);
        let mut companion = member_session("rel-1", Role::Companion, None, "unit-1");
        companion.claims.companion_of = Some("pat-1".into());
        join_as(&mut s, &rel, &companion).0.unwrap();
        let group = s.resolved(Action::AdmitWithCompanions(p.clone()));
        let planned = s.plan(&c, &group).unwrap();
        assert_eq!(
            planned.len(),
            2,
            "a line each for the patient and the companion"
        );
        let mut fx = Effects::default();
        s.leave(&rel, true, at(11), &MeetingPolicy::default(), &mut fx);
        let mut fx = Effects::default();
        s.apply(&c, &group, at(12), &mut fx).unwrap();
        assert!(s.is_admitted(&p));
        let not_applied: Vec<_> = fx
            .audit
            .iter()
            .filter(|e| e.event == "admit_not_applied")
            .map(|e| (e.participant.as_deref(), e.code.as_deref()))
            .collect();
        assert_eq!(not_applied, [(Some("rel"), Some("not_waiting"))]);
    }

    /// Only tokens of the meeting's care unit come in (an invited consultant excepted): one
    /// unit's API key booking an id another unit's tokens name does not get its patients.
    #[test]
    fn a_token_of_another_care_unit_is_refused() {
        let s = visit();
        let policy = MeetingPolicy::default();
        for role in [
            Role::Patient,
            Role::Clinician,
            Role::Companion,
            Role::Interpreter,
        ] {
            let hsa = (role == Role::Clinician).then_some("SE2321000016-D7");
            let stranger = member_session("x", role, hsa, "unit-2");
            assert_eq!(
                s.check_entry(&stranger, at(10), &policy),
                Err(JoinRefusal::WrongUnit),
                "{role:?}"
            );
            assert_eq!(
                s.check_entry(&member_session("x", role, hsa, "unit-1"), at(10), &policy),
                Ok(()),
                "{role:?}"
            );
        }
        // A token without a unit (a region's patient links may carry none) is not refused for it.
        let mut bare = member_session("pat-9", Role::Patient, None, "unit-1");
        bare.claims.unit = None;
        assert_eq!(s.check_entry(&bare, at(10), &policy), Ok(()));
    }

    #[test]
    fn a_consultant_joins_only_when_invited_and_enters_as_staff() {
        let mut s = visit();
        let (c, k, p) = (pid("c"), pid("k"), pid("p"));
        join(&mut s, &c, "doc", Role::Clinician, 10);
        join(&mut s, &p, "pat-1", Role::Patient, 10);
        let consultant = member_session(
            "SE2321000016-K9",
            Role::Consultant,
            Some("SE2321000016-K9"),
            "unit-9",
        );
        assert_eq!(
            join_as(&mut s, &k, &consultant).0,
            Err(JoinRefusal::NotInvited)
        );

        let invite = |hsa: &str| Action::InviteConsultant {
            hsa: hsa.into(),
            unit: "unit-9".into(),
            name: "Dr Konsult".into(),
        };
        assert_eq!(
            act(&mut s, &c, invite("not-an-hsa-id")).err(),
            Some(RequestError::BadInvite)
        );
        assert_eq!(
            act(&mut s, &p, invite("SE2321000016-K9")).err(),
            Some(RequestError::NotAllowed)
        );
        let (events, _) = act(&mut s, &c, invite("SE2321000016-K9")).unwrap();
        let e = &events[0];
        assert_eq!(
            (
                e.event.as_str(),
                e.hsa.as_deref(),
                e.unit.as_deref(),
                e.actor_hsa.as_deref(),
                e.actor_unit.as_deref()
            ),
            (
                "consultant_invited",
                Some("SE2321000016-K9"),
                Some("unit-9"),
                Some("SE2321000016-D1"),
                Some("unit-1")
            )
        );
        assert_eq!(
            join_as(&mut s, &k, &consultant).0,
            Ok(JoinOutcome { admitted: true })
        );
        // Staff: not sent to the lobby, but no clinician's powers either.
        assert_eq!(
            act(&mut s, &c, Action::ToLobby(k.clone())).err(),
            Some(RequestError::TargetIsClinician)
        );
        assert_eq!(
            act(&mut s, &k, Action::ToLobby(p.clone())).err(),
            Some(RequestError::NotAllowed)
        );
        // Another consultant is not let in by the first one's invitation.
        let other = member_session(
            "SE2321000016-K8",
            Role::Consultant,
            Some("SE2321000016-K8"),
            "unit-8",
        );
        assert_eq!(
            join_as(&mut s, &pid("k2"), &other).0,
            Err(JoinRefusal::NotInvited)
        );
    }

    #[test]
    fn a_photo_goes_from_the_admitted_to_the_others_admitted() {
        let mut s = visit();
        let (c, p, w) = (pid("c"), pid("p"), pid("w"));
        join(&mut s, &c, "doc", Role::Clinician, 10);
        join(&mut s, &p, "pat-1", Role::Patient, 10);
        join(&mut s, &w, "pat-2", Role::Patient, 10);
        assert_eq!(
            s.image_recipients(&p, "pat-1"),
            Err(RequestError::WaitingForAdmission)
        );
        act(&mut s, &c, Action::Admit(p.clone())).unwrap();
        assert_eq!(
            s.image_recipients(&p, "someone-else"),
            Err(RequestError::NoSuchParticipant)
        );
        let to = s.image_recipients(&p, "pat-1").unwrap();
        assert_eq!(
            to,
            vec![(c.clone(), "doc".to_owned())],
            "not the sender, not the lobby"
        );
        let mut fx = Effects::default();
        assert_eq!(
            s.announce_image(&p, "img-1", "image/jpeg", 10, &to, &mut fx),
            1
        );
        let told = texts(&fx, &c);
        assert_eq!(
            (told[0]["type"].as_str(), told[0]["name"].as_str()),
            (Some("image_shared"), Some("pat-1"))
        );
        assert!(texts(&fx, &w).is_empty() && texts(&fx, &p).is_empty());
    }
}
