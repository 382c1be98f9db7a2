//! One participant's WebRTC transport: ICE-lite ([`IceLite`]), the DTLS server (`rtc-dtls`) and,
//! once the handshake completes, the SRTP contexts keyed from the DTLS exporter.
//!
//! This is the slow path: STUN and DTLS datagrams come in, datagrams and state changes go out.
//! Media never passes through here; the forwarding core uses the SRTP contexts directly.

use crate::data_channel_link::{DataChannelLink, DataMessage};
use crate::ice_lite::{IceCredentials, IceEvent, IceLite};
use crate::srtp_context::{MASTER_KEY_LEN, MASTER_SALT_LEN, MasterKey, SrtpContext};
use bytes::BytesMut;
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_shared::TransportProtocol;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// DTLS runs over whatever pair ICE selected, so its endpoint sees one fixed placeholder peer;
/// a changed path (mobile network switch) keeps the DTLS association.
const DTLS_TUNNEL_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(0, 0, 0, 1)), 9);

/// Shared, per-worker transport settings.
#[derive(Clone)]
pub struct TransportConfig {
    pub crypto: Arc<dyn rtc_crypto::RTCCryptoProvider>,
    /// The worker's DTLS certificate; its fingerprint goes into every answer.
    pub certificate: Certificate,
    pub fingerprint_sha256: String,
    /// The address clients are told to send to (the worker's advertised candidate).
    pub advertised_addr: SocketAddr,
    /// The worker's ICE-TCP listener as clients reach it, when it has one.
    pub tcp_advertised_addr: Option<SocketAddr>,
    /// No consent (STUN) for this long: disconnected; the session is torn down after `failed`.
    pub consent_disconnected: Duration,
    pub consent_failed: Duration,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("advertised_addr", &self.advertised_addr)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("DTLS: {0}")]
    Dtls(String),
    #[error("SRTP keying: {0}")]
    Srtp(#[from] crate::srtp_context::SrtpError),
    #[error("certificate: {0}")]
    Certificate(String),
}

impl TransportConfig {
    /// Generates a fresh ECDSA P-256 certificate for a worker.
    pub fn generate(
        advertised_addr: SocketAddr,
        consent_disconnected: Duration,
        consent_failed: Duration,
    ) -> Result<Self, TransportError> {
        let crypto = rtc_crypto::default_provider()
            .map_err(|e| TransportError::Certificate(e.to_string()))?;
        let certificate =
            Certificate::generate_self_signed(vec!["sfu".to_owned()], crypto.crypto())
                .map_err(|e| TransportError::Certificate(e.to_string()))?;
        let der = certificate
            .certificate
            .first()
            .ok_or_else(|| TransportError::Certificate("empty chain".into()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
        let fingerprint_sha256 = digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        Ok(Self {
            crypto,
            certificate,
            fingerprint_sha256,
            advertised_addr,
            tcp_advertised_addr: None,
            consent_disconnected,
            consent_failed,
        })
    }
}

impl TransportConfig {
    /// Also offers a passive ICE-TCP candidate at `addr`.
    pub fn with_tcp(mut self, addr: SocketAddr) -> Self {
        self.tcp_advertised_addr = Some(addr);
        self
    }
}

#[derive(Debug)]
pub enum TransportEvent {
    /// ICE selected this remote address (first time or after a path change).
    RemoteAddress(SocketAddr),
    /// DTLS completed: media keys are ready.
    Secured {
        outbound: Box<SrtpContext>,
        inbound: Box<SrtpContext>,
    },
    /// Consent expired or DTLS closed: the session is over.
    Closed(CloseCause),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    ConsentTimeout,
    DtlsClosed,
    DtlsFailed,
}

pub struct PeerTransport {
    ice: IceLite,
    dtls: Endpoint,
    config: TransportConfig,
    remote: Option<SocketAddr>,
    secured: bool,
    closed: bool,
    transmits: VecDeque<(SocketAddr, BytesMut)>,
    events: VecDeque<TransportEvent>,
    data: DataChannelLink,
    /// The browser's certificate fingerprint (lowercase hex with colons).
    remote_fingerprint: String,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("remote", &self.remote)
            .field("secured", &self.secured)
            .finish_non_exhaustive()
    }
}

fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Fresh local ICE credentials: 16 and 32 characters (RFC 8445 asks for ≥ 24 and 128 bits).
fn new_local_credentials() -> IceCredentials {
    IceCredentials {
        ufrag: random_token(16),
        pwd: random_token(32),
    }
}

impl PeerTransport {
    /// Creates the transport for a remote offer with the given ICE credentials and certificate
    /// fingerprint (`sha-256`, hex with colons).
    pub fn new(
        now: Instant,
        config: TransportConfig,
        remote_ufrag: &str,
        remote_pwd: &str,
        remote_fingerprint: &str,
    ) -> Result<Self, TransportError> {
        let ice = IceLite::new(
            now,
            config.crypto.clone(),
            new_local_credentials(),
            IceCredentials {
                ufrag: remote_ufrag.to_owned(),
                pwd: remote_pwd.to_owned(),
            },
            config.consent_disconnected,
            config.consent_failed,
        );

        let expected = remote_fingerprint.to_ascii_lowercase();
        let remote_fingerprint = expected.clone();
        let verify: rtc_dtls::config::VerifyPeerCertificateFn =
            Arc::new(move |certs: &[Vec<u8>], _| {
                let first = certs
                    .first()
                    .ok_or(rtc_shared::error::Error::ErrNonCertificate)?;
                let digest = ring::digest::digest(&ring::digest::SHA256, first);
                let actual = digest
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                if actual == expected {
                    Ok(())
                } else {
                    Err(rtc_shared::error::Error::ErrNoMatchingCertificateFingerprint)
                }
            });
        let handshake = ConfigBuilder::default()
            .with_crypto_provider(config.crypto.clone())
            .with_certificates(vec![config.certificate.clone()])
            // We implement the AEAD profile on the fast path; browsers all offer it.
            .with_srtp_protection_profiles(vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm])
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(false, None)
            .map_err(|e| TransportError::Dtls(e.to_string()))?;
        let dtls = Endpoint::new(
            config.advertised_addr,
            TransportProtocol::UDP,
            Some(Arc::new(handshake)),
        );
        let data = DataChannelLink::new(config.advertised_addr);
        Ok(Self {
            ice,
            dtls,
            config,
            remote: None,
            secured: false,
            closed: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            data,
            remote_fingerprint,
        })
    }

    pub fn local_ufrag(&self) -> &str {
        &self.ice.local().ufrag
    }

    pub fn local_pwd(&self) -> &str {
        &self.ice.local().pwd
    }

    /// Whether `fingerprint` (as an SDP states it) names the certificate this session's DTLS
    /// was set up for.
    pub fn is_remote_fingerprint(&self, fingerprint: &str) -> bool {
        self.remote_fingerprint.eq_ignore_ascii_case(fingerprint)
    }

    pub fn remote_ufrag(&self) -> &str {
        &self.ice.remote().ufrag
    }

    /// An ICE restart in place: new credentials for both sides; the DTLS association, the SRTP
    /// keys and the path in use stay until the browser nominates a path under the new ones.
    /// Returns the new local ufrag.
    pub fn restart_ice(&mut self, remote_ufrag: &str, remote_pwd: &str) -> String {
        self.ice.restart(
            new_local_credentials(),
            IceCredentials {
                ufrag: remote_ufrag.to_owned(),
                pwd: remote_pwd.to_owned(),
            },
        );
        self.ice.local().ufrag.clone()
    }

    /// Whether `addr` is the address the client nominated last and our check is proving.
    pub fn is_proving(&self, addr: SocketAddr) -> bool {
        self.ice.checking() == Some(addr)
    }

    /// The number of ICE restarts of this session so far.
    pub fn ice_generation(&self) -> u32 {
        self.ice.generation()
    }

    pub fn fingerprint(&self) -> &str {
        &self.config.fingerprint_sha256
    }

    /// A STUN datagram from `from` (binding request or indication). Returns false when the
    /// agent refused it (malformed, wrong credentials).
    pub fn handle_stun(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        if self.closed {
            return false;
        }
        let accepted = match self.ice.handle_stun(now, from, datagram) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "STUN datagram refused");
                false
            }
        };
        self.drain_agent();
        accepted
    }

    /// A DTLS datagram from the selected remote. Returns false when it was refused.
    pub fn handle_dtls(&mut self, now: Instant, datagram: &[u8]) -> bool {
        if self.closed || self.remote.is_none() {
            return false;
        }
        let result = self
            .dtls
            .read(now, DTLS_TUNNEL_PEER, None, BytesMut::from(datagram));
        let accepted = result.is_ok();
        match result {
            Ok(events) => {
                for event in events {
                    match event {
                        EndpointEvent::HandshakeComplete => {
                            if let Err(e) = self.export_keys() {
                                tracing::warn!(error = %e, "SRTP keying failed");
                                self.close(CloseCause::DtlsFailed);
                            }
                        }
                        EndpointEvent::PeerClosed => self.close(CloseCause::DtlsClosed),
                        EndpointEvent::ApplicationData(packet) => {
                            self.data.handle_packet(now, DTLS_TUNNEL_PEER, &packet)
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "DTLS datagram refused"),
        }
        self.flush_data(now);
        self.drain_dtls();
        accepted
    }

    /// SCTP packets of the data channels go out as DTLS application data.
    fn flush_data(&mut self, now: Instant) {
        while let Some(packet) = self.data.poll_outgoing() {
            if self.secured
                && let Err(e) = self.dtls.write(now, DTLS_TUNNEL_PEER, &packet)
            {
                tracing::debug!(error = %e, "data channel packet not sent");
            }
        }
    }

    /// A message the participant sent on a data channel.
    pub fn poll_data_message(&mut self) -> Option<DataMessage> {
        self.data.poll_message()
    }

    /// Sends on the participant's channels labelled `label`; false when it has none open.
    pub fn send_data(&mut self, now: Instant, label: &str, binary: bool, data: &[u8]) -> bool {
        if self.closed {
            return false;
        }
        let sent = self.data.send(now, label, binary, data);
        self.flush_data(now);
        self.drain_dtls();
        sent
    }

    /// Data channel messages dropped since the last call (too large or backlog full).
    pub fn take_data_drops(&mut self) -> u64 {
        self.data.take_drops()
    }

    /// SCTP packets refused unread since the last call.
    pub fn take_sctp_refused(&mut self) -> u64 {
        self.data.take_refused_packets()
    }

    fn export_keys(&mut self) -> Result<(), TransportError> {
        let state = self
            .dtls
            .get_connection_state(DTLS_TUNNEL_PEER)
            .ok_or_else(|| TransportError::Dtls("no connection state".into()))?;
        if state.srtp_protection_profile() != SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm {
            return Err(TransportError::Dtls("unexpected SRTP profile".into()));
        }
        let material = state
            .export_keying_material(
                "EXTRACTOR-dtls_srtp",
                &[],
                2 * (MASTER_KEY_LEN + MASTER_SALT_LEN),
            )
            .map_err(|e| TransportError::Dtls(e.to_string()))?;
        let (local, remote) = MasterKey::pair_from_keying_material(material.as_ref(), false)?;
        let crypto = self.config.crypto.crypto();
        let outbound = Box::new(SrtpContext::new(crypto, &local)?);
        let inbound = Box::new(SrtpContext::new(crypto, &remote)?);
        self.secured = true;
        self.events
            .push_back(TransportEvent::Secured { outbound, inbound });
        Ok(())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.ice.handle_timeout(now);
        self.drain_agent();
        if self
            .dtls
            .poll_timeout(&DTLS_TUNNEL_PEER)
            .is_some_and(|t| t <= now)
            && let Err(e) = self.dtls.handle_timeout(DTLS_TUNNEL_PEER, now)
        {
            tracing::debug!(error = %e, "DTLS handshake gave up");
            self.close(CloseCause::DtlsFailed);
        }
        if self.data.poll_timeout().is_some_and(|t| t <= now) {
            self.data.handle_timeout(now);
            self.flush_data(now);
        }
        self.drain_dtls();
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        [
            self.ice.poll_timeout(),
            self.dtls.poll_timeout(&DTLS_TUNNEL_PEER),
            self.data.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TransportEvent> {
        self.events.pop_front()
    }

    /// Ends the session (signaling leave or removal). Sends a DTLS close_notify when possible.
    pub fn shutdown(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        let _ = self.dtls.close(now);
        self.drain_dtls();
        self.closed = true;
        self.ice.close();
    }

    fn close(&mut self, cause: CloseCause) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(TransportEvent::Closed(cause));
        }
    }

    fn drain_agent(&mut self) {
        while let Some((to, datagram)) = self.ice.poll_transmit() {
            self.transmits
                .push_back((to, BytesMut::from(&datagram[..])));
        }
        while let Some(event) = self.ice.poll_event() {
            match event {
                IceEvent::Selected(addr) => {
                    if self.remote != Some(addr) {
                        self.remote = Some(addr);
                        self.events.push_back(TransportEvent::RemoteAddress(addr));
                    }
                }
                IceEvent::Failed => self.close(CloseCause::ConsentTimeout),
                IceEvent::Disconnected | IceEvent::Reconnected => {}
            }
        }
    }

    fn drain_dtls(&mut self) {
        while let Some(t) = self.dtls.poll_transmit() {
            if let Some(remote) = self.remote {
                self.transmits.push_back((remote, t.message));
            }
        }
    }
}
