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
use crate::admission::{Decision, Rejection, check_package_with, check_run_as};
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
    pub(super) async fn finish_unstarted(
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use baton_proto::{AgentEvent, JobStatus, agent_event::Body};

    use super::*;
    use crate::config::AgentConfig;
    use crate::model::{Epoch, PackageSource};
    use crate::outbox::Outbox;

    const CHILD: &str =
        "name = 'child'\n[tasks.a]\nexec = ['sh', '-c', 'echo ok=1 >> $BATON_OUTPUT']\n";

    /// A dispatch of `CHILD` by hash only, as the coordinator sends catalog packages.
    fn by_hash(item: u32) -> StartJob {
        StartJob {
            dispatch: DispatchKey {
                execution_id: "e".into(),
                task_path: "fan".into(),
                item_index: item,
                attempt: 1,
            },
            package: PackageSource {
                name: "child".into(),
                content_hash: baton_package::content_hash(CHILD),
                content: None,
            },
            parameters: Default::default(),
            epoch: Epoch(1),
            deadline: None,
            traceparent: None,
            folder: "/".into(),
        }
    }

    fn setup(dir: &std::path::Path) -> (Arc<Supervisor>, Arc<Outbox>) {
        let config = AgentConfig {
            slots: 2,
            data_dir: dir.to_path_buf(),
            kill_grace_ms: 300,
            ..AgentConfig::default()
        };
        let outbox = Arc::new(Outbox::open(&dir.join("agent.redb")).unwrap());
        (Supervisor::new(&config, outbox.clone()), outbox)
    }

    async fn events(outbox: &Outbox, n: usize) -> Vec<AgentEvent> {
        let mut rx = outbox.subscribe();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let evs = outbox.unacked_from(0);
                if evs.len() >= n {
                    return evs;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("events did not arrive")
    }

    fn last_finished(evs: &[AgentEvent]) -> &baton_proto::JobFinished {
        match evs.last().and_then(|e| e.body.as_ref()) {
            Some(Body::Finished(f)) => f,
            other => panic!("expected finished, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_cached_package_runs_and_an_unfetchable_one_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, outbox) = setup(dir.path());
        // No source to fetch from: refused at once, nothing runs.
        let r = sup.start_job(by_hash(1)).unwrap_err();
        assert_eq!(r.code, RejectCode::UnknownPackage);
        assert_eq!(sup.load().running, 0);

        // In the cache: accepted and run like an inline package.
        let cache = dir.path().join("packages");
        std::fs::create_dir_all(&cache).unwrap();
        let hash = baton_package::content_hash(CHILD);
        std::fs::write(cache.join(format!("{hash}.toml")), CHILD).unwrap();
        sup.start_job(by_hash(2)).unwrap();
        let evs = events(&outbox, 2).await;
        let f = last_finished(&evs);
        assert_eq!(f.status, JobStatus::Succeeded as i32, "{}", f.reason);
        assert_eq!(f.outputs.get("ok").map(String::as_str), Some("1"));
    }

    #[tokio::test]
    async fn a_failed_fetch_fails_the_accepted_job_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, outbox) = setup(dir.path());
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead); // nobody listens there now
        sup.packages().set_source(url, None);
        // Accepted at once: the fetch happens after the answer.
        sup.start_job(by_hash(1)).unwrap();
        assert_eq!(
            sup.load().running,
            1,
            "the job holds its slot while fetching"
        );
        let evs = events(&outbox, 1).await;
        assert_eq!(evs.len(), 1, "no JobStarted: no process ran");
        let f = last_finished(&evs);
        assert_eq!(f.status, JobStatus::Failed as i32);
        assert!(f.reason.contains("could not be fetched"), "{}", f.reason);
        assert_eq!(sup.load().running, 0);
    }

    #[tokio::test]
    async fn a_job_cancelled_while_fetching_ends_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, outbox) = setup(dir.path());
        // Accepts connections (the kernel's backlog) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        sup.packages()
            .set_source(format!("http://{}", silent.local_addr().unwrap()), None);
        let job = by_hash(1);
        sup.start_job(job.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(sup.cancel_job(&job.dispatch));
        let evs = events(&outbox, 1).await;
        let f = last_finished(&evs);
        assert_eq!(f.status, JobStatus::Cancelled as i32);
        assert!(f.reason.contains("being fetched"), "{}", f.reason);
        drop(silent);
    }
}
