//! TLS on both sides, rustls with the ring provider: a reloading certificate resolver for
//! the listener, and the client configuration towards an https upstream.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::ProxyError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn tls_error(path: &Path, what: &str) -> ProxyError {
    ProxyError::Tls(format!("{}: {what}", path.display()))
}

/// Loads a PEM certificate chain and private key into a signing key.
pub(crate) fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, ProxyError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|err| tls_error(cert, &format!("cannot read certificates: {err}")))?
        .collect::<Result<_, _>>()
        .map_err(|err| tls_error(cert, &format!("bad PEM certificate: {err}")))?;
    if chain.is_empty() {
        return Err(tls_error(cert, "no CERTIFICATE block found"));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|err| tls_error(key, &format!("no usable private key: {err}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|err| tls_error(key, &format!("unsupported private key: {err}")))?;
    let certified = CertifiedKey::new(chain, signing);
    // A reload can catch the key file already replaced and the certificate not yet: refuse
    // the pair (the old one keeps serving) rather than fail every handshake until the next poll.
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(err) => Err(tls_error(
            cert,
            &format!("does not match the private key in {}: {err}", key.display()),
        )),
    }
}

/// A certificate resolver that swaps in a new certificate when the files change.
#[derive(Debug)]
pub(crate) struct ReloadingResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    mtimes: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingResolver {
    pub(crate) fn load(
        cert_path: PathBuf,
        key_path: PathBuf,
    ) -> Result<ReloadingResolver, ProxyError> {
        let key = load_certified_key(&cert_path, &key_path)?;
        let mtimes = (mtime(&cert_path), mtime(&key_path));
        Ok(ReloadingResolver {
            cert_path,
            key_path,
            current: RwLock::new(Arc::new(key)),
            mtimes: RwLock::new(mtimes),
        })
    }

    /// Reloads when either file's mtime changed (or always with `force`, for SIGHUP).
    /// A bad new pair is logged and the old certificate kept.
    pub(crate) fn check(&self, force: bool) {
        let now = (mtime(&self.cert_path), mtime(&self.key_path));
        let changed = self.mtimes.read().map(|m| *m != now).unwrap_or(true);
        if !(changed || force) {
            return;
        }
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(key) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(key);
                }
                if let Ok(mut mtimes) = self.mtimes.write() {
                    *mtimes = now;
                }
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
            }
            Err(err) => {
                // Keep serving the old certificate; remember the mtimes so we log once
                // per change rather than every second.
                if let Ok(mut mtimes) = self.mtimes.write() {
                    *mtimes = now;
                }
                tracing::error!(error = %err, "TLS certificate reload failed; keeping the old one");
            }
        }
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|key| key.clone())
    }
}

/// The listener's TLS configuration: TLS 1.2 and 1.3, ALPN h2 and http/1.1.
pub(crate) fn server_config(resolver: Arc<ReloadingResolver>) -> Result<ServerConfig, ProxyError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|err| ProxyError::Tls(err.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The client configuration towards an https upstream.
pub(crate) fn client_config(
    upstream_ca: Option<&Path>,
    insecure: bool,
) -> Result<ClientConfig, ProxyError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|err| ProxyError::Tls(err.to_string()))?;
    let mut config = if insecure {
        tracing::warn!(
            "--insecure-upstream: upstream TLS certificates are NOT verified; anyone on the \
             path to the upstream can read and alter this traffic"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = upstream_ca {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|err| tls_error(path, &format!("cannot read CA certificates: {err}")))?
                .collect::<Result<_, _>>()
                .map_err(|err| tls_error(path, &format!("bad PEM certificate: {err}")))?;
            if certs.is_empty() {
                return Err(tls_error(path, "no CERTIFICATE block found"));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|err| tls_error(path, &format!("unusable CA certificate: {err}")))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // The upstream leg is HTTP/1.1: pooled, and what every inference server speaks.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `--insecure-upstream`: accepts any certificate, still checks handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
