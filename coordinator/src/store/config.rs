//! Which store backend a coordinator uses (`baton coordinator --store`), and
//! the parsing of its `etcd://` URL.

use std::path::PathBuf;
use std::time::Duration;

/// The store backend and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// One redb file in the data directory (`coordinator.redb`): the
    /// zero-setup default, one coordinator.
    #[default]
    Embedded,
    /// An etcd cluster shared by any number of coordinators (one leads).
    Etcd(EtcdConfig),
}

/// The key prefix of `--etcd-prefix` when none is given.
pub const DEFAULT_KEY_PREFIX: &str = "/baton/";
/// etcd's own default of `--max-txn-ops`.
pub const ETCD_DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's own default of `--max-request-bytes` (1.5 MiB).
pub const ETCD_DEFAULT_MAX_REQUEST_BYTES: usize = 1_572_864;
/// The port of an endpoint written without one.
pub const ETCD_DEFAULT_PORT: u16 = 2379;

/// How to reach etcd (`--store etcd://h1:2379,h2:2379 --etcd-ca … --etcd-cert … --etcd-key …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// Mutual TLS to etcd; `None` is plaintext, allowed to loopback only.
    pub tls: Option<EtcdTls>,
    /// Every key Baton writes starts with this (several clusters may share one etcd).
    pub key_prefix: String,
    /// etcd's `--max-txn-ops`: the store refuses larger commits itself
    /// (`TooLarge`) instead of sending them.
    pub max_txn_ops: usize,
    /// etcd's `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// How long one request may take before it counts as unavailable (a
    /// commit without an answer by then may or may not have applied).
    pub request_timeout: Duration,
    /// How long the first connection is retried at start before giving up.
    pub connect_patience: Duration,
}

impl EtcdConfig {
    /// The endpoints with every other setting at its default: plaintext, the
    /// default prefix, etcd's default limits.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            tls: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_string(),
            max_txn_ops: ETCD_DEFAULT_MAX_TXN_OPS,
            max_request_bytes: ETCD_DEFAULT_MAX_REQUEST_BYTES,
            request_timeout: Duration::from_secs(5),
            connect_patience: Duration::from_secs(30),
        }
    }
}

/// Files of the mutual TLS connection to etcd (its own CA, not Baton's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The endpoints of `etcd://h1:2379,h2,[::1]:2379` (the port defaults to
/// 2379), each as `host:port`. Refuses an empty list, an empty host, a port
/// that is no number, and anything after the authority (a path, a query).
pub fn parse_etcd_url(url: &str) -> Result<Vec<String>, String> {
    let scheme = "etcd://";
    let rest = url
        .get(..scheme.len())
        .filter(|s| s.eq_ignore_ascii_case(scheme))
        .map(|_| &url[scheme.len()..])
        .ok_or_else(|| format!("'{url}' does not start with etcd://"))?;
    if let Some(bad) = rest.find(['/', '?', '#', '@']) {
        return Err(format!(
            "'{url}': unexpected '{}' (write etcd://host:port,host:port)",
            &rest[bad..bad + 1]
        ));
    }
    let mut out = Vec::new();
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("'{url}': an empty endpoint"));
        }
        let (host, port) = if let Some(v6) = part.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("'{part}': an IPv6 address without its closing ']'"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("'{part}': unexpected '{p}' after the address"))?,
                ),
            };
            (format!("[{h}]"), port)
        } else {
            match part.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h.to_string(), Some(p)),
                Some(_) => {
                    return Err(format!(
                        "'{part}': write an IPv6 address in brackets ([::1]:2379)"
                    ));
                }
                None => (part.to_string(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(format!("'{part}': no host"));
        }
        let port: u16 = match port {
            None => ETCD_DEFAULT_PORT,
            Some(p) => p
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("'{part}': port '{p}' is not a port number"))?,
        };
        out.push(format!("{host}:{port}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_urls_give_host_port_endpoints() {
        assert_eq!(
            parse_etcd_url("etcd://h1:2379,h2, [::1]:2380,10.0.0.1").unwrap(),
            ["h1:2379", "h2:2379", "[::1]:2380", "10.0.0.1:2379"]
        );
        assert_eq!(
            parse_etcd_url("ETCD://127.0.0.1:1").unwrap(),
            ["127.0.0.1:1"]
        );
    }

    #[test]
    fn bad_etcd_urls_say_what_is_wrong() {
        for (url, why) in [
            ("http://h1:2379", "does not start with etcd://"),
            ("etcd://", "empty endpoint"),
            ("etcd://h1,,h2", "empty endpoint"),
            ("etcd://h1:x", "not a port number"),
            ("etcd://h1:0", "not a port number"),
            ("etcd://h1:70000", "not a port number"),
            ("etcd://:2379", "no host"),
            ("etcd://h1:2379/path", "unexpected '/'"),
            ("etcd://user@h1", "unexpected '@'"),
            ("etcd://::1:2379", "in brackets"),
            ("etcd://[::1:2379", "closing"),
        ] {
            let e = parse_etcd_url(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
