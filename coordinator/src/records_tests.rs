//! The stored form of the records: what a fresh child writes, and what
//! records written by earlier releases still read as.

use super::*;

#[test]
fn a_pending_child_is_stored_without_its_defaults_and_reads_back() {
    let rec = crate::scheduler::flow::new_child(&"fan".into(), 7, "x".into());
    let json = String::from_utf8(serde_json::to_vec(&rec).unwrap()).unwrap();
    assert_eq!(
        json,
        r#"{"task":"fan","index":7,"item":"x","phase":"pending","attempt":1}"#
    );
    let back: ChildRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, rec);
}

#[test]
fn a_child_written_with_every_field_still_reads() {
    // As earlier releases wrote it: every field, defaults included.
    let old = r#"{"task":"fan","index":7,"item":"x","phase":"succeeded","attempt":2,
        "agent":"a1","attempt_agents":["a2","a1"],"failures":1,"lost":0,"exit_code":0,
        "reason":"","outputs":{"k":"v"},"started_unix_ms":5,"finished_unix_ms":9,"pid":42,
        "cancel_requested":false,"rows":3}"#;
    let rec: ChildRecord = serde_json::from_str(old).unwrap();
    assert_eq!(rec.attempt_agents, ["a2", "a1"]);
    assert_eq!((rec.exit_code, rec.pid, rec.rows), (Some(0), 42, Some(3)));
    let again: ChildRecord = serde_json::from_slice(&serde_json::to_vec(&rec).unwrap()).unwrap();
    assert_eq!(
        again, rec,
        "exit code 0 and a row count survive the round trip"
    );
}
