//! Mutual TLS for the control link between signaling and SFU nodes: both ends present a
//! certificate issued by the cluster's CA and verify the other's against it.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// ALPN of the control protocol; a peer speaking anything else is refused at the handshake.
pub const CONTROL_ALPN: &[u8] = b"hc-sfu-control/1";

#[derive(Debug, thiserror::Error)]
pub enum ClusterTlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("generating certificates: {0}")]
    Generate(String),
}

pub struct ClusterTls {
    /// Every CA certificate of the CA file: during a rotation of the cluster's CA it holds the
    /// old and the new, and peers issued by either are accepted.
    cas: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClusterTlsError> {
    std::fs::read(path).map_err(|source| ClusterTlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in the PEM file at `path`; at least one, and none that fails to parse.
fn certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ClusterTlsError> {
    let bad = || ClusterTlsError::Pem {
        path: path.to_owned(),
        what,
    };
    let all = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad())?;
    if all.is_empty() {
        return Err(bad());
    }
    Ok(all)
}

impl ClusterTls {
    /// Loads the CA certificates (one, or a bundle during a CA rotation) and this end's
    /// certificate chain and key (PEM files). A certificate section that does not parse is an
    /// error naming its file, not skipped: a bundle cut short would otherwise leave one CA
    /// out without a word.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, ClusterTlsError> {
        let cas = certificates(ca, "CA certificate")?;
        let chain = certificates(cert, "certificate")?;
        let key_der =
            PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| ClusterTlsError::Pem {
                path: key.to_owned(),
                what: "private key",
            })?;
        let tls = Self {
            cas,
            chain,
            key: key_der,
        };
        tls.roots().map_err(|e| match e {
            ClusterTlsError::Tls(why) => ClusterTlsError::Tls(format!("{}: {why}", ca.display())),
            other => other,
        })?;
        Ok(tls)
    }

    fn roots(&self) -> Result<rustls::RootCertStore, ClusterTlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.cas {
            roots
                .add(ca.clone())
                .map_err(|e| ClusterTlsError::Tls(e.to_string()))?;
        }
        Ok(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// QUIC server side (signaling): requires an SFU node certificate from the cluster CA.
    pub fn quic_server(&self) -> Result<quinn::ServerConfig, ClusterTlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            Self::provider(),
        )
        .build()
        .map_err(|e| ClusterTlsError::Tls(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClusterTlsError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| ClusterTlsError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![CONTROL_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| ClusterTlsError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport()));
        Ok(config)
    }

    /// QUIC client side (SFU node): verifies signaling against the cluster CA.
    pub fn quic_client(&self) -> Result<quinn::ClientConfig, ClusterTlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClusterTlsError::Tls(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| ClusterTlsError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![CONTROL_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClusterTlsError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport()));
        Ok(config)
    }
}

/// One file's identity and state, to tell a replaced file from the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    modified: std::time::SystemTime,
}

/// This end's cluster certificate files, read again while the process runs: a certificate
/// renewed in place (cert-manager's CSI driver renews each pod's own, short-lived one; a
/// mounted Secret is updated when its certificate is reissued) is used from the next handshake
/// on, without a restart.
#[derive(Debug, Clone)]
pub struct ClusterTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClusterTlsFiles {
    pub fn load(&self) -> Result<ClusterTls, ClusterTlsError> {
        ClusterTls::load(&self.ca, &self.cert, &self.key)
    }

    /// What tells that a file changed: its device, inode, size and modification time (through
    /// symbolic links, as Kubernetes swaps a volume's files; a copy that kept the old time is a
    /// new inode). `None` while one cannot be read.
    pub fn version(&self) -> Option<[FileVersion; 3]> {
        use std::os::unix::fs::MetadataExt;
        let of = |p: &Path| {
            let m = std::fs::metadata(p).ok()?;
            Some(FileVersion {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                modified: m.modified().ok()?,
            })
        };
        Some([of(&self.ca)?, of(&self.cert)?, of(&self.key)?])
    }

    /// Keeps `endpoint`'s server side on the files as they are, looking every `every`: new
    /// handshakes get a renewed certificate; links already up keep theirs. `loaded`: the
    /// files' [`Self::version`] read before the endpoint's configuration was loaded (a renewal
    /// in between is then seen). Files that do not load (caught mid-rewrite, or a broken
    /// renewal) leave the last that did, and are logged.
    pub async fn keep_serving(
        self,
        endpoint: quinn::Endpoint,
        loaded: Option<[FileVersion; 3]>,
        every: std::time::Duration,
    ) {
        let mut seen = loaded;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = self.version();
            if now.is_none() || now == seen {
                continue;
            }
            match self.load().and_then(|t| t.quic_server()) {
                Ok(config) => {
                    endpoint.set_server_config(Some(config));
                    seen = now;
                    tracing::info!(cert = %self.cert.display(), "cluster certificate reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster certificate files changed but do not load; the last that did is kept")
                }
            }
        }
    }
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // A dead peer is noticed within 2.5 s (a killed node's visits then move to another node:
    // the goal is media back within 5 s, and a client's restart takes 1–2 s of it);
    // keep-alives every 500 ms keep a quiet link open, so only five missed keep-alives in a row
    // on the cluster network count as death.
    t.keep_alive_interval(Some(std::time::Duration::from_millis(500)));
    t.max_idle_timeout(Some(
        std::time::Duration::from_millis(2500)
            .try_into()
            .expect("2.5 s is a valid idle timeout"),
    ));
    t
}

/// Writes a development cluster CA and certificates for signaling (`signaling.pem`, name
/// `signaling`) and one SFU node (`sfu.pem`, name `sfu`) into `dir`. For development and tests.
pub fn generate_dev_cluster(dir: &Path) -> Result<(), ClusterTlsError> {
    issue_cluster(dir, &["sfu".to_owned()]).map(|_| ())
}

/// Writes `bytes` to a new file only this user may read (mode 0600); an existing file is an
/// error, so a key is never replaced by accident.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClusterTlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| ClusterTlsError::Read {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), ClusterTlsError> {
    std::fs::write(path, bytes).map_err(|source| ClusterTlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The cluster's CA in `dir` (`ca.pem`, `ca.key` mode 0600), made when missing and kept, so
/// more certificates can be issued from it later; then a certificate for signaling (made
/// once) and one per node name in `nodes` (`<name>.pem`, `<name>.key`, the name as the
/// certificate's DNS name — signaling accepts a node only under a name its certificate
/// carries). Existing files are never overwritten. Returns the files written.
pub fn issue_cluster(dir: &Path, nodes: &[String]) -> Result<Vec<PathBuf>, ClusterTlsError> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let gen_err = |e: rcgen::Error| ClusterTlsError::Generate(e.to_string());
    std::fs::create_dir_all(dir).map_err(|source| ClusterTlsError::Read {
        path: dir.to_owned(),
        source,
    })?;
    for name in nodes {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if !ok || name == "ca" || name == "signaling" {
            return Err(ClusterTlsError::Generate(format!(
                "node name {name:?}: lower-case letters, digits and dashes (a DNS label), not ca or signaling"
            )));
        }
    }
    let mut written = Vec::new();
    let (ca_pem, ca_key_pem) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca_params = || -> Result<CertificateParams, ClusterTlsError> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "healthcare-sfu cluster CA");
        Ok(p)
    };
    let issuer = if ca_key_pem.exists() {
        let key_text =
            std::fs::read_to_string(&ca_key_pem).map_err(|source| ClusterTlsError::Read {
                path: ca_key_pem.clone(),
                source,
            })?;
        let key = KeyPair::from_pem(&key_text).map_err(gen_err)?;
        // The issuer is the CA's name and key: certificates issued now chain to the same
        // ca.pem as before.
        Issuer::new(ca_params()?, key)
    } else {
        let key = KeyPair::generate().map_err(gen_err)?;
        let params = ca_params()?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        write_private(&ca_key_pem, key.serialize_pem().as_bytes())?;
        write_public(&ca_pem, cert.pem().as_bytes())?;
        written.extend([ca_pem.clone(), ca_key_pem.clone()]);
        Issuer::new(params, key)
    };
    let mut names: Vec<&str> = Vec::new();
    if !dir.join("signaling.key").exists() {
        names.push("signaling");
    }
    names.extend(nodes.iter().map(String::as_str));
    for name in names {
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        if key_path.exists() {
            return Err(ClusterTlsError::Generate(format!(
                "{} exists: a node name is issued once (remove its files to issue it again)",
                key_path.display()
            )));
        }
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(gen_err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&cert_path, cert.pem().as_bytes())?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

/// Whether the certificate (DER) a peer presented carries `name` as a DNS name.
pub fn certificate_names(cert: &[u8], name: &str) -> bool {
    let Ok(server_name) = rustls::pki_types::ServerName::try_from(name.to_owned()) else {
        return false;
    };
    let der = CertificateDer::from(cert.to_vec());
    webpki::EndEntityCert::try_from(&der)
        .and_then(|c| c.verify_is_valid_for_subject_name(&server_name))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Signaling's QUIC endpoint on loopback with `tls`, accepting every link it verifies.
    fn serve(tls: &ClusterTls) -> quinn::Endpoint {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server =
            quinn::Endpoint::server(tls.quic_server().unwrap(), "127.0.0.1:0".parse().unwrap())
                .unwrap();
        tokio::spawn({
            let server = server.clone();
            async move {
                while let Some(incoming) = server.accept().await {
                    tokio::spawn(async move {
                        // Only a link the server verified is told so.
                        if let Ok(conn) = incoming.await {
                            if let Ok(mut told) = conn.open_uni().await {
                                let _ = told.write_all(b"linked").await;
                                let _ = told.finish();
                            }
                            conn.closed().await;
                        }
                    });
                }
            }
        });
        server
    }

    /// Whether a node with `tls` links to signaling at `addr`, each verifying the other.
    async fn dials(tls: &ClusterTls, addr: std::net::SocketAddr) -> bool {
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(tls.quic_client().unwrap());
        // The client's side of a handshake completes before the server has verified the
        // client's certificate: only the server's word says it was accepted.
        let linked = async {
            let conn = client.connect(addr, "signaling").ok()?.await.ok()?;
            let mut told = conn.accept_uni().await.ok()?;
            told.read_to_end(16).await.ok()
        };
        let linked = tokio::time::timeout(std::time::Duration::from_secs(5), linked)
            .await
            .ok()
            .flatten()
            .is_some_and(|said| said == b"linked");
        client.close(0u32.into(), b"");
        linked
    }

    /// During a rotation of the cluster's CA, the CA file holds the old CA and the new: nodes
    /// issued by either link, both ways verified. A bundle with a section that does not
    /// parse is refused, naming the file, rather than read in part.
    #[tokio::test]
    async fn a_ca_bundle_accepts_peers_of_each_of_its_cas() {
        let base = std::env::temp_dir().join(format!("hc-rotate-{}", rand::random::<u64>()));
        let (old, new) = (base.join("old"), base.join("new"));
        generate_dev_cluster(&old).unwrap();
        generate_dev_cluster(&new).unwrap();
        let bundle = base.join("bundle.pem");
        let both = [
            std::fs::read(old.join("ca.pem")).unwrap(),
            std::fs::read(new.join("ca.pem")).unwrap(),
        ]
        .concat();
        std::fs::write(&bundle, &both).unwrap();
        let with = |ca: &Path, dir: &Path, name: &str| {
            ClusterTls::load(
                ca,
                &dir.join(format!("{name}.pem")),
                &dir.join(format!("{name}.key")),
            )
            .unwrap()
        };
        // Signaling still has the old CA's certificate; one node has been reissued.
        let server = serve(&with(&bundle, &old, "signaling"));
        let addr = server.local_addr().unwrap();
        assert!(dials(&with(&bundle, &old, "sfu"), addr).await, "old node");
        assert!(dials(&with(&bundle, &new, "sfu"), addr).await, "new node");
        // Trusting the old CA alone, the reissued node is refused: the bundle is what admits it.
        let old_only = serve(&with(&old.join("ca.pem"), &old, "signaling"));
        assert!(!dials(&with(&bundle, &new, "sfu"), old_only.local_addr().unwrap()).await);

        let cut = base.join("cut.pem");
        let text = String::from_utf8(both).unwrap();
        let second = text.rfind("-----BEGIN").unwrap();
        std::fs::write(
            &cut,
            format!(
                "{}{}",
                &text[..second + 40],
                "@@@\n-----END CERTIFICATE-----\n"
            ),
        )
        .unwrap();
        let err = ClusterTls::load(&cut, &old.join("sfu.pem"), &old.join("sfu.key")).unwrap_err();
        assert!(
            err.to_string().contains("cut.pem"),
            "the error names the file: {err}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A certificate renewed in place is served from the next handshake on: a node that
    /// trusts only the new issuer is refused the old certificate and accepted once the files
    /// are replaced, with no restart.
    #[tokio::test]
    async fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
        let base = std::env::temp_dir().join(format!("hc-renew-{}", rand::random::<u64>()));
        let (old, new, live) = (base.join("old"), base.join("new"), base.join("live"));
        generate_dev_cluster(&old).unwrap();
        generate_dev_cluster(&new).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        // Signaling trusts the new issuer's nodes, but still has the old issuer's certificate.
        let install = |from: &Path| {
            for f in ["signaling.pem", "signaling.key"] {
                let tmp = live.join(format!("{f}.tmp"));
                std::fs::copy(from.join(f), &tmp).unwrap();
                std::fs::rename(&tmp, live.join(f)).unwrap();
            }
        };
        std::fs::copy(new.join("ca.pem"), live.join("ca.pem")).unwrap();
        install(&old);
        let files = ClusterTlsFiles {
            ca: live.join("ca.pem"),
            cert: live.join("signaling.pem"),
            key: live.join("signaling.key"),
        };
        let loaded = files.version();
        let server = serve(&files.load().unwrap());
        let addr = server.local_addr().unwrap();
        tokio::spawn(files.clone().keep_serving(
            server.clone(),
            loaded,
            std::time::Duration::from_millis(50),
        ));
        let node = ClusterTls::load(
            &new.join("ca.pem"),
            &new.join("sfu.pem"),
            &new.join("sfu.key"),
        )
        .unwrap();
        let dial = async || dials(&node, addr).await;
        assert!(!dial().await, "the old issuer's certificate is not trusted");
        // (Renamed into place: new inodes, whatever their times.)
        install(&new);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if dial().await {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the renewed certificate was never served"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn keys_are_private_the_ca_is_kept_and_each_node_has_its_own_name() {
        let dir = std::env::temp_dir().join(format!("hc-certs-{}", rand::random::<u64>()));
        issue_cluster(&dir, &["sfu-1".into()]).unwrap();
        for key in ["ca.key", "signaling.key", "sfu-1.key"] {
            let mode = std::fs::metadata(dir.join(key))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
        // Later: another node from the same CA; nothing else is touched.
        let written = issue_cluster(&dir, &["sfu-2".into()]).unwrap();
        assert_eq!(written, vec![dir.join("sfu-2.pem"), dir.join("sfu-2.key")]);
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
        assert!(
            issue_cluster(&dir, &["sfu-2".into()]).is_err(),
            "issued once"
        );
        assert!(issue_cluster(&dir, &["Bad Name".into()]).is_err());
        // Both nodes load against the one CA, each carrying only its own name.
        for node in ["sfu-1", "sfu-2"] {
            ClusterTls::load(
                &dir.join("ca.pem"),
                &dir.join(format!("{node}.pem")),
                &dir.join(format!("{node}.key")),
            )
            .unwrap();
        }
        let pem = std::fs::read(dir.join("sfu-2.pem")).unwrap();
        let der = CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        assert!(certificate_names(&der, "sfu-2"));
        assert!(!certificate_names(&der, "sfu-1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
