//! The agent protocol's messages ↔ the coordinator's domain types
//! ([`crate::domain`]), for both edges that meet agents: the
//! `CoordinatorService` they call (`agent_api.rs`: their events in, the answer
//! to a registration out) and the `AgentService` calls the scheduler's loop
//! makes (`scheduler_task/effects.rs`: dispatches and cancellations out,
//! answers in). Every conversion is lossless but one: an enum number the
//! coordinator does not know becomes `Unspecified` (a job status: the child
//! failed; a reject code: the dispatch failed).

use baton_proto as pb;

use crate::domain::{
    AgentReport, CancelSpec, DispatchId, DispatchOutcome, DispatchSpec, ExecutionId, Heartbeat,
    Hello, JobFinished, JobProgress, JobStarted, JobStatus, RegisterAnswer, RejectCode, ReportBody,
};

impl From<pb::DispatchId> for DispatchId {
    fn from(d: pb::DispatchId) -> DispatchId {
        DispatchId {
            execution_id: ExecutionId::new(d.execution_id),
            task_path: d.task_path,
            item_index: d.item_index,
            attempt: d.attempt,
        }
    }
}

impl From<DispatchId> for pb::DispatchId {
    fn from(d: DispatchId) -> pb::DispatchId {
        pb::DispatchId {
            execution_id: d.execution_id.to_string(),
            task_path: d.task_path,
            item_index: d.item_index,
            attempt: d.attempt,
        }
    }
}

/// A job status from the wire; a number this coordinator does not know is
/// `Unspecified` (the child failed).
fn job_status(n: i32) -> JobStatus {
    match pb::JobStatus::try_from(n).unwrap_or(pb::JobStatus::Unspecified) {
        pb::JobStatus::Unspecified => JobStatus::Unspecified,
        pb::JobStatus::Succeeded => JobStatus::Succeeded,
        pb::JobStatus::Failed => JobStatus::Failed,
        pb::JobStatus::Cancelled => JobStatus::Cancelled,
        pb::JobStatus::TimedOut => JobStatus::TimedOut,
    }
}

/// A reject code from the wire; a number this coordinator does not know is
/// `Unspecified` (the dispatch failed).
fn reject_code(n: i32) -> RejectCode {
    match pb::RejectCode::try_from(n).unwrap_or(pb::RejectCode::Unspecified) {
        pb::RejectCode::Unspecified => RejectCode::Unspecified,
        pb::RejectCode::AtCapacity => RejectCode::AtCapacity,
        pb::RejectCode::Draining => RejectCode::Draining,
        pb::RejectCode::UnknownPackage => RejectCode::UnknownPackage,
        pb::RejectCode::InvalidRequest => RejectCode::InvalidRequest,
        pb::RejectCode::StaleEpoch => RejectCode::StaleEpoch,
        pb::RejectCode::Unauthorized => RejectCode::Unauthorized,
        pb::RejectCode::RunAsDenied => RejectCode::RunAsDenied,
    }
}

impl From<pb::AgentEvent> for AgentReport {
    fn from(ev: pb::AgentEvent) -> AgentReport {
        use pb::agent_event::Body;
        AgentReport {
            seq: ev.seq,
            at_unix_ms: ev.at_unix_ms,
            body: ev.body.map(|body| match body {
                Body::Hello(h) => ReportBody::Hello(Hello {
                    agent_id: h.agent_id,
                    boot_id: h.boot_id,
                }),
                Body::Heartbeat(hb) => ReportBody::Heartbeat(Heartbeat {
                    slots: hb.slots,
                    running: hb.running,
                    load1: hb.load1,
                    draining: hb.draining,
                }),
                Body::Started(s) => ReportBody::Started(JobStarted {
                    dispatch_id: s.dispatch_id.map(DispatchId::from),
                    pid: s.pid,
                }),
                Body::Progress(p) => ReportBody::Progress(JobProgress {
                    dispatch_id: p.dispatch_id.map(DispatchId::from),
                    message: p.message,
                }),
                Body::Finished(f) => ReportBody::Finished(JobFinished {
                    dispatch_id: f.dispatch_id.map(DispatchId::from),
                    status: job_status(f.status),
                    exit_code: f.exit_code,
                    outputs: f.outputs.into_iter().collect(),
                    row_count: f.row_count,
                    reason: f.reason,
                    stdout_tail: f.stdout_tail,
                    stderr_tail: f.stderr_tail,
                    duration_ms: f.duration_ms,
                }),
            }),
        }
    }
}

impl From<RegisterAnswer> for pb::RegisterResponse {
    fn from(a: RegisterAnswer) -> pb::RegisterResponse {
        pb::RegisterResponse {
            agent_id: a.agent_id,
            heartbeat_interval_ms: a.heartbeat_interval_ms,
            lease_ttl_ms: a.lease_ttl_ms,
            coordinator_epoch: a.coordinator_epoch,
            acked_seq: a.acked_seq,
        }
    }
}

impl From<DispatchSpec> for pb::StartJobRequest {
    fn from(s: DispatchSpec) -> pb::StartJobRequest {
        pb::StartJobRequest {
            dispatch_id: Some(s.dispatch_id.into()),
            package: Some(pb::PackageRef {
                name: s.package.name,
                content_hash: s.package.content_hash,
                content: s.package.content.to_vec(),
            }),
            parameters: s.parameters.into_iter().collect(),
            coordinator_epoch: s.coordinator_epoch,
            deadline_ms: s.deadline_ms,
            traceparent: s.traceparent,
            folder: s.folder,
            tracestate: s.tracestate,
        }
    }
}

impl From<CancelSpec> for pb::CancelJobRequest {
    fn from(s: CancelSpec) -> pb::CancelJobRequest {
        pb::CancelJobRequest {
            dispatch_id: Some(s.dispatch_id.into()),
            reason: s.reason,
        }
    }
}

/// What one StartJob answer means for the scheduler.
impl From<pb::StartJobResponse> for DispatchOutcome {
    fn from(resp: pb::StartJobResponse) -> DispatchOutcome {
        match resp.outcome {
            Some(pb::start_job_response::Outcome::Accepted(_)) => DispatchOutcome::Accepted,
            Some(pb::start_job_response::Outcome::Rejected(r)) => DispatchOutcome::Rejected {
                code: reject_code(r.code),
                reason: r.reason,
            },
            None => DispatchOutcome::Rejected {
                code: RejectCode::Unspecified,
                reason: "agent answered with neither accepted nor rejected".to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::domain::PackageRef;

    fn id() -> DispatchId {
        DispatchId {
            execution_id: ExecutionId::new("e1"),
            task_path: "fan".into(),
            item_index: 3,
            attempt: 2,
        }
    }

    #[test]
    fn a_dispatch_id_has_the_protocol_form_the_agent_expects() {
        let wire = pb::DispatchId {
            execution_id: "e1".into(),
            task_path: "fan".into(),
            item_index: 3,
            attempt: 2,
        };
        assert_eq!(pb::DispatchId::from(id()), wire);
        assert_eq!(DispatchId::from(wire.clone()), id());
        assert_eq!(id().to_string(), wire.to_string(), "printed alike");
    }

    #[test]
    fn a_finished_job_keeps_every_field_and_an_unknown_status_fails() {
        let finished = |status: i32| pb::AgentEvent {
            seq: 7,
            at_unix_ms: 9,
            body: Some(pb::agent_event::Body::Finished(pb::JobFinished {
                dispatch_id: Some(id().into()),
                status,
                exit_code: -3,
                outputs: [("k".to_string(), "v".to_string())].into(),
                row_count: 11,
                reason: "why".into(),
                stdout_tail: "out".into(),
                stderr_tail: "err".into(),
                duration_ms: 13,
            })),
        };
        let report = AgentReport::from(finished(pb::JobStatus::TimedOut as i32));
        assert_eq!(
            report,
            AgentReport {
                seq: 7,
                at_unix_ms: 9,
                body: Some(ReportBody::Finished(JobFinished {
                    dispatch_id: Some(id()),
                    status: JobStatus::TimedOut,
                    exit_code: -3,
                    outputs: [("k".to_string(), "v".to_string())].into(),
                    row_count: 11,
                    reason: "why".into(),
                    stdout_tail: "out".into(),
                    stderr_tail: "err".into(),
                    duration_ms: 13,
                })),
            }
        );
        let Some(ReportBody::Finished(f)) = AgentReport::from(finished(99)).body else {
            panic!("a finished job");
        };
        assert_eq!(f.status, JobStatus::Unspecified);
        for (n, want) in [
            (0, JobStatus::Unspecified),
            (1, JobStatus::Succeeded),
            (2, JobStatus::Failed),
            (3, JobStatus::Cancelled),
            (4, JobStatus::TimedOut),
            (-1, JobStatus::Unspecified),
        ] {
            assert_eq!(job_status(n), want, "{n}");
        }
    }

    #[test]
    fn the_other_reports_keep_their_fields() {
        use pb::agent_event::Body;
        let report = |body| {
            AgentReport::from(pb::AgentEvent {
                seq: 0,
                at_unix_ms: 1,
                body,
            })
        };
        assert_eq!(report(None).body, None);
        assert_eq!(
            report(Some(Body::Hello(pb::Hello {
                agent_id: "a1".into(),
                boot_id: "b".into(),
            })))
            .body,
            Some(ReportBody::Hello(Hello {
                agent_id: "a1".into(),
                boot_id: "b".into(),
            }))
        );
        assert_eq!(
            report(Some(Body::Heartbeat(pb::Heartbeat {
                slots: 4,
                running: 2,
                load1: 0.5,
                draining: true,
            })))
            .body,
            Some(ReportBody::Heartbeat(Heartbeat {
                slots: 4,
                running: 2,
                load1: 0.5,
                draining: true,
            }))
        );
        assert_eq!(
            report(Some(Body::Started(pb::JobStarted {
                dispatch_id: None,
                pid: 42,
            })))
            .body,
            Some(ReportBody::Started(JobStarted {
                dispatch_id: None,
                pid: 42,
            }))
        );
        assert_eq!(
            report(Some(Body::Progress(pb::JobProgress {
                dispatch_id: Some(id().into()),
                message: "half".into(),
            })))
            .body,
            Some(ReportBody::Progress(JobProgress {
                dispatch_id: Some(id()),
                message: "half".into(),
            }))
        );
    }

    #[test]
    fn a_dispatch_spec_becomes_the_whole_start_request() {
        let spec = DispatchSpec {
            dispatch_id: id(),
            package: PackageRef {
                name: "c".into(),
                content_hash: "ab".into(),
                content: Arc::from(&b"text"[..]),
            },
            parameters: BTreeMap::from([("shard".to_string(), "1".to_string())]),
            coordinator_epoch: 5,
            deadline_ms: 6000,
            traceparent: "00-tp".into(),
            tracestate: "k=v".into(),
            folder: "/f".into(),
        };
        assert_eq!(
            pb::StartJobRequest::from(spec),
            pb::StartJobRequest {
                dispatch_id: Some(id().into()),
                package: Some(pb::PackageRef {
                    name: "c".into(),
                    content_hash: "ab".into(),
                    content: b"text".to_vec(),
                }),
                parameters: [("shard".to_string(), "1".to_string())].into(),
                coordinator_epoch: 5,
                deadline_ms: 6000,
                traceparent: "00-tp".into(),
                folder: "/f".into(),
                tracestate: "k=v".into(),
            }
        );
        assert_eq!(
            pb::CancelJobRequest::from(CancelSpec {
                dispatch_id: id(),
                reason: "stop".into(),
            }),
            pb::CancelJobRequest {
                dispatch_id: Some(id().into()),
                reason: "stop".into(),
            }
        );
    }

    #[test]
    fn an_answer_keeps_its_reject_code_and_an_unknown_one_is_unspecified() {
        let rejected = |code: i32| pb::StartJobResponse {
            outcome: Some(pb::start_job_response::Outcome::Rejected(pb::Rejected {
                code,
                reason: "r".into(),
            })),
        };
        for code in 0..=7 {
            let DispatchOutcome::Rejected { code: got, .. } = rejected(code).into() else {
                panic!("rejected");
            };
            assert_eq!(got as i32, code, "same number");
            let wire = pb::RejectCode::try_from(code).unwrap();
            assert_eq!(got.as_str_name(), wire.as_str_name(), "same name");
        }
        assert_eq!(
            DispatchOutcome::from(rejected(99)),
            DispatchOutcome::Rejected {
                code: RejectCode::Unspecified,
                reason: "r".into(),
            }
        );
        let accepted = pb::StartJobResponse {
            outcome: Some(pb::start_job_response::Outcome::Accepted(pb::Accepted {})),
        };
        assert_eq!(DispatchOutcome::from(accepted), DispatchOutcome::Accepted);
        assert!(matches!(
            DispatchOutcome::from(pb::StartJobResponse { outcome: None }),
            DispatchOutcome::Rejected {
                code: RejectCode::Unspecified,
                ..
            }
        ));
    }
}
