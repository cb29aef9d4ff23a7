//! Proves the browser harness (`baton_integration_tests::browser`) on a page of its own:
//! headless Chromium in a network namespace opens `https://coordinator.baton:PORT/`,
//! served by this test on the host side of the namespace's veth pair with a
//! certificate from the test's CA, trusts it (no interstitial) while a certificate
//! from another CA still gets one, sees a script change the page, clicks, types and
//! takes a screenshot; and it reaches nothing but that host address.
//!
//! Needs root, `ip`, chromium, chromedriver and certutil; without them it prints why
//! and passes without running (`scripts/test` installs the packages).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_integration_tests::browser::{self, Browser, Netns};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const INDEX_HTML: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Baton harness page</title>
<link rel="stylesheet" href="/assets/app.css"></head>
<body>
<h1 data-testid="status">waiting</h1>
<button data-testid="go">Go</button>
<p data-testid="clicks">0 clicks</p>
<input data-testid="name">
<p data-testid="echo"></p>
<script src="/assets/app.js"></script>
</body></html>
"#;

const APP_JS: &str = r#"
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
setTimeout(() => { $('status').textContent = 'changed'; }, 700);
let clicks = 0;
$('go').addEventListener('click', () => { clicks += 1; $('clicks').textContent = `${clicks} clicks`; });
$('name').addEventListener('input', () => { $('echo').textContent = `hello ${$('name').value}`; });
"#;

const APP_CSS: &str = "body { font-family: sans-serif; } h1 { color: #124; }\n";

/// The dashboard's policy, with `connect-src` opened to https for the isolation probes.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
    script-src 'self'; connect-src 'self' https:; frame-ancestors 'none'; base-uri 'none'";

const WAIT: Duration = Duration::from_secs(15);

/// A CA and a certificate it issued for `names` (DNS names and IP addresses).
struct Identity {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

fn identity(names: &[String]) -> Identity {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Baton browser test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(names.to_vec()).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).expect("cert");
    Identity {
        ca_pem: ca.pem(),
        chain: vec![cert.der().clone()],
        key_der: key.serialize_der(),
    }
}

/// A small HTTPS server on its own thread; stops (and is joined) on drop.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(bind: SocketAddr, id: &Identity) -> Server {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(id.chain.clone(), key)
            .expect("server certificate");
        let config = Arc::new(config);
        let listener = TcpListener::bind(bind).expect("bind the test server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let config = config.clone();
                        std::thread::spawn(move || serve(stream, config));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request on one TLS connection (`Connection: close`).
fn serve(stream: TcpStream, config: Arc<rustls::ServerConfig>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match tls.read(&mut buf) {
            // Chromium opens spare connections and closes them unused.
            Ok(0) => return,
            Err(e) => {
                eprintln!("test server: reading a request: {e}");
                return;
            }
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, kind, body) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", INDEX_HTML),
        "/assets/app.js" => ("200 OK", "text/javascript; charset=utf-8", APP_JS),
        "/assets/app.css" => ("200 OK", "text/css; charset=utf-8", APP_CSS),
        "/ping" => ("200 OK", "text/plain", "pong"),
        "/favicon.ico" => ("204 No Content", "text/plain", ""),
        _ => ("404 Not Found", "text/plain", "not found"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Content-Security-Policy: {CSP}\r\nAccess-Control-Allow-Origin: *\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tls.write_all(head.as_bytes());
    let _ = tls.write_all(body.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// An IPv4 address of the host outside the namespace's pair (eth0, docker0...), to
/// show the namespace cannot reach it; a public address when the host has none.
fn outside_address(netns: &Netns) -> IpAddr {
    let out = Command::new("ip")
        .args(["-j", "-4", "addr", "show"])
        .output()
        .expect("ip addr");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let found = links.as_array().into_iter().flatten().find_map(|link| {
        let infos = link["addr_info"].as_array()?;
        infos.iter().find_map(|a| {
            let ip: IpAddr = a["local"].as_str()?.parse().ok()?;
            let global = a["scope"] == "global";
            (global && ip != netns.host_ip()).then_some(ip)
        })
    });
    found.unwrap_or(IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)))
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).expect("screenshot file");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
        "{} is not a PNG ({} bytes)",
        path.display(),
        bytes.len()
    );
}

#[test]
fn chromium_in_a_namespace_trusts_the_test_ca_and_reaches_only_the_server() {
    if let Err(why) = browser::available() {
        println!("SKIPPED: the browser harness cannot run here: {why}");
        return;
    }
    let started = Instant::now();
    let netns = Netns::create();
    let host = netns.host_ip();
    let outside = outside_address(&netns);
    println!(
        "netns {} host {host} ns {} outside {outside}",
        netns.name(),
        netns.ns_ip()
    );

    // The page's server on the host side only; a second one on every address of the
    // host, to tell "unreachable" from "nothing listens there".
    let names = vec!["coordinator.baton".to_string(), "outside.baton".to_string()];
    let id = identity(&names);
    let server = Server::start(SocketAddr::new(host, 0), &id);
    let everywhere = Server::start(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0), &id);
    // The same names from a CA the browser was not told about.
    let stranger = Server::start(SocketAddr::new(host, 0), &identity(&names));

    let dir = tempfile::tempdir().expect("temp dir");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &id.ca_pem).expect("write CA");
    let shots = dir.path().join("screenshots");
    let map = [("coordinator.baton", host), ("outside.baton", outside)];
    let chrome = Browser::start(&netns, &ca_path, &map, &shots);
    println!("browser up after {:?}", started.elapsed());

    // Trusted: the page itself, not an interstitial.
    let url = format!("https://coordinator.baton:{}/", server.addr.port());
    chrome.goto(&url);
    assert_eq!(chrome.current_url(), url);
    let text = chrome.execute("return document.body.innerText");
    assert_eq!(chrome.title(), "Baton harness page", "{text}");
    assert_eq!(chrome.find_all("[data-testid]").len(), 5);

    // The page's script changes the text after a while.
    chrome.wait_text("[data-testid=status]", "changed", WAIT);
    chrome.click("[data-testid=go]");
    chrome.click("[data-testid=go]");
    chrome.wait_text("[data-testid=clicks]", "2 clicks", WAIT);
    chrome.type_text("[data-testid=name]", "alice");
    let echo = chrome.wait_for("[data-testid=echo]", |t| t.ends_with("alice"), WAIT);
    assert_eq!(echo, "hello alice");
    assert_eq!(
        chrome.execute("return document.querySelector('h1').textContent"),
        "changed"
    );
    let shot = chrome.screenshot("harness page");
    assert_eq!(shot, shots.join("harness_page.png"));
    assert_png(&shot);

    // Isolation, from the page: its origin and the host-side address answer; the
    // host's other address (where `everywhere` listens too) and the internet do not.
    let port = everywhere.addr.port();
    let probes = chrome.execute_async(&format!(
        "const done = arguments[arguments.length - 1];
         const probe = (u) => fetch(u, {{cache: 'no-store', signal: AbortSignal.timeout(5000)}})
             .then((r) => r.text()).catch((e) => 'error: ' + e.name + ' ' + e.message);
         Promise.all([probe('/ping'), probe('https://coordinator.baton:{port}/ping'),
                      probe('https://outside.baton:{port}/ping'), probe('https://1.1.1.1/')])
             .then(done);"
    ));
    println!("fetch probes: {probes}");
    assert_eq!(probes[0], "pong", "{probes}");
    assert_eq!(probes[1], "pong", "{probes}");
    assert!(probes[2].as_str().unwrap().starts_with("error"), "{probes}");
    assert!(probes[3].as_str().unwrap().starts_with("error"), "{probes}");
    // ...and from the namespace's routing table.
    for target in [outside.to_string(), "1.1.1.1".to_string()] {
        let out = Command::new("ip")
            .args(["-n", netns.name(), "route", "get", &target])
            .output()
            .expect("ip route get");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("unreachable"),
            "{target} is routable from the namespace: {err}"
        );
    }

    // Untrusted CA: Chromium's interstitial, not the page.
    let url = format!("https://coordinator.baton:{}/", stranger.addr.port());
    chrome.goto(&url);
    let body = chrome.execute("return document.body.innerText");
    assert_ne!(chrome.title(), "Baton harness page");
    assert!(
        body.as_str()
            .unwrap()
            .contains("ERR_CERT_AUTHORITY_INVALID"),
        "{body}"
    );

    // Cleanup: every process in the namespace dies with the browser, by pid.
    drop(chrome);
    assert_eq!(netns.pids(), Vec::<i32>::new());
    let name = netns.name().to_string();
    drop(netns);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
    println!("whole test took {:?}", started.elapsed());
}
