//! Baton's private PKI: a CA made on the spot and short-lived certificates
//! whose identity is a DNS name in the subject alternative names.
//!
//! | identity | SAN |
//! | --- | --- |
//! | the coordinator | `coordinator.baton` |
//! | agent NAME | `NAME.agent.baton` |
//! | client NAME | `NAME.client.baton` |
//!
//! Peers verify these names rather than host addresses: a client dials any
//! address and checks it reached `coordinator.baton`; the coordinator dials an
//! agent's advertised address and checks it reached `NAME.agent.baton`, so a
//! re-used address cannot impersonate another agent.
//!
//! A TLS directory holds `ca.pem` (the trust root) and the node's own
//! `tls.pem` / `tls.key`; the CA's directory also holds `ca.key` and
//! `ca.name`. Private keys are written with mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Suffix of every Baton identity name.
pub const DOMAIN: &str = "baton";

/// Whether `name` is one of Baton's own identity names (`baton`, `*.baton`),
/// which only the certificates of Baton's identities may carry.
pub fn is_baton_name(name: &str) -> bool {
    name == DOMAIN
        || name
            .strip_suffix(DOMAIN)
            .is_some_and(|head| head.ends_with('.'))
}
/// The coordinator's identity name.
pub const COORDINATOR_NAME: &str = "coordinator.baton";
/// Default lifetime of an issued certificate: a day. Agents renew theirs over
/// `CoordinatorService.Renew` and the coordinator its own from the CA, both at
/// two thirds of the lifetime and without a restart.
pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);
const CA_TTL_DAYS: u32 = 3650;
/// Certificates are valid from a little before they were issued, for clock
/// skew: this much, or a tenth of the lifetime if that is less.
const BACKDATE: Duration = Duration::from_secs(300);

/// Who a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Coordinator,
    Agent(String),
    Client(String),
}

impl Identity {
    /// The DNS name peers verify.
    pub fn dns_name(&self) -> String {
        match self {
            Identity::Coordinator => COORDINATOR_NAME.to_string(),
            Identity::Agent(n) => format!("{n}.agent.{DOMAIN}"),
            Identity::Client(n) => format!("{n}.client.{DOMAIN}"),
        }
    }
}

/// PKI failures.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("invalid identity name '{0}': use letters, digits, '-' (it becomes a DNS label)")]
    BadName(String),
    #[error("no CA in {0}: run `baton certs init` first")]
    NoCa(PathBuf),
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    #[error(
        "refusing to create a CA in {dir}: it already holds {found} but no complete CA \
         (ca.key, ca.pem, ca.name) — it looks like a client or agent identity, whose ca.pem a new \
         CA would overwrite. Give the coordinator a TLS directory of its own (--tls-dir / \
         BATON_COORDINATOR_TLS_DIR, default DATA_DIR/tls; BATON_TLS_DIR is the CLI's identity)"
    )]
    NotCaDir { dir: PathBuf, found: String },
}

impl PkiError {
    pub fn code(&self) -> &'static str {
        match self {
            PkiError::Io { .. } => "PKI_IO",
            PkiError::Cert(_) => "PKI_CERT",
            PkiError::BadName(_) => "PKI_BAD_NAME",
            PkiError::NoCa(_) => "PKI_NO_CA",
            PkiError::BadCsr(_) => "PKI_BAD_CSR",
            PkiError::NotCaDir { .. } => "PKI_NOT_A_CA_DIR",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn valid_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Baton");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Whether `dir` holds a CA.
pub fn has_ca(dir: &Path) -> bool {
    dir.join("ca.key").exists() && dir.join("ca.pem").exists() && dir.join("ca.name").exists()
}

/// Creates a CA in `dir` (refuses to overwrite one). Refuses too when `dir`
/// holds part of one, or an identity (`tls.pem`, `ca.pem` without `ca.key`):
/// a CA made there would overwrite that identity's trust root.
pub fn init_ca(dir: &Path) -> Result<(), PkiError> {
    if has_ca(dir) {
        return Ok(());
    }
    let found: Vec<&str> = ["ca.pem", "ca.key", "ca.name", "tls.pem", "tls.key"]
        .into_iter()
        .filter(|f| dir.join(f).exists())
        .collect();
    if !found.is_empty() {
        return Err(PkiError::NotCaDir {
            dir: dir.to_path_buf(),
            found: found.join(", "),
        });
    }
    let name = format!("Baton CA {}", uuid::Uuid::new_v4().simple());
    let mut params = ca_params(&name);
    let now = time_now();
    params.not_before = now - std::time::Duration::from_secs(300);
    params.not_after = now + std::time::Duration::from_secs(u64::from(CA_TTL_DAYS) * 86_400);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
    write(&dir.join("ca.pem"), &cert.pem(), false)?;
    write(&dir.join("ca.name"), &name, false)?;
    Ok(())
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn identity_name(who: &Identity) -> Result<&str, PkiError> {
    let name = match who {
        Identity::Coordinator => "coordinator",
        Identity::Agent(n) | Identity::Client(n) => n.as_str(),
    };
    if valid_label(name) {
        Ok(name)
    } else {
        Err(PkiError::BadName(name.to_string()))
    }
}

/// The parameters of a leaf certificate for `who`, valid for `ttl` from now.
fn leaf_params(who: &Identity, ttl: Duration) -> Result<CertificateParams, PkiError> {
    identity_name(who)?;
    let mut params = CertificateParams::new(vec![who.dns_name()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, who.dns_name());
    params.distinguished_name = dn;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let now = time_now();
    let ttl = ttl.max(Duration::from_secs(1));
    params.not_before = now - BACKDATE.min(ttl / 10);
    params.not_after = now + ttl;
    Ok(params)
}

/// The CA of a TLS directory, loaded to issue certificates.
pub struct Authority {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authority {{ dir: {:?}, .. }}", self.dir)
    }
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    /// Unix seconds.
    pub not_after: i64,
}

impl Authority {
    /// Loads the CA in `dir` (`ca.key`, `ca.pem`, `ca.name`).
    pub fn load(dir: &Path) -> Result<Authority, PkiError> {
        if !has_ca(dir) {
            return Err(PkiError::NoCa(dir.to_path_buf()));
        }
        let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
        let ca_name = read(&dir.join("ca.name"))?;
        Ok(Authority {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(ca_params(ca_name.trim()), ca_key),
            ca_pem: read(&dir.join("ca.pem"))?,
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a certificate for `who` with a fresh key into `out_dir` as
    /// `ca.pem`, `tls.pem`, `tls.key` (the key 0600).
    pub fn issue_files(
        &self,
        who: &Identity,
        out_dir: &Path,
        ttl: Duration,
    ) -> Result<Issued, PkiError> {
        let params = leaf_params(who, ttl)?;
        let not_after = params.not_after.unix_timestamp();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        if self.dir != out_dir {
            write(&out_dir.join("ca.pem"), &self.ca_pem, false)?;
        }
        write(&out_dir.join("tls.key"), &key.serialize_pem(), true)?;
        write(&out_dir.join("tls.pem"), &cert.pem(), false)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            not_after,
        })
    }

    /// Issues the web dashboard's server certificate, with a fresh key (PEM,
    /// kept in memory by the caller): `names` (DNS names or IP addresses, as
    /// a browser reaches this coordinator) in its subject alternative names,
    /// never a Baton identity (`*.baton`: the dashboard's key cannot pose as
    /// the coordinator to agents or clients), and server authentication as
    /// its only usage, so that it can never serve as a client's or an agent's.
    pub fn issue_web(&self, names: &[String], ttl: Duration) -> Result<(Issued, String), PkiError> {
        let sans: Vec<String> = names
            .iter()
            .filter(|n| !is_baton_name(n))
            .cloned()
            .collect();
        let Some(first) = sans.first().cloned() else {
            return Err(PkiError::BadName(
                "no dashboard name besides Baton's own (*.baton)".into(),
            ));
        };
        let mut params = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, first);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = time_now();
        let ttl = ttl.max(Duration::from_secs(1));
        params.not_before = now - BACKDATE.min(ttl / 10);
        params.not_after = now + ttl;
        let not_after = params.not_after.unix_timestamp();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            Issued {
                cert_pem: cert.pem(),
                not_after,
            },
            key.serialize_pem(),
        ))
    }

    /// Signs a PKCS#10 request (PEM) as `who`. Only the request's public key
    /// is used: the identity, usages and lifetime are the CA's decision.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        who: &Identity,
        ttl: Duration,
    ) -> Result<Issued, PkiError> {
        if csr_pem.len() > 16 * 1024 {
            return Err(PkiError::BadCsr("larger than 16 KiB".into()));
        }
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let params = leaf_params(who, ttl)?;
        let not_after = params.not_after.unix_timestamp();
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            not_after,
        })
    }
}

/// A new key pair and a certificate signing request for `who` (PEM), as an
/// agent makes them to enrol or renew: the private key never leaves its host.
pub fn new_csr(who: &Identity) -> Result<(String, String), PkiError> {
    let params = leaf_params(who, DEFAULT_TTL)?;
    let key = KeyPair::generate()?;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// Issues a certificate for `who`, signed by the CA in `ca_dir`, into
/// `out_dir` as `ca.pem`, `tls.pem`, `tls.key`.
pub fn issue(ca_dir: &Path, who: &Identity, out_dir: &Path, ttl: Duration) -> Result<(), PkiError> {
    identity_name(who)?;
    Authority::load(ca_dir)?.issue_files(who, out_dir, ttl)?;
    Ok(())
}

/// Unix seconds `(not_before, not_after)` of the first certificate of `cert_pem`.
pub fn validity(cert_pem: &str) -> Option<(i64, i64)> {
    let der = baton_proto::tls::certs_from_pem(cert_pem).ok()?;
    baton_proto::identity::validity(&der[0])
}

/// Whether a certificate valid over `(not_before, not_after)` is due for
/// renewal at `now`: two thirds of its lifetime have passed.
pub fn renewal_due(validity: (i64, i64), now: i64) -> bool {
    let (nb, na) = validity;
    now >= nb + (na - nb) * 2 / 3
}

/// PEM material of one node: trust root and own identity.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial { .. }")
    }
}

/// Loads `ca.pem`, `tls.pem` and `tls.key` from `dir`.
pub fn load(dir: &Path) -> Result<TlsMaterial, PkiError> {
    Ok(TlsMaterial {
        ca_pem: read(&dir.join("ca.pem"))?,
        cert_pem: read(&dir.join("tls.pem"))?,
        key_pem: read(&dir.join("tls.key"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_and_issue_write_files_with_private_keys_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca).unwrap();
        let first = read(&ca.join("ca.pem")).unwrap();
        init_ca(&ca).unwrap();
        assert_eq!(
            first,
            read(&ca.join("ca.pem")).unwrap(),
            "init never replaces a CA"
        );
        let out = dir.path().join("a1");
        issue(&ca, &Identity::Agent("a1".into()), &out, DEFAULT_TTL).unwrap();
        let m = load(&out).unwrap();
        assert!(m.cert_pem.contains("BEGIN CERTIFICATE"));
        let mode = std::fs::metadata(out.join("tls.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            format!("{m:?}"),
            "TlsMaterial { .. }",
            "keys never reach a log line"
        );
    }

    #[test]
    fn issued_certificates_classify_as_their_identity() {
        use baton_proto::identity::{Peer, classify};
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let der = |who: &Identity| {
            let out = dir.path().join(who.dns_name());
            issue(dir.path(), who, &out, DEFAULT_TTL).unwrap();
            let pem = read(&out.join("tls.pem")).unwrap();
            let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            base64_decode(&b64)
        };
        assert_eq!(classify(&der(&Identity::Coordinator)), Peer::Coordinator);
        assert_eq!(
            classify(&der(&Identity::Agent("a1".into()))),
            Peer::Agent("a1".into())
        );
        assert_eq!(
            classify(&der(&Identity::Client("alice".into()))),
            Peer::Client("alice".into())
        );
    }

    /// Minimal base64 decoder for the test (PEM bodies).
    fn base64_decode(s: &str) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut buf, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|c| *c != b'=') {
            let v = A.iter().position(|a| *a == c).unwrap() as u32;
            buf = (buf << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
            }
        }
        out
    }

    #[test]
    fn names_must_be_dns_labels() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let e = issue(
            dir.path(),
            &Identity::Agent("a b".into()),
            dir.path(),
            DEFAULT_TTL,
        )
        .unwrap_err();
        assert_eq!(e.code(), "PKI_BAD_NAME");
        let e = issue(
            &dir.path().join("none"),
            &Identity::Coordinator,
            dir.path(),
            DEFAULT_TTL,
        )
        .unwrap_err();
        assert_eq!(e.code(), "PKI_NO_CA");
    }
}
