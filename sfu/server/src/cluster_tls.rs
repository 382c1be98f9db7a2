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
    ca: CertificateDer<'static>,
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

impl ClusterTls {
    /// Loads the CA certificate and this end's certificate chain and key (PEM files).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, ClusterTlsError> {
        let ca_der = CertificateDer::pem_slice_iter(&read(ca)?)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| ClusterTlsError::Pem {
                path: ca.to_owned(),
                what: "CA certificate",
            })?;
        let chain: Vec<_> = CertificateDer::pem_slice_iter(&read(cert)?)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(ClusterTlsError::Pem {
                path: cert.to_owned(),
                what: "certificate",
            });
        }
        let key_der =
            PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| ClusterTlsError::Pem {
                path: key.to_owned(),
                what: "private key",
            })?;
        Ok(Self {
            ca: ca_der,
            chain,
            key: key_der,
        })
    }

    fn roots(&self) -> Result<rustls::RootCertStore, ClusterTlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| ClusterTlsError::Tls(e.to_string()))?;
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

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // A dead peer is noticed within seconds; keep-alives keep a quiet link open.
    t.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
    t.max_idle_timeout(Some(
        std::time::Duration::from_secs(8)
            .try_into()
            .expect("8 s is a valid idle timeout"),
    ));
    t
}

/// Writes a development cluster CA and certificates for signaling (`signaling.pem`, name
/// `signaling`) and one SFU node (`sfu.pem`) into `dir`. For development and tests only.
pub fn generate_dev_cluster(dir: &Path) -> Result<(), ClusterTlsError> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let gen_err = |e: rcgen::Error| ClusterTlsError::Generate(e.to_string());
    std::fs::create_dir_all(dir).map_err(|source| ClusterTlsError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "healthcare-sfu dev cluster CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let write = |name: &str, contents: String| -> Result<(), ClusterTlsError> {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|source| ClusterTlsError::Read { path, source })
    };
    write("ca.pem", ca_cert.pem())?;
    for name in ["signaling", "sfu"] {
        let key = KeyPair::generate().map_err(gen_err)?;
        let params = CertificateParams::new(vec![name.to_owned()]).map_err(gen_err)?;
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        write(&format!("{name}.pem"), cert.pem())?;
        write(&format!("{name}.key"), key.serialize_pem())?;
    }
    Ok(())
}
