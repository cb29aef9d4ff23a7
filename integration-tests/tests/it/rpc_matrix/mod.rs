//! Every RPC of the three services against every kind of caller: the allowed
//! case succeeds and every other is refused with the right code.
//!
//! Callers: the cluster's admin (a client certificate with `manage` on "/"), no
//! certificate, a certificate of another CA, an expired certificate, an agent
//! certificate, a client without grants (bob), a revoked agent, another agent's
//! certificate (m1 claiming to be a1), and a reused enrolment token.
//!
//! Every refusal that reaches the coordinator's handlers (all but the TLS
//! handshake's: a foreign CA, an expired certificate) must be in `audit.log`
//! with its call and code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_proto as pb;
use pb::control_service_client::ControlServiceClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::harness::{Cluster, FanoutSpec, wait_until};

/// What a call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Ok,
    /// Refused by Baton: the gRPC code and the stable `baton-code`.
    Refused(Code, String),
    /// The TLS handshake (or connection) failed: nothing reached a handler.
    NoConnection,
}

fn got<T>(r: Result<T, tonic::Status>) -> Got {
    match r {
        Ok(_) => Got::Ok,
        Err(s) => match s.metadata().get("baton-code").and_then(|v| v.to_str().ok()) {
            Some(code) => Got::Refused(s.code(), code.to_owned()),
            None if matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ) =>
            {
                Got::NoConnection
            }
            None => Got::Refused(s.code(), String::new()),
        },
    }
}

fn refused(code: Code, baton: &str) -> Got {
    Got::Refused(code, baton.to_owned())
}

/// A TLS directory: the trust root and maybe an identity.
struct Caller {
    name: &'static str,
    dir: PathBuf,
}

pub(crate) fn channel(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    dir: &Path,
    domain: &str,
) -> Option<Channel> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem").expect("ca.pem")))
        .domain_name(domain.to_owned());
    if let (Some(cert), Some(key)) = (read("tls.pem"), read("tls.key")) {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), endpoint.connect()).await })
        .ok()
        .and_then(Result::ok)
}

mod calls;
use calls::{agent_calls, agent_service_calls, control_calls};

/// Codes of refusals of who the caller is or what it may do: each is audited.
const AUDITED: [&str; 7] = [
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "CERT_REVOKED",
    "TOKEN_USED",
    "RENEW_TOO_SOON",
    "AGENT_NAME_TAKEN",
    "AGENT_LABEL_NOT_ALLOWED",
];

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Refusals of `got` with no audit entry among `lines` (those written since
/// the calls began); counts the audited ones into `audited`. Identical
/// refusals (same source, who, call, folder and code) within 10 s are written
/// once in full and then counted in one `repeated` summary, so a refusal that
/// an earlier caller with the same certificate already had written in full
/// (`earlier`, the lines before) is audited too.
fn unaudited(
    caller: &str,
    got: &[(&'static str, Got)],
    (earlier, lines): (&[serde_json::Value], &[serde_json::Value]),
    audited: &mut usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for (rpc, g) in got {
        let Got::Refused(_, code) = g else { continue };
        if !AUDITED.contains(&code.as_str()) {
            continue;
        }
        let refused = |l: &serde_json::Value| {
            l["call"] == *rpc && l["outcome"] == "denied" && l["detail"] == *code
        };
        let repeated = |l: &serde_json::Value| refused(l) && l["source"].is_string();
        if lines.iter().any(refused) || earlier.iter().any(repeated) {
            *audited += 1;
        } else {
            out.push(format!("{caller} × {rpc}: refused {code} but not audited"));
        }
    }
    out
}

/// Anything whose outcome differs from the expectation, with both.
fn mismatches(
    caller: &str,
    got: &[(&'static str, Got)],
    expect: impl Fn(&str) -> Got,
) -> Vec<String> {
    got.iter()
        .filter(|(rpc, g)| *g != expect(rpc))
        .map(|(rpc, g)| format!("{caller} × {rpc}: got {g:?}, expected {:?}", expect(rpc)))
        .collect()
}

#[test]
fn every_rpc_refuses_every_wrong_caller_and_serves_the_right_one() {
    let mut c = Cluster::new("rpc_matrix");
    let addr = c.start_coordinator();
    let a1 = c.start_agent("a1", 2);
    c.agents_ready(1);
    let ca = c.ca_dir();
    let root = c.root().to_path_buf();
    let cli = |args: &[&str]| c.cli_raw(args);
    let ca_s = ca.display().to_string();
    let dir = |n: &str| root.join("ids").join(n);

    // The callers' TLS directories.
    let none = dir("none");
    std::fs::create_dir_all(&none).unwrap();
    std::fs::copy(ca.join("ca.pem"), none.join("ca.pem")).unwrap();
    let other_ca = root.join("other-ca");
    cli(&["certs", "init", "--dir", &other_ca.display().to_string()]).expect_code(0);
    let foreign = dir("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::copy(ca.join("ca.pem"), foreign.join("ca.pem")).unwrap();
    std::fs::copy(other_ca.join("admin/tls.pem"), foreign.join("tls.pem")).unwrap();
    std::fs::copy(other_ca.join("admin/tls.key"), foreign.join("tls.key")).unwrap();
    for (who, kind, ttl) in [
        ("expired", "--client", "1s"),
        ("bob", "--client", "1h"),
        ("m1", "--agent", "1h"),
        ("r1", "--agent", "1h"),
    ] {
        cli(&[
            "certs",
            "issue",
            "--ca-dir",
            &ca_s,
            kind,
            who,
            "--out",
            &dir(who).display().to_string(),
            "--ttl",
            ttl,
        ])
        .expect_code(0);
    }
    // r1 registers for real, then is revoked.
    let mut opts = crate::harness::AgentOpts::new("r1", 1);
    opts.tls_dir = Some(dir("r1"));
    c.start_agent_with(opts);
    c.agents_ready(2);
    c.cli(&["agents", "revoke", "r1"]).expect_code(0);
    // An execution and a token for the calls that need one; a used enrolment token.
    let pkg = c.write_fanout("m", &FanoutSpec::new(2, "true"));
    let exec_id = c.start_run(&pkg, &[]);
    let pkg_dir = pkg.parent().unwrap().to_path_buf();
    // A catalog package whose child agents may fetch by hash.
    c.cli(&["folder", "create", "/keep"]).expect_code(0);
    c.cli(&[
        "package",
        "deploy",
        &pkg.display().to_string(),
        "--folder",
        "/keep",
    ])
    .expect_code(0);
    let package_hash =
        crate::harness::fixtures::sha256_hex(&std::fs::read(pkg_dir.join("child.toml")).unwrap());
    let t = c.cli(&["token", "create", "--api", "dave", "--output", "json"]);
    let token_id = t.json()["token_id"].as_str().unwrap().to_owned();
    let enr = c.cli(&["token", "create", "--agent", "--output", "json"]);
    let enrol = enr.json()["token"].as_str().unwrap().to_owned();
    let enrol_secret = enrol.rsplit_once('_').unwrap().0.to_owned();
    c.wait_exec_terminal(&exec_id, Duration::from_secs(30));
    // "expired" must be past its notAfter (whole seconds) before the calls.
    let pem = std::fs::read_to_string(dir("expired").join("tls.pem")).unwrap();
    let der = baton_proto::tls::certs_from_pem(&pem).unwrap();
    let (_, not_after) = baton_proto::identity::validity(&der[0]).expect("a validity");
    let now_s = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    assert!(
        not_after - now_s() < 20,
        "the 1 s certificate ends {} s from now",
        not_after - now_s()
    );
    while now_s() <= not_after + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            c.agents_list()
                .iter()
                .any(|a| a.name == "r1" && a.state == "revoked")
        }
    ));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let coord = |d: &Path| channel(&rt, addr, d, "coordinator.baton");
    let callers = [
        Caller {
            name: "admin",
            dir: ca.join("admin"),
        },
        Caller {
            name: "none",
            dir: none.clone(),
        },
        Caller {
            name: "foreign",
            dir: foreign.clone(),
        },
        Caller {
            name: "expired",
            dir: dir("expired"),
        },
        Caller {
            name: "agent",
            dir: dir("m1"),
        },
        Caller {
            name: "bob",
            dir: dir("bob"),
        },
        Caller {
            name: "revoked",
            dir: dir("r1"),
        },
        Caller {
            name: "other-agent",
            dir: dir("m1"),
        },
    ];
    let mut bad = Vec::new();
    let audit_path = root.join("coordinator/data/audit.log");
    let (mut audited, mut refusals_asserted) = (0usize, 0usize);

    // ControlService.
    for caller in &callers {
        let before = audit_lines(&audit_path).len();
        let calls = control_calls(&pkg_dir, &rt, coord(&caller.dir), &exec_id, &token_id);
        let expect = |rpc: &str| match caller.name {
            "admin" if rpc == "ResumeExecution" => {
                refused(Code::FailedPrecondition, "EXECUTION_NOT_RESUMABLE")
            }
            "admin" => Got::Ok,
            "none" => refused(Code::Unauthenticated, "UNAUTHENTICATED"),
            "foreign" | "expired" => Got::NoConnection,
            // Listings show bob only what he may read (nothing): allowed.
            "bob" if ["WhoAmI", "ListExecutions", "ListFolders", "ListPackages"].contains(&rpc) => {
                Got::Ok
            }
            _ => refused(Code::PermissionDenied, "PERMISSION_DENIED"),
        };
        refusals_asserted += calls.iter().filter(|(_, g)| *g != Got::Ok).count();
        bad.extend(mismatches(caller.name, &calls, expect));
        let lines = audit_lines(&audit_path);
        bad.extend(unaudited(
            caller.name,
            &calls,
            lines.split_at(before.min(lines.len())),
            &mut audited,
        ));
    }
    // A certificate of another CA, or an expired one, is refused in the TLS
    // handshake, before any call: audited there (aggregated per source).
    let lines = audit_lines(&audit_path);
    for (caller, reason) in [
        ("foreign", "client certificate of an unknown CA"),
        ("expired", "client certificate expired or not yet valid"),
    ] {
        let found = lines.iter().any(|l| {
            l["call"] == "TLS handshake"
                && l["outcome"] == "denied"
                && l["detail"] == "TLS_HANDSHAKE_REFUSED"
                && l["who"] == format!("tls client ({reason})").as_str()
                && l["source"].is_string()
        });
        if found {
            audited += 1;
        } else {
            bad.push(format!(
                "{caller}: refused in the TLS handshake but not audited ({reason})"
            ));
        }
    }
    // The principal without grants sees no executions.
    let bob_channel = coord(&dir("bob")).expect("bob connects");
    let bob_list = rt.block_on(async {
        let mut cl = ControlServiceClient::new(bob_channel);
        cl.list_executions(pb::ListExecutionsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .executions
            .len()
    });
    assert_eq!(bob_list, 0, "bob (no grants) saw executions");

    // CoordinatorService, as the agent each caller claims to be.
    for caller in &callers {
        let claimed = match caller.name {
            "agent" => "m1",
            "revoked" => "r1",
            "other-agent" => "a1",
            _ => "m1",
        };
        let token = if caller.name == "none" {
            enrol_secret.as_str()
        } else {
            "btn_enr_000000000000_bad"
        };
        let before = audit_lines(&audit_path).len();
        let calls = agent_calls(&rt, coord(&caller.dir), claimed, token, &package_hash);
        let expect = |rpc: &str| match (caller.name, rpc) {
            ("foreign" | "expired", _) => Got::NoConnection,
            // Any registered, unrevoked agent; nobody else.
            ("agent" | "other-agent", "FetchPackage") => Got::Ok,
            // Renew names no agent: m1's certificate renews m1, if it may.
            ("other-agent", "Renew") => refused(Code::ResourceExhausted, "RENEW_TOO_SOON"),
            ("none", "FetchPackage") => refused(Code::Unauthenticated, "UNAUTHENTICATED"),
            ("revoked", "FetchPackage") => refused(Code::PermissionDenied, "CERT_REVOKED"),
            (_, "FetchPackage") => refused(Code::PermissionDenied, "PERMISSION_DENIED"),
            ("agent", "Register" | "ReportEvents") => Got::Ok,
            // A certificate with most of its lifetime left need not renew.
            ("agent", "Renew") => refused(Code::ResourceExhausted, "RENEW_TOO_SOON"),
            // The identity is revoked: final, so that a revoked agent stops.
            ("revoked", "Register" | "ReportEvents") => {
                refused(Code::PermissionDenied, "CERT_REVOKED")
            }
            ("none", "Register" | "ReportEvents") => {
                refused(Code::Unauthenticated, "UNAUTHENTICATED")
            }
            ("revoked", "Renew") => refused(Code::PermissionDenied, "CERT_REVOKED"),
            (_, "Register" | "ReportEvents" | "Renew") => {
                refused(Code::PermissionDenied, "PERMISSION_DENIED")
            }
            // Enroll: the first use of a good token works (below), a bad one is unknown.
            ("none", "Enroll") => Got::Ok,
            (_, "Enroll") => refused(Code::Unauthenticated, "UNAUTHENTICATED"),
            _ => Got::Ok,
        };
        refusals_asserted += calls.iter().filter(|(_, g)| *g != Got::Ok).count();
        bad.extend(mismatches(caller.name, &calls, expect));
        let lines = audit_lines(&audit_path);
        bad.extend(unaudited(
            caller.name,
            &calls,
            lines.split_at(before.min(lines.len())),
            &mut audited,
        ));
    }
    // The same enrolment token a second time.
    let before = audit_lines(&audit_path).len();
    let again = agent_calls(&rt, coord(&none), "m2", &enrol_secret, &package_hash);
    bad.extend(mismatches("token reused", &again[3..4], |_| {
        refused(Code::PermissionDenied, "TOKEN_USED")
    }));
    let lines = audit_lines(&audit_path);
    bad.extend(unaudited(
        "token reused",
        &again[3..4],
        lines.split_at(before.min(lines.len())),
        &mut audited,
    ));

    // AgentService on a1: only the coordinator's certificate may control jobs.
    let agent_ch = |d: &Path| channel(&rt, a1, d, "a1.agent.baton");
    for caller in callers.iter().chain([&Caller {
        name: "coordinator",
        dir: ca.clone(),
    }]) {
        let calls = agent_service_calls(&rt, agent_ch(&caller.dir));
        let expect = |rpc: &str| match (caller.name, rpc) {
            // Past the identity check: the matrix's job is unknown on a1.
            ("coordinator", "StreamLogs" | "StreamRows") => {
                refused(Code::NotFound, "AGENT_JOB_UNKNOWN")
            }
            ("coordinator", _) => Got::Ok,
            ("none" | "foreign" | "expired", _) => Got::NoConnection,
            (_, "StartJob" | "StartJobs") => refused(Code::PermissionDenied, "UNAUTHORIZED"),
            _ => refused(Code::PermissionDenied, ""),
        };
        refusals_asserted += calls.iter().filter(|(_, g)| *g != Got::Ok).count();
        bad.extend(mismatches(caller.name, &calls, expect));
    }
    eprintln!(
        "rpc_matrix: {refusals_asserted} refusals asserted, {audited} of them audited by the coordinator; {} mismatches",
        bad.len()
    );

    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    c.finish(&["r1"]);
}
