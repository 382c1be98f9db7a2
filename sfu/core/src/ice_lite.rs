//! The SFU's side of ICE (RFC 8445 ICE-lite, controlled): answers the browser's connectivity
//! checks, follows its latest nomination, keeps consent (RFC 7675) on the path in use, and
//! takes new credentials for an ICE restart without dropping the path it has.
//!
//! A lite agent sends no checks of its own. The browser (controlling, full ICE) checks every
//! candidate pair and nominates one with USE-CANDIDATE; it may nominate another later (a second
//! interface, a network change, a restart) and then checks only that one, so the lite side must
//! move with it (§7.3.1.5) — an agent that keeps the first nomination watches a pair nobody
//! sends on and declares a live session dead (ADR 0003).

use rtc_stun::attributes::{ATTR_ICE_CONTROLLED, ATTR_PRIORITY, ATTR_USE_CANDIDATE, ATTR_USERNAME};
use rtc_stun::fingerprint::FINGERPRINT;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::{
    BINDING_REQUEST, BINDING_SUCCESS, CLASS_INDICATION, METHOD_BINDING, Message, Setter,
    TransactionId,
};
use rtc_stun::textattrs::TextAttribute;
use rtc_stun::xoraddr::XorMappedAddress;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A restart's new path is taken before its nomination once the old one has had no consent
/// for this long (browsers check the path in use every 2.5 s at most; a dead one misses it).
const RESTART_ADOPT_AFTER: Duration = Duration::from_millis(1000);

/// Checks of our own in flight at once (one per address the browser nominated lately).
const MAX_PROBES: usize = 4;
/// Addresses remembered as proven (they answered a check of ours).
const MAX_VERIFIED: usize = 8;
/// A probe not answered in this long may be sent again on the next nomination.
const PROBE_RETRY: Duration = Duration::from_millis(500);

/// One side's ICE username fragment and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

/// Why a STUN datagram was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunRefusal {
    #[error("not a STUN message")]
    Malformed,
    #[error("not a binding request")]
    NotABindingRequest,
    #[error("USERNAME missing or not ours")]
    UnknownUsername,
    #[error("MESSAGE-INTEGRITY missing or wrong")]
    BadIntegrity,
    #[error("FINGERPRINT wrong")]
    BadFingerprint,
}

/// What the agent tells its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IceEvent {
    /// The browser nominated this address: media goes there from now on.
    Selected(SocketAddr),
    /// No consent for the disconnected timeout: the path is probably gone.
    Disconnected,
    /// Consent came back on the path in use.
    Reconnected,
    /// No consent for the disconnected plus the failed timeout (or never a nomination): over.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Alive,
    Disconnected,
    Failed,
}

/// Per-participant ICE-lite state. Sans-IO: datagrams and time come in, datagrams and events
/// go out.
pub struct IceLite {
    crypto: Arc<dyn rtc_crypto::RTCCryptoProvider>,
    local: IceCredentials,
    remote: IceCredentials,
    /// The credentials before the last restart: the browser keeps checking with them until it
    /// has applied the restart's answer, and those checks still carry consent.
    previous: Option<(IceCredentials, IceCredentials)>,
    /// How many times the session's ICE was restarted: the candidates of each new generation
    /// are offered at a higher priority (see `local_description::udp_priority`).
    generation: u32,
    selected: Option<SocketAddr>,
    /// The browser's latest nomination, while its address is being proven.
    wanted: Option<SocketAddr>,
    /// Our checks in flight: address, transaction id, the browser's password to verify the
    /// answer with, when sent.
    probes: Vec<(SocketAddr, [u8; 12], String, Instant)>,
    /// Addresses that answered a check of ours: media may go there.
    verified: Vec<SocketAddr>,
    /// The last authenticated check on the selected address (or when the agent started).
    last_consent: Instant,
    disconnected_after: Duration,
    failed_after: Duration,
    liveness: Liveness,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<IceEvent>,
}

impl std::fmt::Debug for IceLite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceLite")
            .field("selected", &self.selected)
            .field("liveness", &self.liveness)
            .finish_non_exhaustive()
    }
}

impl IceLite {
    pub fn new(
        now: Instant,
        crypto: Arc<dyn rtc_crypto::RTCCryptoProvider>,
        local: IceCredentials,
        remote: IceCredentials,
        disconnected_after: Duration,
        failed_after: Duration,
    ) -> Self {
        Self {
            crypto,
            local,
            remote,
            previous: None,
            generation: 0,
            selected: None,
            wanted: None,
            probes: Vec::new(),
            verified: Vec::new(),
            last_consent: now,
            disconnected_after,
            failed_after,
            liveness: Liveness::Alive,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn local(&self) -> &IceCredentials {
        &self.local
    }

    pub fn remote(&self) -> &IceCredentials {
        &self.remote
    }

    /// The local ufrag of the credentials before the last restart, while they are still
    /// accepted.
    pub fn previous_local_ufrag(&self) -> Option<&str> {
        self.previous.as_ref().map(|(l, _)| l.ufrag.as_str())
    }

    pub fn selected(&self) -> Option<SocketAddr> {
        self.selected
    }

    /// An ICE restart (RFC 8445 §9): new credentials on both sides. The path in use stays
    /// selected, and consent on it keeps counting, until the browser nominates a pair under
    /// the new credentials.
    pub fn restart(&mut self, local: IceCredentials, remote: IceCredentials) {
        let old_local = std::mem::replace(&mut self.local, local);
        let old_remote = std::mem::replace(&mut self.remote, remote);
        self.previous = Some((old_local, old_remote));
        self.generation = self.generation.saturating_add(1);
    }

    /// The number of ICE restarts so far (0 for the first credentials).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The browser's latest nomination while our check proves it (media goes there once
    /// the check is answered).
    pub fn checking(&self) -> Option<SocketAddr> {
        self.wanted
    }

    /// A STUN datagram from `from`. Authenticated binding requests are answered; indications
    /// are consent-neutral and ignored.
    pub fn handle_stun(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), StunRefusal> {
        if self.liveness == Liveness::Failed {
            return Err(StunRefusal::NotABindingRequest);
        }
        let mut m = Message::new();
        m.unmarshal_binary(datagram)
            .map_err(|_| StunRefusal::Malformed)?;
        if m.typ.method == METHOD_BINDING && m.typ.class == CLASS_INDICATION {
            return Ok(());
        }
        if m.typ == BINDING_SUCCESS {
            return self.handle_probe_answer(now, from, m);
        }
        if m.typ != BINDING_REQUEST {
            return Err(StunRefusal::NotABindingRequest);
        }
        FINGERPRINT
            .check(&m)
            .map_err(|_| StunRefusal::BadFingerprint)?;
        let username = TextAttribute::get_from_as(&m, ATTR_USERNAME)
            .map_err(|_| StunRefusal::UnknownUsername)?
            .text;
        let current = format!("{}:{}", self.local.ufrag, self.remote.ufrag);
        let (pwd, under_current, probe_as) = if username == current {
            (
                self.local.pwd.clone(),
                true,
                (self.local.clone(), self.remote.clone()),
            )
        } else if let Some((l, r)) = &self.previous
            && username == format!("{}:{}", l.ufrag, r.ufrag)
        {
            (l.pwd.clone(), false, (l.clone(), r.clone()))
        } else {
            return Err(StunRefusal::UnknownUsername);
        };
        MessageIntegrity::check(&mut m, pwd.as_bytes(), self.crypto.crypto())
            .map_err(|_| StunRefusal::BadIntegrity)?;

        self.respond(&m, from, pwd)?;
        // During a restart, a check under the new credentials proves the browser is at `from`
        // now. Chromium may send media on such a pair for seconds before it nominates it, so
        // when the old path has gone quiet the media moves there at once.
        let restart_path = under_current
            && self.previous.is_some()
            && now.saturating_duration_since(self.last_consent) > RESTART_ADOPT_AFTER;
        if m.contains(ATTR_USE_CANDIDATE) || restart_path {
            if under_current {
                // The browser uses the new credentials: the old ones are done.
                self.previous = None;
            }
            if self.selected != Some(from) {
                self.nominate(now, from, &probe_as.0, &probe_as.1);
            }
        }
        if self.selected == Some(from) {
            self.last_consent = now;
            if self.liveness == Liveness::Disconnected {
                self.liveness = Liveness::Alive;
                self.events.push_back(IceEvent::Reconnected);
            }
        }
        Ok(())
    }

    /// The browser nominated `to`. Media goes there only once `to` has answered a check of
    /// ours: the nomination alone is a packet anyone who knows the credentials can send with a
    /// forged source, and would turn a call's media on a stranger's address (RFC 7675).
    fn nominate(
        &mut self,
        now: Instant,
        to: SocketAddr,
        local: &IceCredentials,
        remote: &IceCredentials,
    ) {
        if self.verified.contains(&to) {
            self.wanted = None;
            self.select(to);
            return;
        }
        self.wanted = Some(to);
        if self
            .probes
            .iter()
            .any(|(a, _, _, at)| *a == to && now.saturating_duration_since(*at) < PROBE_RETRY)
        {
            return;
        }
        let txn = TransactionId::new();
        let mut m = Message::new();
        let built = m
            .build(&[
                Box::new(BINDING_REQUEST),
                Box::new(txn),
                Box::new(TextAttribute::new(
                    ATTR_USERNAME,
                    format!("{}:{}", remote.ufrag, local.ufrag),
                )),
            ])
            .map(|()| {
                m.add(ATTR_ICE_CONTROLLED, &rand::random::<u64>().to_be_bytes());
                m.add(
                    ATTR_PRIORITY,
                    &(((126u32) << 24) | (65535 << 8) | 255).to_be_bytes(),
                );
            })
            .and_then(|()| {
                MessageIntegrity::new_short_term_integrity_with_provider(
                    remote.pwd.clone(),
                    self.crypto.crypto(),
                )
                .add_to(&mut m)
            })
            .and_then(|()| FINGERPRINT.add_to(&mut m));
        if built.is_err() {
            return;
        }
        self.probes.retain(|(a, ..)| *a != to);
        if self.probes.len() >= MAX_PROBES {
            self.probes.remove(0);
        }
        self.probes
            .push((to, m.transaction_id.0, remote.pwd.clone(), now));
        self.transmits.push_back((to, m.raw));
    }

    /// The answer to one of our checks: its address is proven.
    fn handle_probe_answer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        mut m: Message,
    ) -> Result<(), StunRefusal> {
        let Some(i) = self
            .probes
            .iter()
            .position(|(a, txn, ..)| *a == from && *txn == m.transaction_id.0)
        else {
            return Err(StunRefusal::NotABindingRequest);
        };
        FINGERPRINT
            .check(&m)
            .map_err(|_| StunRefusal::BadFingerprint)?;
        let pwd = self.probes[i].2.clone();
        MessageIntegrity::check(&mut m, pwd.as_bytes(), self.crypto.crypto())
            .map_err(|_| StunRefusal::BadIntegrity)?;
        self.probes.remove(i);
        if !self.verified.contains(&from) {
            if self.verified.len() >= MAX_VERIFIED {
                self.verified.remove(0);
            }
            self.verified.push(from);
        }
        if self.wanted == Some(from) {
            self.wanted = None;
            self.select(from);
            // The answer is consent on the new path.
            self.last_consent = now;
        }
        Ok(())
    }

    fn select(&mut self, to: SocketAddr) {
        if self.selected != Some(to) {
            self.selected = Some(to);
            self.events.push_back(IceEvent::Selected(to));
        }
    }

    fn respond(
        &mut self,
        request: &Message,
        to: SocketAddr,
        pwd: String,
    ) -> Result<(), StunRefusal> {
        let mut out = Message::new();
        // (An ICE-TCP connection's peer is told its real address, not the core's name for it.)
        let seen = crate::stream_address::as_seen_by_peer(to);
        let built = out.build(&[
            Box::new(request.clone()),
            Box::new(BINDING_SUCCESS),
            Box::new(XorMappedAddress {
                ip: seen.ip(),
                port: seen.port(),
            }),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                pwd,
                self.crypto.crypto(),
            )),
            Box::new(FINGERPRINT),
        ]);
        built.map_err(|_| StunRefusal::Malformed)?;
        self.transmits.push_back((to, out.raw));
        Ok(())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let silent = now.saturating_duration_since(self.last_consent);
        if self.liveness != Liveness::Failed && silent > self.disconnected_after + self.failed_after
        {
            self.liveness = Liveness::Failed;
            self.events.push_back(IceEvent::Failed);
        } else if self.liveness == Liveness::Alive
            && self.selected.is_some()
            && silent > self.disconnected_after
        {
            self.liveness = Liveness::Disconnected;
            self.events.push_back(IceEvent::Disconnected);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        // Just past each deadline: `handle_timeout` compares strictly.
        let tick = Duration::from_millis(1);
        match self.liveness {
            Liveness::Failed => None,
            Liveness::Alive if self.selected.is_some() => {
                Some(self.last_consent + self.disconnected_after + tick)
            }
            _ => Some(self.last_consent + self.disconnected_after + self.failed_after + tick),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<IceEvent> {
        self.events.pop_front()
    }

    /// Ends the agent: nothing more is answered.
    pub fn close(&mut self) {
        self.liveness = Liveness::Failed;
    }
}

/// A controlling agent's connectivity check as a browser sends it (`USERNAME` is
/// `<answerer ufrag>:<offerer ufrag>`, signed with the answerer's password), with USE-CANDIDATE
/// when `nominate`. For test peers and load generators.
pub fn connectivity_check(
    username: &str,
    pwd: &str,
    nominate: bool,
    crypto: &dyn rtc_crypto::RTCCrypto,
) -> Vec<u8> {
    use rtc_stun::attributes::ATTR_ICE_CONTROLLING;
    use rtc_stun::message::{Setter, TransactionId};
    let mut m = Message::new();
    let setters: [Box<dyn Setter + '_>; 3] = [
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
    ];
    if m.build(&setters).is_err() {
        return Vec::new();
    }
    m.add(ATTR_ICE_CONTROLLING, &rand::random::<u64>().to_be_bytes());
    if nominate {
        m.add(ATTR_USE_CANDIDATE, &[]);
    }
    let signed = MessageIntegrity::new_short_term_integrity_with_provider(pwd.to_owned(), crypto)
        .add_to(&mut m)
        .and_then(|()| FINGERPRINT.add_to(&mut m));
    if signed.is_err() {
        return Vec::new();
    }
    m.raw
}

/// The answer a browser gives a check (a binding success to `from`, signed with `pwd`, the
/// answerer's own password), or `None` when `request` is not a signed binding request. For
/// test peers and load generators.
pub fn answer_check(
    request: &[u8],
    from: SocketAddr,
    pwd: &str,
    crypto: &dyn rtc_crypto::RTCCrypto,
) -> Option<Vec<u8>> {
    let mut req = Message::new();
    req.unmarshal_binary(request).ok()?;
    if req.typ != BINDING_REQUEST {
        return None;
    }
    MessageIntegrity::check(&mut req, pwd.as_bytes(), crypto).ok()?;
    let mut resp = Message::new();
    resp.build(&[
        Box::new(req.clone()),
        Box::new(BINDING_SUCCESS),
        Box::new(XorMappedAddress {
            ip: from.ip(),
            port: from.port(),
        }),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            pwd.to_owned(),
            crypto,
        )),
        Box::new(FINGERPRINT),
    ])
    .ok()?;
    Some(resp.raw)
}

#[cfg(test)]
// Tests start virtual time at one real instant.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use rtc_stun::message::{BINDING_ERROR, Getter};

    fn crypto() -> Arc<dyn rtc_crypto::RTCCryptoProvider> {
        rtc_crypto::default_provider().expect("ring provider")
    }

    fn creds(u: &str, p: &str) -> IceCredentials {
        IceCredentials {
            ufrag: u.into(),
            pwd: p.into(),
        }
    }

    fn agent(now: Instant) -> IceLite {
        IceLite::new(
            now,
            crypto(),
            creds("sfu1", "sfupassword-0000000000000000"),
            creds("br1", "browserpassword-000000000000"),
            Duration::from_secs(3),
            Duration::from_secs(10),
        )
    }

    fn check(username: &str, pwd: &str, nominate: bool) -> Vec<u8> {
        connectivity_check(username, pwd, nominate, crypto().crypto())
    }

    /// Plays the browser: answers the agent's last check to `at`, signed with `browser_pwd`.
    fn answer_probe(a: &mut IceLite, now: Instant, at: SocketAddr, browser_pwd: &str) {
        let mut probe = None;
        while let Some((to, raw)) = a.poll_transmit() {
            if to == at && raw.starts_with(&[0x00, 0x01]) {
                probe = Some(raw);
            }
        }
        let raw = probe.unwrap_or_else(|| panic!("a check of ours to {at}"));
        let answer = answer_check(&raw, at, browser_pwd, crypto().crypto()).expect("answerable");
        a.handle_stun(now, at, &answer).unwrap();
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn response_to(a: &mut IceLite) -> Message {
        let (_, raw) = a.poll_transmit().expect("a response");
        let mut m = Message::new();
        m.unmarshal_binary(&raw).unwrap();
        m
    }

    #[test]
    fn a_signed_check_is_answered_with_the_mapped_address_and_our_signature() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        let from = addr("192.0.2.7:5000");
        a.handle_stun(
            t0,
            from,
            &check("sfu1:br1", "sfupassword-0000000000000000", false),
        )
        .unwrap();
        let mut r = response_to(&mut a);
        assert_eq!(r.typ, BINDING_SUCCESS);
        let mut mapped = XorMappedAddress::default();
        mapped.get_from(&r).unwrap();
        assert_eq!(SocketAddr::new(mapped.ip, mapped.port), from);
        FINGERPRINT.check(&r).unwrap();
        MessageIntegrity::check(&mut r, b"sfupassword-0000000000000000", crypto().crypto())
            .unwrap();
        assert_ne!(r.typ, BINDING_ERROR);
        // Checked but not nominated: no path yet.
        assert_eq!(a.poll_event(), None);
        assert_eq!(a.selected(), None);
    }

    #[test]
    fn wrong_credentials_and_garbage_are_refused_without_an_answer() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        let from = addr("192.0.2.7:5000");
        assert_eq!(
            a.handle_stun(
                t0,
                from,
                &check("sfu1:br1", "not-the-password-000000000", true)
            ),
            Err(StunRefusal::BadIntegrity)
        );
        assert_eq!(
            a.handle_stun(
                t0,
                from,
                &check("other:br1", "sfupassword-0000000000000000", true)
            ),
            Err(StunRefusal::UnknownUsername)
        );
        assert_eq!(
            a.handle_stun(t0, from, &[0, 1, 0, 0, 0x21, 0x12]),
            Err(StunRefusal::Malformed)
        );
        let mut tampered = check("sfu1:br1", "sfupassword-0000000000000000", true);
        let n = tampered.len();
        tampered[n - 1] ^= 1;
        assert_eq!(
            a.handle_stun(t0, from, &tampered),
            Err(StunRefusal::BadFingerprint)
        );
        assert!(a.poll_transmit().is_none());
        assert_eq!(a.selected(), None);
    }

    #[test]
    fn the_latest_nomination_wins_and_consent_follows_it() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        let wifi = addr("192.0.2.7:5000");
        let other = addr("198.18.0.9:6000");
        let pwd = "sfupassword-0000000000000000";
        a.handle_stun(t0, wifi, &check("sfu1:br1", pwd, true))
            .unwrap();
        assert_eq!(
            a.poll_event(),
            None,
            "not before the address answered our check"
        );
        answer_probe(&mut a, t0, wifi, "browserpassword-000000000000");
        assert_eq!(a.poll_event(), Some(IceEvent::Selected(wifi)));
        let t1 = t0 + Duration::from_secs(1);
        a.handle_stun(t1, other, &check("sfu1:br1", pwd, true))
            .unwrap();
        answer_probe(&mut a, t1, other, "browserpassword-000000000000");
        assert_eq!(a.poll_event(), Some(IceEvent::Selected(other)));
        // The browser now keeps consent on `other` only: 30 s of that is a live session.
        let mut t = t1;
        for _ in 0..12 {
            t += Duration::from_millis(2500);
            a.handle_stun(t, other, &check("sfu1:br1", pwd, false))
                .unwrap();
            a.handle_timeout(t);
        }
        assert_eq!(a.poll_event(), None, "no disconnect while consent flows");
        // Checks on the abandoned address do not keep the session alive.
        for _ in 0..6 {
            t += Duration::from_millis(2500);
            a.handle_stun(t, wifi, &check("sfu1:br1", pwd, false))
                .unwrap();
            a.handle_timeout(t);
        }
        assert_eq!(a.poll_event(), Some(IceEvent::Disconnected));
        assert_eq!(a.poll_event(), Some(IceEvent::Failed));
    }

    #[test]
    fn a_nomination_from_an_address_that_does_not_answer_moves_no_media_there() {
        // Whoever knows the credentials can forge a nominating check from a stranger's
        // address; media goes only where our own check is answered by the browser.
        let t0 = Instant::now();
        let mut a = agent(t0);
        let phone = addr("192.0.2.7:5000");
        let stranger = addr("203.0.113.9:443");
        let pwd = "sfupassword-0000000000000000";
        a.handle_stun(t0, phone, &check("sfu1:br1", pwd, true))
            .unwrap();
        answer_probe(&mut a, t0, phone, "browserpassword-000000000000");
        assert_eq!(a.poll_event(), Some(IceEvent::Selected(phone)));
        a.handle_stun(t0, stranger, &check("sfu1:br1", pwd, true))
            .unwrap();
        // The stranger does not answer; a forged answer without the browser's password, or
        // for another transaction, is refused.
        let mut probe = None;
        while let Some((to, raw)) = a.poll_transmit() {
            if to == stranger && raw.starts_with(&[0x00, 0x01]) {
                probe = Some(raw);
            }
        }
        let mut req = Message::new();
        req.unmarshal_binary(&probe.expect("a check to the stranger"))
            .unwrap();
        let forged = |key: &str, txn: bool| {
            let provider = crypto();
            let mut resp = Message::new();
            let mut setters: Vec<Box<dyn Setter>> = Vec::new();
            if txn {
                setters.push(Box::new(req.clone()));
            } else {
                setters.push(Box::new(TransactionId::new()));
            }
            setters.push(Box::new(BINDING_SUCCESS));
            setters.push(Box::new(
                MessageIntegrity::new_short_term_integrity_with_provider(
                    key.to_owned(),
                    provider.crypto(),
                ),
            ));
            setters.push(Box::new(FINGERPRINT));
            resp.build(&setters).unwrap();
            resp.raw
        };
        assert_eq!(
            a.handle_stun(t0, stranger, &forged("guessed-password-0000000000", true)),
            Err(StunRefusal::BadIntegrity)
        );
        assert!(
            a.handle_stun(t0, stranger, &forged("browserpassword-000000000000", false))
                .is_err()
        );
        assert_eq!(a.selected(), Some(phone));
        assert_eq!(a.poll_event(), None);
    }

    #[test]
    fn consent_lost_then_regained_reports_both() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        let from = addr("192.0.2.7:5000");
        let pwd = "sfupassword-0000000000000000";
        a.handle_stun(t0, from, &check("sfu1:br1", pwd, true))
            .unwrap();
        answer_probe(&mut a, t0, from, "browserpassword-000000000000");
        a.poll_event();
        let deadline = a.poll_timeout().unwrap();
        assert!(deadline > t0 + Duration::from_secs(3));
        a.handle_timeout(deadline);
        assert_eq!(a.poll_event(), Some(IceEvent::Disconnected));
        a.handle_stun(deadline, from, &check("sfu1:br1", pwd, false))
            .unwrap();
        assert_eq!(a.poll_event(), Some(IceEvent::Reconnected));
    }

    #[test]
    fn a_session_never_nominated_fails_after_both_timeouts() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        a.handle_timeout(t0 + Duration::from_secs(12));
        assert_eq!(a.poll_event(), None);
        a.handle_timeout(t0 + Duration::from_secs(14));
        assert_eq!(a.poll_event(), Some(IceEvent::Failed));
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn after_a_restart_a_quiet_old_path_gives_way_to_a_checked_new_one_before_nomination() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        let wifi = addr("192.0.2.7:5000");
        let cell = addr("198.18.0.9:6000");
        let new_pwd = "sfupassword-1111111111111111";
        a.handle_stun(
            t0,
            wifi,
            &check("sfu1:br1", "sfupassword-0000000000000000", true),
        )
        .unwrap();
        answer_probe(&mut a, t0, wifi, "browserpassword-000000000000");
        a.poll_event();
        a.restart(
            creds("sfu2", new_pwd),
            creds("br2", "browserpassword-111111111111"),
        );
        // Checked under the new credentials while the old path is fresh: not yet.
        let t1 = t0 + Duration::from_millis(500);
        a.handle_stun(t1, cell, &check("sfu2:br2", new_pwd, false))
            .unwrap();
        assert_eq!(a.selected(), Some(wifi));
        // The old path has been quiet for over a second: the checked one carries media.
        let t2 = t0 + Duration::from_millis(1500);
        a.handle_stun(t2, cell, &check("sfu2:br2", new_pwd, false))
            .unwrap();
        answer_probe(&mut a, t2, cell, "browserpassword-111111111111");
        assert_eq!(a.poll_event(), Some(IceEvent::Selected(cell)));
        // Without a restart under way, an unnominated check never moves the path.
        let mut b = agent(t0);
        b.handle_stun(
            t0,
            wifi,
            &check("sfu1:br1", "sfupassword-0000000000000000", true),
        )
        .unwrap();
        answer_probe(&mut b, t0, wifi, "browserpassword-000000000000");
        b.poll_event();
        b.handle_stun(
            t2,
            cell,
            &check("sfu1:br1", "sfupassword-0000000000000000", false),
        )
        .unwrap();
        assert_eq!(b.selected(), Some(wifi));
    }

    #[test]
    fn a_restart_keeps_the_path_until_the_new_credentials_nominate() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        let wifi = addr("192.0.2.7:5000");
        let cell = addr("198.18.0.9:6000");
        let old_pwd = "sfupassword-0000000000000000";
        let new_pwd = "sfupassword-1111111111111111";
        a.handle_stun(t0, wifi, &check("sfu1:br1", old_pwd, true))
            .unwrap();
        answer_probe(&mut a, t0, wifi, "browserpassword-000000000000");
        a.poll_event();
        a.restart(
            creds("sfu2", new_pwd),
            creds("br2", "browserpassword-111111111111"),
        );
        assert_eq!(a.previous_local_ufrag(), Some("sfu1"));
        // Until the browser applies the answer it checks with the old credentials.
        let t1 = t0 + Duration::from_secs(2);
        a.handle_stun(t1, wifi, &check("sfu1:br1", old_pwd, false))
            .unwrap();
        assert!(a.poll_transmit().is_some());
        assert_eq!(a.selected(), Some(wifi));
        // New credentials signed with the old password are refused.
        assert_eq!(
            a.handle_stun(t1, cell, &check("sfu2:br2", old_pwd, true)),
            Err(StunRefusal::BadIntegrity)
        );
        a.handle_stun(t1, cell, &check("sfu2:br2", new_pwd, true))
            .unwrap();
        answer_probe(&mut a, t1, cell, "browserpassword-111111111111");
        assert_eq!(a.poll_event(), Some(IceEvent::Selected(cell)));
        assert_eq!(a.previous_local_ufrag(), None);
        assert_eq!(
            a.handle_stun(t1, wifi, &check("sfu1:br1", old_pwd, false)),
            Err(StunRefusal::UnknownUsername)
        );
    }
}
