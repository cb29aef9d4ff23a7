//! Jobs whose package must be fetched first (a child module of
//! [`crate::supervisor`], which describes the choice).
//!
//! Such a job passes the state checks (epoch, idempotency, draining, capacity)
//! and is accepted at once: it takes its slot, and its runner task fetches the
//! package ([`crate::packages::PackageCache::get`]), verifies its hash, then runs
//! the package checks that admission runs for inline packages (parse, bind,
//! run-as). If the fetch or a check fails, or the job is cancelled meanwhile,
//! the job ends with one `JobFinished` (failed or cancelled) whose reason says
//! which — no process ever starts.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use baton_proto::RejectCode;
use tracing::{info, warn};

use super::{Supervisor, finished_body};
use crate::admission::{Decision, Rejection, check_package, check_run_as};
use crate::model::{DispatchKey, FinishStatus, StartJob};
use crate::packages::valid_hash;
use crate::plan;
use crate::run_as::RealHost;
use crate::runner::{JobCancel, JobPlan, JobReport};

impl Supervisor {
    /// Accepts a job whose package is neither inline nor cached.
    pub(super) fn admit_fetching(self: &Arc<Self>, job: StartJob) -> Result<(), Rejection> {
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
        let cancel = JobCancel::new();
        {
            let mut st = self.state.lock().unwrap();
            let running = st.jobs.running_len();
            match st.admission.check(&job, running) {
                Decision::New => {}
                Decision::Duplicate => return Ok(()),
                Decision::Reject(r) => return Err(r),
            }
            st.admission.record_accepted(job.dispatch.clone());
            st.jobs.insert_running(job.dispatch.clone(), cancel.clone());
        }
        self.tasks.send_modify(|n| *n += 1);
        self.spawned.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(async move {
            this.clone().fetch_then_run(job, cancel).await;
            this.tasks.send_modify(|n| *n -= 1);
        });
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
        let (package, params) = check_package(job)?;
        let run_as = check_run_as(&package, &job.folder, &self.allow_run_as, &RealHost)?;
        Ok(plan::build(
            job,
            &package,
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
        };
        self.append(key, finished_body(key, report)).await;
    }
}
