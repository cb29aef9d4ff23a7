//! Agent identities (issue 16, items 1, 5, 6): revocation cannot be escaped by
//! racing `Renew`, renewals are bounded per identity, an enrolment cannot take
//! a live agent's name or claim labels its token did not allow, and every
//! refusal of an agent call is in `audit.log`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_proto as pb;
use pb::coordinator_service_client::CoordinatorServiceClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::harness::{AGENT_SESSION_FAILED, AgentOpts, Cluster, FanoutSpec, wait_until};

/// An agent identity as PEM: what a thief copies from a TLS directory.
#[derive(Clone)]
struct Pem {
    cert: String,
    key: String,
}

fn read_pem(dir: &Path) -> Pem {
    Pem {
        cert: std::fs::read_to_string(dir.join("tls.pem")).unwrap(),
        key: std::fs::read_to_string(dir.join("tls.key")).unwrap(),
    }
}

async fn client(
    addr: SocketAddr,
    ca: &str,
    id: &Pem,
) -> Result<CoordinatorServiceClient<tonic::transport::Channel>, String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(&id.cert, &id.key))
        .domain_name("coordinator.baton");
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(CoordinatorServiceClient::new(ch))
}

/// Enrols agent `name` with `token` over TLS without a client certificate;
/// the stable code of a refusal, or "enrolled".
async fn enrol_direct(addr: SocketAddr, ca: &str, name: &str, token: &str) -> String {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("coordinator.baton");
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (csr_pem, _) = csr(name);
    // The token as `baton agent --enroll` sends it: without the CA pin.
    let token = token.rsplit_once('_').unwrap().0.to_owned();
    match CoordinatorServiceClient::new(ch)
        .enroll(pb::EnrollRequest {
            token,
            name: name.into(),
            csr_pem,
        })
        .await
    {
        Ok(_) => "enrolled".to_owned(),
        Err(s) => code_of(&s),
    }
}

/// A new key pair and a CSR for agent `name`.
fn csr(name: &str) -> (String, String) {
    let params = rcgen::CertificateParams::new(vec![format!("{name}.agent.baton")]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    (
        params.serialize_request(&key).unwrap().pem().unwrap(),
        key.serialize_pem(),
    )
}

fn code_of(s: &tonic::Status) -> String {
    s.metadata()
        .get("baton-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The stable code of a refusal; "handshake refused" when the TLS layer
/// refused (nothing reached a handler); "accepted" when the call worked.
fn outcome<T>(r: Result<T, tonic::Status>) -> String {
    match r {
        Ok(_) => "accepted".to_owned(),
        Err(s) => match code_of(&s).as_str() {
            "" if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ) =>
            {
                "handshake refused".to_owned()
            }
            "" => format!("{:?} without a code", s.code()),
            c => c.to_owned(),
        },
    }
}

/// Wall-clock Unix seconds (certificates' validity is in whole seconds).
fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn register_req(name: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        name: name.into(),
        address: "127.0.0.1:9".into(),
        slots: 1,
        boot_id: "thief".into(),
        outbox_id: "thief".into(),
        ..Default::default()
    }
}

fn audit(c: &Cluster) -> Vec<serde_json::Value> {
    std::fs::read_to_string(c.root().join("coordinator/data/audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn audited(lines: &[serde_json::Value], call: &str, detail: &str) -> usize {
    lines
        .iter()
        .filter(|l| l["call"] == call && l["outcome"] == "denied" && l["detail"] == detail)
        .count()
}

/// Eight loops renew a stolen agent certificate (each with the newest
/// certificate it got) while `baton agents revoke` runs: renewals are bounded
/// per identity, and afterwards no certificate ever issued to the agent is
/// accepted by any agent call; the agent cannot come back.
#[test]
fn renewals_racing_a_revocation_are_all_refused() {
    let mut c = Cluster::new("sec_renew_race");
    // 10-second certificates: a certificate may renew after 5 s, an identity once
    // per 2.5 s; long enough that the certificates the race made are still valid
    // when they are tried afterwards on a loaded machine.
    let addr = c.start_coordinator_with(&["--cert-ttl", "10s"]);
    let ca_dir = c.ca_dir();
    let stolen_dir = c.root().join("s1-tls");
    c.cli_raw(&[
        "certs",
        "issue",
        "--ca-dir",
        &ca_dir.display().to_string(),
        "--agent",
        "s1",
        "--out",
        &stolen_dir.display().to_string(),
        "--ttl",
        "10s",
    ])
    .expect_code(0);
    let stolen = read_pem(&stolen_dir);
    let mut opts = AgentOpts::new("s1", 2);
    opts.tls_dir = Some(stolen_dir.clone());
    c.start_agent_with(opts);
    c.agents_ready(1);
    let ca = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap();

    // Past half of the stolen certificate's lifetime, so that it may renew (the
    // coordinator's rule, in whole seconds: at most half of the lifetime left).
    let der = baton_proto::tls::certs_from_pem(&stolen.cert).unwrap();
    let (not_before, not_after) = baton_proto::identity::validity(&der[0]).expect("a validity");
    let renewable_s = not_after - (not_after - not_before) / 2 + 1;
    assert!(
        renewable_s - now_s() < 20,
        "the 10 s certificate is renewable only {} s from now",
        renewable_s - now_s()
    );
    // A wait for the clock itself, bounded just above.
    while now_s() < renewable_s {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let loops_for = Duration::from_secs(5);
    let started = Instant::now();
    // RENEW_TOO_SOON answers so far: the race is on once a renewal has won and
    // the others are refused for it.
    let too_soon = Arc::new(AtomicU32::new(0));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let ca = ca.clone();
            let first = stolen.clone();
            let too_soon = too_soon.clone();
            rt.spawn(async move {
                let mut current = first;
                let mut issued = Vec::new();
                let mut refusals = std::collections::BTreeMap::<String, u32>::new();
                while started.elapsed() < loops_for {
                    let Ok(mut cl) = client(addr, &ca, &current).await else {
                        *refusals.entry("no connection".into()).or_default() += 1;
                        // Pacing of a retry loop bounded by `loops_for`, not a wait for anything.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let (csr_pem, key) = csr("s1");
                    match cl.renew(pb::RenewRequest { csr_pem }).await {
                        Ok(r) => {
                            current = Pem {
                                cert: r.into_inner().cert_pem,
                                key,
                            };
                            issued.push(current.clone());
                        }
                        Err(s) => {
                            let code = code_of(&s);
                            if code == "RENEW_TOO_SOON" {
                                too_soon.fetch_add(1, Ordering::Relaxed);
                            }
                            *refusals.entry(code).or_default() += 1;
                        }
                    }
                }
                (issued, refusals)
            })
        })
        .collect();
    // Revoke in the middle of the race: once it has refused a renewal as too
    // soon, while the loops still run.
    assert!(
        wait_until(loops_for, Duration::from_millis(10), || {
            too_soon.load(Ordering::Relaxed) > 0
        }),
        "no renewal was refused as too soon within {loops_for:?}"
    );
    c.cli(&["agents", "revoke", "s1"]).expect_code(0);
    let mut issued = Vec::new();
    let mut refusals = std::collections::BTreeMap::<String, u32>::new();
    for h in handles {
        let (i, r) = rt.block_on(h).unwrap();
        issued.extend(i);
        for (k, v) in r {
            *refusals.entry(k).or_default() += v;
        }
    }
    c.note(&format!(
        "race: {} certificates renewed by the thief, refusals {refusals:?}",
        issued.len()
    ));
    // Every certificate ever held (stolen, renewed by the thief, renewed by the
    // agent) is refused by every agent call.
    let mut all = vec![stolen.clone()];
    all.extend(issued.iter().cloned());
    all.push(read_pem(&stolen_dir));
    let mut reached_handler = 0;
    for (n, id) in all.iter().enumerate() {
        let out = rt.block_on(async {
            let Ok(mut cl) = client(addr, &ca, id).await else {
                return vec![("connect".to_owned(), String::new())];
            };
            let reg = cl.register(register_req("s1")).await;
            let (csr_pem, _) = csr("s1");
            let renew = cl.renew(pb::RenewRequest { csr_pem }).await;
            let fetch = cl
                .fetch_package(pb::FetchPackageRequest {
                    content_hash: "0".repeat(64),
                })
                .await;
            vec![
                ("Register".to_owned(), outcome(reg)),
                ("Renew".to_owned(), outcome(renew)),
                ("FetchPackage".to_owned(), outcome(fetch)),
            ]
        });
        for (call, code) in out {
            // An expired certificate fails the handshake: refused too.
            // CERT_REVOKED: this certificate; AGENT_REVOKED: the identity.
            if code == "CERT_REVOKED" || code == "AGENT_REVOKED" {
                reached_handler += 1;
            }
            assert!(
                call == "connect"
                    || code == "CERT_REVOKED"
                    || code == "AGENT_REVOKED"
                    || code == "PERMISSION_DENIED"
                    || code == "handshake refused",
                "certificate #{n}: {call} answered {code:?} after the revocation"
            );
        }
    }
    assert!(
        reached_handler > 0,
        "no certificate was still valid to be refused by the coordinator itself"
    );
    // Bounded: one renewal per 2.5 s for the identity (the real agent's included).
    assert!(
        issued.len() <= 4,
        "{} renewals in {loops_for:?}: not bounded",
        issued.len()
    );
    assert!(
        refusals.get("RENEW_TOO_SOON").copied().unwrap_or(0) > 0,
        "{refusals:?}"
    );
    assert!(
        refusals.get("CERT_REVOKED").copied().unwrap_or(0) > 0,
        "{refusals:?}"
    );

    // The agent, restarted with whatever certificate it has, stays revoked.
    c.agent("s1").kill9();
    let restarted = c.log_mark("s1");
    c.agent("s1").spawn();
    // Its first registration after the restart has been answered (and refused:
    // it stops, or retries) before the listing is read.
    restarted.wait_for_any(AGENT_SESSION_FAILED, Duration::from_secs(20));
    assert!(
        c.agents_list()
            .iter()
            .all(|a| a.name != "s1" || a.state == "revoked"),
        "s1 came back after the revocation"
    );
    // The refusals are audited.
    let lines = audit(&c);
    assert!(audited(&lines, "Renew", "RENEW_TOO_SOON") > 0);
    assert!(audited(&lines, "Renew", "CERT_REVOKED") > 0);
    assert!(audited(&lines, "Register", "CERT_REVOKED") > 0);
    assert!(audited(&lines, "FetchPackage", "CERT_REVOKED") > 0);
    c.finish(&["s1", "revoked", "renew", "certificate"]);
}

/// A nameless enrolment token cannot take a live agent's name: v1 keeps its
/// registration and its jobs. Labels are bounded by the token. A person
/// re-enrols a name deliberately after revoking it. Impersonation and refused
/// registrations are in the audit trail.
#[test]
fn a_nameless_token_cannot_take_a_live_agents_name() {
    let mut c = Cluster::new("sec_name_hijack");
    let addr = c.start_coordinator();
    c.start_agent("v1", 4);
    c.agents_ready(1);
    let pkg = c.write_fanout("hijack", &FanoutSpec::new(8, "sleep 0.5").parallelism(4));
    let id = c.start_run(&pkg, &[]);

    let enrol = |c: &mut Cluster, dir: &str, name: &str, token: &str, extra: &[&str]| {
        let tls = c.root().join(dir);
        let mut opts = AgentOpts::new(name, 2);
        opts.tls_dir = Some(tls.clone());
        opts.wait_announce = false;
        opts.extra_args = vec!["--enroll".into(), token.into()];
        opts.extra_args
            .extend(extra.iter().map(|s| (*s).to_owned()));
        c.start_agent_with(opts);
        tls
    };
    let token = |c: &Cluster, args: &[&str]| {
        let mut a = vec!["token", "create", "--output", "json"];
        a.extend(args);
        let out = c.cli(&a);
        out.expect_code(0);
        out.json()["token"].as_str().unwrap().to_owned()
    };

    // The impostor: refused, nothing written, and it stops.
    let t = token(&c, &["--agent"]);
    let tls = enrol(&mut c, "impostor-tls", "v1", &t, &[]);
    let node = c.agents_last();
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            !node.is_running()
        }),
        "the impostor kept running"
    );
    let log = crate::harness::read_log(&node.stderr_path());
    assert!(
        log.contains("AGENT_NAME_TAKEN"),
        "no AGENT_NAME_TAKEN in\n{log}"
    );
    assert!(
        log.contains("baton agents revoke v1"),
        "the refusal does not say how to re-enrol:\n{log}"
    );
    assert!(!tls.join("tls.pem").exists());
    // v1 keeps its registration and its jobs.
    let end = c.wait_exec_terminal(&id, Duration::from_secs(40));
    end.assert_all_succeeded_once(8, &["v1"]);
    let now = c.agents_list();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].name, "v1");
    assert_eq!(now[0].state, "ready");

    // Labels: a token allows what it lists, nothing more.
    let t = token(&c, &["--agent", "w1", "--label", "zone=eu"]);
    enrol(&mut c, "w1-tls", "w1", &t, &["--label", "zone=us"]);
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            audited(&audit(&c), "Register", "AGENT_LABEL_NOT_ALLOWED") > 0
        }),
        "a registration with a label the token did not allow was not refused and audited"
    );
    assert!(c.agents_list().iter().all(|a| a.name != "w1"));
    c.agents_last().kill9();
    let t = token(&c, &["--agent", "w2", "--label", "zone=*"]);
    enrol(&mut c, "w2-tls", "w2", &t, &["--label", "zone=us"]);
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            c.agents_list()
                .iter()
                .any(|a| a.name == "w2" && a.state == "ready")
        }),
        "w2 with an allowed label did not register"
    );

    // Impersonation: w2's certificate registering as v1 is refused and audited.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = std::fs::read_to_string(c.ca_dir().join("ca.pem")).unwrap();
    let w2 = read_pem(&c.root().join("w2-tls"));
    let refused = rt.block_on(async {
        let mut cl = client(addr, &ca, &w2).await.unwrap();
        let reg = cl.register(register_req("v1")).await.unwrap_err();
        let hello = pb::AgentEvent {
            seq: 0,
            at_unix_ms: 0,
            body: Some(pb::agent_event::Body::Hello(pb::Hello {
                agent_id: "v1".into(),
                boot_id: "b".into(),
            })),
        };
        let rep = cl
            .report_events(tokio_stream::iter(vec![hello]))
            .await
            .unwrap_err();
        (code_of(&reg), code_of(&rep))
    });
    assert_eq!(
        refused,
        (
            "PERMISSION_DENIED".to_owned(),
            "PERMISSION_DENIED".to_owned()
        )
    );
    let lines = audit(&c);
    assert!(
        audited(&lines, "Register", "PERMISSION_DENIED") > 0,
        "{lines:?}"
    );
    assert!(
        audited(&lines, "ReportEvents", "PERMISSION_DENIED") > 0,
        "{lines:?}"
    );
    assert!(
        audited(&lines, "Enroll", "AGENT_NAME_TAKEN") > 0,
        "{lines:?}"
    );

    // An identity enrolled but not yet registered holds its name too; it can
    // be revoked (then enrolled again) and forgotten.
    let t1 = token(&c, &["--agent"]);
    let t2 = token(&c, &["--agent"]);
    let t3 = token(&c, &["--agent"]);
    assert_eq!(rt.block_on(enrol_direct(addr, &ca, "z9", &t1)), "enrolled");
    assert_eq!(
        rt.block_on(enrol_direct(addr, &ca, "z9", &t2)),
        "AGENT_NAME_TAKEN"
    );
    c.cli(&["agents", "revoke", "z9"]).expect_code(0);
    assert_eq!(rt.block_on(enrol_direct(addr, &ca, "z9", &t2)), "enrolled");
    c.cli(&["agents", "rm", "z9"]).expect_code(0);
    assert_eq!(rt.block_on(enrol_direct(addr, &ca, "z9", &t3)), "enrolled");
    let out = c.cli(&["agents", "revoke", "nobody"]);
    assert!(out.stderr.contains("AGENT_NOT_FOUND"), "{}", out.describe());

    // Deliberately: revoke v1, then a new machine enrols as v1.
    c.cli(&["agents", "revoke", "v1"]).expect_code(0);
    c.agent("v1").kill9();
    let t = token(&c, &["--agent"]);
    enrol(&mut c, "v1-new-tls", "v1", &t, &[]);
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            c.agents_list()
                .iter()
                .any(|a| a.name == "v1" && a.state == "ready")
        }),
        "v1 could not be re-enrolled after its revocation"
    );
    c.finish(&[
        "AGENT_NAME_TAKEN",
        "AGENT_LABEL_NOT_ALLOWED",
        "revoked",
        "refused",
    ]);
}
