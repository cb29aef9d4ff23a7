//! `baton exec logs -f` across a coordinator restart: the follower reconnects
//! and carries on from the offsets it has printed — every line once, in order.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{Cluster, FanoutSpec, wait_until};

#[test]
fn logs_follow_survives_a_coordinator_restart() {
    let mut c = Cluster::new("logs_reconnect");
    c.start_coordinator();
    c.start_agent("a1", 2);
    c.agents_ready(1);
    let spec = FanoutSpec::new(
        1,
        "i=1; while [ $i -le 30 ]; do echo line $i; i=$((i+1)); sleep 0.2; done",
    );
    let parent = c.write_fanout("reconnect", &spec);
    let id = c.start_run(&parent, &[]);
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            c.exec_show(&id)
                .children
                .iter()
                .any(|ch| ch.state == "running")
        }),
        "the child never ran"
    );

    let mut follow = c.spawn_cli(&["exec", "logs", &id, "--child", "fan[0]", "-f", "--stdout"]);
    let follower_pid = follow.id();
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while lines.len() < 5 {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let _ = follow.kill();
                panic!("no output from logs -f: {lines:?}");
            }
        }
    }
    // The coordinator goes away under the open stream and comes back.
    c.coordinator().restart();
    c.agents_ready(1);

    // The follower ends with the child; bounded, and killed by pid if it does not.
    let ended = wait_until(Duration::from_secs(40), Duration::from_millis(100), || {
        matches!(follow.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(follower_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = follow.wait();
        panic!("logs -f did not end with the child");
    }
    let status = follow.wait().expect("follower status");
    let mut stderr = String::new();
    if let Some(mut e) = follow.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    // The rest of its output, up to the end of its stdout (the reader thread
    // then ends and the channel closes): not "until nothing came for a while".
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => lines.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the stdout of logs -f stayed open 10 s after it exited: {lines:?}")
            }
        }
    }
    assert!(status.success(), "logs -f failed: {stderr}");
    assert!(stderr.contains("reconnecting"), "stderr: {stderr}");
    let expected: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
    assert_eq!(
        lines, expected,
        "every line once, in order; stderr: {stderr}"
    );
    c.finish(&[]);
}
