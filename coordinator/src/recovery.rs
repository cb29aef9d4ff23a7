//! Start-up: raise the epoch and rebuild the scheduler from the store.

use std::collections::HashMap;

use tracing::{info, warn};

use crate::clock::Now;
use crate::error::CoordinatorError;
use crate::prepare::plan;
use crate::records::{
    AgentRecord, ChildRecord, EPOCH_KEY, ExecutionRecord, ExecutionState, SeqRecord,
    children_prefix, now_unix_ms,
};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::secrets::SealingKey;
use crate::store::Store;

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, CoordinatorError> {
    serde_json::from_slice(value)
        .map_err(|e| CoordinatorError::Store(format!("corrupt record '{key}': {e}")))
}

/// Loads everything the scheduler needs. The new epoch (old + 1) is written
/// with the first commit, before any dispatch carries it.
/// Sealed sensitive parameters are opened with `secrets`; an execution whose
/// values do not open (`SECRET_UNSEALABLE`) fails, as any that cannot be re-planned.
pub async fn load(
    store: &dyn Store,
    config: SchedulerConfig,
    secrets: &SealingKey,
) -> Result<Scheduler, CoordinatorError> {
    let now = Now::read();
    let old_epoch = match store.get(EPOCH_KEY).await? {
        Some(kv) => String::from_utf8_lossy(&kv.value)
            .trim()
            .parse::<u64>()
            .unwrap_or(0),
        None => 0,
    };
    let mut sched = Scheduler::new(config, old_epoch + 1);

    let mut seqs: HashMap<String, (SeqRecord, u64)> = HashMap::new();
    for kv in store.range("s/").await? {
        let rec: SeqRecord = decode(&kv.key, &kv.value)?;
        seqs.insert(kv.key["s/".len()..].to_string(), (rec, kv.mod_revision));
    }
    for kv in store.range("v/").await? {
        let name = String::from_utf8_lossy(&kv.value).to_string();
        sched.restore_revoked(kv.key["v/".len()..].to_string(), &name);
    }
    let mut agents = 0;
    for kv in store.range("a/").await? {
        let rec: AgentRecord = decode(&kv.key, &kv.value)?;
        let seq = seqs.remove(&rec.name);
        sched.restore_agent(rec, kv.mod_revision, seq, now);
        agents += 1;
    }

    let mut running = 0;
    for kv in store.range("e/").await? {
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
        match plan(&rec, secrets) {
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
