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

const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The validity of a certificate (DER) as Unix seconds `(not_before, not_after)`;
/// `None` if the reader does not understand it.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    // version [0] (optional), serialNumber, signature, issuer, validity.
    let mut fields = elements(tbs).skip_while(|(t, _)| *t == 0xa0);
    let (SEQUENCE, validity) = fields.nth(3)? else {
        return None;
    };
    let mut times = elements(validity).map(|(tag, v)| asn1_time(tag, v));
    Some((times.next()??, times.next()??))
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` as Unix seconds.
fn asn1_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (year, rest) = match (tag, s.len()) {
        (UTC_TIME, 12) => {
            let yy = num(0..2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (num(0..4)?, 4),
        _ => return None,
    };
    let field = |i: usize| num(rest + 2 * i..rest + 2 * i + 2);
    let (month, day, h, m, sec) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
    fn asn1_times() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(asn1_time(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(
            asn1_time(GENERALIZED_TIME, b"20261122071752Z"),
            Some(1_795_331_872)
        );
        assert_eq!(asn1_time(UTC_TIME, b"261122071752Z"), Some(1_795_331_872));
        assert_eq!(asn1_time(UTC_TIME, b"261322071752Z"), None, "month 13");
        assert_eq!(asn1_time(UTC_TIME, b"2611220717Z"), None, "too short");
        assert_eq!(validity(&[]), None);
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
            let _ = validity(&bytes);
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
