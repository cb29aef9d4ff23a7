//! The coordinator's domain API: what the gRPC layer (and an embedding
//! program such as `baton demo`) calls. Plain methods over the scheduler
//! handle and the store; no protobuf here.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::error::CoordinatorError;
pub use crate::metrics::{Histogram, Latency, MetricsSnapshot};
use crate::placement::PlacementPolicy;
use crate::prepare::plan_bundle_until;
use crate::records::{
    ChildRecord, ExecutionRecord, ExecutionState, children_prefix, execution_key, now_unix_ms,
};
use crate::scheduler::{ExecutionView, Summary, view_from_records};
use crate::scheduler_task::{AgentListing, SchedulerHandle};
use crate::store::Store;

/// Limits on what a client may send (a limit on everything).
pub use crate::catalog::blobs::{MAX_BUNDLE_BYTES, MAX_BUNDLE_FILES};
pub const MAX_PARAMS: usize = 1024;
/// Most bytes of an execution's parameters (names and values): its record
/// must fit in one commit of a replicated store (etcd: 1.5 MiB by default).
pub const MAX_PARAMS_BYTES: usize = 128 * 1024;

/// A parent package file and the files it references, keyed as it names them.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub root: String,
    pub files: BTreeMap<String, String>,
}

/// A handle on a running coordinator.
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) handle: SchedulerHandle,
    pub(crate) store: Arc<dyn Store>,
    /// Seals sensitive parameter values before they reach the store.
    pub(crate) secrets: Arc<crate::secrets::SealingKey>,
    /// Held while ended executions are read back to be resumed, and by each
    /// retention pass: a pass never deletes what a resume has just read.
    pub(crate) history: Arc<tokio::sync::Mutex<()>>,
    /// `child` tasks with `local = true` may run (every agent is on this machine).
    pub(crate) local_children: bool,
}

/// What `watch` returns.
pub enum Watched {
    /// A live execution: summaries until it ends.
    Live(watch::Receiver<Summary>),
    /// An ended execution: its final summary.
    Ended(Box<Summary>),
}

impl Coordinator {
    /// Validates and starts an execution; returns its id once it is durable.
    pub async fn start(
        &self,
        root: String,
        files: BTreeMap<String, String>,
        params: BTreeMap<String, String>,
        folder: String,
    ) -> Result<String, CoordinatorError> {
        self.start_placed(root, files, params, folder, PlacementPolicy::default())
            .await
    }

    /// [`Self::start`] with placement and admission settings for its children.
    pub async fn start_placed(
        &self,
        root: String,
        files: BTreeMap<String, String>,
        params: BTreeMap<String, String>,
        folder: String,
        placement: PlacementPolicy,
    ) -> Result<String, CoordinatorError> {
        self.start_bundle(Bundle { root, files }, params, folder, None, placement)
            .await
    }

    /// [`Self::start`], recording the catalog version it runs, if any (its
    /// children then go to agents by hash only: [`crate::catalog`]).
    pub(crate) async fn start_bundle(
        &self,
        bundle: Bundle,
        params: BTreeMap<String, String>,
        folder: String,
        catalog: Option<crate::records::CatalogRef>,
        placement: PlacementPolicy,
    ) -> Result<String, CoordinatorError> {
        placement
            .validate()
            .map_err(CoordinatorError::InvalidRequest)?;
        let Bundle { root, files } = bundle;
        if root.is_empty() {
            return Err(CoordinatorError::InvalidRequest(
                "bundle root is empty".into(),
            ));
        }
        if files.len() > MAX_BUNDLE_FILES {
            return Err(CoordinatorError::InvalidRequest(format!(
                "bundle has {} files; the limit is {MAX_BUNDLE_FILES}",
                files.len()
            )));
        }
        let bytes: usize = files.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_BUNDLE_BYTES {
            return Err(CoordinatorError::InvalidRequest(format!(
                "bundle is {bytes} bytes; the limit is {MAX_BUNDLE_BYTES}"
            )));
        }
        if params.len() > MAX_PARAMS {
            return Err(CoordinatorError::InvalidRequest(format!(
                "more than {MAX_PARAMS} parameters"
            )));
        }
        let param_bytes: usize = params.iter().map(|(k, v)| k.len() + v.len()).sum();
        if param_bytes > MAX_PARAMS_BYTES {
            return Err(CoordinatorError::InvalidRequest(format!(
                "the parameters are {param_bytes} bytes; the limit is {MAX_PARAMS_BYTES} (pass large data as a file or a package's rows, not a parameter)"
            )));
        }
        // Planning can be heavy (a million items, 10,000 tasks): keep it off
        // the runtime threads and the scheduler's loop (the plan arrives with
        // its engine built), at most PLANNING_MAX at once across all callers
        // ([`crate::prepare::gate`]: the permit is held until planning ends),
        // and stop it when the caller goes away (this future is dropped with
        // the request, and `gone` with it).
        let gone = CallerGone::default();
        let stop = gone.flag();
        let (mut plan, root, files, params) = crate::prepare::gate::run(move || {
            plan_bundle_until(&root, &files, &params, &|| {
                stop.load(std::sync::atomic::Ordering::Relaxed)
            })
            .map(|p| (p, root, files, params))
        })
        .await??;
        drop(gone);
        if catalog.is_some() {
            plan.fetch_by_hash();
        }
        if !self.local_children
            && let Some(t) = plan
                .tasks
                .iter()
                .find(|t| matches!(&t.work, crate::prepare::Work::Child { ct, .. } if ct.local))
        {
            return Err(CoordinatorError::InvalidRequest(format!(
                "task '{}' is a local child (`local = true`): it runs on the machine that runs \
                 the package, which only `baton run --local` provides; on a fleet every child \
                 goes to an agent (remove `local`, or pin it with --pin/--require)",
                t.name
            )));
        }
        // Sensitive values are sealed before they reach the record (and so the
        // store); the plan keeps them in memory for the StartJob requests.
        let id = uuid::Uuid::now_v7().simple().to_string();
        let params = crate::secrets::seal_params(&self.secrets, &id, params, |name| {
            plan.params.is_sensitive(name)
        })?;
        let rec = ExecutionRecord {
            id,
            package: plan.package.clone(),
            root,
            files: BTreeMap::new(),
            file_hashes: BTreeMap::new(),
            bundle_hash: String::new(),
            texts: None,
            params,
            state: ExecutionState::Running,
            current_task: 0,
            created_unix_ms: now_unix_ms(),
            finished_unix_ms: 0,
            reason: String::new(),
            stale_events: 0,
            cancel_requested: false,
            final_counts: None,
            folder,
            catalog,
            resumes: 0,
            task_states: Default::default(),
            parent: None,
            rows_outcomes: Default::default(),
            placement,
            trace: None,
        };
        let mut rec = ExecutionRecord {
            trace: crate::traces::exec_trace(&rec.id),
            ..rec
        };
        // The bundle by reference: its blobs first, pinned until the record
        // that points to them is durable (`crate::bundles`).
        let pin = crate::catalog::blobs::write(self.store.as_ref(), &files).await?;
        crate::bundles::refer(&mut rec, files);
        let started = self.handle.start(rec, plan).await;
        drop(pin);
        started
    }

    /// An execution with all its children, from memory or from the store.
    pub async fn view(&self, id: &str) -> Result<ExecutionView, CoordinatorError> {
        if let Some(v) = self.handle.view(id.to_string()).await? {
            return Ok(v);
        }
        let rec = self.stored(id).await?;
        let children: Vec<ChildRecord> = self
            .store
            .range(&children_prefix(id))
            .await?
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|e| {
                    CoordinatorError::Store(format!("corrupt record '{}': {e}", kv.key))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(view_from_records(&rec, children))
    }

    /// An execution with at most `limit` of its children (those that did not
    /// succeed first) and counts over all of them; an ended one is scanned
    /// from the store without holding every child in memory.
    pub async fn view_limited(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<ExecutionView, CoordinatorError> {
        if let Some(v) = self.handle.view_limited(id.to_string(), limit).await? {
            return Ok(v);
        }
        let rec = self.stored(id).await?;
        /// What the scan has gathered so far.
        #[derive(Default)]
        struct Scan {
            summary: Summary,
            /// The children kept, each with whether it succeeded.
            kept: Vec<(ChildRecord, bool)>,
            kept_bad: usize,
            kept_ok: usize,
            task_counts: crate::scheduler::TaskCounts,
            /// The first record that did not read.
            corrupt: Option<String>,
        }
        let acc = Arc::new(std::sync::Mutex::new(Scan {
            summary: crate::scheduler::summary_from_record(&rec),
            ..Scan::default()
        }));
        {
            let mut a = acc.lock().unwrap_or_else(|p| p.into_inner());
            // Counts come from the children themselves.
            let s = &mut a.summary;
            (
                s.total,
                s.pending,
                s.running,
                s.succeeded,
                s.failed,
                s.cancelled,
                s.lost_attempts,
            ) = (0, 0, 0, 0, 0, 0, 0);
            s.per_agent.clear();
        }
        let inner = acc.clone();
        self.store
            .scan(
                &children_prefix(id),
                Box::new(move |kv| {
                    let mut a = inner.lock().unwrap_or_else(|p| p.into_inner());
                    match serde_json::from_slice::<ChildRecord>(&kv.value) {
                        Ok(c) => {
                            crate::scheduler::tally(&mut a.summary, &c);
                            crate::scheduler::count_task(&mut a.task_counts, &c);
                            let ok = c.phase == crate::records::Phase::Succeeded;
                            // Up to `limit` of each kind; the pick is made after.
                            if ok && a.kept_ok < limit {
                                a.kept_ok += 1;
                                a.kept.push((c, ok));
                            } else if !ok && a.kept_bad < limit {
                                a.kept_bad += 1;
                                a.kept.push((c, ok));
                            }
                        }
                        Err(e) => {
                            a.corrupt
                                .get_or_insert_with(|| format!("corrupt record '{}': {e}", kv.key));
                        }
                    }
                    false
                }),
            )
            .await?;
        let Scan {
            summary,
            kept,
            corrupt,
            task_counts,
            ..
        } = std::mem::take(&mut *acc.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(e) = corrupt {
            return Err(CoordinatorError::Store(e));
        }
        let phases: Vec<crate::records::Phase> = kept.iter().map(|(c, _)| c.phase).collect();
        let picked = crate::scheduler::pick_children(&phases, limit);
        let mut kept: Vec<Option<ChildRecord>> = kept.into_iter().map(|(c, _)| Some(c)).collect();
        let children: Vec<ChildRecord> =
            picked.into_iter().filter_map(|i| kept[i].take()).collect();
        let children_total = summary.total;
        let mut view = view_from_records(&rec, children);
        view.summary = summary;
        view.children_total = children_total;
        view.task_counts = task_counts;
        Ok(view)
    }

    /// A page of an execution's children (`offset`, at most `limit`), of one
    /// phase when `phase` is not empty, each with its waiting reason, and how
    /// many children match. A running execution is read from memory; an ended
    /// one is scanned from the store, decoding only the children of the page
    /// (and, with a phase, those whose text names it).
    pub async fn children_page(
        &self,
        id: &str,
        offset: usize,
        limit: usize,
        phase: &str,
    ) -> Result<(Vec<(ChildRecord, String)>, u64), CoordinatorError> {
        if let Some(p) = self
            .handle
            .children_page(id.to_string(), offset, limit, phase.to_string())
            .await?
        {
            return Ok((p.children, p.total));
        }
        self.stored(id).await?;
        let needle = format!("\"phase\":\"{phase}\"").into_bytes();
        let phase = phase.to_string();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        let kept = self
            .store
            .scan(
                &children_prefix(id),
                Box::new(move |kv| {
                    if !phase.is_empty() {
                        let named = kv.value.windows(needle.len()).any(|w| w == needle);
                        let is = named
                            && serde_json::from_slice::<ChildRecord>(&kv.value)
                                .is_ok_and(|c| c.phase.as_str() == phase);
                        if !is {
                            return false;
                        }
                    }
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    n > offset && n <= offset.saturating_add(limit)
                }),
            )
            .await?;
        let total = seen.load(std::sync::atomic::Ordering::Relaxed) as u64;
        let page: Vec<(ChildRecord, String)> = kept
            .iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map(|c| (c, String::new()))
                    .map_err(|e| {
                        CoordinatorError::Store(format!("corrupt record '{}': {e}", kv.key))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok((page, total))
    }

    /// One child of an execution by its key (no other child is read);
    /// `None` when the execution has no such child.
    /// The view of an execution with one child alone (by its key, whatever the
    /// size of the execution), or none if it has no such child; the counts
    /// cover every child.
    pub async fn view_child(
        &self,
        id: &str,
        task: &str,
        index: u32,
    ) -> Result<ExecutionView, CoordinatorError> {
        let mut view = self.view_limited(id, 0).await?;
        view.children = self.child(id, task, index).await?.into_iter().collect();
        view.waiting = vec![String::new(); view.children.len()];
        Ok(view)
    }

    pub async fn child(
        &self,
        id: &str,
        task: &str,
        index: u32,
    ) -> Result<Option<ChildRecord>, CoordinatorError> {
        if let Some(found) = self
            .handle
            .child(id.to_string(), task.to_string(), index)
            .await?
        {
            return Ok(found);
        }
        self.stored(id).await?;
        match self
            .store
            .get(&crate::records::child_key(id, task, index))
            .await?
        {
            Some(kv) => serde_json::from_slice(&kv.value)
                .map(Some)
                .map_err(|e| CoordinatorError::Store(format!("corrupt record '{}': {e}", kv.key))),
            None => Ok(None),
        }
    }

    /// The folder of an execution, without reading its children.
    pub async fn folder(&self, id: &str) -> Result<String, CoordinatorError> {
        if let Some(v) = self.handle.view_limited(id.to_string(), 0).await? {
            return Ok(v.summary.folder);
        }
        Ok(self.stored(id).await?.folder().to_string())
    }

    /// Summaries of an execution as it progresses.
    pub async fn watch(&self, id: &str) -> Result<Watched, CoordinatorError> {
        if let Some(rx) = self.handle.watch(id.to_string()).await? {
            return Ok(Watched::Live(rx));
        }
        Ok(Watched::Ended(Box::new(
            self.view_limited(id, 0).await?.summary,
        )))
    }

    /// Executions newest first, filtered by state, package and the folders the
    /// caller may read (`readable`), `limit` per page.
    /// `page_token` is the last id of the previous page. Running executions show
    /// live counts; ended ones the counts recorded when they ended.
    ///
    /// This scans execution records (not their children); an index arrives with
    /// retention, which also bounds how many records there are.
    pub async fn list(
        &self,
        state: &str,
        package: &str,
        limit: usize,
        page_token: &str,
        readable: &(dyn Fn(&str) -> bool + Send + Sync),
    ) -> Result<(Vec<Summary>, String), CoordinatorError> {
        let limit = match limit {
            0 => 50,
            n => n.min(1000),
        };
        if !state.is_empty() && !["running", "succeeded", "failed", "cancelled"].contains(&state) {
            return Err(CoordinatorError::InvalidRequest(format!(
                "state '{state}' is not one of running, succeeded, failed, cancelled"
            )));
        }
        let mut records: Vec<ExecutionRecord> = self
            .store
            .range(crate::keys::EXECUTION_PREFIX)
            .await?
            .into_iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        records.reverse(); // ids are time-ordered (UUIDv7): newest first
        let mut out = Vec::new();
        let mut next = String::new();
        for rec in records {
            if !page_token.is_empty() && rec.id.as_str() >= page_token {
                continue;
            }
            if (!state.is_empty() && rec.state.as_str() != state)
                || (!package.is_empty() && rec.package != package)
                || !readable(rec.folder())
            {
                continue;
            }
            if out.len() == limit {
                next = out
                    .last()
                    .map(|s: &Summary| s.execution_id.clone())
                    .unwrap_or_default();
                break;
            }
            let live = if rec.state.is_terminal() {
                None
            } else {
                self.handle.watch(rec.id.clone()).await?
            };
            out.push(match live {
                Some(rx) => rx.borrow().clone(),
                None => crate::scheduler::summary_from_record(&rec),
            });
        }
        Ok((out, next))
    }

    /// Cancels an execution and says what that did (cancelling an ended
    /// execution changes nothing: `already_ended`, with its state).
    pub async fn cancel(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<crate::scheduler::CancelOutcome, CoordinatorError> {
        match self.handle.cancel(id.to_string(), reason.to_string()).await {
            Ok(outcome) => Ok(outcome),
            Err(CoordinatorError::ExecutionNotFound(_)) => Ok(
                crate::scheduler::CancelOutcome::ended(self.stored(id).await?.state),
            ),
            Err(e) => Err(e),
        }
    }

    /// Cancels one child of an execution (`task`, `index`); returns `cancelled`,
    /// `cancelling`, or the state the child had already ended in.
    pub async fn cancel_child(
        &self,
        id: &str,
        task: &str,
        index: u32,
        reason: &str,
    ) -> Result<String, CoordinatorError> {
        let asked = self
            .handle
            .cancel_child(id.to_string(), task.to_string(), index, reason.to_string())
            .await;
        match asked {
            Ok(state) => Ok(state.to_string()),
            // An ended execution: every child has ended too.
            Err(CoordinatorError::ExecutionNotFound(_)) => self
                .child(id, task, index)
                .await?
                .map(|c| c.phase.as_str().to_string())
                .ok_or_else(|| {
                    CoordinatorError::ChildNotFound(format!(
                        "execution {id} has no child {task}[{index}]"
                    ))
                }),
            Err(e) => Err(e),
        }
    }

    /// `cordon`, `drain` or `uncordon` an agent.
    pub async fn set_agent(
        &self,
        name: &str,
        action: &str,
    ) -> Result<AgentListing, CoordinatorError> {
        let mut also = Vec::new();
        if action == "revoke" {
            // Refused before anything is committed: an agent registered
            // without TLS has no certificate to revoke (the scheduler would
            // refuse it after the identity was revoked).
            let current = self.handle.agents().await?;
            if let Some(e) = revoke_refusal(name, current.iter().find(|a| a.rec.name == name)) {
                return Err(e);
            }
            // The identity and every unexpired certificate issued to it, in
            // one commit: a renewal that has not committed by then fails, one
            // that has is among these (crate::auth::identity). The scheduler
            // mirrors them.
            also = crate::auth::identity::revoke(self.store.as_ref(), name, crate::auth::now_s())
                .await?;
        }
        let listing = match self
            .handle
            .set_agent(name.to_string(), action.to_string(), also)
            .await
        {
            Ok(l) => l,
            // An identity enrolled but never registered: the scheduler does
            // not know it, yet it can be revoked, and forgotten.
            Err(CoordinatorError::AgentNotFound(_))
                if (action == "revoke" || action == "remove")
                    && crate::auth::identity::load(self.store.as_ref(), name)
                        .await?
                        .0
                        .is_some() =>
            {
                unregistered_listing(
                    name,
                    if action == "revoke" {
                        "revoked"
                    } else {
                        "removed"
                    },
                )
            }
            Err(e) => return Err(e),
        };
        if action == "remove" {
            // The name may enrol again; the certificates it held are revoked
            // (a removed machine comes back only by enrolling again).
            crate::auth::identity::forget(
                self.store.as_ref(),
                name,
                &listing.rec.cert_fingerprint,
                crate::auth::now_s(),
            )
            .await?;
        }
        Ok(listing)
    }

    pub async fn agents(&self) -> Result<Vec<AgentListing>, CoordinatorError> {
        self.handle.agents().await
    }

    /// Latency histograms and scheduler counters since this coordinator started.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, CoordinatorError> {
        self.handle.metrics().await
    }

    /// Resumes a failed or cancelled execution: its children that did not
    /// succeed run again (new attempt numbers), succeeded ones are kept.
    /// Returns how many children run again and how many times it has been
    /// resumed, once that is durable.
    pub async fn resume(&self, id: &str) -> Result<(u64, u32), CoordinatorError> {
        let _history = self.history.lock().await;
        let kv = self.stored_kv(id).await?;
        let mut rec: ExecutionRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| CoordinatorError::Store(format!("corrupt execution record: {e}")))?;
        if let Some(p) = &rec.parent {
            return Err(CoordinatorError::NotResumable {
                id: rec.id,
                why: format!(
                    "it is a sub-execution of {} (nested fan-out); resume that one",
                    p.execution_id
                ),
            });
        }
        if let Some(why) = crate::scheduler::resume_refusal(rec.state) {
            // A running execution is refused by the scheduler too; this spares
            // reading every child of one that can never resume.
            return Err(CoordinatorError::NotResumable {
                id: rec.id,
                why: why.into(),
            });
        }
        let children: Vec<(ChildRecord, u64)> = self
            .store
            .range(&children_prefix(id))
            .await?
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map(|c| (c, kv.mod_revision))
                    .map_err(|e| CoordinatorError::Store(format!("corrupt child record: {e}")))
            })
            .collect::<Result<_, _>>()?;
        crate::bundles::load(self.store.as_ref(), &mut rec).await?;
        let secrets = self.secrets.clone();
        let (rec, plan) = crate::prepare::gate::run(move || {
            crate::prepare::plan(&rec, &secrets).map(|p| (rec, p))
        })
        .await??;
        let resumes = rec.resumes + 1;
        let again = self
            .handle
            .resume(rec, kv.mod_revision, plan, children)
            .await?;
        Ok((again, resumes))
    }

    async fn stored_kv(&self, id: &str) -> Result<crate::store::KeyValue, CoordinatorError> {
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(CoordinatorError::ExecutionNotFound(id.to_string()));
        }
        self.store
            .get(&execution_key(id))
            .await?
            .ok_or_else(|| CoordinatorError::ExecutionNotFound(id.to_string()))
    }

    async fn stored(&self, id: &str) -> Result<ExecutionRecord, CoordinatorError> {
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(CoordinatorError::ExecutionNotFound(id.to_string()));
        }
        let kv = self
            .store
            .get(&execution_key(id))
            .await?
            .ok_or_else(|| CoordinatorError::ExecutionNotFound(id.to_string()))?;
        serde_json::from_slice(&kv.value)
            .map_err(|e| CoordinatorError::Store(format!("corrupt execution record: {e}")))
    }

    /// Bytes the store occupies.
    pub fn store_bytes(&self) -> u64 {
        self.store.size_bytes()
    }
}

/// The listing of an agent identity that never registered.
/// Why `agents revoke NAME` is refused before anything is committed, given the
/// scheduler's listing of the agent: one registered without TLS has no
/// certificate to revoke.
fn revoke_refusal(name: &str, listed: Option<&AgentListing>) -> Option<CoordinatorError> {
    listed
        .filter(|a| a.rec.cert_fingerprint.is_empty())
        .map(|_| {
            CoordinatorError::InvalidRequest(format!(
                "agent '{name}' registered without TLS (--insecure): there is no certificate to revoke"
            ))
        })
}

fn unregistered_listing(name: &str, state: &'static str) -> AgentListing {
    AgentListing {
        rec: crate::records::AgentRecord {
            name: name.to_string(),
            address: String::new(),
            labels: Default::default(),
            slots: 0,
            version: String::new(),
            boot_id: String::new(),
            admin: Default::default(),
            cert_fingerprint: String::new(),
            weight: 0,
        },
        state,
        running: 0,
        load1: 0.0,
        last_heartbeat_unix_ms: 0,
        quarantine: None,
    }
}

/// Set when dropped: a start request's future holds one while it plans, so
/// that the blocking planning task sees when the caller went away.
#[derive(Default)]
struct CallerGone(Arc<std::sync::atomic::AtomicBool>);

impl CallerGone {
    fn flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.0.clone()
    }
}

impl Drop for CallerGone {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod revoke_tests {
    use super::*;

    #[test]
    fn revoking_an_agent_without_a_certificate_is_refused_before_any_commit() {
        let mut plain = unregistered_listing("p1", "ready");
        assert_eq!(
            revoke_refusal("p1", Some(&plain)).map(|e| e.code()),
            Some("INVALID_REQUEST")
        );
        plain.rec.cert_fingerprint = "fp".into();
        assert!(revoke_refusal("p1", Some(&plain)).is_none());
        // Enrolled but never registered: the identity is revoked.
        assert!(revoke_refusal("p1", None).is_none());
    }
}

#[cfg(test)]
mod tests {
    //! The API over a real scheduler loop and a fake store: what a caller is
    //! refused before anything is committed, and that starts and cancels are
    //! answered only once durable.

    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::records::ParentLink;
    use crate::scheduler::{Scheduler, SchedulerConfig};
    use crate::scheduler_task::fixtures::{execution, files, params, registration};
    use crate::store::fake::FakeStore;
    use crate::store::{Op, Precondition};
    use crate::transport::{AgentDialer, Security};

    /// How long a test watches for an answer that must not come yet (real
    /// time: an early answer would come within microseconds).
    const QUIET: Duration = Duration::from_millis(100);

    /// A coordinator over `store`, its loop running.
    async fn coordinator(store: &Arc<FakeStore>) -> Coordinator {
        let (handle, _task) = crate::scheduler_task::spawn(
            Scheduler::new(SchedulerConfig::default(), 1),
            store.clone(),
            AgentDialer::new(Security::Insecure),
            CancellationToken::new(),
        );
        Coordinator {
            handle,
            store: store.clone(),
            secrets: Arc::new(crate::secrets::SealingKey::from_bytes(&[7; 32]).unwrap()),
            history: Arc::default(),
            local_children: false,
        }
    }

    async fn start(c: &Coordinator, n: u32) -> Result<String, CoordinatorError> {
        c.start("p.toml".into(), files(), params(n), "/f".into())
            .await
    }

    /// Writes an ended execution `id` (in `folder`) straight to the store.
    async fn stored_ended(store: &FakeStore, id: &str, folder: &str, state: ExecutionState) {
        let (mut rec, _) = execution(id, 2);
        rec.state = state;
        rec.folder = folder.into();
        store
            .commit(vec![Op::Put {
                key: execution_key(id),
                value: serde_json::to_vec(&rec).unwrap(),
                pre: Precondition::Any,
            }])
            .await
            .unwrap();
    }

    fn executions_in(store: &FakeStore) -> usize {
        store
            .applied()
            .iter()
            .flat_map(|c| c.ops.clone())
            .filter(|op| op.key().starts_with(crate::keys::EXECUTION_PREFIX))
            .count()
    }

    #[tokio::test]
    async fn start_answers_the_id_only_once_the_execution_is_durable() {
        let store = FakeStore::new();
        let c = coordinator(&store).await;
        store.hold_commits();
        let before = store.commits_started();
        let caller = c.clone();
        let started = tokio::spawn(async move { start(&caller, 3).await });
        store.wait_commits_started(before + 1).await;
        tokio::time::sleep(QUIET).await;
        assert!(!started.is_finished(), "answered before the commit");
        assert_eq!(executions_in(&store), 0);

        store.release_commits();
        let id = started.await.unwrap().unwrap();
        let rec: ExecutionRecord =
            serde_json::from_slice(&store.value(&execution_key(&id)).unwrap()).unwrap();
        assert_eq!(
            (rec.state, rec.folder.as_str()),
            (ExecutionState::Running, "/f")
        );
    }

    #[tokio::test]
    async fn a_start_stores_its_bundle_by_reference_and_recovery_plans_it_again() {
        let store = FakeStore::new();
        let c = coordinator(&store).await;
        let id = start(&c, 3).await.unwrap();
        let json = store.value(&execution_key(&id)).unwrap();
        let text = String::from_utf8_lossy(&json);
        assert!(
            !text.contains(fixtures_child()),
            "the record embeds no text: {text}"
        );
        let rec: ExecutionRecord = serde_json::from_slice(&json).unwrap();
        assert_eq!(rec.file_hashes.len(), 2);
        assert_eq!(
            rec.bundle_hash,
            crate::catalog::blobs::bundle_hash("p.toml", &rec.file_hashes)
        );
        for hash in rec.file_hashes.values() {
            assert!(store.value(&crate::keys::blob_key(hash)).is_some());
        }
        // A restart re-plans it from the blobs.
        let key = crate::secrets::SealingKey::from_bytes(&[7; 32]).unwrap();
        let sched = crate::recovery::load(store.as_ref(), SchedulerConfig::default(), &key, 2)
            .await
            .unwrap();
        let view = sched
            .execution_view(&id)
            .expect("running again after the restart");
        assert_eq!(view.summary.total, 3);
    }

    fn fixtures_child() -> &'static str {
        crate::scheduler_task::fixtures::CHILD
    }

    #[tokio::test]
    async fn a_file_larger_than_one_commit_of_the_store_is_refused_at_start() {
        let store = FakeStore::new();
        let c = coordinator(&store).await;
        store.set_limits(crate::store::Limits {
            max_ops_per_commit: Some(128),
            max_bytes_per_commit: Some(120),
        });
        let err = start(&c, 3).await.unwrap_err();
        assert_eq!(err.code(), "BUNDLE_FILE_TOO_LARGE", "{err}");
        assert!(err.to_string().contains("c.toml"), "{err}");
        assert_eq!(executions_in(&store), 0);
    }

    #[tokio::test]
    async fn start_refuses_a_bad_request_before_anything_is_committed() {
        let store = FakeStore::new();
        let c = coordinator(&store).await;
        let empty_root = c
            .start(String::new(), files(), params(2), "/f".into())
            .await;
        let too_many: BTreeMap<String, String> = (0..=MAX_PARAMS)
            .map(|i| (format!("p{i}"), "1".to_string()))
            .collect();
        let too_many_params = c
            .start("p.toml".into(), files(), too_many, "/f".into())
            .await;
        let local: BTreeMap<String, String> = [
            (
                "p.toml".to_string(),
                "name='p'\n[tasks.one]\nchild='c.toml'\nlocal=true\nparams={shard='1'}\n"
                    .to_string(),
            ),
            (
                "c.toml".to_string(),
                crate::scheduler_task::fixtures::CHILD.to_string(),
            ),
        ]
        .into();
        let local_child = c
            .start("p.toml".into(), local, BTreeMap::new(), "/f".into())
            .await;
        for (what, r) in [
            ("empty root", empty_root),
            ("too many parameters", too_many_params),
            ("a local child on a fleet", local_child),
        ] {
            let err = r.expect_err(what);
            assert_eq!(err.code(), "INVALID_REQUEST", "{what}: {err}");
        }
        assert_eq!(executions_in(&store), 0, "a refused start leaves nothing");
    }

    #[tokio::test]
    async fn cancel_goes_through_the_loop_and_answers_once_the_request_is_durable() {
        let store = FakeStore::new();
        let c = coordinator(&store).await;
        let id = start(&c, 3).await.unwrap();
        store.hold_commits();
        let before = store.commits_started();
        let (caller, cid) = (c.clone(), id.clone());
        let cancelled = tokio::spawn(async move { caller.cancel(&cid, "enough").await });
        store.wait_commits_started(before + 1).await;
        tokio::time::sleep(QUIET).await;
        assert!(!cancelled.is_finished(), "answered before the commit");

        store.release_commits();
        let outcome = cancelled.await.unwrap().unwrap();
        assert_eq!(
            (outcome.state.as_str(), outcome.already_ended),
            ("cancelled", false)
        );
        let rec = c.stored(&id).await.unwrap();
        assert!(rec.cancel_requested && rec.state == ExecutionState::Cancelled);

        // Again: it has ended, and nothing changes.
        let again = c.cancel(&id, "again").await.unwrap();
        assert_eq!(
            (again.state.as_str(), again.already_ended),
            ("cancelled", true)
        );
        // An execution nobody started.
        let err = c.cancel("f00d", "").await.unwrap_err();
        assert_eq!(err.code(), "EXECUTION_NOT_FOUND");
    }

    #[tokio::test]
    async fn show_reads_a_live_execution_from_memory_and_an_ended_one_from_the_store() {
        let store = FakeStore::new();
        let c = coordinator(&store).await;
        let live = start(&c, 3).await.unwrap();
        let view = c.view(&live).await.unwrap();
        assert_eq!(
            (view.summary.state.as_str(), view.children.len()),
            ("running", 3)
        );

        stored_ended(&store, "e2", "/f", ExecutionState::Failed).await;
        let ended = c.view("e2").await.unwrap();
        assert_eq!(ended.summary.state, "failed");

        for unknown in ["f00d", "", "../e2", &"e".repeat(65)] {
            let err = c.view(unknown).await.unwrap_err();
            assert_eq!(err.code(), "EXECUTION_NOT_FOUND", "{unknown:?}");
        }
    }

    #[tokio::test]
    async fn list_shows_only_executions_in_folders_the_caller_may_read() {
        let store = FakeStore::new();
        let c = coordinator(&store).await;
        stored_ended(&store, "e1", "/mine", ExecutionState::Succeeded).await;
        stored_ended(&store, "e2", "/theirs", ExecutionState::Succeeded).await;
        let (seen, next) = c
            .list("", "", 0, "", &|folder: &str| folder == "/mine")
            .await
            .unwrap();
        let ids: Vec<&str> = seen.iter().map(|s| s.execution_id.as_str()).collect();
        assert_eq!((ids, next.as_str()), (vec!["e1"], ""));
        let err = c.list("paused", "", 0, "", &|_: &str| true).await.err();
        assert_eq!(err.map(|e| e.code()), Some("INVALID_REQUEST"));
    }

    #[tokio::test]
    async fn revoking_an_agent_registered_without_tls_commits_nothing() {
        let store = FakeStore::new();
        let c = coordinator(&store).await;
        let mut plain = registration("p1", 2);
        plain.cert_fingerprint = String::new();
        c.handle.register(plain).await.unwrap();
        let commits = store.commits_started();
        let err = c.set_agent("p1", "revoke").await.unwrap_err();
        assert_eq!(err.code(), "INVALID_REQUEST");
        assert_eq!(store.commits_started(), commits);
        let listed = c.agents().await.unwrap();
        assert_eq!(listed.first().map(|a| a.state), Some("ready"));
    }

    #[tokio::test]
    async fn resume_refuses_a_running_execution_and_a_sub_execution() {
        let store = FakeStore::new();
        let c = coordinator(&store).await;
        stored_ended(&store, "e1", "/f", ExecutionState::Running).await;
        let (mut sub, _) = execution("e2", 2);
        sub.state = ExecutionState::Failed;
        sub.parent = Some(ParentLink {
            execution_id: "e1".into(),
            task: "fan".into(),
            index: 0,
            attempt: 1,
            depth: 1,
        });
        store
            .commit(vec![Op::Put {
                key: execution_key("e2"),
                value: serde_json::to_vec(&sub).unwrap(),
                pre: Precondition::Any,
            }])
            .await
            .unwrap();
        for id in ["e1", "e2"] {
            let err = c.resume(id).await.unwrap_err();
            assert_eq!(err.code(), "EXECUTION_NOT_RESUMABLE", "{id}: {err}");
        }
    }
}
