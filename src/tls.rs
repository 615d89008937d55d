//! TLS for the embedded default: a private CA whose certificate clients trust (`DIR/ca.pem`) and
//! a server certificate it signs. The CA's private key is discarded right after signing, so
//! nobody can mint further certificates under it. An operator may replace `DIR/tls/server.pem`
//! and `DIR/tls/server.key` with a certificate of their own PKI.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::fsutil::write_atomic;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the TLS certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TLS files are not usable: {0}")]
    Invalid(String),
}

pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The names a generated certificate covers, one a line: written beside it, so that a
    /// change of the configured names makes a new one, and an operator's own certificate
    /// (which has no such file) is never replaced.
    pub names: PathBuf,
}

impl TlsPaths {
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            ca: data_dir.join("ca.pem"),
            cert: data_dir.join("tls").join("server.pem"),
            key: data_dir.join("tls").join("server.key"),
            names: data_dir.join("tls").join("generated-names"),
        }
    }
}

/// Creates the CA and server certificate unless both already exist; makes them again when
/// the service generated them for other names than `hosts` (a new CA too: its key was thrown
/// away, so clients must trust the new `ca.pem`). `hosts` become the certificate's subject
/// alternative names (names and IP addresses).
pub fn ensure_certificate(paths: &TlsPaths, hosts: &[String]) -> Result<bool, TlsError> {
    let wanted = hosts.join("\n") + "\n";
    if paths.cert.exists() && paths.key.exists() {
        match std::fs::read_to_string(&paths.names) {
            Ok(made_for) if made_for == wanted => return Ok(false),
            Ok(_) => tracing::warn!(
                ca = %paths.ca.display(),
                "the certificate names changed: making a new CA and server certificate; clients must trust the new CA file"
            ),
            // Not made by this release, or the operator's own: kept as it is.
            Err(_) => return Ok(false),
        }
    }
    let year = 1970 + (crate::clock::Clock::now(&crate::clock::SystemClock) / 31_556_952) as i32;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "p11vault local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = date_time_ymd(year - 1, 1, 1);
    ca_params.not_after = date_time_ymd(year + 10, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "p11vault");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = date_time_ymd(year - 1, 1, 1);
    params.not_after = date_time_ymd(year + 5, 1, 1);
    let server_cert = params.signed_by(&server_key, &issuer)?;
    // `issuer` (and with it the CA's private key) is dropped at the end of this function.

    if let Some(dir) = paths.key.parent() {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    let write = |path: &PathBuf, contents: &[u8], mode| {
        write_atomic(path, contents, mode).map_err(|source| TlsError::Io {
            path: path.clone(),
            source,
        })
    };
    write(&paths.key, server_key.serialize_pem().as_bytes(), 0o600)?;
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    write(&paths.cert, chain.as_bytes(), 0o644)?;
    write(&paths.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write(&paths.names, wanted.as_bytes(), 0o644)?;
    Ok(true)
}

/// The rustls server configuration (ring provider, TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1).
pub fn server_config(paths: &TlsPaths) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(&paths.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", paths.cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", paths.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An HTTPS client that trusts only the CA in `ca` (the admin CLI talking to the service, and
/// the integration tests).
pub fn client_agent(ca: &Path, timeout: std::time::Duration) -> Result<ureq::Agent, TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| TlsError::Invalid(format!("cannot read {}: {e}", ca.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| TlsError::Invalid(format!("{} is not PEM: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid(format!("{} is not a CA: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .timeout(timeout)
        .build())
}
