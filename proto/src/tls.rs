//! TLS plumbing shared by the coordinator and the agent.
//!
//! Both serve gRPC over a TLS acceptor of their own rather than tonic's built-in
//! one, for one reason: certificates are short-lived and renew while the process
//! runs. [`LiveCert`] is the server identity; [`LiveCert::replace`] swaps in a
//! renewed certificate, and every handshake after that presents it (connections
//! already open keep theirs — TLS checks a certificate only at the handshake).
//!
//! [`incoming`] turns a listener into the stream of TLS connections tonic's
//! `serve_with_incoming` takes; tonic then exposes the peer's certificates to
//! handlers (`Request::peer_certs`).
//!
//! [`fetch_pinned_ca`] is the first step of agent enrolment: before an agent has a
//! trust root, it learns the CA from the coordinator's handshake and accepts it
//! only if its SHA-256 matches the pin carried in the enrolment token.
//!
//! Only ring is used as the crypto provider.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};

/// A TLS setup failure: bad PEM, a key that doesn't match, a handshake that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn err(what: &str) -> impl FnOnce(rustls::Error) -> TlsError + '_ {
    move |e| TlsError(format!("{what}: {e}"))
}

/// The one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM text, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("reading certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

/// Hex SHA-256 of a DER blob: certificate fingerprints and the CA pin.
pub fn sha256_hex(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Hex SHA-256 of the first certificate of `ca_pem` (what enrolment tokens pin).
pub fn ca_pin(ca_pem: &str) -> Result<String, TlsError> {
    Ok(sha256_hex(&certs_from_pem(ca_pem)?[0]))
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem)? {
        roots.add(c).map_err(err("trust root"))?;
    }
    Ok(roots)
}

fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs_from_pem(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError(format!("reading the private key: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(err("certificate and key"))
}

/// A server identity that can be replaced while serving.
#[derive(Clone)]
pub struct LiveCert(Arc<RwLock<Arc<CertifiedKey>>>);

impl std::fmt::Debug for LiveCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCert { .. }")
    }
}

impl LiveCert {
    /// `chain_pem`: the leaf first, then (optionally) the CA, which lets an
    /// enrolling agent learn the CA from the handshake.
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Ok(LiveCert(Arc::new(RwLock::new(certified_key(
            chain_pem, key_pem,
        )?))))
    }

    /// Presents `chain_pem` / `key_pem` from the next handshake on.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let new = certified_key(chain_pem, key_pem)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Whether clients must present a certificate of the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client proves an identity (the agent's server: only the coordinator calls it).
    Required,
    /// A certificate, if presented, must verify; clients without one may still
    /// connect and authenticate otherwise (enrolment tokens, API tokens). Every
    /// handler decides what an anonymous caller may do.
    Optional,
}

/// A rustls server configuration speaking HTTP/2 with `cert` and trusting `ca_pem` for clients.
pub fn server_config(
    ca_pem: &str,
    cert: LiveCert,
    auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone());
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let verifier = builder
        .build()
        .map_err(|e| TlsError(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(err("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(cert));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS connection as tonic serves it.
pub type TlsConn = tokio_rustls::server::TlsStream<TcpStream>;

/// Accepts TCP connections on `listener` and yields those whose TLS handshake
/// succeeds. Handshakes run concurrently, so a slow client holds up nobody.
/// The accept loop ends when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    incoming_audited(listener, config, None)
}

/// Told of each handshake the server refused for the client's certificate:
/// the peer and [`refusal_reason`]'s words.
pub type OnRefused = Arc<dyn Fn(std::net::SocketAddr, &'static str) + Send + Sync>;

/// [`incoming`], telling `on_refused` of every handshake refused for the
/// client's certificate (another CA, expired, revoked): those callers never
/// reach a handler, so this is where their refusal can be audited.
/// Connections that close or speak no TLS are not refusals of an identity
/// and are only logged at DEBUG (health checks and port scans).
pub fn incoming_audited(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    on_refused: Option<OnRefused>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let on_refused = on_refused.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        if let (Some(f), Some(reason)) = (&on_refused, refusal_reason(&e)) {
                            f(peer, reason);
                        }
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Why a server refused a client's handshake because of its certificate, in
/// a few fixed words (a small set, so that an audit of them aggregates);
/// `None` when the failure is not about the client's identity (the
/// connection closed, or spoke no TLS).
pub fn refusal_reason(e: &std::io::Error) -> Option<&'static str> {
    use rustls::{CertificateError as C, Error as E};
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match inner {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "client certificate of an unknown CA"
        }
        E::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => "client certificate expired or not yet valid",
        E::InvalidCertificate(C::Revoked) => "client certificate revoked",
        E::InvalidCertificate(_) | E::InvalidCertRevocationList(_) => "client certificate invalid",
        _ => return None,
    })
}

/// Verifies a server whose chain carries a CA with the pinned SHA-256, against that CA.
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<CryptoProvider>,
    found: std::sync::Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256_hex(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's chain has no CA with the pinned fingerprint".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.clone().into_owned());
        Ok(verified)
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects to `addr` (`host:port`), checks that the server proves `server_name`
/// with a certificate of a CA whose SHA-256 is `pin`, and returns that CA as PEM.
/// Nothing is sent but the handshake.
pub async fn fetch_pinned_ca(addr: &str, server_name: &str, pin: &str) -> Result<String, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCa {
        pin: pin.to_ascii_lowercase(),
        provider: provider.clone(),
        found: std::sync::Mutex::new(None),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(err("protocol versions"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| TlsError(format!("server name {server_name:?}: {e}")))?;
    let connect = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| TlsError(format!("connecting to {addr}: {e}")))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| TlsError(format!("TLS handshake with {addr}: {e}")))
    };
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
        .await
        .map_err(|_| TlsError(format!("TLS handshake with {addr} timed out")))??;
    drop(conn);
    let ca = verifier
        .found
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| TlsError("the handshake did not show the pinned CA".into()))?;
    Ok(to_pem(&ca))
}

/// What a failed TLS connection means, read from the error a client got
/// (connect or first call), so that a message can say which side refused which
/// certificate instead of "transport error".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// We do not trust the server's certificate: it is not signed by our CA.
    ServerUnknownIssuer,
    /// The server's certificate is for another name (the names it carries).
    ServerWrongName(Vec<String>),
    /// The server's certificate has expired or is not valid yet.
    ServerExpired,
    /// Any other reason we refused the server's certificate (rustls' words).
    ServerCertificate(String),
    /// The server refused our certificate as not signed by its CA.
    OursUnknownCa,
    /// The server says our certificate was revoked.
    OursRevoked,
    /// The server says our certificate has expired (or is not valid yet).
    OursExpired,
    /// The server wants a certificate and we sent none.
    OursMissing,
    /// The server refused our certificate for another reason (the TLS alert).
    OursRefused(String),
    /// The peer does not speak TLS (a plaintext server on that port?).
    NotTls(String),
}

/// Finds the TLS failure, if any, in the source chain of `err` (tonic wraps
/// rustls' error in I/O errors, whose `source()` skips it: each is opened).
pub fn handshake_failure(err: &(dyn std::error::Error + 'static)) -> Option<HandshakeFailure> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>().and_then(classify) {
            return Some(found);
        }
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(classify)
        {
            return Some(found);
        }
        next = e.source();
    }
    None
}

fn classify(e: &rustls::Error) -> Option<HandshakeFailure> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    Some(match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => HandshakeFailure::ServerUnknownIssuer,
            C::NotValidForNameContext { presented, .. } => {
                HandshakeFailure::ServerWrongName(presented.clone())
            }
            C::NotValidForName => HandshakeFailure::ServerWrongName(Vec::new()),
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => HandshakeFailure::ServerExpired,
            other => HandshakeFailure::ServerCertificate(format!("{other:?}")),
        },
        E::AlertReceived(a) => match a {
            A::UnknownCA | A::BadCertificate | A::DecryptError => HandshakeFailure::OursUnknownCa,
            A::CertificateRevoked => HandshakeFailure::OursRevoked,
            A::CertificateExpired => HandshakeFailure::OursExpired,
            A::CertificateRequired => HandshakeFailure::OursMissing,
            other => HandshakeFailure::OursRefused(format!("{other:?}")),
        },
        E::InvalidMessage(m) => HandshakeFailure::NotTls(format!("{m:?}")),
        E::InappropriateMessage { .. } => HandshakeFailure::NotTls(e.to_string()),
        _ => return None,
    })
}

/// Asks a server how it judges this client's handshake, for an error message.
///
/// Under TLS 1.3 a server refuses a client certificate only after the
/// client's side of the handshake is done, so the refusal (an alert) reaches
/// the connection, not the call that failed, and the caller sees only "the
/// connection broke". This connects once more to `addr` (`host:port`), with
/// the same trust root and identity, and reads until the server either sends
/// data (it accepted: `None`) or an alert (the failure). Blocking, bounded by
/// `timeout`; meant for an error path.
pub fn probe_handshake(
    addr: &str,
    server_name: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    timeout: Duration,
) -> Option<HandshakeFailure> {
    use std::io::Read;
    use std::net::ToSocketAddrs;
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots(ca_pem).ok()?);
    let mut config = match identity {
        Some((chain_pem, key_pem)) => {
            let chain = certs_from_pem(chain_pem).ok()?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).ok()?;
            builder.with_client_auth_cert(chain, key).ok()?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(server_name.to_string()).ok()?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let target = addr.to_socket_addrs().ok()?.next()?;
    let tcp = std::net::TcpStream::connect_timeout(&target, timeout).ok()?;
    tcp.set_read_timeout(Some(timeout)).ok()?;
    tcp.set_write_timeout(Some(timeout)).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut byte = [0u8; 1];
    match tls.read(&mut byte) {
        Ok(_) => None,
        Err(e) => handshake_failure(&e),
    }
}

/// PEM text of one DER certificate.
pub fn to_pem(der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_an_identity_are_told_apart_from_broken_connections() {
        use rustls::CertificateError as C;
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            refusal_reason(&io(rustls::Error::InvalidCertificate(C::UnknownIssuer))),
            Some("client certificate of an unknown CA")
        );
        assert_eq!(
            refusal_reason(&io(rustls::Error::InvalidCertificate(C::Expired))),
            Some("client certificate expired or not yet valid")
        );
        assert_eq!(
            refusal_reason(&io(rustls::Error::InvalidCertificate(C::Revoked))),
            Some("client certificate revoked")
        );
        // A port scan or a health check: not a refusal of anyone.
        assert_eq!(
            refusal_reason(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            None
        );
        assert_eq!(
            refusal_reason(&io(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            None
        );
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        assert!(certs_from_pem("not pem").is_err());
        assert!(LiveCert::new("x", "y").is_err());
        assert!(ca_pin("").is_err());
    }
}
