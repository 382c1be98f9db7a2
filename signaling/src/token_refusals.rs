//! Refusals of tokens, per source address: anonymous clients can post bad tokens as fast as
//! the network allows, and each refusal is an fsynced audit line. The first refusal of a
//! source in an interval is written at once; the rest are counted and written as one line per
//! source at the interval's end; past a per-source budget, requests get 429 before any audit
//! write, and are counted all the same. So the log records that every refusal happened, at a
//! cost that does not grow with the attacker's rate. While a source is over its budget, its
//! tokens are checked at most [`CHECKS_WHILE_LIMITED`] a second: the rest get 429 unread (an
//! ES256 signature costs ~370 µs, and one source's flood would otherwise take a core) — a
//! valid token among them (a patient behind the same address) is let in once its retry finds
//! a check free.

use crate::audit_log::AuditEvent;
use sfu_core::token_bucket::TokenBucket;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources tracked at once at most, addresses and subjects each; further ones share one record
/// (their refusals are still counted, under `source: "other"`). Subjects have their own room:
/// a flood from many addresses cannot push a patient's refusals out of their own line.
const MAX_SOURCES: usize = 100_000;

/// Refusals of anonymous sources written at once, over all of them: a second's worth, and the
/// burst. Past it a source's first refusal of the interval is counted into its summary instead
/// — an attacker with many sources (the /64s of an IPv6 /48 are 65,536) would otherwise have
/// one fsynced line written per source per interval, on the lock every join and admission
/// waits for.
const RECORDS_PER_SECOND: f64 = 5.0;
const RECORDS_BURST: f64 = 50.0;

/// Summary lines of anonymous sources per interval: those with the most refusals get their
/// own, the rest one line together (`source: "other"`, `sources`: how many). Subjects' lines
/// (`join_refused`, `image_refused`, `resume_refused`: only for holders of valid tokens) are
/// not capped.
const MAX_SUMMARY_LINES: usize = 100;

/// Summary lines held over while the audit log cannot take them.
const MAX_CARRIED: usize = 1_000;

/// The events summary lines are written under: `token_refused` and each [`SubjectRefusal`]'s.
const KINDS: usize = 4;

/// Signature checks a second (burst as much) for a source over its refusal budget.
pub const CHECKS_WHILE_LIMITED: f64 = 20.0;

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalVerdict {
    /// Write it to the audit log now (the source's first in this interval).
    Record,
    /// Counted; written in the source's summary line at the interval's end.
    Counted,
    /// The source spent its budget: answer 429, write nothing now (counted).
    Limited,
}

/// How many refusals a source may have answered in full: a burst, then a steady rate.
#[derive(Debug, Clone, Copy)]
pub struct RefusalBudget {
    pub burst: u32,
    pub per_minute: u32,
    /// How often summary lines are written.
    pub interval: Duration,
}

impl Default for RefusalBudget {
    fn default() -> Self {
        // A person mistyping or reopening an old link a few times stays well inside it.
        Self {
            burst: 10,
            per_minute: 10,
            interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct Source {
    /// Refusals answered in full.
    budget: TokenBucket,
    /// The last refusal (a source quiet for an interval is forgotten).
    last: Instant,
    /// Refusals since the last line written for this source, by code.
    unwritten: BTreeMap<&'static str, u64>,
    /// Of those, how many were answered 429.
    limited: u64,
    /// Whether a line for this source went out in the current interval.
    written_this_interval: bool,
    /// Signature checks while over the budget.
    checks: TokenBucket,
}

#[derive(Debug)]
pub struct TokenRefusals {
    budget: RefusalBudget,
    sources: Mutex<Sources>,
    /// Lines written at once, over all sources.
    records: Mutex<TokenBucket>,
    /// Summary lines the audit log could not take, written with the next interval's.
    carried: Mutex<Vec<AuditEvent>>,
}

/// The sources tracked, and how many of them are subjects.
#[derive(Debug, Default)]
struct Sources {
    table: HashMap<SourceKey, Source>,
    subjects: usize,
}

impl Sources {
    /// The key `key` is counted under: itself, or "other" once its kind's room is full.
    fn counted_key(&self, key: SourceKey) -> SourceKey {
        if self.table.contains_key(&key) {
            return key;
        }
        let taken = if key.is_anonymous() {
            self.table.len() - self.subjects
        } else {
            self.subjects
        };
        if taken >= MAX_SOURCES {
            SourceKey::Other
        } else {
            key
        }
    }
}

/// A source as counted: an IPv4 address, an IPv6 /64 (one subscriber's whole prefix; a
/// coarser prefix would let one host's flood take the checks of its neighbours' valid
/// tokens), the verified subject of a valid token refused something in a meeting (many
/// patients may share one address) — per kind of refusal, each with its own budget and
/// summary line — or "other" once the table is full.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SourceKey {
    Addr(IpAddr),
    Subject {
        event: SubjectRefusal,
        sub: String,
        meeting: String,
    },
    Other,
}

/// What a valid token's subject was refused: each is summarised under its own audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectRefusal {
    /// Entry to the meeting (`join_refused`).
    Join,
    /// A shared photo (`image_refused`).
    Image,
    /// Another participant's session, by a resume key not theirs (`resume_refused`).
    Resume,
}

impl SubjectRefusal {
    pub fn event(self) -> &'static str {
        match self {
            SubjectRefusal::Join => "join_refused",
            SubjectRefusal::Image => "image_refused",
            SubjectRefusal::Resume => "resume_refused",
        }
    }
}

impl SourceKey {
    fn of(ip: IpAddr) -> Self {
        SourceKey::Addr(crate::connection_limits::counted_source(ip))
    }

    /// Whether this is an anonymous source (an address, or "other"): their refusals are what
    /// the caps on lines are for, and never crowd out those of valid tokens' subjects.
    fn is_anonymous(&self) -> bool {
        !matches!(self, SourceKey::Subject { .. })
    }

    fn label(&self) -> String {
        match self {
            SourceKey::Addr(IpAddr::V6(a)) => format!("{a}/64"),
            SourceKey::Addr(a) => a.to_string(),
            SourceKey::Subject { .. } | SourceKey::Other => "other".into(),
        }
    }
}

impl TokenRefusals {
    pub fn new(budget: RefusalBudget) -> Self {
        Self {
            budget,
            sources: Mutex::new(Sources::default()),
            records: Mutex::new(TokenBucket::new(RECORDS_PER_SECOND, RECORDS_BURST)),
            carried: Mutex::new(Vec::new()),
        }
    }

    pub fn interval(&self) -> Duration {
        self.budget.interval
    }

    /// A token from `ip` was refused with `code`: whether to write it, count it, or answer 429.
    pub fn refused(&self, ip: IpAddr, code: &'static str, now: Instant) -> RefusalVerdict {
        self.refused_as(SourceKey::of(ip), code, now)
    }

    /// A valid token of `subject` was refused `what` with `code` (entry: another meeting,
    /// denied, not open yet; a photo not theirs; another's session): the same budget, per
    /// subject and kind — a patient's loop would otherwise write an fsynced line per request;
    /// summarised as lines of `what`'s event with the subject.
    pub fn refused_subject(
        &self,
        what: SubjectRefusal,
        subject: &str,
        meeting: &str,
        code: &'static str,
        now: Instant,
    ) -> RefusalVerdict {
        self.refused_as(
            SourceKey::Subject {
                event: what,
                sub: subject.to_owned(),
                meeting: meeting.to_owned(),
            },
            code,
            now,
        )
    }

    fn refused_as(&self, key: SourceKey, code: &'static str, now: Instant) -> RefusalVerdict {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let key = sources.counted_key(key);
        let anonymous = key.is_anonymous();
        if !anonymous && !sources.table.contains_key(&key) {
            sources.subjects += 1;
        }
        let s = sources.table.entry(key).or_insert_with(|| Source {
            budget: TokenBucket::new(
                f64::from(self.budget.per_minute) / 60.0,
                f64::from(self.budget.burst),
            ),
            last: now,
            unwritten: BTreeMap::new(),
            limited: 0,
            written_this_interval: false,
            checks: TokenBucket::new(CHECKS_WHILE_LIMITED, CHECKS_WHILE_LIMITED),
        });
        s.last = now;
        if !s.budget.take(now, 1.0) {
            *s.unwritten.entry(code).or_default() += 1;
            s.limited += 1;
            return RefusalVerdict::Limited;
        }
        if !s.written_this_interval
            && (!anonymous
                || self
                    .records
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(now, 1.0))
        {
            s.written_this_interval = true;
            RefusalVerdict::Record
        } else {
            *s.unwritten.entry(code).or_default() += 1;
            RefusalVerdict::Counted
        }
    }

    /// Whether a token from `ip` may have its signature checked now: always, unless the source
    /// is over its refusal budget and has used the checks it gets meanwhile. A token not
    /// checked is answered 429 and counted with the source's refusals (`unchecked`).
    pub fn may_check(&self, ip: IpAddr, now: Instant) -> bool {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        // (Once the table is full, a new address is counted as "other", as its refusals are.)
        let key = sources.counted_key(SourceKey::of(ip));
        let Some(s) = sources.table.get_mut(&key) else {
            return true;
        };
        if s.budget.available(now) >= 1.0 || s.checks.take(now, 1.0) {
            return true;
        }
        *s.unwritten.entry("unchecked").or_default() += 1;
        s.limited += 1;
        false
    }

    /// The line written at once for a source's first refusal of an interval.
    pub fn first_line(ip: IpAddr, code: &str) -> AuditEvent {
        AuditEvent {
            event: "token_refused".into(),
            code: Some(code.into()),
            source: Some(SourceKey::of(ip).label()),
            count: Some(1),
            ..Default::default()
        }
    }

    /// Ends the interval: one summary line per source with refusals not yet written (how
    /// many, by code, and how many got 429) — for the [`MAX_SUMMARY_LINES`] sources of each
    /// kind with the most, and one line for the rest together — and forgets sources that have
    /// been quiet for the whole interval.
    pub fn end_interval(&self, now: Instant) -> Vec<AuditEvent> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines = Vec::new();
        let quiet_for = self.budget.interval;
        let sources = &mut *sources;
        let subjects = &mut sources.subjects;
        sources.table.retain(|key, s| {
            let count: u64 = s.unwritten.values().sum();
            if count > 0 {
                let (event, source, subject, meeting) = match key {
                    SourceKey::Subject {
                        event,
                        sub,
                        meeting,
                    } => (
                        event.event(),
                        None,
                        Some(sub.clone()),
                        Some(meeting.clone()),
                    ),
                    _ => ("token_refused", Some(key.label()), None, None),
                };
                lines.push(AuditEvent {
                    event: event.into(),
                    source,
                    subject,
                    meeting,
                    count: Some(count),
                    codes: Some(
                        std::mem::take(&mut s.unwritten)
                            .into_iter()
                            .map(|(c, n)| (c.to_owned(), n))
                            .collect(),
                    ),
                    limited: (s.limited > 0).then_some(s.limited),
                    ..Default::default()
                });
                s.limited = 0;
            }
            s.written_this_interval = false;
            let kept = count > 0 || now.saturating_duration_since(s.last) < quiet_for;
            if !kept && !key.is_anonymous() {
                *subjects -= 1;
            }
            kept
        });
        let (mut anonymous, mut kept): (Vec<AuditEvent>, Vec<AuditEvent>) =
            lines.into_iter().partition(|l| l.event == "token_refused");
        anonymous.sort_by_key(|l| std::cmp::Reverse(l.count));
        let rest = anonymous.split_off(anonymous.len().min(MAX_SUMMARY_LINES));
        kept.extend(anonymous);
        if !rest.is_empty() {
            kept.push(together("token_refused", &rest));
        }
        kept.sort_by(|a, b| {
            (&a.event, &a.source, &a.subject).cmp(&(&b.event, &b.source, &b.subject))
        });
        let mut lines = std::mem::take(&mut *self.carried());
        lines.extend(kept);
        lines
    }

    /// Summary lines that could not be written (the audit log was unavailable): they go out
    /// with the next interval's. Past [`MAX_CARRIED`] (a long outage), the oldest are folded
    /// into one line per kind, so that the counts are kept, if not each source's own.
    pub fn carry(&self, lines: Vec<AuditEvent>) {
        let mut carried = self.carried();
        carried.extend(lines);
        if carried.len() > MAX_CARRIED {
            // Room for the folded lines, one per event.
            let fold = carried.len() - (MAX_CARRIED - KINDS);
            let mut kinds: BTreeMap<String, Vec<AuditEvent>> = BTreeMap::new();
            for l in carried.drain(..fold) {
                kinds.entry(l.event.clone()).or_default().push(l);
            }
            for (event, rest) in kinds.into_iter().rev() {
                carried.insert(0, together(&event, &rest));
            }
        }
    }

    fn carried(&self) -> std::sync::MutexGuard<'_, Vec<AuditEvent>> {
        self.carried.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One summary line for the `rest` of an interval's sources of one kind.
fn together(event: &str, rest: &[AuditEvent]) -> AuditEvent {
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    for l in rest {
        for (c, n) in l.codes.iter().flatten() {
            *codes.entry(c.clone()).or_default() += n;
        }
    }
    let limited: u64 = rest.iter().filter_map(|l| l.limited).sum();
    AuditEvent {
        event: event.into(),
        source: Some("other".into()),
        count: Some(rest.iter().filter_map(|l| l.count).sum()),
        codes: Some(codes),
        limited: (limited > 0).then_some(limited),
        // (A line may itself stand for several sources: one carried over, folded before.)
        sources: Some(rest.iter().map(|l| l.sources.unwrap_or(1)).sum()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood from as many addresses as the table holds: a patient's refused entry is still
    /// their own, written with their subject, not lost in "other".
    #[test]
    fn a_full_table_of_addresses_leaves_room_for_subjects() {
        let r = TokenRefusals::new(RefusalBudget::default());
        let t0 = Instant::now();
        for i in 0..MAX_SOURCES as u32 + 10 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            r.refused(ip, "token_bad_signature", t0);
        }
        assert_eq!(
            r.refused_subject(
                SubjectRefusal::Join,
                "pat-1",
                "visit-1",
                "meeting_not_open",
                t0
            ),
            RefusalVerdict::Record
        );
        r.refused_subject(
            SubjectRefusal::Join,
            "pat-1",
            "visit-1",
            "meeting_not_open",
            t0,
        );
        let lines = r.end_interval(t0 + Duration::from_secs(60));
        let mine: Vec<_> = lines.iter().filter(|l| l.event == "join_refused").collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].subject.as_deref(), Some("pat-1"));
        assert_eq!(mine[0].count, Some(1));
        // The addresses past the room are counted together, none lost.
        let counted: u64 = lines
            .iter()
            .filter(|l| l.event == "token_refused")
            .filter_map(|l| l.count)
            .sum();
        assert_eq!(counted, MAX_SOURCES as u64 + 10 - RECORDS_BURST as u64);
    }

    /// The audit log could not take an interval's summaries: they go out with the next
    /// interval's, and a long outage folds the oldest together without losing a count.
    #[test]
    fn summaries_the_log_could_not_take_are_written_later_and_counted_in_full() {
        let r = TokenRefusals::new(RefusalBudget::default());
        let t0 = Instant::now();
        let (mut total, mut written_at_once, mut patient_at_once) = (0, 0, 0);
        let mut note = |v: RefusalVerdict| {
            total += 1;
            written_at_once += u64::from(v == RefusalVerdict::Record);
        };
        // Each interval has a line per source for its 100 busiest, one for the rest, and the
        // patient's: twelve of them are more than can be held.
        let (rounds, per_round) = (12u32, 150u32);
        for round in 0..rounds {
            for i in 0..per_round {
                let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + round * 10_000 + i));
                for _ in 0..2 {
                    note(r.refused(ip, "token_expired", t0));
                }
            }
            for _ in 0..2 {
                let v = r.refused_subject(
                    SubjectRefusal::Join,
                    "pat-1",
                    "visit-1",
                    "meeting_not_open",
                    t0,
                );
                patient_at_once += u64::from(v == RefusalVerdict::Record);
                note(v);
            }
            let lines = r.end_interval(t0 + Duration::from_secs(60 * u64::from(round + 1)));
            assert!(!lines.is_empty());
            r.carry(lines);
        }
        let lines = r.end_interval(t0 + Duration::from_secs(600));
        assert!(
            lines.len() <= MAX_CARRIED + 102,
            "at most what is held and one interval's: {}",
            lines.len()
        );
        assert!(
            lines.iter().any(|l| l.sources.unwrap_or(1) > 100),
            "the oldest were folded"
        );
        // Every refusal is in a line: written at once, or counted in a summary.
        let counted: u64 = lines.iter().filter_map(|l| l.count).sum();
        assert_eq!(counted + written_at_once, total);
        // The folded line says how many sources it stands for.
        let sources: u64 = lines
            .iter()
            .filter(|l| l.event == "token_refused")
            .map(|l| l.sources.unwrap_or(1))
            .sum();
        assert_eq!(sources, u64::from(rounds * per_round));
        let patient: u64 = lines
            .iter()
            .filter(|l| l.event == "join_refused")
            .filter_map(|l| l.count)
            .sum();
        assert_eq!(
            patient + patient_at_once,
            u64::from(2 * rounds),
            "the patient's own"
        );
        assert!(r.end_interval(t0 + Duration::from_secs(700)).is_empty());
    }

    #[test]
    fn one_line_now_then_a_count_then_429_and_nothing_lost() {
        let r = TokenRefusals::new(RefusalBudget {
            burst: 5,
            per_minute: 60,
            interval: Duration::from_secs(60),
        });
        let ip: IpAddr = "198.18.0.7".parse().unwrap();
        let t0 = Instant::now();
        let verdicts: Vec<_> = (0..100)
            .map(|_| r.refused(ip, "token_bad_signature", t0))
            .collect();
        assert_eq!(verdicts[0], RefusalVerdict::Record);
        assert!(verdicts[1..5].iter().all(|v| *v == RefusalVerdict::Counted));
        assert!(verdicts[5..].iter().all(|v| *v == RefusalVerdict::Limited));
        // Another source is unaffected.
        let other: IpAddr = "198.18.0.8".parse().unwrap();
        assert_eq!(
            r.refused(other, "token_expired", t0),
            RefusalVerdict::Record
        );
        // A second later the budget has one more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(r.refused(ip, "token_expired", t1), RefusalVerdict::Counted);
        let lines = r.end_interval(t1);
        assert_eq!(
            lines.len(),
            1,
            "the other source's one refusal is already written"
        );
        let l = &lines[0];
        assert_eq!(l.source.as_deref(), Some("198.18.0.7"));
        assert_eq!(l.count, Some(100), "99 of the first burst and one more");
        assert_eq!(l.limited, Some(95));
        let codes = l.codes.as_ref().unwrap();
        assert_eq!(codes["token_bad_signature"], 99);
        assert_eq!(codes["token_expired"], 1);
        // A new interval writes the first refusal again; nothing to summarise meanwhile.
        assert!(r.end_interval(t1).is_empty());
        let t2 = t1 + Duration::from_secs(30);
        assert_eq!(r.refused(ip, "token_expired", t2), RefusalVerdict::Record);
    }

    #[test]
    fn a_source_over_its_budget_gets_few_signature_checks_and_the_rest_are_counted() {
        let r = TokenRefusals::new(RefusalBudget {
            burst: 5,
            per_minute: 60,
            interval: Duration::from_secs(60),
        });
        let ip: IpAddr = "198.18.0.9".parse().unwrap();
        let t0 = Instant::now();
        // Within the budget every token is checked.
        for _ in 0..5 {
            assert!(r.may_check(ip, t0));
            r.refused(ip, "token_bad_signature", t0);
        }
        // Over it: a burst of checks, then none until they refill.
        let checked = (0..1000)
            .filter(|_| {
                let ok = r.may_check(ip, t0);
                if ok {
                    r.refused(ip, "token_bad_signature", t0);
                }
                ok
            })
            .count();
        assert_eq!(checked, CHECKS_WHILE_LIMITED as usize);
        // Another address is unaffected.
        assert!(r.may_check("198.18.0.10".parse().unwrap(), t0));
        // 100 ms later, two more (20 a second).
        let t1 = t0 + Duration::from_millis(100);
        let later = (0..10).filter(|_| r.may_check(ip, t1)).count();
        assert_eq!(later, 2);
        // Every request is in the summary (but the first, written at once): 4 + 20 checked
        // and refused, 988 unchecked.
        let lines = r.end_interval(t1);
        let l = &lines[0];
        assert_eq!(l.count, Some(4 + 20 + 988));
        assert_eq!(l.codes.as_ref().unwrap()["unchecked"], 988);
        // Once the budget refills (a second at 60 a minute), checks are not limited.
        let t2 = t1 + Duration::from_secs(2);
        assert!((0..50).all(|_| r.may_check(ip, t2)));
    }

    #[test]
    fn an_ipv6_prefix_is_one_source() {
        let r = TokenRefusals::new(RefusalBudget::default());
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(r.refused(a, "token_malformed", t), RefusalVerdict::Record);
        assert_eq!(r.refused(b, "token_malformed", t), RefusalVerdict::Counted);
        // Another /64 of the same /48 is another source (its valid tokens keep their checks).
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(r.refused(c, "token_malformed", t), RefusalVerdict::Record);
        let lines = r.end_interval(t);
        assert_eq!(lines[0].source.as_deref(), Some("2001:db8:1:2::/64"));
    }

    /// Refusals from thousands of sources (the /64s of a /48, each sending one bad token a
    /// minute): a bounded number of lines written at once and at the interval's end, and every
    /// refusal counted in them. Valid tokens' subjects refused meanwhile keep their lines.
    #[test]
    fn many_sources_write_a_bounded_number_of_lines_and_lose_no_count() {
        let r = TokenRefusals::new(RefusalBudget::default());
        let t = Instant::now();
        let sources = 5_000u32;
        let recorded = (0..sources)
            .map(|n| {
                let ip = IpAddr::V6(((0x2001_0db8_0001u128 << 80) | (u128::from(n) << 64)).into());
                r.refused(ip, "token_bad_signature", t)
            })
            .filter(|v| *v == RefusalVerdict::Record)
            .count();
        assert_eq!(recorded, RECORDS_BURST as usize);
        // A patient's valid token refused entry is written at once all the same.
        assert_eq!(
            r.refused_subject(SubjectRefusal::Join, "pat-1", "v-1", "meeting_not_open", t),
            RefusalVerdict::Record
        );
        let lines = r.end_interval(t);
        assert_eq!(lines.len(), MAX_SUMMARY_LINES + 1);
        let counted: u64 = lines.iter().filter_map(|l| l.count).sum();
        assert_eq!(counted as usize + recorded, sources as usize);
        let rest = lines.iter().find(|l| l.sources.is_some()).unwrap();
        assert_eq!(rest.source.as_deref(), Some("other"));
        assert_eq!(
            rest.sources,
            Some(u64::from(sources) - RECORDS_BURST as u64 - MAX_SUMMARY_LINES as u64)
        );
        // The global budget refills: a second later, five sources more are written at once.
        let t1 = t + Duration::from_secs(1);
        let again = (0..20u32)
            .filter(|n| {
                let ip = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + n));
                r.refused(ip, "token_expired", t1) == RefusalVerdict::Record
            })
            .count();
        assert_eq!(again, RECORDS_PER_SECOND as usize);
    }

    /// A patient looping over photos not theirs: written once, then counted, then 429 — on a
    /// budget of its own, so that their entry to the meeting is neither spent nor summarised
    /// with it.
    #[test]
    fn a_subjects_photo_refusals_are_their_own_line_and_budget() {
        let r = TokenRefusals::new(RefusalBudget::default());
        let t = Instant::now();
        let image = |code| r.refused_subject(SubjectRefusal::Image, "pat-1", "v-1", code, t);
        let verdicts: Vec<_> = (0..12).map(|_| image("image_unknown")).collect();
        assert_eq!(verdicts[0], RefusalVerdict::Record);
        assert!(
            verdicts[1..10]
                .iter()
                .all(|v| *v == RefusalVerdict::Counted)
        );
        assert!(verdicts[10..].iter().all(|v| *v == RefusalVerdict::Limited));
        assert_eq!(
            r.refused_subject(SubjectRefusal::Join, "pat-1", "v-1", "meeting_ended", t),
            RefusalVerdict::Record
        );
        let lines = r.end_interval(t);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].event, "image_refused");
        assert_eq!(lines[0].subject.as_deref(), Some("pat-1"));
        assert_eq!(lines[0].count, Some(11));
        assert_eq!(lines[0].limited, Some(2));
    }
}
