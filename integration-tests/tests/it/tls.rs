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
