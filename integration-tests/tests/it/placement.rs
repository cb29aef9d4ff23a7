//! Placement and admission end to end, on real processes: label constraints put
//! every child on matching agents (and say so when none match), spread by label
//! splits children evenly over the values, weights are registered and listed, an
//! agent whose children all fail is quarantined with its reason in `agents list`,
//! a start past `--max-pending-children` is refused as busy (exit 5) or,
//! when it can never fit, as too large, a rows foreach waits for room, and a
//! package task's `slots` bound how many of its children share an agent.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::fixtures::write_file;
use crate::harness::{AgentOpts, Cluster, FanoutSpec, wait_until};

fn agent(c: &mut Cluster, name: &str, slots: u32, extra: &[&str]) {
    let mut opts = AgentOpts::new(name, slots);
    opts.extra_args = extra.iter().map(|s| (*s).to_owned()).collect();
    c.start_agent_with(opts).expect("agent announced");
}

#[test]
fn labels_constrain_and_spread_children() {
    let mut c = Cluster::new("placement_labels");
    c.start_coordinator();
    agent(&mut c, "a1", 4, &["--label", "zone=a"]);
    agent(&mut c, "a2", 4, &["--label", "zone=a"]);
    agent(&mut c, "b1", 4, &["--label", "zone=b"]);
    agent(&mut c, "b2", 4, &["--label", "zone=b", "--weight", "2"]);
    c.agents_ready(4);
    let listing = c.cli(&["agents", "list", "--output", "json"]).json();
    let weights: BTreeMap<String, u64> = listing["items"]
        .as_array()
        .expect("agents array")
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap_or_default().to_owned(),
                a["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(weights["b2"], 2, "{listing}");
    assert_eq!(weights["a1"], 1, "{listing}");

    let parent = c.write_fanout("fan", &FanoutSpec::new(8, "sleep 0.5"));
    let id = c.start_run(&parent, &["--require", "zone=b"]);
    let view = c.wait_exec_terminal(&id, Duration::from_secs(30));
    assert_eq!(view.status, "succeeded", "{}", view.brief());
    for child in &view.children {
        assert!(
            child.agent == "b1" || child.agent == "b2",
            "child {} ran on {} despite --require zone=b",
            child.index,
            child.agent
        );
    }

    // All eight fit at once (16 slots): spread puts four in each zone.
    let id = c.start_run(&parent, &["--placement", "spread:zone"]);
    let view = c.wait_exec_terminal(&id, Duration::from_secs(30));
    assert_eq!(view.status, "succeeded", "{}", view.brief());
    let in_a = view
        .children
        .iter()
        .filter(|ch| ch.agent.starts_with('a'))
        .count();
    assert_eq!(
        (in_a, view.children.len() - in_a),
        (4, 4),
        "spread:zone split unevenly: {}",
        view.brief()
    );

    // A constraint no agent meets: the children wait, and say why.
    let id = c.start_run(&parent, &["--require", "zone=eu"]);
    let said = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        c.exec_show(&id)
            .raw
            .to_string()
            .contains("no agent has zone=eu")
    });
    assert!(said, "no reason naming zone=eu: {}", c.exec_show(&id).raw);
    c.cli(&["exec", "cancel", &id]).expect_code(0);
    c.finish(&[]);
}

#[test]
fn an_agent_whose_children_fail_is_quarantined() {
    let mut c = Cluster::new("placement_quarantine");
    c.start_coordinator_with(&[
        "--quarantine-failures",
        "3",
        "--quarantine-window",
        "60s",
        "--quarantine-cooldown",
        "10m",
    ]);
    agent(&mut c, "good1", 2, &[]);
    agent(&mut c, "good2", 2, &[]);
    // Its jobs run under its data directory: the child fails only there.
    agent(&mut c, "zbad", 2, &[]);
    c.agents_ready(3);
    let mut spec = FanoutSpec::new(
        24,
        r#"case "$PWD" in */zbad/data/*) exit 3;; esac; sleep 0.1"#,
    );
    spec.attempts = 4;
    let parent = c.write_fanout("flaky", &spec);
    let id = c.start_run(&parent, &[]);
    let view = c.wait_exec_terminal(&id, Duration::from_secs(60));
    assert_eq!(
        view.status,
        "succeeded",
        "retries avoid the bad agent: {}",
        view.brief()
    );
    let listing = c.cli(&["agents", "list", "--output", "json"]).json();
    let bad = listing["items"]
        .as_array()
        .expect("agents array")
        .iter()
        .find(|a| a["name"] == "zbad")
        .cloned()
        .expect("zbad listed");
    assert_eq!(bad["state"], "quarantined", "{listing}");
    let reason = bad["quarantine_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("3 children failed"), "reason: {reason:?}");
    assert!(bad["quarantined_until_unix_ms"].as_u64().unwrap_or(0) > 0);
    let human = c.cli(&["agents", "list"]);
    human.expect_code(0);
    assert!(
        human
            .stdout
            .contains("zbad: quarantined: 3 children failed"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains(" (until 20"),
        "the end of the quarantine as RFC 3339: {}",
        human.stdout
    );
    // The good agents are never quarantined (at most half the fleet is).
    for a in listing["items"].as_array().expect("agents array") {
        if a["name"] != "zbad" {
            assert_eq!(a["state"], "ready", "{a}");
        }
    }
    c.finish(&[]);
}

#[test]
fn starts_past_the_pending_limit_are_refused_as_busy() {
    let mut c = Cluster::new("placement_busy");
    c.start_coordinator_with(&["--max-pending-children", "10"]);
    c.start_agent("a1", 1);
    c.agents_ready(1);
    let parent = c.write_fanout("slow", &FanoutSpec::new(8, "sleep 2"));
    let first = c.start_run(&parent, &[]);

    let pkg = parent.display().to_string();
    let busy = c.cli(&["run", &pkg, "-p", "children=5"]);
    busy.expect_code(5);
    assert!(
        busy.stderr.contains("COORDINATOR_BUSY") && busy.stderr.contains("busy, retry after 30 s"),
        "{}",
        busy.describe()
    );

    let huge = c.cli(&["run", &pkg, "-p", "children=11"]);
    huge.expect_code(2);
    assert!(
        huge.stderr.contains("EXECUTION_TOO_LARGE"),
        "{}",
        huge.describe()
    );

    // Small enough to fit next to the first: accepted.
    c.start_run(&parent, &["-p", "children=2"]);
    c.cli(&["exec", "cancel", &first]).expect_code(0);
    c.finish(&[]);
}

/// A rows foreach is held to the same bound as a start: its rows wait until
/// children that finish make room, `exec show` says why, and then every row
/// runs once.
#[test]
fn a_rows_foreach_waits_for_room_under_the_pending_limit() {
    let mut c = Cluster::new("placement_rows_room");
    c.start_coordinator_with(&["--max-pending-children", "6"]);
    c.start_agent("a1", 8);
    c.agents_ready(1);
    let dir = c.root().join("pkg");
    let marks = c.root().join("marks");
    let gate = c.root().join("gate");
    std::fs::create_dir_all(&marks).unwrap();
    write_file(
        &dir,
        "each.toml",
        &format!(
            "name = \"each\"\n[parameters.n]\ntype = \"int\"\n[tasks.mark]\n\
             exec = [\"sh\", \"-c\", \"touch {}/$BATON_PARAM_N\"]\n",
            marks.display()
        ),
    );
    // `hold` keeps 4 children unfinished until the gate opens (at most 60 s).
    let wait_gate = format!(
        "for i in $(seq 1200); do [ -e {} ] && exit 0; sleep 0.05; done; exit 1",
        gate.display()
    );
    write_file(
        &dir,
        "hold.toml",
        &format!(
            "name = \"hold\"\n[parameters.n]\ntype = \"int\"\n[tasks.wait]\nexec = [\"sh\", \"-c\", {}]\n",
            serde_json::to_string(&wait_gate).unwrap()
        ),
    );
    write_file(
        &dir,
        "parent.toml",
        r#"
name = "rows-room"
[tasks.list]
script = "printf '1\n2\n3\n4\n' >> \"$BATON_ROWS\""
[tasks.hold]
foreach = { range = { start = 1, end = 4 } }
child = "hold.toml"
params = { n = "${item}" }
[tasks.each]
foreach = { rows = "list" }
child = "each.toml"
params = { n = "${item}" }
after = ["list"]
"#,
    );
    let id = c.start_run(&dir.join("parent.toml"), &[]);
    // 4 children of hold are unfinished and the limit is 6: 4 rows wait.
    let mut reason = String::new();
    let waited = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let v = c.exec_show(&id).raw;
        reason = v["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["task"] == "each"))
            .map(|t| t["reason"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        reason.starts_with("waits for room")
    });
    assert!(
        waited,
        "each never waited for room; last reason: {reason:?}"
    );
    assert!(
        reason.contains("adds 4") && reason.contains("limit is 6"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read_dir(&marks).unwrap().count(),
        0,
        "no row ran yet"
    );

    std::fs::write(&gate, "").unwrap();
    let v = c.wait_exec_terminal(&id, Duration::from_secs(60));
    assert_eq!(v.status, "succeeded", "{}", v.brief());
    assert_eq!(v.children.len(), 9, "list + 4 hold + 4 each: {}", v.brief());
    let mut got: Vec<String> = std::fs::read_dir(&marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    assert_eq!(got, ["1", "2", "3", "4"]);
    c.finish(&[]);
}

/// A package task's `slots = 2` holds on real processes: on an agent with 4
/// slots, at most two of its children run at once (without it, four would).
#[test]
fn a_package_task_s_slots_bound_how_many_children_share_an_agent() {
    let mut c = Cluster::new("placement_task_slots");
    c.start_coordinator();
    c.start_agent("a1", 4);
    c.agents_ready(1);
    let dir = c.root().join("pkg");
    let log = c.root().join("spans.log");
    let span = format!(
        "echo begin >> {l}; sleep 0.4; echo end >> {l}",
        l = log.display()
    );
    write_file(
        &dir,
        "c.toml",
        &format!(
            "name = \"c\"\n[parameters.n]\ntype = \"int\"\n[tasks.run]\nexec = [\"sh\", \"-c\", {}]\n",
            serde_json::to_string(&span).unwrap()
        ),
    );
    write_file(
        &dir,
        "parent.toml",
        r#"
name = "wide"
[tasks.fan]
foreach = { range = { start = 1, end = 6 } }
child = "c.toml"
params = { n = "${item}" }
slots = 2
"#,
    );
    let id = c.start_run(&dir.join("parent.toml"), &[]);
    let v = c.wait_exec_terminal(&id, Duration::from_secs(60));
    assert_eq!(v.status, "succeeded", "{}", v.brief());
    let (mut now, mut most) = (0i32, 0i32);
    let lines = crate::harness::fixtures::file_lines(&log);
    assert_eq!(lines.len(), 12, "{lines:?}");
    for line in &lines {
        now += if line == "begin" { 1 } else { -1 };
        most = most.max(now);
    }
    assert_eq!(most, 2, "4 slots / 2 per child: {lines:?}");
    c.finish(&[]);
}
