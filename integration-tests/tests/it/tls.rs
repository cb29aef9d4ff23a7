//! Transport security at the edges: the coordinator serves only clients holding a
//! certificate of its own CA, plaintext does not reach a TLS coordinator, and
//! `--insecure` is refused beyond loopback. (The happy path — every other test —
//! already runs over mutual TLS.)

use std::time::Duration;

use crate::harness::Cluster;

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
    let mut opts = AgentOpts::new("a2", 2);
    opts.tls_dir = Some(a1_tls);
    c.start_agent_with(opts);
    std::thread::sleep(Duration::from_secs(2));
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
