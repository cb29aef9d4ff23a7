//! Transport security at the edges: the coordinator serves only clients holding a
//! certificate of its own CA, plaintext does not reach a TLS coordinator, and
//! `--insecure` is refused beyond loopback. (The happy path — every other test —
//! already runs over mutual TLS.)

use std::time::Duration;

use crate::harness::{AGENT_DEBUG, Cluster, LogMark};

#[test]
fn coordinator_refuses_foreign_and_plaintext_clients() {
    let mut c = Cluster::new("tls_refusals");
    let addr = c.start_coordinator();

    // The cluster's own admin identity works.
    c.cli(&["agents", "list", "--output", "json"])
        .expect_code(0);

    // An identity from another CA: the handshake fails, the CLI says the coordinator is unavailable.
    let other = c.root().join("other-ca");
    c.cli_raw(&["certs", "init", "--dir", &other.display().to_string()])
        .expect_code(0);
    let out = c.cli_raw(&[
        "agents",
        "list",
        "--coordinator",
        &format!("https://{addr}"),
        "--tls-dir",
        &other.join("admin").display().to_string(),
    ]);
    assert_ne!(
        out.code,
        Some(0),
        "a foreign CA's client was served\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("error["),
        "no error code\n{}",
        out.describe()
    );

    // Plaintext against the TLS port.
    let out = c.cli_at(
        &format!("http://{addr}"),
        &["agents", "list"],
        Duration::from_secs(20),
    );
    out.expect_code(3);
    assert!(
        out.stderr.contains("error[COORDINATOR_UNAVAILABLE]") && out.stderr.contains("https://"),
        "plaintext to a TLS coordinator should say to use https://\n{}",
        out.describe()
    );
    c.finish(&[]);
}

#[test]
fn insecure_is_refused_beyond_loopback() {
    let c = Cluster::new("tls_insecure");
    let data = c.root().join("insecure-data").display().to_string();
    let out = c.cli_raw(&[
        "coordinator",
        "--insecure",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        &data,
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("error[INSECURE_NOT_LOOPBACK]"),
        "{}",
        out.describe()
    );
    c.finish(&[]);
}

/// Identity rules: a certificate is an identity, not just membership of the CA.
#[test]
fn identities_are_enforced() {
    use crate::harness::AgentOpts;
    use crate::harness::grpc::{AgentTls, Answer, answer, start_job, start_job_request};
    use baton_proto::RejectCode;

    let mut c = Cluster::new("tls_identities");
    c.start_coordinator();
    let a1 = c.start_agent("a1", 2);
    c.agents_ready(1);
    let a1_tls = c.root().join("a1").join("data").join("tls");

    // An agent's certificate cannot call ControlService.
    let out = c.cli_raw(&[
        "agents",
        "list",
        "--coordinator",
        &c.coordinator_url(),
        "--tls-dir",
        &a1_tls.display().to_string(),
    ]);
    out.expect_code(4);
    assert!(
        out.stderr.contains("error[PERMISSION_DENIED]"),
        "{}",
        out.describe()
    );

    // A client's certificate cannot start jobs on an agent: only the coordinator may.
    let as_client = AgentTls {
        client_dir: c.ca_dir().join("admin"),
        agent: "a1".to_owned(),
    };
    let resp = start_job(
        &as_client,
        a1,
        start_job_request("it-not-coordinator", "name='w'\n[tasks.t]\nexec=['true']\n"),
    )
    .unwrap_or_else(|e| panic!("StartJob: {e}"));
    match answer(&resp) {
        Answer::Rejected {
            code: RejectCode::Unauthorized,
            reason,
        } => assert!(!reason.is_empty()),
        other => panic!("expected Rejected(UNAUTHORIZED), got {other:?}"),
    }

    // An agent cannot register under another agent's name: a process holding a1's
    // certificate but calling itself a2 is refused and never becomes ready.
    // (Its reporter logs each retry that fails again at debug.)
    let mut opts = AgentOpts::new("a2", 2).log_targets(AGENT_DEBUG);
    opts.tls_dir = Some(a1_tls);
    c.start_agent_with(opts);
    // Refused (WARN), retried and refused again: it went past the point where
    // it could have registered, or given up.
    LogMark::at_start("a2", &c.agent("a2").stderr_path())
        .wait_for(&["coordinator still unreachable"], Duration::from_secs(20));
    let agents = c.agents_list();
    assert!(
        agents.iter().all(|a| a.name != "a2"),
        "an impostor registered: {agents:?}"
    );
    assert!(
        c.agent("a2").is_running(),
        "the refused agent must keep retrying, not exit"
    );
    c.finish(&["refused"]);
}

/// Revocation: `baton agents revoke` makes the agent's certificate useless at once —
/// its children run elsewhere, it cannot register again with it — and a newly
/// issued certificate brings the machine back.
#[test]
fn revoked_agent_certificate_is_refused_and_a_new_one_works() {
    use crate::harness::{AgentOpts, FanoutSpec};

    let mut c = Cluster::new("tls_revoke");
    c.start_coordinator();
    c.start_agent("a1", 2);
    c.start_agent("a2", 2);
    c.agents_ready(2);

    let spec = FanoutSpec::new(8, "sleep 1").parallelism(4);
    let parent = c.write_fanout("revoke", &spec);
    let id = c.start_run(&parent, &[]);
    let ok = crate::harness::wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        c.exec_show(&id)
            .children
            .iter()
            .any(|ch| ch.agent == "a2" && ch.state == "running")
    });
    assert!(ok, "a2 never ran a child");

    let a2_log = c.log_mark("a2");
    let out = c.cli(&["agents", "revoke", "a2"]);
    out.expect_code(0);
    assert!(out.stdout.contains("revoked"), "{}", out.describe());

    let end = c.wait_exec_terminal(&id, Duration::from_secs(40));
    assert_eq!(end.status, "succeeded", "{:#}", end.raw);
    end.assert_all_succeeded_once(8, &["a1", "a2"]);
    assert!(
        end.children.iter().any(|ch| ch.attempt >= 2
            && ch.agent == "a1"
            && ch.attempt_agents.iter().any(|a| a == "a2")),
        "a child of the revoked agent should have run again on a1: {:#}",
        end.raw
    );

    // The process still holding the revoked certificate keeps being refused:
    // it has tried to register again since the revocation, and was told why.
    a2_log.wait_for(
        &["the coordinator will not take this agent", "revoked"],
        Duration::from_secs(20),
    );
    let a2 = c
        .agents_list()
        .into_iter()
        .find(|a| a.name == "a2")
        .expect("a2 listed");
    assert_eq!(a2.state, "revoked");
    c.agent("a2").kill9();
    // The identity stays revoked, whatever certificate it shows, until an
    // operator forgets it (or it enrols again with a new token).
    c.cli(&["agents", "rm", "a2"]).expect_code(0);

    // Re-enrolment: a new certificate for the same name, a new process.
    let fresh = c.root().join("a2-new-tls");
    c.cli_raw(&[
        "certs",
        "issue",
        "--ca-dir",
        &c.ca_dir().display().to_string(),
        "--agent",
        "a2",
        "--out",
        &fresh.display().to_string(),
    ])
    .expect_code(0);
    let mut opts = AgentOpts::new("a2", 2);
    opts.tls_dir = Some(fresh);
    c.start_agent_with(opts);
    let back =
        crate::harness::wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            c.agents_list()
                .iter()
                .any(|a| a.name == "a2" && a.state == "ready")
        });
    assert!(back, "a2 with a new certificate did not come back");
    c.finish(&["revoked"]);
}
