//! Plaintext never leaves the machine.
//!
//! Baton speaks mutual TLS. `http://` exists for an `--insecure` coordinator or
//! agent on one host, for debugging; over a network it would carry API tokens,
//! parameters and results in clear. So every dialer — the CLI and the client
//! library, agents dialling the coordinator, an `--insecure` coordinator
//! dialling agents — asks [`loopback_url`] before it connects in plaintext: the
//! host must be loopback, that is an IP literal in `127.0.0.0/8`, `::1` (or
//! `::ffff:127.x.y.z`), or a name *every* address of which is one (`localhost`).
//! The check resolves the name itself and hands back the address to dial, so a
//! DNS answer that changes between the check and the connection cannot send
//! plaintext elsewhere. Refusals carry the stable code [`CODE`].

use std::net::{IpAddr, SocketAddr};

/// The stable error code of a refusal.
pub const CODE: &str = "PLAINTEXT_NOT_LOOPBACK";

/// A plaintext connection that would leave the machine, refused before any
/// connection was tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaintextError {
    /// What was asked for (a URL or `host:port`).
    pub target: String,
    /// Why it is not loopback.
    pub reason: String,
}

impl std::fmt::Display for PlaintextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refusing plaintext to {}: {}; plaintext (http://, --insecure) is allowed only to a \
             loopback address (127.0.0.0/8, ::1, localhost) so that nothing leaves this machine in \
             clear — use https:// (mutual TLS) to reach another machine",
            self.target, self.reason
        )
    }
}

impl std::error::Error for PlaintextError {}

/// Whether `ip` is a loopback address (an IPv4-mapped IPv6 one included).
pub fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The IP of a host written as a literal (`127.0.0.1`, `[::1]`, `::1`), if it is one.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Splits `host:port` (`[v6]:port` for IPv6); the port defaults to `default_port`.
fn split_host_port(authority: &str, default_port: u16) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 address without its closing ']'".to_string())?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(format!("unexpected '{after}' after the address")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => (authority, None), // a bare IPv6 literal
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse()
            .map_err(|_| format!("port '{p}' is not a number"))?,
    };
    Ok((host, port))
}

/// Resolves `host:port` and returns the address to dial if every address the
/// host stands for is loopback; refuses otherwise (and when it does not resolve).
pub async fn loopback_addr(authority: &str) -> Result<SocketAddr, PlaintextError> {
    resolve(authority, authority, 80).await
}

async fn resolve(
    target: &str,
    authority: &str,
    default_port: u16,
) -> Result<SocketAddr, PlaintextError> {
    let refuse = |reason: String| PlaintextError {
        target: target.to_string(),
        reason,
    };
    let (host, port) = split_host_port(authority, default_port).map_err(&refuse)?;
    if let Some(ip) = ip_literal(host) {
        return if is_loopback_ip(ip) {
            Ok(SocketAddr::new(ip, port))
        } else {
            Err(refuse(format!("{ip} is not a loopback address")))
        };
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| refuse(format!("'{host}' does not resolve ({e})")))?
        .collect();
    if let Some(bad) = addrs.iter().find(|a| !is_loopback_ip(a.ip())) {
        return Err(refuse(format!(
            "'{host}' resolves to {}, which is not a loopback address",
            bad.ip()
        )));
    }
    addrs
        .first()
        .copied()
        .ok_or_else(|| refuse(format!("'{host}' resolves to no address")))
}

/// The URL to dial for `url`: an `https://` URL as it is; an `http://` one with
/// its host replaced by the loopback address it resolves to, or refused.
pub async fn loopback_url(url: &str) -> Result<String, PlaintextError> {
    let Some(rest) = strip_prefix_ignore_case(url, "http://") else {
        return Ok(url.to_string());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // user:password@host: the credentials would travel in clear too.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let addr = resolve(url, authority, 80).await?;
    Ok(format!("http://{addr}{path}"))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn loopback_literals_pass_and_are_dialled_as_given() {
        rt().block_on(async {
            for (url, dial) in [
                ("http://127.0.0.1:7400", "http://127.0.0.1:7400"),
                ("http://127.8.9.10:1", "http://127.8.9.10:1"),
                ("http://[::1]:7400", "http://[::1]:7400"),
                ("HTTP://127.0.0.1:7400/", "http://127.0.0.1:7400/"),
                ("http://[::ffff:127.0.0.1]:9", "http://[::ffff:127.0.0.1]:9"),
                ("http://127.0.0.1", "http://127.0.0.1:80"),
            ] {
                assert_eq!(loopback_url(url).await.unwrap(), dial, "{url}");
            }
        });
    }

    #[test]
    fn names_that_resolve_to_loopback_pass_and_become_their_address() {
        rt().block_on(async {
            let dial = loopback_url("http://localhost:7400").await.unwrap();
            let host = dial
                .strip_prefix("http://")
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap();
            assert!(is_loopback_ip(host.ip()), "{dial}");
            assert_eq!(host.port(), 7400);
            let addr = loopback_addr("localhost:7401").await.unwrap();
            assert!(is_loopback_ip(addr.ip()));
        });
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        rt().block_on(async {
            for (url, why) in [
                ("http://10.255.255.1:1", "10.255.255.1 is not a loopback"),
                ("http://0.0.0.0:7400", "0.0.0.0 is not a loopback"),
                ("http://[::]:7400", ":: is not a loopback"),
                ("http://[fe80::1]:7400", "fe80::1 is not a loopback"),
                ("http://[::ffff:10.0.0.1]:7400", "is not a loopback"),
                ("http://user:pw@10.0.0.1:7400", "10.0.0.1 is not a loopback"),
                ("http://no-such-host.invalid:7400", "does not resolve"),
                ("http://127.0.0.1:notaport", "not a number"),
                ("http://[::1:7400", "closing"),
            ] {
                let e = loopback_url(url).await.unwrap_err();
                assert!(e.reason.contains(why), "{url}: {e}");
                let text = e.to_string();
                assert!(text.contains("https://") && text.contains(url), "{text}");
            }
            assert!(loopback_addr("192.0.2.7:7401").await.is_err());
            assert!(loopback_addr("[2001:db8::1]:7401").await.is_err());
        });
    }

    #[test]
    fn tls_urls_are_not_this_module_s_business() {
        rt().block_on(async {
            assert_eq!(
                loopback_url("https://10.0.0.5:7400").await.unwrap(),
                "https://10.0.0.5:7400"
            );
        });
    }

    #[test]
    fn literals_are_recognised() {
        assert!(is_loopback_ip(ip_literal("[::1]").unwrap()));
        assert!(is_loopback_ip(ip_literal("::1").unwrap()));
        assert!(is_loopback_ip(ip_literal("127.255.255.254").unwrap()));
        assert!(!is_loopback_ip(ip_literal("128.0.0.1").unwrap()));
        assert!(ip_literal("localhost").is_none());
    }
}
