//! The supervisor: admission, the job table and the runner tasks, behind one lock.
//!
//! `start_job` runs the admission checks (see [`crate::admission`] for their order),
//! registers an accepted job as running so it counts against the slots at once,
//! spawns its runner task and returns — the job runs after the answer. A batch
//! (`StartJobs`) is answered once every job of it is decided; the accepted jobs'
//! plans and runner tasks are made after the answer ([`Launch`]), so the answer
//! does not wait for them (accept p50 4.2 → 3.1 ms, p99 15 → 11 ms in
//! `baton bench --workload noop` here; docs/benchmarks.md). The runner task
//! appends `JobStarted` when the first process runs and exactly one `JobFinished` at the
//! end, both through the durable outbox (`JobStarted` always first).
//!
//! The package is parsed outside the lock; the state checks run again before the job is
//! registered, so two concurrent copies of one dispatch still start one job.
//!
//! **Packages sent by hash only** (catalog packages) come from the package cache
//! ([`crate::packages`]). When the package is not cached, fetching it could take
//! longer than an answer may, so the job is accepted on the state checks alone and its
//! runner task fetches the package first, then runs the package checks
//! (`admit_fetching`): a failed fetch, or a package check that fails after it
//! (a run-as user this agent may not use, say), fails that attempt with a reason that
//! says so, instead of rejecting it. The next dispatch of that package finds it cached
//! and gets the usual immediate answer, rejection included.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_proto::{JobFinished, JobStarted, RejectCode, agent_event::Body};
use tokio::sync::{oneshot, watch};
use tracing::{Instrument, debug, error, info, warn};

use crate::admission::{Admission, Decision, Rejection, check_package_with, check_run_as};
use crate::config::AgentConfig;
use crate::epoch_file::EpochFile;
use crate::job::cancel::{JobCancel, cancel_reason};
use crate::job::layout::scratch_dir;
use crate::job::leftovers::Leftovers;
use crate::job::plan::{self, JobPlan};
use crate::job::run::{JobReport, RunnerSettings, run_job};
use crate::jobs::{JobState, JobTable};
use crate::model::{DispatchKey, Epoch, FinishStatus, KillReason, StartJob};
use crate::outbox::Outbox;
use crate::packages::{PackageCache, valid_hash};
use crate::parsed::ParsedPackages;
use crate::run_as::{RealHost, RunAsRule};

struct State {
    admission: Admission,
    jobs: JobTable,
}

/// What makes an accepted job's runner: its plan, its span, its work.
type MakeRunner = Box<dyn FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A job decided and taken — accepted, in the job table, counted among the
/// runner tasks — whose runner is not made yet. It is made and spawned by
/// [`Launch::start`], or when the `Launch` is dropped: an accepted job always
/// runs.
pub struct Launch {
    sup: Arc<Supervisor>,
    make: Option<MakeRunner>,
}

impl Launch {
    /// Builds the job's plan and spawns its runner task.
    pub fn start(mut self) {
        self.go();
    }

    fn go(&mut self) {
        let Some(make) = self.make.take() else {
            return;
        };
        self.sup.spawn_counted(make());
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        self.go();
    }
}

/// Load figures for heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub slots: u32,
    pub running: u32,
    pub draining: bool,
}

pub struct Supervisor {
    state: Mutex<State>,
    outbox: Arc<Outbox>,
    settings: RunnerSettings,
    default_task_timeout: Duration,
    allow_run_as: Vec<RunAsRule>,
    /// Runner tasks alive (a task ends after its finished event is durable).
    tasks: watch::Sender<usize>,
    spawned: AtomicU64,
    /// Packages sent by hash only.
    packages: Arc<PackageCache>,
    /// Child packages parsed once, for every child of a fan-out.
    parsed: ParsedPackages,
    /// One permit per slot: a job accepted into the queue (`--queue`) waits for
    /// one before it starts (the semaphore is fair: in order of acceptance).
    run_slots: Arc<tokio::sync::Semaphore>,
    /// `StartJob` answers are counted here (`--metrics-listen`).
    metrics: Arc<crate::metrics::AgentMetrics>,
    /// Where the highest epoch seen is kept across restarts (set by `run`).
    epoch_file: std::sync::OnceLock<EpochFile>,
}

impl Supervisor {
    pub fn new(config: &AgentConfig, outbox: Arc<Outbox>) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            state: Mutex::new(State {
                admission: Admission::new(config.slots + config.queue),
                jobs: JobTable::new(),
            }),
            outbox,
            settings: RunnerSettings::new(
                config.data_dir.join("jobs"),
                Duration::from_millis(config.kill_grace_ms),
                config.output_tail_bytes,
            ),
            default_task_timeout: Duration::from_secs(config.default_task_timeout_s),
            allow_run_as: config.allow_run_as.clone(),
            tasks: watch::channel(0).0,
            spawned: AtomicU64::new(0),
            packages: Arc::new(PackageCache::new(config.data_dir.join("packages"))),
            parsed: ParsedPackages::new(),
            run_slots: Arc::new(tokio::sync::Semaphore::new(config.slots as usize)),
            metrics: config.metrics.clone().unwrap_or_default(),
            epoch_file: std::sync::OnceLock::new(),
        })
    }

    /// Starts from the epoch kept in `file` and keeps every rise there.
    pub fn keep_epoch_in(&self, file: EpochFile, seen: Epoch) {
        let mut st = self.state.lock().unwrap();
        st.admission.observe_epoch(seen);
        let _ = self.epoch_file.set(file);
    }

    /// Writes the highest epoch seen if it rose (under the state lock, so that a
    /// dispatch that raised it is accepted only once it is durable).
    /// False when the epoch rose but could not be written: a job is then
    /// refused (at capacity, so the coordinator tries again or elsewhere)
    /// rather than accepted with a bar a restart would forget.
    fn keep_epoch(&self, st: &State) -> bool {
        if let Some(file) = self.epoch_file.get()
            && let Err(e) = file.raise(st.admission.max_epoch())
        {
            warn!(code = e.code(), error = %e, "cannot keep the highest coordinator epoch seen");
            return false;
        }
        true
    }

    /// The record of the process groups running now.
    pub(crate) fn leftovers(&self) -> &Arc<Leftovers> {
        &self.settings.leftovers
    }

    /// The cache of packages sent by hash only.
    pub fn packages(&self) -> &Arc<PackageCache> {
        &self.packages
    }

    /// The scratch directories of the jobs running now (retention spares them).
    pub fn running_dirs(&self) -> std::collections::HashSet<std::path::PathBuf> {
        let keys = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .jobs
            .running_keys();
        keys.iter()
            .map(|k| scratch_dir(&self.settings.scratch_root, k))
            .collect()
    }

    /// Decides a `StartJob`: `Ok` = accepted (new or again), `Err` = rejected.
    /// An accepted job's runner starts before this returns.
    pub fn start_job(self: &Arc<Self>, job: StartJob) -> Result<(), Rejection> {
        self.decide(job).map(|launch| {
            if let Some(l) = launch {
                l.start();
            }
        })
    }

    /// Decides a `StartJob` as [`Self::start_job`] does, but leaves an
    /// accepted job's runner to start when the returned [`Launch`] is started
    /// (or dropped): a batch is answered once every job of it is decided,
    /// before any plan is built or any runner task made.
    pub fn decide(self: &Arc<Self>, job: StartJob) -> Result<Option<Launch>, Rejection> {
        let result = self.admit(job);
        self.metrics.decided(result.as_ref().err().map(|r| r.code));
        result.inspect_err(|r| {
            // The reason may quote the package; it never holds parameter values.
            debug!(code = r.code_str(), reason = %r.reason, "rejection reason");
        })
    }

    fn admit(self: &Arc<Self>, mut job: StartJob) -> Result<Option<Launch>, Rejection> {
        match self.check(&job) {
            Decision::New => {}
            Decision::Duplicate => return Ok(None),
            Decision::Reject(r) => return Err(r),
        }
        if job.package.content.is_none() {
            match self.packages.cached(&job.package.content_hash) {
                Some(text) => job.package.content = Some(text),
                None => return self.admit_fetching(job).map(|()| None),
            }
        }
        let (package, params) = check_package_with(&job, Some(&self.parsed))?;
        // Looked up at every start (outside the lock: it may ask NSS), never cached.
        let run_as = check_run_as(&package, &job.folder, &self.allow_run_as, &RealHost)?;
        let Some(cancel) = self.take(&job)? else {
            return Ok(None);
        };
        // Counted as a runner task from now on (a shutdown waits for it).
        self.tasks.send_modify(|n| *n += 1);
        let this = self.clone();
        let timeout = self.default_task_timeout;
        let make: MakeRunner = Box::new(move || {
            // Only a job taken gets a span (not a resent duplicate).
            let span = crate::job_trace::span(&job);
            job.traceparent =
                crate::job_trace::child_traceparent(&span, job.traceparent.as_deref());
            let plan = plan::build(&job, package, &params, timeout, run_as);
            Box::pin(async move { this.run(plan, cancel).await }.instrument(span))
        });
        Ok(Some(Launch {
            sup: self.clone(),
            make: Some(make),
        }))
    }

    /// Records `job` as accepted and running, under the lock: admission decides
    /// again, since another call may have changed the state after [`Self::check`].
    /// `None`: the same job is there already (a duplicate, accepted).
    fn take(&self, job: &StartJob) -> Result<Option<JobCancel>, Rejection> {
        let mut st = self.state.lock().unwrap();
        if st.jobs.state(&job.dispatch) != JobState::Unknown {
            return Ok(None);
        }
        let running = st.jobs.running_len();
        let decision = st.admission.check(job, running);
        let kept = self.keep_epoch(&st);
        match decision {
            Decision::New if !kept => {
                return Err(Rejection::new(
                    RejectCode::AtCapacity,
                    "cannot record the coordinator's epoch on disk (see the agent's log); try again later",
                ));
            }
            Decision::New => {}
            Decision::Duplicate => return Ok(None),
            Decision::Reject(r) => return Err(r),
        }
        let cancel = JobCancel::new();
        st.admission.record_accepted(job.dispatch.clone());
        st.jobs.insert_running(job.dispatch.clone(), cancel.clone());
        Ok(Some(cancel))
    }

    /// Runs an accepted job's work as its runner task, counted in `tasks` until
    /// it ends (its finished event is durable by then).
    fn spawn_runner(self: &Arc<Self>, work: impl Future<Output = ()> + Send + 'static) {
        self.tasks.send_modify(|n| *n += 1);
        self.spawn_counted(work);
    }

    /// Spawns the work of a runner task already counted in `tasks`; the count
    /// drops when it ends.
    fn spawn_counted(self: &Arc<Self>, work: impl Future<Output = ()> + Send + 'static) {
        self.spawned.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(async move {
            work.await;
            this.tasks.send_modify(|n| *n -= 1);
        });
    }

    fn check(&self, job: &StartJob) -> Decision {
        let mut st = self.state.lock().unwrap();
        // A dispatch this agent runs or ran is the same job again, even once
        // admission's memory of accepted ids has let it go (a restarted
        // coordinator re-sends every child it last saw dispatched).
        if st.jobs.state(&job.dispatch) != JobState::Unknown {
            return Decision::Duplicate;
        }
        let running = st.jobs.running_len();
        let decision = st.admission.check(job, running);
        // A failure is refused for good in `take`, under the same lock.
        let _ = self.keep_epoch(&st);
        decision
    }

    async fn run(self: Arc<Self>, plan: JobPlan, cancel: JobCancel) {
        let key = plan.dispatch.clone();
        // Accepted into the queue: wait for a slot (or the cancel).
        let begin = Instant::now();
        let slot = tokio::select! {
            biased;
            r = cancel.cancelled() => {
                info!(dispatch = %key, "job cancelled while queued");
                let ms = u64::try_from(begin.elapsed().as_millis()).unwrap_or(u64::MAX);
                let reason = format!("{} while queued for a slot", cancel_reason(r));
                self.finish_unstarted(&key, FinishStatus::Cancelled, reason, ms).await;
                return;
            }
            permit = self.run_slots.clone().acquire_owned() => permit.ok(),
        };
        let (started_tx, started_rx) = oneshot::channel();
        let run = run_job(&plan, &self.settings, &cancel, started_tx);
        tokio::pin!(run);
        let mut started_rx = started_rx;
        let started = |pid| {
            Body::Started(JobStarted {
                dispatch_id: Some(key.to_proto()),
                pid,
            })
        };
        // `started` is queued as soon as the process runs (its sequence number
        // is taken then, so it always precedes `finished`), lazily: it needs no
        // fsync of its own and becomes durable with the next durable commit,
        // most often this job's `finished` (or `outbox::LAZY_MAX` later).
        let mut started_written = None;
        let report = tokio::select! {
            biased;
            pid = &mut started_rx => {
                if let Ok(pid) = pid {
                    started_written = self.queue_started(&key, started(pid)).await;
                }
                run.await
            }
            report = &mut run => {
                // The process may have started and ended within one poll of the
                // runner. `finished`, queued after it, is durable only once it is.
                if let Ok(pid) = started_rx.try_recv() {
                    started_written = self.queue_started(&key, started(pid)).await;
                }
                report
            }
        };
        debug!(dispatch = %key, status = ?report.status, duration_ms = report.duration_ms, "job finished");
        // Free the slot before the event is durable: the coordinator may send the next
        // job as soon as it reads the event, and must not find the slot still taken.
        {
            let mut st = self.state.lock().unwrap();
            st.jobs.finish(key.clone(), report.status, report.exit_code);
            if report.left_nothing {
                st.jobs.mark_left_nothing(&key);
            }
        }
        drop(slot); // the next queued job may start
        self.append(&key, finished_body(&key, report)).await;
        // Durable with `finished` (an earlier commit at the latest).
        if let Some(durable) = started_written
            && let Err(e) = durable.await
        {
            error!(dispatch = %key, code = e.code(), error = %e, "cannot record job event");
        }
    }

    /// Queues a job's `started` lazily; what becomes ready once it is durable.
    async fn queue_started(
        &self,
        key: &DispatchKey,
        body: Body,
    ) -> Option<impl Future<Output = Result<u64, crate::error::AgentError>> + use<>> {
        match self.outbox.enqueue_lazy(body).await {
            Ok(durable) => Some(durable),
            Err(e) => {
                error!(dispatch = %key, code = e.code(), error = %e, "cannot record job event");
                None
            }
        }
    }

    async fn append(&self, key: &DispatchKey, body: Body) {
        if let Err(e) = self.outbox.append(body).await {
            error!(dispatch = %key, code = e.code(), error = %e, "cannot record job event");
        }
    }

    /// Cancels a running job; false when it does not run here.
    pub fn cancel_job(&self, key: &DispatchKey) -> bool {
        let st = self.state.lock().unwrap();
        let was_running = st.jobs.cancel(key, KillReason::Cancelled);
        if was_running {
            info!(dispatch = %key, "job cancel requested");
        }
        was_running
    }

    /// `data_dir/jobs`: where the jobs' scratch directories are.
    pub fn scratch_root(&self) -> &std::path::Path {
        &self.settings.scratch_root
    }

    /// Whether a finished job is known to have left no file (its logs and
    /// rows are empty; its directory was reused).
    pub fn left_nothing(&self, key: &DispatchKey) -> bool {
        self.state.lock().unwrap().jobs.left_nothing(key)
    }

    pub fn job_state(&self, key: &DispatchKey) -> JobState {
        self.state.lock().unwrap().jobs.state(key)
    }

    /// Raises the highest coordinator epoch seen.
    pub fn observe_epoch(&self, epoch: Epoch) {
        let mut st = self.state.lock().unwrap();
        st.admission.observe_epoch(epoch);
        // A failure is logged; a dispatch is refused until it is written.
        let _ = self.keep_epoch(&st);
    }

    /// The highest coordinator epoch seen.
    pub fn max_epoch(&self) -> Epoch {
        self.state.lock().unwrap().admission.max_epoch()
    }

    pub fn load(&self) -> Load {
        let st = self.state.lock().unwrap();
        Load {
            slots: st.admission.slots(),
            running: st.jobs.running_len() as u32,
            draining: st.admission.draining(),
        }
    }

    /// Number of jobs started since this supervisor was created.
    pub fn jobs_spawned(&self) -> u64 {
        self.spawned.load(Ordering::Relaxed)
    }

    /// Stops accepting jobs (they are rejected with `DRAINING`).
    pub fn begin_drain(&self) {
        self.state.lock().unwrap().admission.set_draining(true);
    }

    /// Ends every running job (status CANCELLED) and waits, at most `wait`, until all
    /// runner tasks have recorded their finished events. True if all finished.
    pub async fn stop_all_jobs(&self, wait: Duration) -> bool {
        self.state
            .lock()
            .unwrap()
            .jobs
            .cancel_all(KillReason::Shutdown);
        let mut rx = self.tasks.subscribe();
        tokio::time::timeout(wait, rx.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }

    // Jobs whose package must be fetched first: accepted on the state checks
    // (epoch, idempotency, draining, capacity) at once, on their slot; the runner
    // task fetches the package (`PackageCache::get`, which verifies its hash), then
    // runs the package checks that admission runs for inline packages (parse, bind,
    // run-as). If the fetch or a check fails, or the job is cancelled meanwhile, the
    // job ends with one `JobFinished` (failed or cancelled) whose reason says which —
    // no process ever starts.

    /// Accepts a job whose package is neither inline nor cached.
    fn admit_fetching(self: &Arc<Self>, mut job: StartJob) -> Result<(), Rejection> {
        let src = &job.package;
        if !valid_hash(&src.content_hash) || !self.packages.can_fetch() {
            return Err(Rejection::new(
                RejectCode::UnknownPackage,
                format!(
                    "package {:?} ({}) was not sent inline, is not cached here, and this agent cannot fetch it",
                    src.name, src.content_hash
                ),
            ));
        }
        let Some(cancel) = self.take(&job)? else {
            return Ok(());
        };
        let span = crate::job_trace::span(&job);
        job.traceparent = crate::job_trace::child_traceparent(&span, job.traceparent.as_deref());
        let this = self.clone();
        self.spawn_runner(async move { this.fetch_then_run(job, cancel).await }.instrument(span));
        Ok(())
    }

    async fn fetch_then_run(self: Arc<Self>, mut job: StartJob, cancel: JobCancel) {
        let begin = Instant::now();
        let hash = job.package.content_hash.clone();
        let fetched = tokio::select! {
            r = self.packages.get(&hash) => r.map_err(|e| {
                (FinishStatus::Failed, format!(
                    "package {:?} ({hash}) could not be fetched from the coordinator: {e}",
                    job.package.name
                ))
            }),
            _ = cancel.cancelled() => Err((
                FinishStatus::Cancelled,
                "cancelled while its package was being fetched".to_string(),
            )),
        };
        let prepared = fetched.and_then(|text| {
            job.package.content = Some(text);
            self.prepare(&job).map_err(|r| {
                (
                    FinishStatus::Failed,
                    format!(
                        "refused after fetching its package: {}: {}",
                        r.code_str(),
                        r.reason
                    ),
                )
            })
        });
        match prepared {
            Ok(plan) => self.run(plan, cancel).await,
            Err((status, reason)) => {
                if status == FinishStatus::Failed {
                    warn!(dispatch = %job.dispatch, %reason, "job failed before it started");
                } else {
                    info!(dispatch = %job.dispatch, "job cancelled before it started");
                }
                let ms = u64::try_from(begin.elapsed().as_millis()).unwrap_or(u64::MAX);
                self.finish_unstarted(&job.dispatch, status, reason, ms)
                    .await;
            }
        }
    }

    /// The package checks of admission, on a fetched package.
    fn prepare(&self, job: &StartJob) -> Result<JobPlan, Rejection> {
        let (package, params) = check_package_with(job, Some(&self.parsed))?;
        let run_as = check_run_as(&package, &job.folder, &self.allow_run_as, &RealHost)?;
        Ok(plan::build(
            job,
            package,
            &params,
            self.default_task_timeout,
            run_as,
        ))
    }

    /// Ends a job that never started a process: one `JobFinished`.
    async fn finish_unstarted(
        &self,
        key: &DispatchKey,
        status: FinishStatus,
        reason: String,
        duration_ms: u64,
    ) {
        self.state
            .lock()
            .unwrap()
            .jobs
            .finish(key.clone(), status, -1);
        let report = JobReport {
            status,
            exit_code: -1,
            outputs: Default::default(),
            row_count: 0,
            reason,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            duration_ms,
            left_nothing: false,
        };
        self.append(key, finished_body(key, report)).await;
    }
}

fn finished_body(key: &DispatchKey, r: JobReport) -> Body {
    Body::Finished(JobFinished {
        dispatch_id: Some(key.to_proto()),
        status: r.status.to_proto() as i32,
        exit_code: r.exit_code,
        outputs: r.outputs.into_iter().collect(),
        row_count: r.row_count,
        reason: r.reason,
        stdout_tail: r.stdout_tail,
        stderr_tail: r.stderr_tail,
        duration_ms: r.duration_ms,
    })
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
