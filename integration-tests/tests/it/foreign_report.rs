//! An agent reports only on its own jobs: a report about another agent's job,
//! sent with a valid agent certificate, is refused, counted and logged, and the
//! other agent's job is unaffected.

use std::time::Duration;

use baton_proto as pb;
use pb::coordinator_service_client::CoordinatorServiceClient;

use crate::harness::{Cluster, FanoutSpec, wait_until};
use crate::rpc_matrix::channel;

/// Agent A reporting agent B's job is refused (counted, logged at WARN), and
/// B's job is unaffected: it ends as B reports it.
#[test]
fn an_agent_cannot_report_another_agents_job() {
    let mut c = Cluster::new("rpc_foreign_report");
    let addr = c.start_coordinator();
    c.start_agent("a1", 2);
    c.start_agent("a2", 2);
    c.agents_ready(2);
    let ca = c.ca_dir().display().to_string();
    let m1 = c.root().join("ids").join("m1");
    c.cli_raw(&[
        "certs",
        "issue",
        "--ca-dir",
        &ca,
        "--agent",
        "m1",
        "--out",
        &m1.display().to_string(),
    ])
    .expect_code(0);

    let pkg = c.write_fanout("foreign", &FanoutSpec::new(4, "sleep 3").parallelism(4));
    let id = c.start_run(&pkg, &[]);
    let mut target = None;
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            target = c
                .exec_show(&id)
                .children
                .into_iter()
                .find(|ch| ch.agent == "a2" && ch.state == "running");
            target.is_some()
        }),
        "no child ran on a2"
    );
    let target = target.unwrap();

    // m1, a registered agent with a valid certificate, reports a2's job as failed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ch = channel(&rt, addr, &m1, "coordinator.baton").expect("m1 connects");
    let dispatch = pb::DispatchId {
        execution_id: id.clone(),
        task_path: target.task.clone(),
        item_index: u32::try_from(target.index).unwrap(),
        attempt: u32::try_from(target.attempt).unwrap(),
    };
    rt.block_on(async move {
        let mut cl = CoordinatorServiceClient::new(ch);
        cl.register(pb::RegisterRequest {
            name: "m1".into(),
            address: "127.0.0.1:9".into(),
            slots: 1,
            boot_id: "m1-boot".into(),
            outbox_id: "m1-outbox".into(),
            ..Default::default()
        })
        .await
        .expect("m1 registers as itself");
        let events = vec![
            pb::AgentEvent {
                seq: 0,
                at_unix_ms: 0,
                body: Some(pb::agent_event::Body::Hello(pb::Hello {
                    agent_id: "m1".into(),
                    boot_id: "m1-boot".into(),
                })),
            },
            pb::AgentEvent {
                seq: 1,
                at_unix_ms: 1,
                body: Some(pb::agent_event::Body::Finished(pb::JobFinished {
                    dispatch_id: Some(dispatch),
                    status: pb::JobStatus::Failed as i32,
                    exit_code: 9,
                    reason: "forged".into(),
                    ..Default::default()
                })),
            },
        ];
        let mut acks = cl
            .report_events(tokio_stream::iter(events))
            .await
            .expect("stream opens")
            .into_inner();
        // The forged event is made durable as "seen" (acknowledged) but applies to nothing.
        let _ = tokio::time::timeout(Duration::from_secs(5), acks.message()).await;
    });

    let end = c.wait_exec_terminal(&id, Duration::from_secs(40));
    assert_eq!(end.status, "succeeded", "{:#}", end.raw);
    let same = end
        .children
        .iter()
        .find(|ch| ch.index == target.index)
        .unwrap();
    assert_eq!(
        (same.agent.as_str(), same.state.as_str(), same.attempt),
        ("a2", "succeeded", target.attempt)
    );
    assert!(
        end.summary_u64("/stale_events") >= 1,
        "the forged report was not counted: {:#}",
        end.raw
    );
    let log = crate::harness::read_log(&c.coordinator().stderr_path());
    assert!(
        log.contains("report about a job never dispatched to this agent refused"),
        "no WARN line"
    );
    c.finish(&[]);
}
