//! The start of a leader's term: rebuild the scheduler from the store, with
//! the epoch the leadership took ([`crate::leadership::Term`]).

use std::collections::HashMap;

use tracing::{info, warn};

use crate::clock::Now;
use crate::error::CoordinatorError;
use crate::keys;
use crate::prepare::plan;
use crate::records::{
    AgentRecord, ChildRecord, ExecutionRecord, ExecutionState, SeqRecord, children_prefix,
    now_unix_ms,
};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::secrets::SealingKey;
use crate::store::Store;

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, CoordinatorError> {
    serde_json::from_slice(value)
        .map_err(|e| CoordinatorError::Store(format!("corrupt record '{key}': {e}")))
}

/// Loads everything the scheduler needs, for a term of `epoch` (taken and
/// made durable by the leadership before this is called: every dispatch of
/// the term carries it, and the scheduler never writes it).
/// Sealed sensitive parameters are opened with `secrets`; an execution whose
/// values do not open (`SECRET_UNSEALABLE`) fails, as any that cannot be re-planned.
pub async fn load(
    store: &dyn Store,
    config: SchedulerConfig,
    secrets: &SealingKey,
    epoch: u64,
) -> Result<Scheduler, CoordinatorError> {
    let now = Now::read();
    let mut sched = Scheduler::new(config, epoch);

    let mut seqs: HashMap<String, (SeqRecord, u64)> = HashMap::new();
    for kv in store.range(keys::SEQ_PREFIX).await? {
        let rec: SeqRecord = decode(&kv.key, &kv.value)?;
        let name = keys::name_after(keys::SEQ_PREFIX, &kv.key).to_string();
        seqs.insert(name, (rec, kv.mod_revision));
    }
    for kv in store.range(keys::REVOKED_PREFIX).await? {
        let name = String::from_utf8_lossy(&kv.value).to_string();
        let fingerprint = keys::name_after(keys::REVOKED_PREFIX, &kv.key).to_string();
        sched.restore_revoked(fingerprint, &name);
    }
    let mut agents = 0;
    for kv in store.range(keys::AGENT_PREFIX).await? {
        let rec: AgentRecord = decode(&kv.key, &kv.value)?;
        let seq = seqs.remove(&rec.name);
        sched.restore_agent(rec, kv.mod_revision, seq, now);
        agents += 1;
    }

    let mut running = 0;
    for kv in store.range(keys::EXECUTION_PREFIX).await? {
        let mut rec: ExecutionRecord = decode(&kv.key, &kv.value)?;
        if rec.state.is_terminal() {
            continue;
        }
        let children: Vec<(ChildRecord, u64)> = store
            .range(&children_prefix(&rec.id))
            .await?
            .into_iter()
            .map(|c| decode(&c.key, &c.value).map(|r| (r, c.mod_revision)))
            .collect::<Result<_, _>>()?;
        let planned = match crate::bundles::load(store, &mut rec).await {
            Ok(()) => plan(&rec, secrets),
            Err(e @ CoordinatorError::ContentNotFound(_)) => Err(e),
            Err(e) => return Err(e),
        };
        match planned {
            Ok(p) => {
                sched.restore_execution(rec, kv.mod_revision, p, children, now);
                running += 1;
            }
            Err(e) => {
                warn!(execution = %rec.id, error = %e, "cannot re-plan execution after restart; failing it");
                rec.state = ExecutionState::Failed;
                rec.reason = format!("could not be resumed after a coordinator restart: {e}");
                rec.finished_unix_ms = now_unix_ms();
                let key = kv.key.clone();
                store
                    .commit(vec![crate::store::Op::Put {
                        key,
                        value: serde_json::to_vec(&rec).unwrap_or_default(),
                        pre: crate::store::Precondition::Revision(kv.mod_revision),
                    }])
                    .await?;
            }
        }
    }
    sched.end_orphaned_nested(now);
    info!(
        epoch = sched.epoch(),
        agents,
        running_executions = running,
        "coordinator state loaded"
    );
    Ok(sched)
}

#[cfg(test)]
mod tests {
    //! Recovery from a store prepared by hand: what `load` promises to
    //! rebuild, and what it refuses.

    use crate::records::{
        AgentRecord, ChildRecord, ExecutionState, Phase, SeqRecord, agent_key, child_key,
        execution_key, revoked_key, seq_key,
    };
    use crate::scheduler::{Scheduler, SchedulerConfig};
    use crate::scheduler_task::fixtures::{execution, registration};
    use crate::secrets::SealingKey;
    use crate::store::fake::FakeStore;
    use crate::store::{Op, Precondition, Store};

    use super::load;
    use crate::records::EPOCH_KEY;

    fn key() -> SealingKey {
        SealingKey::from_bytes(&[7; 32]).unwrap()
    }

    /// Writes `records` (key, JSON or raw bytes) in one commit.
    async fn prepare(store: &FakeStore, records: Vec<(String, Vec<u8>)>) {
        let ops = records
            .into_iter()
            .map(|(key, value)| Op::Put {
                key,
                value,
                pre: Precondition::Any,
            })
            .collect();
        store.commit(ops).await.unwrap();
    }

    fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn agent(name: &str) -> AgentRecord {
        let r = registration(name, 4);
        AgentRecord {
            name: r.name,
            address: r.address,
            labels: r.labels,
            slots: r.slots,
            version: r.version,
            boot_id: r.boot_id,
            admin: Default::default(),
            cert_fingerprint: r.cert_fingerprint,
            weight: r.weight,
        }
    }

    /// Child `index` of task `fan`, in `phase`, on `agent` if any.
    fn child(index: u32, phase: &str, agent: Option<&str>) -> ChildRecord {
        let mut v = serde_json::json!({
            "task": "fan", "index": index, "item": (index + 1).to_string(),
            "phase": phase, "attempt": 1,
        });
        if let Some(a) = agent {
            v["agent"] = a.into();
            v["attempt_agents"] = serde_json::json!([a]);
        }
        serde_json::from_value(v).unwrap()
    }

    async fn loaded(store: &FakeStore) -> Scheduler {
        load(store, SchedulerConfig::default(), &key(), 1)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_scheduler_gets_the_terms_epoch_and_never_writes_it() {
        let store = FakeStore::new();
        prepare(&store, vec![(EPOCH_KEY.into(), b"42".to_vec())]).await;
        let commits = store.applied().len();
        let mut sched = load(store.as_ref(), SchedulerConfig::default(), &key(), 42)
            .await
            .unwrap();
        assert_eq!(sched.epoch(), 42);
        assert_eq!(
            store.applied().len(),
            commits,
            "load itself commits nothing"
        );
        assert!(
            !sched.has_dirty(),
            "nothing to write: the epoch is the leadership's"
        );
        let (ops, _) = sched.flush();
        assert!(
            ops.iter().all(|op| op.key() != EPOCH_KEY),
            "the scheduler never writes the epoch: {ops:?}"
        );
    }

    #[tokio::test]
    async fn agents_come_back_unknown_with_their_event_dedup_and_revocations() {
        let store = FakeStore::new();
        let seq = SeqRecord {
            outbox_id: "ob-a1".into(),
            applied_seq: 17,
        };
        prepare(
            &store,
            vec![
                (agent_key("a1"), json(&agent("a1"))),
                (seq_key("a1"), json(&seq)),
                (agent_key("a2"), json(&agent("a2"))),
                (revoked_key("fp-a2"), b"a2".to_vec()),
            ],
        )
        .await;
        let mut sched = loaded(&store).await;
        let states: Vec<(String, &str)> = sched
            .agent_list()
            .into_iter()
            .map(|a| (a.rec.name, a.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [("a1".to_string(), "unknown"), ("a2".to_string(), "revoked")],
            "restored agents get no work until heard from"
        );
        // The same outbox resumes after the last event applied: none is applied twice.
        let now = crate::clock::Now::read();
        let resp = sched.register(registration("a1", 4), now).unwrap();
        assert_eq!((resp.acked_seq, resp.coordinator_epoch), (17, 1));
        // A revoked certificate stays refused across the restart.
        let refused = sched.register(registration("a2", 4), now).unwrap_err();
        assert_eq!(refused.code(), "CERT_REVOKED");
    }

    #[tokio::test]
    async fn running_executions_come_back_with_their_children_and_ended_ones_stay_on_disk() {
        let store = FakeStore::new();
        let (rec, _) = execution("e1", 4);
        let (mut done, _) = execution("e2", 4);
        done.state = ExecutionState::Succeeded;
        prepare(
            &store,
            vec![
                (agent_key("a1"), json(&agent("a1"))),
                (execution_key("e1"), json(&rec)),
                (
                    child_key("e1", "fan", 0),
                    json(&child(0, "running", Some("a1"))),
                ),
                (
                    child_key("e1", "fan", 1),
                    json(&child(1, "running", Some("gone"))),
                ),
                (
                    child_key("e1", "fan", 2),
                    json(&child(2, "succeeded", Some("a1"))),
                ),
                (child_key("e1", "fan", 3), json(&child(3, "pending", None))),
                (execution_key("e2"), json(&done)),
            ],
        )
        .await;
        let sched = loaded(&store).await;
        let view = sched
            .execution_view("e1")
            .expect("a running execution is in memory");
        assert_eq!(view.children.len(), 4);
        assert!(sched.execution_view("e2").is_none(), "an ended one is not");

        // Its child on a known agent still runs there (the agent owns it).
        let running: Vec<(String, u32)> = sched
            .agent_list()
            .into_iter()
            .map(|a| (a.rec.name, a.running))
            .collect();
        assert_eq!(running, [("a1".to_string(), 1)]);
        let on_a1 = sched.child_record("e1", "fan", 0).flatten().unwrap();
        assert_eq!((on_a1.phase, on_a1.attempt), (Phase::Running, 1));
        // Its child on an agent nobody knows is lost (and so retried or ended).
        let on_gone = sched.child_record("e1", "fan", 1).flatten().unwrap();
        assert_eq!(on_gone.lost, 1);
        assert!(
            on_gone
                .reason
                .contains("agent unknown after coordinator restart")
        );
        // Ended and pending children are kept as they were.
        let ended = sched.child_record("e1", "fan", 2).flatten().unwrap();
        assert_eq!(ended.phase, Phase::Succeeded);
        let pending = sched.child_record("e1", "fan", 3).flatten().unwrap();
        assert_eq!((pending.phase, pending.attempt), (Phase::Pending, 1));
    }

    #[tokio::test]
    async fn an_execution_that_cannot_be_planned_again_is_failed_in_the_store() {
        let store = FakeStore::new();
        let (mut rec, _) = execution("e1", 4);
        rec.files.remove("c.toml"); // its child package is gone
        prepare(&store, vec![(execution_key("e1"), json(&rec))]).await;
        let sched = loaded(&store).await;
        assert!(sched.execution_view("e1").is_none());
        let stored: crate::records::ExecutionRecord =
            serde_json::from_slice(&store.value(&execution_key("e1")).unwrap()).unwrap();
        assert_eq!(stored.state, ExecutionState::Failed);
        assert!(
            stored
                .reason
                .starts_with("could not be resumed after a coordinator restart"),
            "{}",
            stored.reason
        );
        assert!(stored.finished_unix_ms > 0);
    }

    #[tokio::test]
    async fn a_corrupt_record_stops_recovery_naming_its_key() {
        let store = FakeStore::new();
        prepare(&store, vec![(agent_key("a1"), b"{not json".to_vec())]).await;
        let Err(err) = load(store.as_ref(), SchedulerConfig::default(), &key(), 1).await else {
            panic!("a corrupt record is refused");
        };
        assert_eq!(err.code(), "STORE_FAILED");
        assert!(err.to_string().contains("a/a1"), "{err}");
    }
}
