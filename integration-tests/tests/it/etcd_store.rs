//! `baton coordinator --store etcd://...`: the coordinator keeps executions,
//! catalog and agents in a real etcd (started by the test; skipped without
//! `etcd`), reads them back after a SIGKILL and restart, and writes no
//! embedded store; without its etcd it retries, then exits 3 with
//! `STORE_UNAVAILABLE`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_coordinator::store::etcd::local::EtcdCluster;

use crate::harness::{Cluster, FanoutSpec, baton_bin, dead_port};

const CHILDREN: usize = 20;

#[test]
fn a_coordinator_on_etcd_keeps_its_executions_there() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let mut c = Cluster::new("etcd_store");
    let store = format!("etcd://{}", etcd.endpoints().join(","));
    c.start_coordinator_with(&["--store", &store, "--etcd-prefix", "/it/"]);
    c.start_agent("a1", 4);
    c.agents_ready(1);
    let spec = FanoutSpec::new(CHILDREN as u32, "true").parallelism(8);
    let parent = c.write_fanout("etcd_store", &spec);
    let id = c.start_run(&parent, &[]);
    let end = c.wait_exec_terminal(&id, Duration::from_secs(60));
    assert_eq!(end.status, "succeeded", "{:#}", end.raw);
    end.assert_all_succeeded_once(CHILDREN, &["a1"]);

    c.coordinator().kill9();
    let data = c.root().join("coordinator").join("data");
    assert!(
        !data.join("coordinator.redb").exists(),
        "an embedded store was written beside etcd"
    );
    c.coordinator().restart();
    let after = c.exec_show(&id);
    assert_eq!(after.status, "succeeded", "{:#}", after.raw);
    assert_eq!(after.children.len(), CHILDREN, "{}", after.brief());
    c.finish(&[]);
}

#[test]
fn a_coordinator_without_its_etcd_retries_then_exits_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let port = dead_port();
    let mut child = Command::new(baton_bin())
        .args(["coordinator", "--insecure", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--store", &format!("etcd://127.0.0.1:{port}")])
        .args(["--etcd-connect-timeout", "2s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the coordinator still runs 30 s after a start without etcd");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("STORE_UNAVAILABLE"), "{stderr}");
    assert!(
        stderr.contains("etcd not reachable yet; retrying"),
        "{stderr}"
    );
    assert!(stderr.contains(&port.to_string()), "{stderr}");
}
