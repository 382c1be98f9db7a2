//! A meeting as booked: its care unit, its window, its kind, and whether it still takes joins.

use crate::join_refusal::JoinRefusal;
use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingKind {
    /// A booked video visit: the patient waits in its lobby until a clinician admits them.
    Visit,
    /// A care unit's drop-in queue: patients queue, any clinician of the unit takes the next,
    /// which opens a private visit for the two.
    DropIn,
}

/// One meeting. Holds no names or identity numbers: ids, the care unit and times only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeetingRecord {
    pub id: String,
    /// The care unit (HSA-id of the unit) responsible for the meeting.
    pub unit: String,
    pub kind: MeetingKind,
    pub start: Timestamp,
    pub end: Timestamp,
    /// Connections at once (waiting and admitted); the policy's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_participants: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// False for a meeting known only from the tokens presented (a region whose booking
    /// system issues tokens itself without calling the meetings API).
    #[serde(default = "yes")]
    pub booked: bool,
    /// The drop-in queue a private visit was opened from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_queue: Option<String>,
    /// Subjects a clinician turned away: refused if they come back (kept with the booking).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<String>,
    /// HSA-ids of consultants a clinician invited (kept with the booking).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invited: Vec<String>,
    /// Until when a denial or an end must be remembered: an unbooked meeting known from its
    /// tokens is kept (and stored) until then, so a token still valid cannot open it afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remember_until: Option<Timestamp>,
    /// People admitted when the service stopped (written at its stop, read at its start):
    /// each comes back past the waiting room until `until`, the reconnect grace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readmit: Vec<Readmission>,
    /// Media sessions of the connections open when the service stopped (written at its stop,
    /// taken out at its start): a client back with its resume key keeps its session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carried: Vec<crate::carried_session::CarriedSession>,
    /// The waiting room's queue, first first (written while the meeting runs, read when it is
    /// loaded again — a restart, or another replica taking it over): someone who was waiting
    /// and comes back within the reconnect grace gets their place, not the back of the queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<QueuePlace>,
    /// A drop-in queue's people taken into private visits (written while it runs, read when
    /// it is loaded again): their queue link leads back into their visit, across a restart
    /// or a take-over as across a dropped connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<Forward>,
}

/// A subject taken from a drop-in queue into private visit `to`, followed there until `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    pub sub: String,
    pub to: String,
    pub until: Timestamp,
}

/// An admitted subject (pseudonymous `sub`) to let back in without the waiting room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readmission {
    pub sub: String,
    pub until: Timestamp,
}

/// A waiting subject's place in the queue: waiting since `since`, kept until `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuePlace {
    pub sub: String,
    pub since: Timestamp,
    pub until: Timestamp,
}

fn yes() -> bool {
    true
}

/// Where a meeting is in its life, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingStatus {
    Scheduled,
    Open,
    Cancelled,
    Ended,
}

/// Rules shared by all meetings of a deployment.
#[derive(Debug, Clone)]
pub struct MeetingPolicy {
    /// How long before a visit's start its waiting room opens.
    pub lobby_opens_before: SignedDuration,
    /// How long after its booked end a visit still takes joins (visits run late).
    pub overrun: SignedDuration,
    /// A participant who lost the connection and is back within this keeps their admission.
    pub reconnect_grace: SignedDuration,
    pub default_max_participants: u32,
    /// Patients waiting in one drop-in queue at most.
    pub queue_limit: u32,
    /// Length of the private visit a drop-in take opens.
    pub drop_in_visit_length: SignedDuration,
    /// Whether a token may name a meeting the API never created.
    pub allow_unbooked: bool,
    /// Times shown to patients are in this zone.
    pub time_zone: TimeZone,
    /// How long a denial or an end is remembered after it was decided: the longest validity
    /// a token may have (plus the leeway), so no token that could undo it is still accepted.
    pub remember_decisions_for: SignedDuration,
}

impl Default for MeetingPolicy {
    fn default() -> Self {
        Self {
            lobby_opens_before: SignedDuration::from_mins(15),
            overrun: SignedDuration::from_mins(30),
            reconnect_grace: SignedDuration::from_secs(60),
            default_max_participants: 6,
            queue_limit: 50,
            drop_in_visit_length: SignedDuration::from_hours(1),
            allow_unbooked: true,
            time_zone: TimeZone::get("Europe/Stockholm").unwrap_or(TimeZone::UTC),
            remember_decisions_for: SignedDuration::from_secs(
                crate::session_token::DEFAULT_MAX_LIFETIME_SECS as i64 + 30,
            ),
        }
    }
}

impl MeetingRecord {
    pub fn status(&self, now: Timestamp, policy: &MeetingPolicy) -> MeetingStatus {
        if self.cancelled_at.is_some() {
            MeetingStatus::Cancelled
        } else if self.ended_at.is_some() || now > self.closes_at(policy) {
            MeetingStatus::Ended
        } else if now < self.opens_at(policy) {
            MeetingStatus::Scheduled
        } else {
            MeetingStatus::Open
        }
    }

    /// When the waiting room opens (a drop-in queue opens at its start).
    /// (Saturating: a record from before bookings were bounded may hold any time.)
    pub fn opens_at(&self, policy: &MeetingPolicy) -> Timestamp {
        match self.kind {
            MeetingKind::Visit => self
                .start
                .checked_sub(policy.lobby_opens_before)
                .unwrap_or(Timestamp::MIN),
            MeetingKind::DropIn => self.start,
        }
    }

    pub fn closes_at(&self, policy: &MeetingPolicy) -> Timestamp {
        match self.kind {
            MeetingKind::Visit => self
                .end
                .checked_add(policy.overrun)
                .unwrap_or(Timestamp::MAX),
            MeetingKind::DropIn => self.end,
        }
    }

    /// Whether someone may enter now. Clinicians may open a visit's room any time before it
    /// closes (to prepare); everyone else waits for the waiting room to open.
    pub fn check_entry(
        &self,
        now: Timestamp,
        clinician: bool,
        policy: &MeetingPolicy,
    ) -> Result<(), JoinRefusal> {
        match self.status(now, policy) {
            MeetingStatus::Cancelled => Err(JoinRefusal::MeetingCancelled),
            MeetingStatus::Ended => Err(JoinRefusal::MeetingOver),
            MeetingStatus::Scheduled if !clinician => Err(JoinRefusal::NotOpenYet {
                message: self.not_open_message(policy),
                starts_at: self.start,
                opens_at: self.opens_at(policy),
            }),
            _ => Ok(()),
        }
    }

    /// "Ditt besök börjar kl. 14:30. Väntrummet öppnar kl. 14:15." — with the date when it
    /// is not today, in the deployment's time zone.
    fn not_open_message(&self, policy: &MeetingPolicy) -> String {
        let tz = &policy.time_zone;
        let start = self.start.to_zoned(tz.clone());
        let opens = self.opens_at(policy).to_zoned(tz.clone());
        let today = Timestamp::now().to_zoned(tz.clone()).date();
        let when = |z: &jiff::Zoned| {
            if z.date() == today {
                format!("kl. {}", z.strftime("%H:%M"))
            } else {
                format!("{} kl. {}", z.strftime("%Y-%m-%d"), z.strftime("%H:%M"))
            }
        };
        match self.kind {
            MeetingKind::Visit => format!(
                "Ditt besök börjar {}. Väntrummet öppnar {}.",
                when(&start),
                when(&opens)
            ),
            MeetingKind::DropIn => format!("Mottagningen öppnar {}.", when(&opens)),
        }
    }

    pub fn max_participants(&self, policy: &MeetingPolicy) -> u32 {
        match self.kind {
            MeetingKind::Visit => self
                .max_participants
                .unwrap_or(policy.default_max_participants),
            MeetingKind::DropIn => self.max_participants.unwrap_or(policy.queue_limit),
        }
    }
}

/// A booked 30-minute visit `m1` of `unit-1` (for tests of the meeting's rules).
#[cfg(test)]
pub(crate) fn booked_visit(start: Timestamp) -> MeetingRecord {
    MeetingRecord {
        id: "m1".into(),
        unit: "unit-1".into(),
        kind: MeetingKind::Visit,
        start,
        end: start + SignedDuration::from_mins(30),
        max_participants: None,
        cancelled_at: None,
        ended_at: None,
        booked: true,
        from_queue: None,
        denied: Vec::new(),
        invited: Vec::new(),
        remember_until: None,
        readmit: Vec::new(),
        carried: Vec::new(),
        queue: Vec::new(),
        forwards: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_opens_before_the_start_and_closes_after_the_overrun() {
        let policy = MeetingPolicy {
            time_zone: TimeZone::UTC,
            ..Default::default()
        };
        let start: Timestamp = "2030-05-02T12:30:00Z".parse().unwrap();
        let m = booked_visit(start);
        let early = start - SignedDuration::from_mins(16);
        match m.check_entry(early, false, &policy) {
            Err(JoinRefusal::NotOpenYet { message, .. }) => {
                assert_eq!(
                    message,
                    "Ditt besök börjar 2030-05-02 kl. 12:30. Väntrummet öppnar 2030-05-02 kl. 12:15."
                )
            }
            other => panic!("{other:?}"),
        }
        // A clinician may prepare the room early.
        assert!(m.check_entry(early, true, &policy).is_ok());
        assert!(
            m.check_entry(start - SignedDuration::from_mins(14), false, &policy)
                .is_ok()
        );
        let late = m.end + SignedDuration::from_mins(29);
        assert!(m.check_entry(late, false, &policy).is_ok());
        let over = m.end + SignedDuration::from_mins(31);
        assert!(matches!(
            m.check_entry(over, true, &policy),
            Err(JoinRefusal::MeetingOver)
        ));
        let mut cancelled = m.clone();
        cancelled.cancelled_at = Some(start);
        assert!(matches!(
            cancelled.check_entry(start, true, &policy),
            Err(JoinRefusal::MeetingCancelled)
        ));
        let mut ended = m;
        ended.ended_at = Some(start);
        assert_eq!(ended.status(start, &policy), MeetingStatus::Ended);
    }

    #[test]
    fn a_record_at_the_ends_of_time_opens_and_closes_without_overflowing() {
        let policy = MeetingPolicy::default();
        let mut m = booked_visit(Timestamp::MIN);
        assert_eq!(m.opens_at(&policy), Timestamp::MIN);
        m.end = Timestamp::MAX;
        assert_eq!(m.closes_at(&policy), Timestamp::MAX);
        assert_eq!(
            m.status("2030-01-10T08:00:00Z".parse().unwrap(), &policy),
            MeetingStatus::Open
        );
    }

    #[test]
    fn times_are_shown_in_the_configured_zone() {
        let policy = MeetingPolicy::default();
        // 13:30 UTC is 14:30 in Stockholm in winter.
        let m = booked_visit("2030-01-10T13:30:00Z".parse().unwrap());
        let Err(JoinRefusal::NotOpenYet { message, .. }) =
            m.check_entry("2030-01-10T08:00:00Z".parse().unwrap(), false, &policy)
        else {
            panic!("expected not open")
        };
        assert!(
            message.contains("14:30") && message.contains("14:15"),
            "{message}"
        );
    }
}
