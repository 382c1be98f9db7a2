//! One participant's WebRTC transport: ICE-lite (`rtc-ice`), the DTLS server (`rtc-dtls`) and,
//! once the handshake completes, the SRTP contexts keyed from the DTLS exporter.
//!
//! This is the slow path: STUN and DTLS datagrams come in, datagrams and state changes go out.
//! Media never passes through here; the forwarding core uses the SRTP contexts directly.

use crate::data_channel_link::{DataChannelLink, DataMessage};
use crate::srtp_context::{MASTER_KEY_LEN, MASTER_SALT_LEN, MasterKey, SrtpContext};
use bytes::BytesMut;
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_ice::candidate::CandidateConfig;
use rtc_ice::candidate::candidate_host::CandidateHostConfig;
use rtc_ice::state::ConnectionState;
use rtc_ice::{Agent, AgentConfig};
use rtc_shared::{TransportContext, TransportMessage, TransportProtocol};
use sansio::Protocol;
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
    #[error("ICE: {0}")]
    Ice(String),
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
            consent_disconnected,
            consent_failed,
        })
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
    agent: Agent,
    dtls: Endpoint,
    config: TransportConfig,
    remote: Option<SocketAddr>,
    secured: bool,
    closed: bool,
    transmits: VecDeque<(SocketAddr, BytesMut)>,
    events: VecDeque<TransportEvent>,
    local_ufrag: String,
    local_pwd: String,
    data: DataChannelLink,
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
        let local_ufrag = random_token(16);
        let local_pwd = random_token(32);
        let agent_config = AgentConfig {
            local_ufrag: local_ufrag.clone(),
            local_pwd: local_pwd.clone(),
            lite: true,
            is_controlling: false,
            candidate_types: vec![rtc_ice::candidate::CandidateType::Host],
            disconnected_timeout: Some(config.consent_disconnected),
            failed_timeout: Some(config.consent_failed),
            ..Default::default()
        };
        let mut agent = Agent::new(now, Arc::new(agent_config), config.crypto.clone())
            .map_err(|e| TransportError::Ice(e.to_string()))?;
        let host = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: config.advertised_addr.ip().to_string(),
                port: config.advertised_addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(|e| TransportError::Ice(e.to_string()))?;
        agent
            .add_local_candidate(host)
            .map_err(|e| TransportError::Ice(e.to_string()))?;
        agent
            .start_connectivity_checks(now, false, remote_ufrag.to_owned(), remote_pwd.to_owned())
            .map_err(|e| TransportError::Ice(e.to_string()))?;

        let expected = remote_fingerprint.to_ascii_lowercase();
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
            agent,
            dtls,
            config,
            remote: None,
            secured: false,
            closed: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            local_ufrag,
            local_pwd,
            data,
        })
    }

    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    pub fn local_pwd(&self) -> &str {
        &self.local_pwd
    }

    pub fn fingerprint(&self) -> &str {
        &self.config.fingerprint_sha256
    }

    fn context(&self, from: SocketAddr) -> TransportContext {
        TransportContext {
            local_addr: self.config.advertised_addr,
            peer_addr: from,
            transport_protocol: TransportProtocol::UDP,
            ecn: None,
        }
    }

    /// A STUN datagram from `from` (binding request or indication). Returns false when the
    /// agent refused it (malformed, wrong credentials).
    pub fn handle_stun(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        if self.closed {
            return false;
        }
        let msg = TransportMessage {
            now,
            transport: self.context(from),
            message: BytesMut::from(datagram),
        };
        let accepted = match self.agent.handle_read(msg) {
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
        if let Err(e) = self.agent.handle_timeout(now) {
            tracing::debug!(error = %e, "ICE timeout handling");
        }
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
            self.agent.poll_timeout(),
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
        let _ = self.agent.close();
    }

    fn close(&mut self, cause: CloseCause) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(TransportEvent::Closed(cause));
        }
    }

    fn drain_agent(&mut self) {
        while let Some(t) = self.agent.poll_write() {
            self.transmits.push_back((t.transport.peer_addr, t.message));
        }
        while let Some(evt) = self.agent.poll_event() {
            match evt.event {
                rtc_ice::Event::SelectedCandidatePairChange(_, remote) => {
                    let addr = remote.addr();
                    if self.remote != Some(addr) {
                        self.remote = Some(addr);
                        self.events.push_back(TransportEvent::RemoteAddress(addr));
                    }
                }
                rtc_ice::Event::ConnectionStateChange(state) => {
                    if matches!(state, ConnectionState::Failed | ConnectionState::Closed) {
                        self.close(CloseCause::ConsentTimeout);
                    }
                }
                _ => {}
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
