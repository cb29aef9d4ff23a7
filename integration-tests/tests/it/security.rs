//! Enrolment, renewal without restart, revocation, and principals with
//! per-folder permissions — driven through the real CLI.

use std::time::Duration;

mod identity;

use crate::harness::{AGENT_SESSION_FAILED, AgentOpts, Cluster, FanoutSpec, wait_until};

fn cert_of(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("tls.pem")).unwrap_or_default()
}

/// An agent enrols with a one-time token, renews its one-day-in-miniature
/// certificate several times while children run (no restart, nothing fails),
/// and the token cannot be used twice. Revocation then shuts it out.
#[test]
fn enrolment_then_renewal_without_restart_then_revocation() {
    let mut c = Cluster::new("sec_enrol");
    // 6-second certificates: the agent renews about every 4 s.
    c.start_coordinator_with(&["--cert-ttl", "6s"]);
    let out = c.cli(&["token", "create", "--agent", "e1", "--output", "json"]);
    out.expect_code(0);
    let token = out.json()["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("btn_enr_"), "{}", out.describe());

    let tls = c.root().join("e1-tls");
    let mut opts = AgentOpts::new("e1", 4);
    opts.tls_dir = Some(tls.clone());
    opts.extra_args = vec!["--enroll".into(), token.clone()];
    c.start_agent_with(opts);
    c.agents_ready(1);
    let first = cert_of(&tls);
    assert!(
        first.contains("BEGIN CERTIFICATE"),
        "enrolment wrote no certificate"
    );
    let pid = c.agent("e1").pid();

    // The same token again (another machine): refused, and nothing is enrolled.
    let tls2 = c.root().join("e2-tls");
    let mut opts = AgentOpts::new("e1", 2);
    opts.tls_dir = Some(tls2.clone());
    opts.wait_announce = false;
    opts.extra_args = vec!["--enroll".into(), token];
    c.start_agent_with(opts);
    let node = c.agents_last();
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            !node.is_running()
        }),
        "an agent with a used token kept running"
    );
    let log = crate::harness::read_log(&node.stderr_path());
    assert!(log.contains("TOKEN_USED"), "no TOKEN_USED in\n{log}");
    assert!(!tls2.join("tls.pem").exists());

    // Children run across several renewals; none fails, the agent keeps its pid.
    let pkg = c.write_fanout("renew", &FanoutSpec::new(160, "sleep 0.2"));
    let id = c.start_run(&pkg, &[]);
    let mut renewals = std::collections::BTreeSet::new();
    let ended = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        renewals.insert(cert_of(&tls));
        c.exec_show(&id).is_terminal()
    });
    assert!(ended, "execution did not end");
    let view = c.wait_exec_terminal(&id, Duration::from_secs(5));
    view.assert_all_succeeded_once(160, &["e1"]);
    assert!(
        renewals.len() >= 2 && !renewals.contains(&String::new()),
        "the certificate did not renew during the run ({} distinct)",
        renewals.len()
    );
    assert_ne!(cert_of(&tls), first);
    assert_eq!(c.agent("e1").pid(), pid, "the agent restarted");
    // The coordinator renewed its own certificate and the admin identity too,
    // and the CLI (which reads them fresh) still works.
    c.cli(&["agents", "list"]).expect_code(0);

    // Revocation: the agent is refused at once and cannot renew.
    c.cli(&["agents", "revoke", "e1"]).expect_code(0);
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            c.agents_list()
                .iter()
                .any(|a| a.name == "e1" && a.state == "revoked")
        }),
        "e1 not shown revoked"
    );
    // Every certificate issued to e1 is refused, not only the one it registered
    // with: the renewed one on disk (never used to register) gets e1 nowhere.
    c.agent("e1").kill9();
    let restarted = c.log_mark("e1");
    c.agent("e1").spawn();
    // Its first registration after the restart has been answered (and refused:
    // it stops, or retries) before the listing is read.
    restarted.wait_for_any(AGENT_SESSION_FAILED, Duration::from_secs(20));
    assert!(
        c.agents_list()
            .iter()
            .all(|a| a.name != "e1" || a.state == "revoked"),
        "e1 came back with a renewed certificate after revocation"
    );
    let log = crate::harness::read_log(&c.agent("e1").stderr_path());
    assert!(
        log.contains("revoked"),
        "the restarted agent was not told it is revoked:\n{log}"
    );
    c.finish(&["e1", "revoked"]);
}

/// Deny by default; grants per folder, inherited below; API tokens; audit lines.
#[test]
fn principals_need_a_grant_on_the_folder() {
    let mut c = Cluster::new("sec_roles");
    c.start_coordinator();
    c.start_agent("a1", 4);
    c.agents_ready(1);
    let pkg = c.write_fanout("roles", &FanoutSpec::new(3, "true"));
    let pkg = pkg.display().to_string();

    // The admin runs something in /finance (folders exist before a run
    // goes in them, as before a deploy).
    c.cli(&["folder", "create", "/finance"]).expect_code(0);
    c.cli(&["folder", "create", "/etl/daily", "--parents"])
        .expect_code(0);
    c.cli(&["run", &pkg, "--folder", "/finance", "--wait"])
        .expect_code(0);

    let out = c.cli(&["token", "create", "--api", "alice", "--output", "json"]);
    out.expect_code(0);
    let token_id = out.json()["token_id"].as_str().unwrap().to_owned();
    let token = out.json()["token"].as_str().unwrap().to_owned();
    let alice = |args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--token", token.as_str()]);
        c.cli(&a)
    };

    let me = alice(&["whoami", "--output", "json"]);
    me.expect_code(0);
    assert_eq!(me.json()["principal"], "alice");
    assert_eq!(me.json()["method"], "token");

    // Nothing granted: refused with a code, audited.
    let out = alice(&["run", &pkg, "--folder", "/etl"]);
    assert!(
        out.stderr.contains("error[PERMISSION_DENIED]"),
        "{}",
        out.describe()
    );
    let out = alice(&["agents", "drain", "a1"]);
    assert!(
        out.stderr.contains("error[PERMISSION_DENIED]"),
        "{}",
        out.describe()
    );
    let out = alice(&["token", "create", "--api", "mallory"]);
    assert!(
        out.stderr.contains("error[PERMISSION_DENIED]"),
        "{}",
        out.describe()
    );

    // execute on /etl: allowed in /etl and below, not beside it.
    c.cli(&["role", "grant", "alice", "execute", "/etl"])
        .expect_code(0);
    alice(&["run", &pkg, "--folder", "/etl/daily", "--wait"]).expect_code(0);
    let out = alice(&["run", &pkg, "--folder", "/finance"]);
    assert!(
        out.stderr.contains("error[PERMISSION_DENIED]"),
        "{}",
        out.describe()
    );

    // Listings show only what alice may read.
    let out = alice(&["exec", "list", "--output", "json"]);
    out.expect_code(0);
    let text = out.stdout.clone();
    assert!(
        text.contains("/etl/daily") && !text.contains("/finance"),
        "{}",
        out.describe()
    );
    let all = c.cli(&["exec", "list", "--output", "json"]);
    assert!(all.stdout.contains("/finance"), "{}", all.describe());

    // The audit trail names who, what and where.
    let audit = std::fs::read_to_string(c.root().join("coordinator/data/audit.log")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"who\":\"alice\"")
            && l.contains("\"folder\":\"/finance\"")
            && l.contains("denied")),
        "{audit}"
    );
    assert!(audit.contains("GrantRole"), "{audit}");
    assert!(
        !audit.contains(&token),
        "the audit log holds a token secret"
    );

    // A client certificate can be revoked too: carol's works, then it does not.
    let carol = c.root().join("carol");
    c.cli_raw(&[
        "certs",
        "issue",
        "--ca-dir",
        &c.ca_dir().display().to_string(),
        "--client",
        "carol",
        "--out",
        &carol.display().to_string(),
    ])
    .expect_code(0);
    let carol_s = carol.display().to_string();
    c.cli(&["whoami", "--tls-dir", &carol_s]).expect_code(0);
    c.cli(&[
        "certs",
        "revoke",
        "--cert",
        &carol.join("tls.pem").display().to_string(),
    ])
    .expect_code(0);
    let out = c.cli(&["whoami", "--tls-dir", &carol_s]);
    assert!(
        out.stderr.contains("error[CERT_REVOKED]"),
        "{}",
        out.describe()
    );

    // A revoked token stops working at once; no credential at all is refused too.
    c.cli(&["token", "revoke", &token_id]).expect_code(0);
    let out = alice(&["whoami"]);
    assert!(
        out.stderr.contains("error[TOKEN_REVOKED]"),
        "{}",
        out.describe()
    );
    // ... and its refusal is audited with its id, not as "anonymous".
    let audit = std::fs::read_to_string(c.root().join("coordinator/data/audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains(&format!("\"who\":\"token {token_id}\""))
                && l.contains("TOKEN_REVOKED")),
        "{audit}"
    );
    let bare = c.root().join("ca-only");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(c.ca_dir().join("ca.pem"), bare.join("ca.pem")).unwrap();
    let out = c.cli(&[
        "whoami",
        "--token",
        "btn_api_000000000000_0000000000000000000000000000000000000000000000000000000000000000",
        "--tls-dir",
        &bare.display().to_string(),
    ]);
    assert!(
        out.stderr.contains("error[UNAUTHENTICATED]"),
        "{}",
        out.describe()
    );
    c.finish(&[]);
}

/// `run` on a folder starts the folder's catalog packages, and nothing else:
/// not an ad hoc file, not a package of another folder.
#[test]
fn run_starts_only_catalog_packages_of_the_folder() {
    let mut c = Cluster::new("sec_run");
    c.start_coordinator();
    c.start_agent("a1", 4);
    c.agents_ready(1);
    let pkg = c.write_fanout("runperm", &FanoutSpec::new(2, "true"));
    let pkg_s = pkg.display().to_string();
    c.cli(&["folder", "create", "/etl"]).expect_code(0);
    let out = c.cli(&[
        "package", "deploy", &pkg_s, "--folder", "/etl", "--output", "json",
    ]);
    out.expect_code(0);
    let path = out.json()["path"].as_str().unwrap().to_owned();
    let out = c.cli(&["token", "create", "--api", "bob", "--output", "json"]);
    let token = out.json()["token"].as_str().unwrap().to_owned();
    let bob = |args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--token", token.as_str()]);
        c.cli(&a)
    };
    c.cli(&["role", "grant", "bob", "run", "/etl"])
        .expect_code(0);

    // The catalog package runs, and bob may watch it.
    bob(&["run", "--package", &path, "--wait"]).expect_code(0);
    bob(&["exec", "list"]).expect_code(0);
    // An ad hoc file in the same folder needs execute.
    let out = bob(&["run", &pkg_s, "--folder", "/etl"]);
    assert!(
        out.stderr.contains("error[PERMISSION_DENIED]") && out.stderr.contains("'execute'"),
        "{}",
        out.describe()
    );
    // Nothing beside the folder, and no changes to it.
    let out = bob(&["package", "deploy", &pkg_s, "--folder", "/etl"]);
    assert!(
        out.stderr.contains("error[PERMISSION_DENIED]"),
        "{}",
        out.describe()
    );
    let list = c.cli(&["role", "list", "--output", "json"]);
    assert!(list.stdout.contains("\"run\""), "{}", list.describe());
    // execute implies run.
    c.cli(&["role", "grant", "bob", "execute", "/etl"])
        .expect_code(0);
    bob(&["run", &pkg_s, "--folder", "/etl", "--wait"]).expect_code(0);
    c.finish(&[]);
}

/// A job never sees the agent's credentials: an agent enrolled with
/// `BATON_ENROLL_TOKEN` in its environment (as the deploy files do) runs
/// children whose environment holds no such variable (a job without run-as
/// inherits the agent's environment otherwise, and could enrol a rogue agent).
#[test]
fn a_job_never_sees_the_agents_enrolment_token() {
    let mut c = Cluster::new("sec_env_token");
    c.start_coordinator();
    let out = c.cli(&["token", "create", "--agent", "t1", "--output", "json"]);
    out.expect_code(0);
    let token = out.json()["token"].as_str().unwrap().to_owned();
    let mut opts = AgentOpts::new("t1", 2);
    opts.tls_dir = Some(c.root().join("t1-tls"));
    opts.env = vec![
        ("BATON_ENROLL_TOKEN".into(), token),
        ("BATON_TOKEN".into(), "btn_api_not_for_jobs".into()),
        // The README's shell exports the CLI's admin identity and the URL.
        (
            "BATON_TLS_DIR".into(),
            c.ca_dir().join("admin").display().to_string(),
        ),
    ];
    c.start_agent_with(opts);
    c.agents_ready(1);
    // Each child fails if it can see either variable.
    let pkg = c.write_fanout(
        "env_token",
        &FanoutSpec::new(
            3,
            "if env | grep -q -e '^BATON_ENROLL_TOKEN=' -e '^BATON_TOKEN=' -e '^BATON_TLS_DIR='; then echo leaked; exit 1; fi",
        ),
    );
    let id = c.start_run(&pkg, &[]);
    let view = c.wait_exec_terminal(&id, Duration::from_secs(60));
    assert_eq!(
        view.status, "succeeded",
        "a child saw the agent's token: {:#}",
        view.raw
    );
    view.assert_all_succeeded_once(3, &["t1"]);
    c.finish(&[]);
}
