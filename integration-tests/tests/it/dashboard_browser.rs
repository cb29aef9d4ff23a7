//! The web dashboard in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`, over WebDriver) in a network namespace that reaches
//! only the coordinator under test, which serves the dashboard on the
//! namespace's host-side address. During a running fan-out the browser logs
//! in with an API token, sees the fleet, opens the execution page, sees the
//! counts change and a running child's logs arrive, cancels the run from the
//! page; then a principal without `read` on the folder sees nothing of it.
//! Screenshots go to `CARGO_TARGET_TMPDIR/dashboard-screenshots/`.

use std::time::Duration;

use baton_integration_tests::browser::{Browser, Netns};

use crate::dashboard::api_token;
use crate::harness::{Cluster, FanoutSpec};

const WAIT: Duration = Duration::from_secs(30);

fn count(b: &Browser<'_>, which: &str) -> u64 {
    b.text(&format!("[data-testid=\"count-{which}\"]"))
        .trim()
        .parse()
        .unwrap_or(0)
}

fn log_in(b: &Browser<'_>, base: &str, token: &str, who: &str) {
    b.goto(&format!("{base}/"));
    b.wait_for("[data-testid=\"token-input\"]", |_| true, WAIT);
    b.type_text("[data-testid=\"token-input\"]", token);
    b.click("[data-testid=\"login-button\"]");
    b.wait_text("[data-testid=\"principal\"]", who, WAIT);
}

#[test]
fn dashboard_in_a_browser_shows_a_live_run_streams_logs_cancels_and_hides_what_is_not_readable() {
    if let Err(why) = Browser::available() {
        eprintln!("SKIP: the browser test needs {why}");
        return;
    }
    let netns = match Netns::try_create() {
        Ok(n) => n,
        Err(why) => {
            eprintln!("SKIP: cannot create a network namespace: {why}");
            return;
        }
    };
    let port = crate::dashboard::free_port();
    let listen = format!("{}:{port}", netns.host_ip());
    let mut c = Cluster::new("dashboard-browser");
    c.start_coordinator_with(&[
        "--dashboard-listen",
        &listen,
        "--dashboard-name",
        "dashboard.test",
    ]);
    c.start_agent("a1", 2);
    c.start_agent("a2", 2);
    c.agents_ready(2);
    c.cli(&["folder", "create", "/team"]).expect_code(0);
    c.cli(&["folder", "create", "/other"]).expect_code(0);
    let alice = api_token(&c, "alice");
    let carol = api_token(&c, "carol");
    c.cli(&["role", "grant", "alice", "read", "/"])
        .expect_code(0);
    c.cli(&["role", "grant", "alice", "run", "/team"])
        .expect_code(0);
    c.cli(&["role", "grant", "carol", "read", "/other"])
        .expect_code(0);

    // 200 children, 4 at a time, each about 2 s: counts change for ~100 s, long
    // after a slow machine has started its browser (the page cancels the run
    // well before it would end).
    let spec = FanoutSpec::new(
        200,
        "echo hello-from-$BATON_PARAM_SHARD; sleep 2; echo bye-from-$BATON_PARAM_SHARD",
    )
    .parallelism(4);
    let parent = c.write_fanout("browser", &spec);
    let id = c.start_run(&parent, &["--folder", "/team"]);

    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let ca = c.ca_dir().join("ca.pem");
    let b = Browser::start(&netns, &ca, &[("dashboard.test", netns.host_ip())], &shots);
    let base = format!("https://dashboard.test:{port}");

    // The login page first (no session), then alice.
    b.goto(&format!("{base}/"));
    b.wait_for("[data-testid=\"token-input\"]", |_| true, WAIT);
    b.screenshot("dashboard-login");
    // Served over HTTP/2: the page's live streams share one connection.
    let protocol =
        b.execute("return performance.getEntriesByType('navigation')[0].nextHopProtocol;");
    assert_eq!(
        protocol.as_str(),
        Some("h2"),
        "the page came over {protocol}"
    );
    log_in(&b, &base, &alice, "alice");

    // The fleet: both agents.
    b.goto(&format!("{base}/#/fleet"));
    b.wait_for(
        "[data-testid=\"agents-table\"]",
        |t| t.contains("a1") && t.contains("a2"),
        WAIT,
    );
    assert_eq!(b.find_all("[data-testid=\"agent-row\"]").len(), 2);
    b.screenshot("dashboard-fleet");

    // The executions list holds the run.
    b.goto(&format!("{base}/#/executions"));
    b.wait_for(
        "[data-testid=\"executions-table\"]",
        |t| t.contains(&id[..8]),
        WAIT,
    );

    // The execution page, live: the succeeded count grows without a reload.
    b.goto(&format!("{base}/#/execution/{id}"));
    b.wait_text("[data-testid=\"count-total\"]", "200", WAIT);
    b.wait_for(
        "[data-testid=\"count-succeeded\"]",
        |t| t.trim().parse::<u64>().is_ok(),
        WAIT,
    );
    let first = count(&b, "succeeded");
    b.wait_for(
        "[data-testid=\"count-succeeded\"]",
        |t| t.trim().parse::<u64>().unwrap_or(0) >= first + 4,
        WAIT,
    );
    assert!(
        count(&b, "succeeded") > first,
        "the counts did not change live"
    );
    b.wait_for("[data-testid=\"tasks-table\"]", |t| !t.is_empty(), WAIT);
    b.wait_for(
        "[data-testid=\"timeline\"]",
        |t| t.contains("a1") || t.contains("a2"),
        WAIT,
    );
    b.screenshot("dashboard-execution");

    // A running child's logs arrive in its panel.
    let mut path = String::new();
    let found = crate::harness::wait_until(WAIT, Duration::from_millis(300), || {
        let v = b.execute(
            "const r = [...document.querySelectorAll('[data-testid=\"child-row\"]')]\
             .find(r => r.textContent.includes('running')); \
             return r ? r.getAttribute('data-path') : null;",
        );
        path = v.as_str().unwrap_or_default().to_owned();
        !path.is_empty()
    });
    assert!(found, "no running child row on the page");
    // The table is redrawn live: click by script, on the row as it is now.
    b.execute(&format!(
        "document.querySelector('[data-testid=\"child-row\"][data-path=\"{path}\"]').click();"
    ));
    b.wait_for("[data-testid=\"child-panel\"]", |t| t.contains(&path), WAIT);
    b.wait_for(
        "[data-testid=\"child-logs\"]",
        |t| t.contains("hello-from-"),
        WAIT,
    );
    b.screenshot("dashboard-child-logs");

    // Cancel from the page: one click; the state follows live.
    // Close the child's panel (it lies over the page), then cancel.
    b.click("[data-testid=\"child-panel-close\"]");
    b.click("[data-testid=\"cancel-button\"]");
    b.wait_text("[data-testid=\"exec-state\"]", "cancelled", WAIT);
    // The rest of the page follows within a refresh.
    b.wait_for(
        "[data-testid=\"tasks-table\"]",
        |t| !t.contains("running"),
        WAIT,
    );
    b.screenshot("dashboard-cancelled");
    let v = c.wait_exec_terminal(&id, WAIT);
    assert_eq!(v.status, "cancelled", "{}", v.brief());
    let done = v.summary_u64("/children/succeeded");
    assert!(
        done < 200,
        "the run was cancelled after it ended: {}",
        v.brief()
    );

    // Carol may read /other only: the run is in no list of hers, and its page
    // says she may not read it, with none of its data.
    b.click("[data-testid=\"logout\"]");
    b.wait_for("[data-testid=\"token-input\"]", |_| true, WAIT);
    log_in(&b, &base, &carol, "carol");
    b.goto(&format!("{base}/#/executions"));
    b.wait_for("[data-testid=\"executions-table\"]", |_| true, WAIT);
    std::thread::sleep(Duration::from_secs(3)); // a live update, had there been one
    assert!(
        !b.text("[data-testid=\"executions-table\"]")
            .contains(&id[..8]),
        "carol sees the execution in the list"
    );
    b.goto(&format!("{base}/#/execution/{id}"));
    b.wait_for(
        "[data-testid=\"error\"]",
        |t| t.contains("PERMISSION_DENIED"),
        WAIT,
    );
    let page = b.execute("return document.body.innerText;");
    let page = page.as_str().unwrap_or_default();
    assert!(!page.contains("hello-from-"), "carol sees a child's logs");
    let shown = b
        .try_find("[data-testid=\"count-total\"]")
        .ok()
        .flatten()
        .map(|e| b.element_text(&e))
        .unwrap_or_default();
    assert!(shown.trim().is_empty(), "carol sees the counts: {shown}");
    b.screenshot("dashboard-denied");
    eprintln!("screenshots in {}", shots.display());
    drop(b);
    drop(netns);
    c.finish(&[]);
}
