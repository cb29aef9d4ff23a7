//! `--log-format json` / `BATON_LOG_FORMAT=json`: the daemons write one JSON object
//! per log line, with no colour codes, for a log collector; a run through such a
//! cluster is logged entirely that way.

use crate::harness::{AgentOpts, Cluster, FanoutSpec};

/// The log lines of a node's stderr (the harness writes its own `==== baton-it`
/// header lines there too; they are not the daemon's).
fn daemon_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("stderr.log")
        .lines()
        .filter(|l| !l.starts_with("==== baton-it"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let mut c = Cluster::new("log_format");
    let json = vec![("BATON_LOG_FORMAT".to_owned(), "json".to_owned())];
    c.start_coordinator_env(&[], json.clone());
    let mut opts = AgentOpts::new("a1", 2);
    opts.env = json;
    c.start_agent_with(opts).expect("agent announced");
    c.agents_ready(1);
    let parent = c.write_fanout("log_format", &FanoutSpec::new(4, "true"));
    let id = c.start_run(&parent, &[]);
    c.wait_exec(
        &id,
        "the run to succeed",
        std::time::Duration::from_secs(30),
        |v| v.status == "succeeded",
    );

    for (node, want) in [
        (c.coordinator().stderr_path(), "execution started"),
        (c.agent("a1").stderr_path(), "registered with coordinator"),
    ] {
        let lines = daemon_lines(&node);
        assert!(!lines.is_empty(), "{} logged nothing", node.display());
        let mut messages = Vec::new();
        for line in &lines {
            assert!(!line.contains('\u{1b}'), "a colour code in {line:?}");
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}"));
            for key in ["timestamp", "level", "fields"] {
                assert!(v.get(key).is_some(), "no `{key}` in {line}");
            }
            if let Some(m) = v["fields"]["message"].as_str() {
                messages.push(m.to_owned());
            }
        }
        assert!(
            messages.iter().any(|m| m.contains(want)),
            "{}: no {want:?} among {messages:?}",
            node.display()
        );
    }
    c.finish(&[]);
}
