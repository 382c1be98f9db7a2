//! All meetings of this service: booked ones (from the meetings API, kept in a file so a
//! restart loses no booking) and unbooked ones known from the tokens presented. Each meeting
//! has its own lock; the registry's locks are held only to find a meeting, so a join never
//! waits for a busy meeting other than its own.

use crate::audit_log::AuditEvent;
use crate::carried_session::{CarriedSession, KeptMedia, key_digest};
use crate::join_refusal::JoinRefusal;
use crate::meeting::{MeetingKind, MeetingPolicy, MeetingRecord};
use crate::meeting_effects::Effects;
use crate::meeting_room::{CloseReason, JoinOutcome, MeetingRoom, RequestError, RoomState};
use crate::meeting_store::{Kept, MeetingStore, StoreError};
use crate::outbox::Outbox;
use crate::session_resume::HeldKey;
use crate::session_takeover::CarriedMedia;
use crate::session_token::Session;
use crate::sfu_control::SfuControl;
use jiff::{SignedDuration, Timestamp};
use sfu_proto::{Command, DisconnectReason, Event, ParticipantId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Participants whose SDP awaits the SFU's answer, tracked at most; then the table starts
/// over (answers that never came must not grow it for ever).
const MAX_TRACKED_SDP: usize = 40_000;

/// Booked meetings are forgotten this long after they closed.
const RETENTION: SignedDuration = SignedDuration::from_hours(24);

/// Until when a booked meeting that closed at `closed` is kept (saturating at the end of time).
fn kept_after(closed: Timestamp) -> Timestamp {
    closed.checked_add(RETENTION).unwrap_or(Timestamp::MAX)
}

/// Until when a booked meeting is kept: a day after it closes — or after it was cancelled or
/// ended, if that was later. Not sooner: a cancellation revokes the visit's links (a leaked
/// one included) only while it is remembered, and once forgotten, a link to a visit still to
/// come would open a new, unbooked meeting under its id (`meetings.allow_unbooked`).
fn booked_kept_until(r: &MeetingRecord, policy: &MeetingPolicy) -> Timestamp {
    let closes = r.closes_at(policy);
    kept_after(
        r.cancelled_at
            .or(r.ended_at)
            .map_or(closes, |t| t.max(closes)),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum MeetingsError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a meeting could not be booked.
#[derive(Debug)]
pub enum CreateError {
    /// The id is taken (by this process, or in the shared store by another replica).
    Exists(Arc<MeetingRoom>),
    /// The shared store could not be reached: nothing was booked.
    Store(StoreError),
}

/// A connection entering a meeting.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub id: &'a ParticipantId,
    pub session: &'a Session,
    /// The media session it keeps from before a restart of this service.
    pub kept: Option<KeptMedia>,
}

#[derive(Debug)]
pub struct Meetings {
    policy: MeetingPolicy,
    rooms: Mutex<HashMap<String, Arc<MeetingRoom>>>,
    by_participant: Mutex<HashMap<ParticipantId, Arc<MeetingRoom>>>,
    /// Each connection's outbox: where the effects of the rules are delivered.
    connections: Mutex<HashMap<ParticipantId, Outbox>>,
    store: Option<MeetingStore>,
    /// Serialises writes of the store.
    store_lock: Mutex<()>,
    /// Meetings whose queue write is waiting to run: one at most each, however many joins
    /// and leaves come while Redis is slow (a reconnect loop must not pile up threads).
    queue_writes: Mutex<std::collections::HashSet<String>>,
    /// When each participant's latest SDP went to the SFU: its answer's arrival is the
    /// control round trip an operator watches.
    sdp_sent: Mutex<HashMap<ParticipantId, std::time::Instant>>,
    /// Media sessions the store carried over from the last run, by resume key digest, with
    /// their meeting.
    carried: Mutex<HashMap<String, (String, CarriedSession)>>,
    /// Replicas sharing the store: the meetings this one owns (only those it writes).
    leases: std::sync::OnceLock<Arc<crate::meeting_lease::MeetingLeases>>,
    /// Held while a meeting is taken over (read again, its carried sessions loaded): a join
    /// right behind the one that took the lease waits for it, and finds its carried session.
    taking_over: Mutex<()>,
    /// The audit log, for what happens outside any request: a meeting let go to another
    /// replica ends its people's accesses here.
    audit: std::sync::OnceLock<Arc<crate::audit_log::AuditLog>>,
    /// Each participant's current resume key (its digest) and the node its media session
    /// connected on. Written with its meeting — at each new key or media session, and every
    /// 10 s — so that after a crash of this process, as after a stop, a client back with its
    /// key keeps the media session its node kept running.
    resume_keys: Mutex<HashMap<ParticipantId, ResumeKey>>,
    /// Set when the service hands its meetings over (it is stopping): the sessions carried
    /// then, by meeting. Every write after that carries these, so the connections closing
    /// behind the hand-over — whose sessions they are — cannot take them out of the store
    /// again, while a booking or a cancellation still in flight is stored as usual.
    handed_over: Mutex<Option<HashMap<String, Vec<CarriedSession>>>>,
}

/// A participant's resume key as the store carries it.
#[derive(Debug, Clone)]
struct ResumeKey {
    digest: String,
    sub: String,
    mtg: String,
    node: Option<String>,
}

impl Meetings {
    /// Opens the registry, loading booked meetings from `store` when it exists.
    pub fn new(policy: MeetingPolicy, store: Option<MeetingStore>) -> Result<Self, MeetingsError> {
        let mut rooms = HashMap::new();
        let mut carried = HashMap::new();
        if let Some(store) = &store {
            let records = store.load()?;
            let now = Timestamp::now();
            for mut r in records {
                for c in std::mem::take(&mut r.carried) {
                    if c.until >= now {
                        carried.insert(c.key_digest.clone(), (r.id.clone(), c));
                    }
                }
                rooms.insert(r.id.clone(), Arc::new(MeetingRoom::new(r)));
            }
        }
        Ok(Self {
            policy,
            rooms: Mutex::new(rooms),
            by_participant: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            store,
            store_lock: Mutex::new(()),
            queue_writes: Mutex::default(),
            sdp_sent: Mutex::new(HashMap::new()),
            carried: Mutex::new(carried),
            leases: std::sync::OnceLock::new(),
            taking_over: Mutex::new(()),
            audit: std::sync::OnceLock::new(),
            resume_keys: Mutex::default(),
            handed_over: Mutex::new(None),
        })
    }

    /// Where lines of what happens outside any request are written (blocking).
    pub fn record_to(&self, log: Arc<crate::audit_log::AuditLog>) {
        let _ = self.audit.set(log);
    }

    /// Shares the store with other replicas: this one writes only the meetings whose lease it
    /// holds (another replica's copy in memory may be stale; its owner's is not).
    pub fn share_with(&self, leases: Arc<crate::meeting_lease::MeetingLeases>) {
        let _ = self.leases.set(leases);
    }

    /// Whether this process may write meeting `id` to the store now (asked under the store's
    /// lock, just before the write): it runs it and — with replicas — its lease was confirmed
    /// recently enough that no other replica can have taken it meanwhile (a replica cut off
    /// from Redis, or stalled, stops writing before its lease could run out).
    /// Whether this process surely runs meeting `id` now: alone, or holding its lease
    /// (confirmed lately enough that no other replica can have taken it).
    pub fn runs(&self, id: &str) -> bool {
        self.writes(id)
    }

    fn writes(&self, id: &str) -> bool {
        self.leases
            .get()
            .is_none_or(|l| l.surely_holds(id, std::time::Instant::now()))
    }

    /// This replica has just taken `id`'s lease: what it knew of the meeting from before may
    /// have changed on its last owner, so an empty copy is dropped and read again from the
    /// store when next needed.
    pub fn forget_stale(&self, id: &str) {
        // The meeting's own lock is waited for outside the registry's (a busy meeting holds
        // no join of another one up); then removed only if it is still that copy.
        let Some(room) = self.get(id) else { return };
        if !room.lock().is_empty() {
            return;
        }
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if rooms.get(id).is_some_and(|r| Arc::ptr_eq(r, &room)) {
            rooms.remove(id);
        }
    }

    /// (Under the takeover lock.) This replica has just taken meeting `id` over (its lease): it
    /// reads the meeting again
    /// from the store, expects the media sessions its last owner carried for it, and asks the
    /// nodes what they run of it (what nobody expects is ended).
    fn take_over_locked(&self, id: &str, sfu: &dyn SfuControl) {
        self.forget_stale(id);
        // What was known of its carried sessions before is stale too: the store says.
        self.carried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (room, _)| room != id);
        if let Err(e) = self.find(id) {
            tracing::warn!(error = %e, meeting = %id, "reading a meeting taken over failed");
        }
        let carried: Vec<CarriedMedia> = self
            .carried_sessions()
            .into_iter()
            .filter(|c| c.room.0 == id)
            .collect();
        sfu.take_over_meeting(&sfu_proto::RoomId(id.to_owned()), &carried);
    }

    /// Which replica runs meeting `id` (see [`crate::meeting_lease`]), taking its lease when
    /// nobody holds it — and then taking the meeting over. Leases are
    /// asked for one at a time here, so a join right behind the one that took a meeting finds
    /// it taken over (its carried session loaded), never half done. Another replica holding
    /// the lease of a meeting in use here (this one was cut off) gets it: its clients here
    /// connect again. Blocks (Redis): call it where blocking is allowed.
    pub fn owner_of(
        &self,
        leases: &crate::meeting_lease::MeetingLeases,
        id: &str,
        sfu: &dyn SfuControl,
    ) -> Result<crate::meeting_lease::Owner, crate::meeting_lease::LeaseError> {
        use crate::meeting_lease::Owner;
        let _one_at_a_time = self.taking_over.lock().unwrap_or_else(|e| e.into_inner());
        let owner = leases.owner(id)?;
        match &owner {
            Owner::Here { taken: true } => self.take_over_locked(id, sfu),
            Owner::Elsewhere(_) if self.in_use(id) => self.let_go(id, sfu),
            _ => {}
        }
        Ok(owner)
    }

    /// The meetings whose leases are needed here (one pass, each meeting locked once): those
    /// someone is in, and the drop-in queues of private visits someone is in (a queue's link
    /// leads into its visits and is routed by the queue: the queue stays where they run).
    pub fn needed_here(&self) -> std::collections::HashSet<String> {
        let mut needed = std::collections::HashSet::new();
        for room in self.list() {
            let s = room.lock();
            if !s.is_empty() {
                needed.insert(room.id.clone());
                needed.extend(s.record.from_queue.clone());
            }
        }
        needed
    }

    /// Whether anyone is in meeting `id` here (connected, or parked for a resume).
    pub fn in_use(&self, id: &str) -> bool {
        self.get(id).is_some_and(|room| !room.lock().is_empty())
    }

    /// Another replica owns meeting `id` now (this one lost its lease): its connections here
    /// are told to connect again, and reach the owner.
    pub fn let_go(&self, id: &str, sfu: &dyn SfuControl) {
        if let Some(room) = self.get(id) {
            tracing::warn!(meeting = %id, "another replica took the meeting over: its clients here connect again");
            // Their media sessions are the new owner's now (it adopts what the store carried):
            // the connections closing here must leave nothing behind on the nodes — no
            // removal. So they are unbound first (their leave finds no meeting), then told to
            // connect again, and this copy of the meeting is dropped: read again from the
            // store should the lease come back here.
            let members: Vec<ParticipantId> = room.lock().member_ids().cloned().collect();
            {
                let mut by = self
                    .by_participant
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for id in &members {
                    if by.get(id).is_some_and(|r| Arc::ptr_eq(r, &room)) {
                        by.remove(id);
                    }
                }
            }
            let ((), ended) = self.with_room(&room, sfu, |s, fx| s.hand_over(fx));
            // Their accesses here end (their connections' own ends find no meeting now).
            if let Some(log) = self.audit.get() {
                for e in &ended {
                    if let Err(err) = log.append(e) {
                        tracing::warn!(error = %err, "a hand-over's leave line was not recorded");
                    }
                }
            }
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            if rooms.get(id).is_some_and(|r| Arc::ptr_eq(r, &room)) {
                rooms.remove(id);
            }
        }
    }

    /// The media sessions carried over from the last run (the SFU may still run them).
    pub fn carried_sessions(&self) -> Vec<CarriedMedia> {
        let mut v: Vec<CarriedMedia> = self
            .carried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(room, c)| CarriedMedia {
                participant: c.participant.clone(),
                session: c.media_session,
                node: c.node.clone(),
                room: sfu_proto::RoomId(room.clone()),
            })
            .collect();
        v.sort_by(|a, b| a.participant.cmp(&b.participant));
        v
    }

    /// The session carried over under resume key `key`, for a client of `sub` with a token
    /// for `mtg` entering `meeting`; spent by the taking. `None` for another subject's,
    /// token's or meeting's, or one past its time.
    pub fn take_carried(
        &self,
        key: &str,
        sub: &str,
        mtg: &str,
        meeting: &str,
        now: Timestamp,
    ) -> Option<CarriedSession> {
        let digest = key_digest(key);
        let mut carried = self.carried.lock().unwrap_or_else(|e| e.into_inner());
        // Carries nobody came back for go once their time is past.
        carried.retain(|_, (_, c)| c.until >= now);
        let (room, c) = carried.get(&digest)?;
        if room != meeting || c.sub != sub || c.mtg != mtg || c.until < now {
            return None;
        }
        carried.remove(&digest).map(|(_, c)| c)
    }

    /// The participant a session is carried for under `key`, if that is a subject other than
    /// `sub` and the carry has not run out.
    pub fn carried_for_another(&self, key: &str, sub: &str) -> Option<ParticipantId> {
        let carried = self.carried.lock().unwrap_or_else(|e| e.into_inner());
        carried
            .get(&key_digest(key))
            .filter(|(_, c)| c.sub != sub && c.until >= Timestamp::now())
            .map(|(_, c)| c.participant.clone())
    }

    /// Ends the media sessions carried for `sub` in `meeting` through a restart that no client
    /// claimed (a new connection of the same person takes their place); returns how many.
    pub fn end_carried_of(&self, sub: &str, meeting: &str, sfu: &dyn SfuControl) -> usize {
        let ended: Vec<ParticipantId> = {
            let mut carried = self.carried.lock().unwrap_or_else(|e| e.into_inner());
            let mut ended = Vec::new();
            carried.retain(|_, (room, c)| {
                let theirs = room == meeting && c.sub == sub;
                if theirs {
                    ended.push(c.participant.clone());
                }
                !theirs
            });
            ended
        };
        for participant in &ended {
            tracing::info!(%participant, "a carried media session is replaced by a new connection");
            sfu.send(sfu_proto::Command::RemoveParticipant {
                participant: participant.clone(),
            });
        }
        ended.len()
    }

    /// A carry taken for a connection that never started (`crate::pending_carry`): back for
    /// the client's next try.
    pub fn return_carried(&self, meeting: &str, c: CarriedSession) {
        self.carried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(c.key_digest.clone(), (meeting.to_owned(), c));
    }

    pub fn policy(&self) -> &MeetingPolicy {
        &self.policy
    }

    /// The meeting `id`, as this process knows it (no store is asked: this is on the paths
    /// of SFU events and every message).
    pub fn get(&self, id: &str) -> Option<Arc<MeetingRoom>> {
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The meeting `id`: known here, or — with a shared store — booked by another service
    /// (read from the store once, then known here). `Err` when the store cannot say.
    pub fn find(&self, id: &str) -> Result<Option<Arc<MeetingRoom>>, StoreError> {
        if let Some(room) = self.get(id) {
            return Ok(Some(room));
        }
        let Some(store) = self.store.as_ref().filter(|s| s.is_shared()) else {
            return Ok(None);
        };
        let Some(mut record) = store.fetch(id)? else {
            return Ok(None);
        };
        // Media sessions its last owner carried for it (a replica that stopped): expected
        // back here now.
        let carried = std::mem::take(&mut record.carried);
        if !carried.is_empty() {
            let now = Timestamp::now();
            let mut kept = self.carried.lock().unwrap_or_else(|e| e.into_inner());
            for c in carried.into_iter().filter(|c| c.until >= now) {
                kept.insert(c.key_digest.clone(), (record.id.clone(), c));
            }
        }
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Some(
            rooms
                .entry(record.id.clone())
                .or_insert_with(|| Arc::new(MeetingRoom::new(record)))
                .clone(),
        ))
    }

    /// Every meeting the store keeps (for replicas sharing it, which each know only some).
    pub fn stored_records(&self) -> Result<Vec<MeetingRecord>, StoreError> {
        match &self.store {
            Some(store) => store.load(),
            None => Ok(Vec::new()),
        }
    }

    /// Connections with an outbox (open WebSockets, and dropped ones parked for a resume).
    pub fn connection_count(&self) -> usize {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn list(&self) -> Vec<Arc<MeetingRoom>> {
        let mut v: Vec<_> = self
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Books a meeting. Fails when the id is taken — here, or in a shared store by another
    /// replica (one of two replicas booking one id at the same moment wins).
    pub fn create(&self, record: MeetingRecord) -> Result<Arc<MeetingRoom>, CreateError> {
        match self.find(&record.id) {
            Ok(Some(existing)) => return Err(CreateError::Exists(existing)),
            Ok(None) => {}
            Err(e) => return Err(CreateError::Store(e)),
        }
        if let Some(store) = self.store.as_ref().filter(|s| s.is_shared()) {
            let until = self.keep_until(&record, Timestamp::now());
            match store.create(Kept {
                record: &record,
                until,
            }) {
                Ok(true) => {}
                Ok(false) => {
                    return match self.find(&record.id).ok().flatten() {
                        Some(existing) => Err(CreateError::Exists(existing)),
                        // Taken and gone again in between: taken all the same.
                        None => Err(CreateError::Exists(Arc::new(MeetingRoom::new(record)))),
                    };
                }
                Err(e) => return Err(CreateError::Store(e)),
            }
        }
        let room = {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(existing) = rooms.get(&record.id) {
                return Err(CreateError::Exists(existing.clone()));
            }
            let room = Arc::new(MeetingRoom::new(record));
            rooms.insert(room.id.clone(), room.clone());
            room
        };
        // A booking the store did not take is not made: answered as made, it would be gone
        // at the next restart.
        if let Err(e) = self.persist_checked() {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            if rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, &room)) {
                rooms.remove(&room.id);
            }
            return Err(CreateError::Store(e));
        }
        Ok(room)
    }

    /// Until when the store keeps a meeting: a booked one a day after it closed (as the sweep),
    /// an unbooked one while it is open or remembers something (a denial, an end, who was
    /// admitted, a carried media session).
    fn keep_until(&self, r: &MeetingRecord, now: Timestamp) -> Timestamp {
        let closes = r.closes_at(&self.policy);
        let mut until = if r.booked {
            booked_kept_until(r, &self.policy)
        } else {
            closes
        };
        let remembered = r
            .remember_until
            .into_iter()
            .chain(r.readmit.iter().map(|a| a.until))
            .chain(r.carried.iter().map(|c| c.until))
            .chain(r.queue.iter().map(|p| p.until));
        for t in remembered {
            until = until.max(t);
        }
        until.max(now)
    }

    /// The meeting a verified session enters: its booked meeting, or an unbooked one made
    /// from the token's window when the policy allows. A drop-in patient or clinician who was
    /// taken into a private visit follows it while the forward lasts.
    pub fn room_for(
        &self,
        session: &Session,
        now: Timestamp,
    ) -> Result<Arc<MeetingRoom>, JoinRefusal> {
        let c = &session.claims;
        // A store that cannot say whether the meeting is booked refuses for now: an unbooked
        // meeting must not be made of a booked one it could not read.
        let found = self.find(&c.mtg).map_err(|e| {
            tracing::warn!(error = %e, "reading a meeting from the store failed");
            JoinRefusal::StoreUnavailable
        })?;
        let room = match found {
            Some(room) => room,
            None if self.policy.allow_unbooked => {
                let record = MeetingRecord {
                    id: c.mtg.clone(),
                    unit: c.unit.clone().unwrap_or_default(),
                    kind: MeetingKind::Visit,
                    // The token's window is the booked window: the lobby is open all of it.
                    start: Timestamp::from_second(c.nbf).unwrap_or(now)
                        + self.policy.lobby_opens_before,
                    end: Timestamp::from_second(c.exp).unwrap_or(now) - self.policy.overrun,
                    max_participants: None,
                    cancelled_at: None,
                    ended_at: None,
                    booked: false,
                    from_queue: None,
                    denied: Vec::new(),
                    invited: Vec::new(),
                    remember_until: None,
                    readmit: Vec::new(),
                    carried: Vec::new(),
                    queue: Vec::new(),
                    forwards: Vec::new(),
                };
                let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
                rooms
                    .entry(c.mtg.clone())
                    .or_insert_with(|| Arc::new(MeetingRoom::new(record)))
                    .clone()
            }
            None => return Err(JoinRefusal::MeetingUnknown),
        };
        let forward = room.lock().forwarded_to(&c.sub, now);
        // (Read from the store when this replica has no copy: it took the queue over after the
        // visit was opened elsewhere.)
        let private = match forward {
            Some(to) => self.find(&to).map_err(|e| {
                tracing::warn!(error = %e, "reading a meeting from the store failed");
                JoinRefusal::StoreUnavailable
            })?,
            None => None,
        };
        if let Some(private) = private {
            use crate::meeting::MeetingStatus;
            let (status, others) = {
                let p = private.lock();
                (
                    p.record.status(now, &self.policy),
                    p.takes_back_clinician(&c.sub, now),
                )
            };
            // An ended private visit no longer captures the queue link; nor, for a clinician,
            // one the patient has left (the clinician goes on to the next in the queue).
            let clinician = matches!(c.role.as_str(), "clinician");
            if matches!(status, MeetingStatus::Open | MeetingStatus::Scheduled)
                && (!clinician || others)
            {
                return Ok(private);
            }
        }
        Ok(room)
    }

    /// Runs the meeting's rules on its state and carries out what they ask, all under the
    /// meeting's lock, so every connection sees the meeting's changes in the order they
    /// happened (sending never blocks). Returns the rules' result and the audit records of
    /// what happened, for the caller to write.
    pub fn with_room<R>(
        &self,
        room: &MeetingRoom,
        sfu: &dyn SfuControl,
        rules: impl FnOnce(&mut RoomState, &mut Effects) -> R,
    ) -> (R, Vec<AuditEvent>) {
        let mut s = room.lock();
        let mut fx = Effects::default();
        let result = rules(&mut s, &mut fx);
        let audit = self.carry_out(fx, sfu);
        (result, audit)
    }

    /// Delivers effects: messages to the connections' outboxes, commands to the SFU. Called
    /// with the meeting's lock held.
    fn carry_out(&self, fx: Effects, sfu: &dyn SfuControl) -> Vec<AuditEvent> {
        {
            let connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            for (to, message) in fx.messages {
                if let Some(out) = connections.get(&to) {
                    out.send(message);
                }
            }
        }
        for command in fx.commands {
            if let Command::AddParticipant { participant, .. }
            | Command::Offer { participant, .. } = &command
            {
                let mut sent = self.sdp_sent.lock().unwrap_or_else(|e| e.into_inner());
                if sent.len() >= MAX_TRACKED_SDP {
                    sent.clear();
                }
                sent.insert(participant.clone(), std::time::Instant::now());
            }
            sfu.send(command);
        }
        for o in fx.observations {
            metrics::histogram!(o.metric()).record(o.seconds());
        }
        fx.audit
    }

    /// Adds a connection to `room` and records where it is, under the meeting's lock (so a
    /// drop-in take cannot move it in between). `out` is where its messages go.
    pub fn join(
        &self,
        room: &Arc<MeetingRoom>,
        arrival: Arrival<'_>,
        out: Outbox,
        now: Timestamp,
        sfu: &dyn SfuControl,
    ) -> Result<(JoinOutcome, Vec<AuditEvent>), JoinRefusal> {
        let Arrival { id, session, kept } = arrival;
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), out);
        let (joined, audit) = self.with_room(room, sfu, |s, fx| {
            let joined = s.join_keeping(id.clone(), session, now, &self.policy, kept, fx);
            if joined.is_ok() {
                self.bind(id, room);
            }
            joined
        });
        match joined {
            Ok(outcome) => Ok((outcome, audit)),
            Err(refusal) => {
                self.disconnect(id);
                Err(refusal)
            }
        }
    }

    /// Forgets a connection's outbox (it closed).
    fn disconnect(&self, id: &ParticipantId) {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The connection ended: takes it out of whichever meeting it is in now (a take may have
    /// moved it) and forgets where it was. Returns the audit events, if it was still in one.
    pub fn leave(
        &self,
        id: &ParticipantId,
        explicit: bool,
        now: Timestamp,
        sfu: &dyn SfuControl,
    ) -> Option<Vec<AuditEvent>> {
        let mut left = None;
        // A take moves a member between the lookup and the lock at most once.
        for _ in 0..2 {
            let Some(room) = self.room_of(id) else {
                break;
            };
            let ((was_here, present), audit) = self.with_room(&room, sfu, |s, fx| {
                if s.member(id).is_none() {
                    return (false, false);
                }
                (true, s.leave(id, explicit, now, &self.policy, fx))
            });
            if !was_here {
                continue;
            }
            left = present.then_some(audit);
            break;
        }
        self.unbind(id);
        self.disconnect(id);
        // Its key resumes nothing any more; the meeting's next write carries it no longer.
        self.resume_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        left
    }

    /// Records which meeting a connection is in (for routing SFU events and its requests).
    pub fn bind(&self, id: &ParticipantId, room: &Arc<MeetingRoom>) {
        self.by_participant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), room.clone());
    }

    pub fn unbind(&self, id: &ParticipantId) {
        self.by_participant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub fn room_of(&self, id: &ParticipantId) -> Option<Arc<MeetingRoom>> {
        self.by_participant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Cancels a booked meeting: nobody may join any more, and whoever is in it is told and
    /// disconnected. Returns the audit records, and whether the store took the cancellation:
    /// one it did not take is undone by the next restart (or a replica reading the store), so
    /// it is not to be answered as done — a cancellation asked again is written again.
    pub fn cancel(
        &self,
        id: &str,
        now: Timestamp,
        sfu: &dyn SfuControl,
    ) -> Option<(Vec<AuditEvent>, Result<(), StoreError>)> {
        let room = self.get(id)?;
        let mut events = vec![AuditEvent {
            event: "meeting_cancelled".into(),
            meeting: Some(id.to_owned()),
            ..Default::default()
        }];
        let ((), closed) = self.with_room(&room, sfu, |s, fx| {
            if s.record.cancelled_at.is_none() {
                s.record.cancelled_at = Some(now);
            }
            s.close_all(CloseReason::MeetingCancelled, fx);
        });
        events.extend(closed);
        let stored = self.persist_checked();
        if let Err(e) = &stored {
            tracing::error!(error = %e, "writing the meeting store failed");
        }
        Some((events, stored))
    }

    /// Drop-in, first step: checks that `actor` is a clinician of queue `queue` and someone
    /// waits; names the patient to take and the private visit to open, and describes the take
    /// for the audit log. Changes nothing.
    pub fn plan_take(
        &self,
        queue: &MeetingRoom,
        actor: &ParticipantId,
    ) -> Result<(ParticipantId, String, AuditEvent), RequestError> {
        let q = queue.lock();
        q.check_clinician(actor)?;
        if q.record.kind != MeetingKind::DropIn {
            return Err(RequestError::NotAQueue);
        }
        let patient = q.first_waiting().ok_or(RequestError::QueueEmpty)?;
        let to = crate::generated_id::generated_id(&q.record.id, rand::random());
        let event = q
            .audit_take(&patient, actor, &to)
            .ok_or(RequestError::QueueEmpty)?;
        Ok((patient, to, event))
    }

    /// Drop-in, second step: opens the private visit `to` and moves the clinician and the
    /// patient into it, both admitted. The client of each starts a new media session there.
    pub fn take(
        &self,
        queue: &Arc<MeetingRoom>,
        actor: &ParticipantId,
        patient: &ParticipantId,
        to: &str,
        now: Timestamp,
        sfu: &dyn SfuControl,
    ) -> Result<Vec<AuditEvent>, RequestError> {
        let record = {
            let q = queue.lock();
            q.check_clinician(actor)?;
            if q.member(patient).is_none() {
                return Err(RequestError::NoSuchParticipant);
            }
            MeetingRecord {
                id: to.to_owned(),
                unit: q.record.unit.clone(),
                kind: MeetingKind::Visit,
                start: now,
                end: now + self.policy.drop_in_visit_length,
                max_participants: None,
                cancelled_at: None,
                ended_at: None,
                booked: true,
                from_queue: Some(q.record.id.clone()),
                denied: Vec::new(),
                invited: Vec::new(),
                remember_until: None,
                readmit: Vec::new(),
                carried: Vec::new(),
                queue: Vec::new(),
                forwards: Vec::new(),
            }
        };
        let until = record.end;
        let private = self
            .create(record)
            .map_err(|_| RequestError::NoSuchParticipant)?;
        let handing_over;
        let (moved, events) = {
            // Under the store's lock, which the hand-over freezes the meetings under: the
            // take is wholly in what it freezes, or refused (lock order store → queue →
            // private visit; nobody else knows the new visit yet).
            let _frozen = self.store_lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut q = queue.lock();
            let mut fx = Effects::default();
            // Another clinician may have taken this patient, or they left, since the plan;
            // or the meetings were handed over for a restart (the take would not be stored).
            let still_waiting = q.position(patient).is_some();
            handing_over = self.handing_over();
            let moved = if still_waiting && q.check_clinician(actor).is_ok() && !handing_over {
                let mut p = private.lock();
                for id in [actor, patient] {
                    if let Some(m) = q.take_out(id, to, until, &mut fx) {
                        p.put_in(id.clone(), m, now, &mut fx);
                        self.bind(id, &private);
                    }
                }
                true
            } else {
                false
            };
            (moved, self.carry_out(fx, sfu))
        };
        if !moved {
            self.rooms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(to);
            self.persist();
            return Err(if handing_over {
                RequestError::Restarting
            } else {
                RequestError::NotWaiting
            });
        }
        self.persist();
        Ok(events)
    }

    /// Routes an SFU event to the connections it concerns. Returns audit events (media
    /// starting or stopping).
    pub fn deliver(self: &Arc<Self>, event: Event, sfu: &dyn SfuControl) -> Vec<AuditEvent> {
        use serde_json::json;
        let mut events = Vec::new();
        match event {
            Event::Answer {
                participant,
                answer_sdp,
            } => {
                let sent = self
                    .sdp_sent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&participant);
                if let Some(sent) = sent {
                    metrics::histogram!("signaling_sfu_answer_seconds")
                        .record(sent.elapsed().as_secs_f64());
                }
                self.send_to(
                    &participant,
                    &json!({"type": "answer", "sdp": answer_sdp}),
                    sfu,
                )
            }
            Event::Offer {
                participant,
                offer_sdp,
            } => self.send_to(
                &participant,
                &json!({"type": "offer", "sdp": offer_sdp}),
                sfu,
            ),
            Event::Connected {
                participant,
                session,
            } => {
                if let Some(room) = self.room_of(&participant) {
                    let now = Timestamp::now();
                    let ((), audit) = self.with_room(&room, sfu, |s, fx| {
                        s.media_connected(&participant, session, now, fx)
                    });
                    events.extend(audit);
                    // Carried under its client's resume key from now: a crash of this
                    // process leaves the session running on its node, to be taken back.
                    self.on_node(&participant, sfu.node_of(&participant));
                    self.changed(&room.id);
                }
            }
            // News of a track reaches the admitted, and only about the admitted: a waiting
            // participant's tracks (which the SFU forwards to nobody) are not mentioned.
            // To the others: a publisher knows its own tracks. `track` is the track id of the
            // SDP's `msid`, so a client can match the event to the m-line.
            Event::TrackPublished { room, track } => self.broadcast_about(
                &room.0,
                &track.publisher,
                &json!({"type": "track_published", "publisher": track.publisher, "kind": track.kind, "track": msid_track(&track.id)}),
                true,
                sfu,
            ),
            Event::TrackUnpublished { room, track } => self.broadcast_about(
                &room.0,
                &track.publisher,
                &json!({"type": "track_unpublished", "publisher": track.publisher, "kind": track.kind, "track": msid_track(&track.id)}),
                true,
                sfu,
            ),
            // Only the subscriber hears that its link carries none of a track's video.
            Event::VideoPaused {
                participant,
                track,
                paused,
            } => self.send_to(
                &participant,
                &json!({"type": "video_paused", "publisher": track.publisher, "track": msid_track(&track.id), "paused": paused, "reason": "bandwidth"}),
                sfu,
            ),
            // A participant's own link, for its diagnostics view.
            Event::LinkReport {
                participant,
                report,
            } => {
                let kbps = |bps: u64| bps / 1000;
                let videos: Vec<serde_json::Value> = report
                    .videos
                    .iter()
                    .map(|v| {
                        json!({"publisher": v.publisher, "mid": v.mid, "layer": v.layer,
                               "target": v.target, "layers": v.layers, "paused": v.paused,
                               "temporal": v.temporal})
                    })
                    .collect();
                self.send_to(
                    &participant,
                    &json!({"type": "link_report",
                            "estimate_kbps": report.estimate_bps.map(kbps),
                            "allocated_kbps": kbps(report.allocated_bps),
                            "desired_kbps": kbps(report.desired_bps),
                            "loss": report.loss,
                            "videos": videos}),
                    sfu,
                )
            }
            // Only the publisher hears which of its layers nobody receives (it may stop
            // encoding them).
            Event::LayersUnused {
                participant,
                mid,
                rids,
            } => self.send_to(
                &participant,
                &json!({"type": "pause_encodings", "mid": mid, "rids": rids}),
                sfu,
            ),
            Event::ActiveSpeaker { room, participant } => self.broadcast_about(
                &room.0,
                &participant,
                &json!({"type": "active_speaker", "participant": participant}),
                false,
                sfu,
            ),
            // Only a broken media path is news to the client (it reconnects); a removal was
            // asked for, and its reason travels on its own path.
            Event::Disconnected {
                participant,
                reason: reason @ (DisconnectReason::ConsentTimeout | DisconnectReason::TransportClosed),
                session,
            } => {
                if let Some(room) = self.room_of(&participant) {
                    let reason = serde_json::to_value(reason).unwrap_or_default();
                    let ((), audit) = self.with_room(&room, sfu, |s, fx| {
                        s.media_lost(&participant, session, &reason, fx)
                    });
                    events.extend(audit);
                }
            }
            Event::Disconnected { .. } => {}
            Event::CommandFailed {
                participant,
                error,
                command,
                session,
            } => {
                if let Some(p) = participant {
                    // A refused add (bad SDP, a busy SFU) leaves no media session: the client's
                    // next offer must start one, not renegotiate a session that never was. A
                    // refusal of an earlier session than the one that runs concerns nothing
                    // the client still has: it is not told (it would roll back the offer of
                    // the session that runs, and start over).
                    if command == "add_participant"
                        && let Some(room) = self.room_of(&p)
                        && !room.lock().media_session_refused(&p, session)
                    {
                        return events;
                    }
                    if matches!(command.as_str(), "add_participant" | "offer") {
                        self.sdp_sent
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&p);
                    }
                    // What the client can act on: a layer request for an m-line that receives
                    // no video, or offers of ours it never answered (it starts a new session).
                    let code = match command.as_str() {
                        "set_preferred_layer" if error != sfu_proto::BUSY => "bad_mid",
                        "sfu_offer" => "offer_unanswered",
                        // An answer that came late or twice (to an offer already answered or
                        // given up): nothing to do, not a failure of the session.
                        "reject_offer" | "answer" if error == sfu_proto::NO_OFFER_OUTSTANDING => {
                            "no_offer_pending"
                        }
                        // Its offer crossed the SFU's: it answers that one and offers again.
                        "offer" if error == sfu_proto::OFFER_CROSSED => "offer_crossed",
                        _ => "sfu_refused",
                    };
                    self.send_to(
                        &p,
                        &json!({"type": "error", "code": code, "message": error}),
                        sfu,
                    );
                }
            }
            Event::Load(_) => {}
        }
        events
    }

    /// Sends to a connection still in its meeting (in order with the meeting's messages).
    fn send_to(&self, id: &ParticipantId, msg: &serde_json::Value, sfu: &dyn SfuControl) {
        if let Some(room) = self.room_of(id) {
            self.with_room(&room, sfu, |s, fx| {
                if s.has_member(id) {
                    fx.send(id, msg);
                }
            });
        }
    }

    /// Sends `msg` to the admitted of `room` if `about` is admitted there (`but_them`: not to
    /// `about` itself).
    fn broadcast_about(
        &self,
        room: &str,
        about: &ParticipantId,
        msg: &serde_json::Value,
        but_them: bool,
        sfu: &dyn SfuControl,
    ) {
        if let Some(room) = self.get(room) {
            self.with_room(&room, sfu, |s, fx| {
                if s.is_admitted(about) {
                    s.broadcast_admitted(but_them.then_some(about), msg, fx);
                }
            });
        }
    }

    /// Forgets meetings nobody needs any more: unbooked ones empty for the reconnect grace
    /// after their last member (kept while they remember an end or a denial their tokens could
    /// otherwise undo), booked ones a day after they closed. Returns how many went. Meetings
    /// are examined without holding the registry's lock, so no join waits behind a busy one.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let candidates: Vec<String> = self
            .list()
            .iter()
            .filter(|room| {
                let s = room.lock();
                s.is_empty() && !self.worth_keeping(&s, now)
            })
            .map(|room| room.id.clone())
            .collect();
        let mut gone = 0;
        {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            for id in candidates {
                // Re-checked without blocking: a meeting someone just entered stays.
                let still_idle = rooms
                    .get(&id)
                    .and_then(|r| {
                        r.try_lock()
                            .map(|s| s.is_empty() && !self.worth_keeping(&s, now))
                    })
                    .unwrap_or(false);
                if still_idle {
                    rooms.remove(&id);
                    gone += 1;
                }
            }
        }
        if gone > 0 {
            self.persist();
        }
        gone
    }

    fn worth_keeping(&self, s: &crate::meeting_room::RoomState, now: Timestamp) -> bool {
        let r = &s.record;
        if r.booked {
            return now < booked_kept_until(r, &self.policy);
        }
        let remembers = r.ended_at.is_some() || r.cancelled_at.is_some() || !r.denied.is_empty();
        now < s.last_active + self.policy.reconnect_grace
            || (remembers && now < r.closes_at(&self.policy))
            || r.remember_until.is_some_and(|until| now < until)
    }

    /// A clinician denied someone or ended the meeting: remembered for as long as a token
    /// could undo it, and stored so a restart does not forget it either.
    pub fn remember_decision(&self, room: &MeetingRoom, now: Timestamp) {
        room.lock().record.remember_until = Some(now + self.policy.remember_decisions_for);
        self.persist();
    }

    /// Connection `id` (of `sub`, with a token for `mtg`) holds resume key `key` now: its
    /// media session is carried under it from its meeting's next write — at once when it
    /// has one (a resumed connection's key replaces the one its client no longer holds).
    pub fn key_issued(
        self: &Arc<Self>,
        id: &ParticipantId,
        key: &str,
        sub: &str,
        mtg: &str,
        node: Option<String>,
    ) {
        let previous = self
            .resume_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.clone(),
                ResumeKey {
                    digest: key_digest(key),
                    sub: sub.to_owned(),
                    mtg: mtg.to_owned(),
                    // Where its session runs now (a resumed or carried one: no `Connected`
                    // comes again), else where it ran.
                    node: node.clone(),
                },
            );
        if node.is_none()
            && let Some(node) = previous.and_then(|p| p.node)
        {
            self.on_node(id, Some(node));
        }
        if let Some(room) = self.room_of(id)
            && room.lock().member(id).is_some_and(|m| m.sfu_joined)
        {
            self.changed(&room.id);
        }
    }

    /// Participant `id`'s media session runs on `node` (remote nodes; `None` embedded).
    fn on_node(&self, id: &ParticipantId, node: Option<String>) {
        if let Some(k) = self
            .resume_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            k.node = node;
        }
    }

    /// The media sessions of `s`'s members that their clients may come back to with their
    /// resume keys after a restart or a crash of this process, carried until `until`.
    fn carried_in(&self, s: &RoomState, until: Timestamp) -> Vec<CarriedSession> {
        let keys = self.resume_keys.lock().unwrap_or_else(|e| e.into_inner());
        let mut carried: Vec<CarriedSession> = s
            .media_sessions()
            .filter_map(|(id, session, connected)| {
                let k = keys.get(id)?;
                Some(CarriedSession {
                    key_digest: k.digest.clone(),
                    sub: k.sub.clone(),
                    mtg: k.mtg.clone(),
                    participant: id.clone(),
                    media_session: session,
                    media_connected: connected,
                    node: k.node.clone(),
                    until,
                })
            })
            .collect();
        carried.sort_by(|a, b| a.participant.cmp(&b.participant));
        carried
    }

    /// Whether the service has handed its meetings over for a restart: what is stored is
    /// what the next run starts from, so decisions taken now would be lost with this run.
    pub fn handing_over(&self) -> bool {
        self.handed_over
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The service is stopping: who is admitted where goes into the store (let back in past
    /// the waiting room within the reconnect grace after the restart), and with them each open
    /// connection's media session under its resume key (`keys`): the SFU is told to leave them
    /// running, and a client back with its key keeps its session. Then every connection is
    /// told to connect again (`closing` with reason `restarting`, close 1012). Returns the
    /// `leave` lines of the `parked` participants (dropped, waiting for a resume): no
    /// connection of theirs is left to write them before the audit log closes.
    pub fn hand_over(
        &self,
        sfu: &dyn SfuControl,
        keys: &[HeldKey],
        parked: &[ParticipantId],
    ) -> Vec<AuditEvent> {
        {
            // The nodes as placed now (a room moved since its sessions connected).
            let mut held = self.resume_keys.lock().unwrap_or_else(|e| e.into_inner());
            for k in keys {
                held.insert(
                    k.participant.clone(),
                    ResumeKey {
                        digest: key_digest(&k.key),
                        sub: k.sub.clone(),
                        mtg: k.meeting.clone(),
                        node: sfu.node_of(&k.participant),
                    },
                );
            }
        }
        {
            // Frozen under the store's lock: a write queued before it cannot land after it
            // with fewer sessions.
            let _guard = self.store_lock.lock().unwrap_or_else(|e| e.into_inner());
            let until = Timestamp::now() + self.policy.reconnect_grace;
            let frozen = self
                .list()
                .iter()
                .map(|room| (room.id.clone(), self.carried_in(&room.lock(), until)))
                .collect();
            *self.handed_over.lock().unwrap_or_else(|e| e.into_inner()) = Some(frozen);
        }
        self.persist();
        sfu.hold();
        // Replicas: the meetings are another replica's to take at once (their clients come
        // back through it), not after the leases ran out; this one takes none any more.
        if let Some(leases) = self.leases.get() {
            leases.release_all();
        }
        let mut unwritten = Vec::new();
        for room in self.list() {
            // (Its people's open connections close with the service, each writing its
            // `leave`: the hand-over's own lines are not written twice for them.)
            let (_, lines) = self.with_room(&room, sfu, |s, fx| s.hand_over(fx));
            unwritten.extend(lines.into_iter().filter(|l| {
                l.participant
                    .as_deref()
                    .is_some_and(|p| parked.iter().any(|id| id.0 == p))
            }));
        }
        unwritten
    }

    /// Writes booked meetings, and unbooked ones that remember a denial, an end, who was
    /// admitted or who waits, to the store (a file: a temporary file renamed over the old
    /// one, mode 0600; Redis: a key each, expiring when the meeting is no longer worth keeping).
    pub fn persist(&self) {
        if let Err(e) = self.persist_checked() {
            tracing::error!(error = %e, "writing the meeting store failed");
        }
    }

    /// [`Self::persist`], saying whether the store took it.
    fn persist_checked(&self) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _guard = self.store_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Who is admitted goes with each record: a restart — planned or not — lets them back
        // in past the waiting room within their grace.
        let now = Timestamp::now();
        let records: Vec<MeetingRecord> = self
            .list()
            .iter()
            .filter(|r| self.writes(&r.id))
            .filter_map(|r| self.stored_record(r, now, store.is_shared()))
            .collect();
        self.save(store, &records, now)
    }

    /// Writes the store again when a meeting is in use (its admissions and carried media
    /// sessions are stored until the reconnect grace from the write).
    pub fn write_in_use(&self) {
        if self.store.is_some() && self.list().iter().any(|r| !r.lock().is_empty()) {
            self.persist();
        }
    }

    /// Meeting `id` changed in a way a crash of this process must not lose: someone entered
    /// or left its waiting room (the queue's order), or a media session connected or got a
    /// new resume key (carried for its client). Written at once, off the async runtime
    /// (Redis may be slow; a file is rewritten whole), with one write at most waiting per
    /// meeting — or for the whole file — however many changes come meanwhile (a reconnect
    /// loop must not pile up threads).
    pub fn changed(self: &Arc<Self>, id: &str) {
        let Some(store) = &self.store else {
            return;
        };
        let Some(room) = self.get(id) else {
            return;
        };
        // The file holds every meeting: one write of it covers them all.
        let pending_key = if store.is_shared() {
            room.id.clone()
        } else {
            String::new()
        };
        let mut pending = self.queue_writes.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.insert(pending_key.clone()) {
            return; // the write waiting to run reads the newest state
        }
        drop(pending);
        let meetings = self.clone();
        tokio::task::spawn_blocking(move || {
            // Taken off before the state is read: a change after this schedules another write.
            meetings
                .queue_writes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&pending_key);
            if pending_key.is_empty() {
                meetings.persist();
            } else {
                meetings.write_meeting(&room);
            }
        });
    }

    /// Writes the one meeting `room`, if this replica runs it. Each write reads the meeting
    /// under the store's lock, so the last one written holds the newest state.
    fn write_meeting(&self, room: &MeetingRoom) {
        let Some(store) = &self.store else {
            return;
        };
        let _guard = self.store_lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.writes(&room.id) {
            return;
        }
        let now = Timestamp::now();
        if let Some(record) = self.stored_record(room, now, store.is_shared())
            && let Err(e) = self.save(store, &[record], now)
        {
            tracing::error!(error = %e, "writing the meeting store failed");
        }
    }

    /// What the store keeps of `room`: its record with who is admitted and who waits where
    /// (the parts that live in memory while it runs); `None` for an unbooked meeting with
    /// nothing to remember — unless `overwrite` (a shared store, whose key outlives this
    /// process's copy): then the record is written all the same, so the admissions and
    /// carried sessions written before are gone from it too.
    fn stored_record(
        &self,
        room: &MeetingRoom,
        now: Timestamp,
        overwrite: bool,
    ) -> Option<MeetingRecord> {
        let s = room.lock();
        let mut record = s.record.clone();
        record.readmit = s.readmissions(now, self.policy.reconnect_grace);
        record.queue = s.queue_places(now, self.policy.reconnect_grace);
        record.forwards = s.forwards(now);
        record.carried = match &*self.handed_over.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(frozen) => frozen.get(&room.id).cloned().unwrap_or_default(),
            None => self.carried_in(&s, now + self.policy.reconnect_grace),
        };
        let worth_keeping = record.booked
            || record.remember_until.is_some()
            || !record.readmit.is_empty()
            || !record.carried.is_empty()
            || !record.queue.is_empty();
        (worth_keeping || overwrite).then_some(record)
    }

    fn save(
        &self,
        store: &MeetingStore,
        records: &[MeetingRecord],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let kept: Vec<Kept<'_>> = records
            .iter()
            .map(|record| Kept {
                record,
                until: self.keep_until(record, now),
            })
            .collect();
        store.save(&kept)
    }
}

/// A track's id as the SFU's SDP names it in `a=msid` (`p-x-1` for the SFU's `p-x/1`).
fn msid_track(id: &sfu_proto::TrackId) -> String {
    id.to_string().replace('/', "-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meeting::booked_visit;
    use crate::session_token::Role;

    /// A visit next week cancelled today (its link leaked) is remembered until a day after it
    /// would have closed: until then the sweep keeps it, and its links are refused as
    /// cancelled instead of opening a new, unbooked meeting under its id.
    #[test]
    fn a_cancelled_visit_is_remembered_until_a_day_after_it_would_have_closed() {
        let meetings = Meetings::new(MeetingPolicy::default(), None).unwrap();
        let now: Timestamp = "2026-12-07T09:00:00Z".parse().unwrap();
        let start = now + SignedDuration::from_hours(24 * 7);
        let room = meetings.create(booked_visit(start)).unwrap();
        room.lock().record.cancelled_at = Some(now);
        let closes = room.lock().record.closes_at(meetings.policy());
        for later in [
            SignedDuration::from_hours(25),
            SignedDuration::from_hours(24 * 7),
        ] {
            meetings.sweep(now + later);
            assert!(
                meetings.get("m1").is_some(),
                "forgotten {later} after its cancellation"
            );
        }
        meetings.sweep(closes + SignedDuration::from_hours(23));
        assert!(
            meetings.get("m1").is_some(),
            "forgotten before a day after it closed"
        );
        meetings.sweep(closes + SignedDuration::from_hours(25));
        assert!(meetings.get("m1").is_none(), "kept for ever");
    }

    struct NoSfu;

    impl SfuControl for NoSfu {
        fn send(&self, _: Command) {}
    }

    /// `sub` joins `room` as `role` at `now`: its participant id and its messages.
    fn joined(
        meetings: &Meetings,
        room: &Arc<MeetingRoom>,
        sub: &str,
        role: Role,
        now: Timestamp,
    ) -> (ParticipantId, crate::outbox::OutboxReceiver) {
        let (r, hsa) = match role {
            Role::Clinician => ("clinician", Some("SE2321000016-D1")),
            _ => ("patient", None),
        };
        let claims = crate::dev_issuer::dev_claims(
            &room.id,
            sub,
            sub,
            r,
            hsa,
            Some("unit-1"),
            now.as_second(),
            3600,
        );
        let session = Session { claims, role };
        let id = ParticipantId(format!("p-{sub}"));
        let (out, rx) = crate::outbox::outbox(1 << 20);
        let arrival = Arrival {
            id: &id,
            session: &session,
            kept: None,
        };
        meetings.join(room, arrival, out, now, &NoSfu).unwrap();
        (id, rx)
    }

    /// A registry with one drop-in queue open now.
    fn drop_in_queue() -> (Meetings, Arc<MeetingRoom>, Timestamp) {
        let meetings = Meetings::new(MeetingPolicy::default(), None).unwrap();
        let now = Timestamp::now();
        let mut record = booked_visit(now);
        record.kind = MeetingKind::DropIn;
        let queue = meetings.create(record).unwrap();
        (meetings, queue, now)
    }

    /// A drop-in take asked for after the meetings were handed over for a restart (its line
    /// written while the hand-over happened) is refused `restarting`: the private visit it
    /// would open, and the patient's move into it, would not be in what the next run starts
    /// from. The patient stays first in the queue, where the store has them.
    #[test]
    fn a_take_after_the_hand_over_is_refused_and_the_queue_kept() {
        let (meetings, queue, now) = drop_in_queue();
        let (clinician, _c) = joined(&meetings, &queue, "doc", Role::Clinician, now);
        let (patient, _p) = joined(&meetings, &queue, "pat", Role::Patient, now);
        let (first, to, _line) = meetings.plan_take(&queue, &clinician).unwrap();
        assert_eq!(first, patient);
        assert!(!meetings.handing_over());
        let _ = meetings.hand_over(&NoSfu, &[], &[]);
        assert!(meetings.handing_over());
        assert_eq!(
            meetings.take(&queue, &clinician, &patient, &to, now, &NoSfu),
            Err(RequestError::Restarting)
        );
        assert!(meetings.get(&to).is_none(), "no private visit opened");
        assert_eq!(queue.lock().first_waiting(), Some(patient));
    }

    /// A booking the store does not take is not made: refused (the API answers 503), and not
    /// in the registry — answered as made, it would be gone at the next restart.
    #[test]
    fn a_booking_the_store_did_not_take_is_not_made() {
        let dir = std::env::temp_dir().join(format!("hc-unwritable-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = MeetingStore::open(&dir.join("meetings.json").to_string_lossy()).unwrap();
        let meetings = Meetings::new(MeetingPolicy::default(), Some(store)).unwrap();
        // The directory goes, and a file takes its place: nothing can be written there.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, b"").unwrap();
        let record = booked_visit(Timestamp::now());
        let id = record.id.clone();
        assert!(matches!(
            meetings.create(record),
            Err(CreateError::Store(_))
        ));
        assert!(meetings.get(&id).is_none());
        std::fs::remove_file(&dir).unwrap();
    }

    /// A cancellation the store does not take is said so (the API answers 503 and the booking
    /// system asks again); in this process the meeting is cancelled all the same, and the
    /// next write that succeeds carries it.
    #[test]
    fn a_cancellation_the_store_did_not_take_is_said_so() {
        let dir = std::env::temp_dir().join(format!("hc-unwritable-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meetings.json");
        let store = MeetingStore::open(&path.to_string_lossy()).unwrap();
        let meetings = Meetings::new(MeetingPolicy::default(), Some(store)).unwrap();
        let record = booked_visit(Timestamp::now());
        let id = record.id.clone();
        meetings.create(record).unwrap();
        // The file's directory goes, and a file takes its place: nothing can be written.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, b"").unwrap();
        let (_, stored) = meetings.cancel(&id, Timestamp::now(), &NoSfu).unwrap();
        assert!(stored.is_err(), "the store did not take it");
        assert!(
            meetings
                .get(&id)
                .unwrap()
                .lock()
                .record
                .cancelled_at
                .is_some()
        );
        // The store back: asked again, it is written.
        std::fs::remove_file(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let (_, stored) = meetings.cancel(&id, Timestamp::now(), &NoSfu).unwrap();
        assert!(stored.is_ok());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("cancelled_at"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A drop-in queue's lease stays with the replica where a private visit taken from it
    /// runs, emptied as the queue is: its links are routed by the queue, and lead into the
    /// visit (let go, another replica took the queue and could not serve the visit).
    #[test]
    fn a_queue_is_needed_where_a_visit_taken_from_it_runs() {
        let (meetings, queue, now) = drop_in_queue();
        let (clinician, _c) = joined(&meetings, &queue, "doc", Role::Clinician, now);
        let (patient, _p) = joined(&meetings, &queue, "pat", Role::Patient, now);
        let (_, to, _line) = meetings.plan_take(&queue, &clinician).unwrap();
        meetings
            .take(&queue, &clinician, &patient, &to, now, &NoSfu)
            .unwrap();
        let _ = meetings.leave(&clinician, false, now, &NoSfu);
        assert!(!meetings.in_use(&queue.id), "nobody in the queue");
        assert!(meetings.in_use(&to));
        assert!(meetings.needed_here().contains(&queue.id));
        let _ = meetings.leave(&patient, false, now, &NoSfu);
        assert!(meetings.needed_here().is_empty(), "the visit empty too");
    }
}
