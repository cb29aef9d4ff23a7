//! `exec show` of a big execution: the coordinator sends at most the asked
//! number of children — those that did not succeed first — with counts over
//! all of them, read from the store without holding every child.

use baton_proto as pb;

use crate::harness::{AgentOpts, Cluster, FanoutSpec};

#[test]
fn exec_show_sends_the_failures_first_and_counts_everything() {
    let mut c = Cluster::new("show_limit");
    c.start_coordinator();
    c.start_agent_with(AgentOpts::new("a1", 16));
    c.agents_ready(1);
    // 300 children; shards divisible by 60 fail (5 of them).
    let spec = FanoutSpec::new(300, "[ $((BATON_PARAM_SHARD % 60)) -ne 0 ]").parallelism(16);
    let parent = c.write_fanout("big", &spec);
    let out = c.cli(&[
        "run",
        &parent.display().to_string(),
        "--wait",
        "--output",
        "json",
    ]);
    out.expect_code(1);
    let id = out.json()["execution_id"].as_str().unwrap().to_owned();

    let show = c.cli(&["exec", "show", &id, "--children", "10", "--output", "json"]);
    show.expect_code(0);
    let v = show.json();
    let children = v["children"].as_array().unwrap();
    assert_eq!(children.len(), 10, "{v}");
    assert_eq!(v["children_total"], 300);
    assert_eq!(v["children_truncated"], true);
    let failed: Vec<&str> = children
        .iter()
        .filter(|ch| ch["state"] != "succeeded")
        .map(|ch| ch["item"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["60", "120", "180", "240", "300"], "{v}");
    assert_eq!(v["summary"]["children"]["total"], 300);
    assert_eq!(v["summary"]["children"]["failed"], 5);
    assert_eq!(v["summary"]["children"]["succeeded"], 295);

    // The human view says it shows a part.
    let human = c.cli(&["exec", "show", &id, "--children", "10"]);
    human.expect_code(0);
    assert!(
        human.stderr.contains("showing 10 of 300 children"),
        "{}",
        human.describe()
    );
    // Without a limit the default (10,000) holds them all.
    let all = c.cli(&["exec", "show", &id, "--output", "json"]);
    assert_eq!(all.json()["children"].as_array().unwrap().len(), 300);
    assert_eq!(all.json()["children_truncated"], false);

    // One child by its key through the API: a succeeded one, which a limited
    // list leaves out, comes back alone; the counts still cover all 300.
    let ok = all.json()["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ch| ch["item"] == "299")
        .cloned()
        .expect("child 299");
    let task = ok["task"].as_str().unwrap().to_owned();
    let index = ok["index"].as_u64().unwrap() as u32;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ch = crate::rpc_matrix::channel(
        &rt,
        c.coordinator().addr(),
        &c.ca_dir().join("admin"),
        "coordinator.baton",
    )
    .expect("admin connects");
    let mut client = pb::control_service_client::ControlServiceClient::new(ch);
    let mut by_key = |index: u32| {
        rt.block_on(client.get_execution(pb::GetExecutionRequest {
            execution_id: id.clone(),
            children_limit: 1,
            child: Some(pb::ChildKey {
                task_path: task.clone(),
                item_index: index,
            }),
        }))
        .unwrap()
        .into_inner()
    };
    let one = by_key(index);
    assert_eq!(one.children.len(), 1, "{one:?}");
    assert_eq!(one.children[0].item, "299");
    assert_eq!(one.children[0].state, "succeeded");
    assert_eq!(one.children_total, 300);
    let summary = one.summary.unwrap();
    assert_eq!((summary.total, summary.failed), (300, 5));
    assert!(by_key(300).children.is_empty(), "no such child");
    c.finish(&[]);
}
