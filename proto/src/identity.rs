//! Who is on the other end of a TLS connection.
//!
//! Baton certificates carry their identity as DNS names in the subject
//! alternative names: `coordinator.baton`, `NAME.agent.baton`,
//! `NAME.client.baton`. Servers call [`classify`] on the peer's leaf
//! certificate — already verified against Baton's CA by rustls — to apply the
//! identity rules: an agent registers only as itself, agent certificates cannot
//! use `ControlService`, agents take `StartJob` only from the coordinator.
//!
//! The reader below walks just enough DER to find the SAN extension. It never
//! panics and gives up (an empty list) on anything it does not understand; a
//! property test feeds it arbitrary bytes.

/// The coordinator's identity name.
pub const COORDINATOR: &str = "coordinator.baton";
const AGENT_SUFFIX: &str = ".agent.baton";
const CLIENT_SUFFIX: &str = ".client.baton";

/// The kind of peer a certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Coordinator,
    Agent(String),
    Client(String),
    /// A certificate of the CA without a Baton identity name.
    Unknown,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Coordinator => f.write_str("coordinator"),
            Peer::Agent(n) => write!(f, "agent {n}"),
            Peer::Client(n) => write!(f, "client {n}"),
            Peer::Unknown => f.write_str("an unnamed certificate"),
        }
    }
}

/// The identity a leaf certificate (DER) proves.
pub fn classify(der: &[u8]) -> Peer {
    for name in dns_names(der) {
        if name == COORDINATOR {
            return Peer::Coordinator;
        }
        if let Some(n) = name
            .strip_suffix(AGENT_SUFFIX)
            .filter(|n| !n.is_empty() && !n.contains('.'))
        {
            return Peer::Agent(n.to_string());
        }
        if let Some(n) = name
            .strip_suffix(CLIENT_SUFFIX)
            .filter(|n| !n.is_empty() && !n.contains('.'))
        {
            return Peer::Client(n.to_string());
        }
    }
    Peer::Unknown
}

/// One DER element: (tag, contents, the bytes after it).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, r) = rest.split_at_checked(n)?;
        rest = r;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((tag, value, rest))
}

/// Iterates the elements of a DER sequence's contents.
fn elements(mut contents: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, value, rest) = tlv(contents)?;
        contents = rest;
        Some((tag, value))
    })
}

const SEQUENCE: u8 = 0x30;
const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT in TBSCertificate
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const DNS_NAME: u8 = 0x82; // [2] IMPLICIT IA5String in GeneralName
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17

/// The dNSName entries of a certificate's subject alternative names.
pub fn dns_names(der: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Some((SEQUENCE, cert, _)) = tlv(der) else {
        return out;
    };
    let Some((SEQUENCE, tbs, _)) = tlv(cert) else {
        return out;
    };
    for (tag, ext_wrapper) in elements(tbs) {
        if tag != EXTENSIONS {
            continue;
        }
        let Some((SEQUENCE, exts, _)) = tlv(ext_wrapper) else {
            return out;
        };
        for (tag, ext) in elements(exts) {
            if tag != SEQUENCE {
                continue;
            }
            let mut parts = elements(ext);
            let Some((OID, oid)) = parts.next() else {
                continue;
            };
            if oid != SAN_OID {
                continue;
            }
            // Optional `critical` BOOLEAN, then the OCTET STRING holding GeneralNames.
            let Some(value) = parts.find(|(t, _)| *t == OCTET_STRING).map(|(_, v)| v) else {
                continue;
            };
            let Some((SEQUENCE, names, _)) = tlv(value) else {
                continue;
            };
            for (tag, name) in elements(names) {
                if tag == DNS_NAME
                    && let Ok(s) = std::str::from_utf8(name)
                {
                    out.push(s.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths() {
        assert_eq!(
            tlv(&[0x04, 0x01, 0xaa, 0xbb]),
            Some((0x04, &[0xaa][..], &[0xbb][..]))
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend(std::iter::repeat_n(0u8, 0x80));
        assert_eq!(tlv(&long).map(|(_, v, _)| v.len()), Some(0x80));
        assert_eq!(
            tlv(&[0x04, 0x85, 1, 2, 3, 4, 5]),
            None,
            "lengths over 4 bytes are refused"
        );
        assert_eq!(tlv(&[0x04, 0x05, 1]), None, "truncated");
    }

    #[test]
    fn classify_names() {
        assert_eq!(classify(&[]), Peer::Unknown);
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the reader.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = dns_names(&bytes);
            let _ = classify(&bytes);
        }

        /// Nor do bytes that start like a certificate.
        #[test]
        fn never_panics_on_cert_like_input(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut bytes = vec![0x30, 0x82, 0x01, 0x00, 0x30, 0x81, 0xf0, 0xa3];
            bytes.extend(tail);
            let _ = dns_names(&bytes);
        }
    }
}
