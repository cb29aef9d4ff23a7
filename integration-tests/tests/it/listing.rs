//! `baton exec list`: newest first, filtered by state and package, paged, with
//! live counts for running executions and recorded counts for ended ones.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Cluster, FanoutSpec};

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .expect("executions array")
        .iter()
        .map(|e| e["execution_id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn list_filters_pages_and_orders_newest_first() {
    let mut c = Cluster::new("listing");
    c.start_coordinator();
    c.start_agent("a1", 4);
    c.agents_ready(1);

    let ok = c.write_fanout("ok", &FanoutSpec::new(3, "true"));
    let bad = c.write_fanout("bad", &FanoutSpec::new(2, "exit 7"));
    let slow = c.write_fanout("slow", &FanoutSpec::new(2, "sleep 30"));
    let first = c.start_run(&ok, &[]);
    c.wait_exec_terminal(&first, Duration::from_secs(30));
    let second = c.start_run(&bad, &[]);
    c.wait_exec_terminal(&second, Duration::from_secs(30));
    let third = c.start_run(&slow, &[]);

    let all = c.cli(&["exec", "list", "--output", "json"]);
    all.expect_code(0);
    let all = all.json();
    assert_eq!(
        ids(&all),
        [third.clone(), second.clone(), first.clone()],
        "newest first"
    );
    let by_id = |id: &str| {
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["execution_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&first)["status"], "succeeded");
    assert_eq!(
        by_id(&first)["children"]["succeeded"],
        3,
        "counts recorded when it ended"
    );
    assert_eq!(by_id(&second)["status"], "failed");
    assert_eq!(by_id(&second)["children"]["failed"], 2);
    assert_eq!(by_id(&third)["status"], "running");
    assert_eq!(
        by_id(&third)["children"]["total"],
        2,
        "live counts while running"
    );

    let failed = c.cli(&["exec", "list", "--state", "failed", "--output", "json"]);
    assert_eq!(ids(&failed.json()), [second.as_str()]);
    let bad_state = c.cli(&["exec", "list", "--state", "nope"]);
    bad_state.expect_code(2);

    let page1 = c
        .cli(&["exec", "list", "--limit", "2", "--output", "json"])
        .json();
    assert_eq!(ids(&page1), [third.clone(), second.clone()]);
    let token = page1["next_page_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty(), "a next page exists");
    let page2 = c
        .cli(&[
            "exec",
            "list",
            "--limit",
            "2",
            "--page-token",
            &token,
            "--output",
            "json",
        ])
        .json();
    assert_eq!(ids(&page2), [first.as_str()]);
    assert_eq!(page2["next_page_token"], Value::Null, "no more pages");

    let cancel = c.cli(&["exec", "cancel", &third, "--wait"]);
    cancel.expect_code(0);
    c.finish(&[]);
}
