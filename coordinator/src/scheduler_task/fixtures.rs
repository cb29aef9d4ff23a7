//! Test fixtures shared by the tests of the loop, of recovery and of the API:
//! a parent package that fans out to `n` children, its execution record as a
//! start writes it, and an agent's registration.

use std::collections::BTreeMap;

use crate::prepare::{Plan, plan_bundle};
use crate::records::{ExecutionRecord, ExecutionState};
use crate::scheduler::Registration;

/// A parent of one task, `fan`, with `n` children (`n` a parameter, default 4).
pub(crate) const PARENT: &str = "name='p'\n[parameters.n]\ntype='int'\ndefault=4\n[tasks.fan]\nforeach={range={start=1,end='${params.n}'}}\nchild='c.toml'\nparallelism=100\nparams={shard='${item}'}\n";
pub(crate) const CHILD: &str =
    "name='c'\n[parameters.shard]\ntype='int'\n[tasks.run]\nexec=['true']\n";

/// The files of the fan-out package.
pub(crate) fn files() -> BTreeMap<String, String> {
    [
        ("p.toml".to_string(), PARENT.to_string()),
        ("c.toml".to_string(), CHILD.to_string()),
    ]
    .into()
}

/// The parameters that make `n` children.
pub(crate) fn params(n: u32) -> BTreeMap<String, String> {
    [("n".to_string(), n.to_string())].into()
}

/// A running execution `id` of the fan-out package with `n` children, and its plan.
pub(crate) fn execution(id: &str, n: u32) -> (ExecutionRecord, Plan) {
    let (files, params) = (files(), params(n));
    let plan = match plan_bundle("p.toml", &files, &params) {
        Ok(p) => p,
        Err(e) => panic!("the fixture package plans: {e}"),
    };
    let rec = ExecutionRecord {
        id: id.into(),
        package: plan.package.clone(),
        root: "p.toml".into(),
        files,
        file_hashes: Default::default(),
        bundle_hash: String::new(),
        texts: None,
        params,
        state: ExecutionState::Running,
        current_task: 0,
        created_unix_ms: 1,
        finished_unix_ms: 0,
        reason: String::new(),
        stale_events: 0,
        cancel_requested: false,
        final_counts: None,
        folder: String::new(),
        catalog: None,
        resumes: 0,
        task_states: Default::default(),
        parent: None,
        rows_outcomes: Default::default(),
        trace: None,
        placement: Default::default(),
    };
    (rec, plan)
}

/// The registration of agent `name` (TLS: it has a certificate fingerprint).
pub(crate) fn registration(name: &str, slots: u32) -> Registration {
    Registration {
        name: name.into(),
        address: format!("{name}.invalid:1"),
        labels: BTreeMap::new(),
        slots,
        version: "t".into(),
        boot_id: format!("boot-{name}"),
        outbox_id: format!("ob-{name}"),
        cert_fingerprint: format!("fp-{name}"),
        weight: 1,
    }
}
