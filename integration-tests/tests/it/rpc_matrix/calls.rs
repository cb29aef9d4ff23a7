//! The calls of the RPC matrix: every RPC of `ControlService`,
//! `CoordinatorService` and `AgentService`, made once per caller, each with the
//! outcome it came to.

use std::path::Path;

use baton_proto as pb;
use pb::agent_service_client::AgentServiceClient;
use pb::control_service_client::ControlServiceClient;
use pb::coordinator_service_client::CoordinatorServiceClient;
use tonic::transport::Channel;

use super::{Got, got, refused};
use tonic::Code;

/// Calls every `ControlService` RPC; returns (rpc, outcome).
pub(super) fn control_calls(
    bundle_dir: &Path,
    rt: &tokio::runtime::Runtime,
    ch: Option<Channel>,
    exec_id: &str,
    token_id: &str,
) -> Vec<(&'static str, Got)> {
    let names = [
        "StartExecution",
        "WatchExecution",
        "GetExecution",
        "ResumeExecution",
        "ListAgents",
        "CancelExecution",
        "ListExecutions",
        "SetAgentState",
        "CreateToken",
        "ListTokens",
        "RevokeToken",
        "GrantRole",
        "RevokeRole",
        "ListRoles",
        "WhoAmI",
        "RevokeCertificate",
        "CancelChild",
        "StreamLogs",
        "StreamRows",
        "CreateFolder",
        "DeployPackage",
        "ListFolders",
        "ListPackages",
        "GetPackage",
        "MovePackage",
        "RenameFolder",
        "DeletePackage",
        "DeleteFolder",
    ];
    let Some(ch) = ch else {
        return names.iter().map(|n| (*n, Got::NoConnection)).collect();
    };
    let mut c = ControlServiceClient::new(ch);
    let pkg_dir = bundle_dir.to_path_buf();
    rt.block_on(async move {
        let read = |f: &str| std::fs::read_to_string(pkg_dir.join(f)).unwrap();
        let bundle = pb::PackageBundle {
            root: "parent.toml".into(),
            files: [
                ("parent.toml".to_string(), read("parent.toml")),
                ("child.toml".to_string(), read("child.toml")),
            ]
            .into(),
        };
        let catalog_bundle = bundle.clone();
        vec![
            (
                "StartExecution",
                got(c
                    .start_execution(pb::StartExecutionRequest {
                        bundle: Some(bundle),
                        parameters: Default::default(),
                        folder: "/".into(),
                        ..Default::default()
                    })
                    .await),
            ),
            (
                "WatchExecution",
                got(
                    match c
                        .watch_execution(pb::WatchExecutionRequest {
                            execution_id: exec_id.into(),
                        })
                        .await
                    {
                        Ok(s) => s.into_inner().message().await.map(|_| ()),
                        Err(e) => Err(e),
                    },
                ),
            ),
            (
                "GetExecution",
                got(c
                    .get_execution(pb::GetExecutionRequest {
                        execution_id: exec_id.into(),
                        ..Default::default()
                    })
                    .await),
            ),
            (
                // Before the cancel: the execution is running or succeeded, so
                // an authorised caller gets past the check to EXECUTION_NOT_RESUMABLE.
                "ResumeExecution",
                got(c
                    .resume_execution(pb::ResumeExecutionRequest {
                        execution_id: exec_id.into(),
                    })
                    .await),
            ),
            (
                "ListAgents",
                got(c.list_agents(pb::ListAgentsRequest {}).await),
            ),
            (
                "CancelExecution",
                got(c
                    .cancel_execution(pb::CancelExecutionRequest {
                        execution_id: exec_id.into(),
                        reason: "matrix".into(),
                    })
                    .await),
            ),
            (
                "ListExecutions",
                got(c
                    .list_executions(pb::ListExecutionsRequest::default())
                    .await
                    .map(|r| {
                        // Allowed for anyone authenticated, but it shows only readable folders.
                        r.into_inner().executions.len()
                    })),
            ),
            (
                "SetAgentState",
                got(c
                    .set_agent_state(pb::SetAgentStateRequest {
                        name: "a1".into(),
                        action: "uncordon".into(),
                    })
                    .await),
            ),
            (
                "CreateToken",
                got(c
                    .create_token(pb::CreateTokenRequest {
                        kind: "api".into(),
                        name: "carol".into(),
                        ttl_s: 60,
                        labels: Vec::new(),
                    })
                    .await),
            ),
            (
                "ListTokens",
                got(c.list_tokens(pb::ListTokensRequest {}).await),
            ),
            (
                "RevokeToken",
                got(c
                    .revoke_token(pb::RevokeTokenRequest {
                        token_id: token_id.into(),
                    })
                    .await),
            ),
            (
                "GrantRole",
                got(c
                    .grant_role(pb::RoleRequest {
                        principal: "carol".into(),
                        permission: "read".into(),
                        folder: "/x".into(),
                    })
                    .await),
            ),
            (
                "RevokeRole",
                got(c
                    .revoke_role(pb::RoleRequest {
                        principal: "carol".into(),
                        permission: "read".into(),
                        folder: "/x".into(),
                    })
                    .await),
            ),
            (
                "ListRoles",
                got(c.list_roles(pb::ListRolesRequest::default()).await),
            ),
            ("WhoAmI", got(c.who_am_i(pb::WhoAmIRequest {}).await)),
            (
                "RevokeCertificate",
                got(c
                    .revoke_certificate(pb::RevokeCertificateRequest {
                        fingerprint: "ab".repeat(32),
                    })
                    .await),
            ),
            (
                "CancelChild",
                got(c
                    .cancel_child(pb::CancelChildRequest {
                        execution_id: exec_id.into(),
                        child: "fan[0]".into(),
                        reason: "matrix".into(),
                    })
                    .await),
            ),
            (
                "StreamLogs",
                got(
                    match c
                        .stream_logs(pb::StreamLogsRequest {
                            execution_id: exec_id.into(),
                            child: "fan[0]".into(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(s) => s.into_inner().message().await.map(|_| ()),
                        Err(e) => Err(e),
                    },
                ),
            ),
            (
                "StreamRows",
                got(
                    match c
                        .stream_rows(pb::StreamRowsRequest {
                            execution_id: exec_id.into(),
                            child: "fan[1]".into(),
                            attempt: 0,
                        })
                        .await
                    {
                        Ok(s) => s.into_inner().message().await.map(|_| ()),
                        Err(e) => Err(e),
                    },
                ),
            ),
            // The catalog, in an order in which each call succeeds for the admin.
            (
                "CreateFolder",
                got(c
                    .create_folder(pb::CreateFolderRequest {
                        path: "/m".into(),
                        parents: false,
                    })
                    .await),
            ),
            (
                "DeployPackage",
                got(c
                    .deploy_package(pb::DeployPackageRequest {
                        bundle: Some(catalog_bundle),
                        folder: "/m".into(),
                        name: "p".into(),
                    })
                    .await),
            ),
            (
                "ListFolders",
                got(c.list_folders(pb::ListFoldersRequest::default()).await),
            ),
            (
                "ListPackages",
                got(c.list_packages(pb::ListPackagesRequest::default()).await),
            ),
            (
                "GetPackage",
                got(c
                    .get_package(pb::GetPackageRequest {
                        path: "/m/p".into(),
                        executions: 0,
                    })
                    .await),
            ),
            (
                "MovePackage",
                got(c
                    .move_package(pb::MovePackageRequest {
                        from: "/m/p".into(),
                        to: "/m/q".into(),
                    })
                    .await),
            ),
            (
                "RenameFolder",
                got(c
                    .rename_folder(pb::RenameFolderRequest {
                        from: "/m".into(),
                        to: "/m2".into(),
                    })
                    .await),
            ),
            (
                "DeletePackage",
                got(c
                    .delete_package(pb::DeletePackageRequest {
                        path: "/m2/q".into(),
                        force: false,
                    })
                    .await),
            ),
            (
                "DeleteFolder",
                got(c
                    .delete_folder(pb::DeleteFolderRequest { path: "/m2".into() })
                    .await),
            ),
        ]
    })
}

/// Calls every agent-facing `CoordinatorService` RPC as agent `name`.
pub(super) fn agent_calls(
    rt: &tokio::runtime::Runtime,
    ch: Option<Channel>,
    name: &str,
    token: &str,
    package_hash: &str,
) -> Vec<(&'static str, Got)> {
    let names = [
        "Register",
        "ReportEvents",
        "Renew",
        "Enroll",
        "FetchPackage",
    ];
    let Some(ch) = ch else {
        return names.iter().map(|n| (*n, Got::NoConnection)).collect();
    };
    let mut c = CoordinatorServiceClient::new(ch);
    let csr = csr_for(name);
    rt.block_on(async move {
        let register = c
            .register(pb::RegisterRequest {
                name: name.into(),
                address: "127.0.0.1:9".into(),
                slots: 1,
                boot_id: "b".into(),
                outbox_id: "o".into(),
                ..Default::default()
            })
            .await;
        let hello = pb::AgentEvent {
            seq: 0,
            at_unix_ms: 0,
            body: Some(pb::agent_event::Body::Hello(pb::Hello {
                agent_id: name.into(),
                boot_id: "b".into(),
            })),
        };
        let report = c.report_events(tokio_stream::iter(vec![hello])).await;
        let renew = c
            .renew(pb::RenewRequest {
                csr_pem: csr.clone(),
            })
            .await;
        let enroll = c
            .enroll(pb::EnrollRequest {
                token: token.into(),
                name: name.into(),
                csr_pem: csr,
            })
            .await;
        let fetch = c
            .fetch_package(pb::FetchPackageRequest {
                content_hash: package_hash.into(),
            })
            .await;
        vec![
            ("Register", got(register)),
            ("ReportEvents", got(report)),
            ("Renew", got(renew)),
            ("Enroll", got(enroll)),
            ("FetchPackage", got(fetch)),
        ]
    })
}

/// Calls every `AgentService` RPC.
pub(super) fn agent_service_calls(
    rt: &tokio::runtime::Runtime,
    ch: Option<Channel>,
) -> Vec<(&'static str, Got)> {
    let names = [
        "StartJob",
        "StartJobs",
        "CancelJob",
        "GetJob",
        "StreamLogs",
        "StreamRows",
    ];
    let Some(ch) = ch else {
        return names.iter().map(|n| (*n, Got::NoConnection)).collect();
    };
    let mut c = AgentServiceClient::new(ch);
    let id = pb::DispatchId {
        execution_id: "m".into(),
        task_path: "t".into(),
        item_index: 0,
        attempt: 1,
    };
    rt.block_on(async move {
        let start = c
            .start_job(pb::StartJobRequest {
                dispatch_id: Some(id.clone()),
                coordinator_epoch: 0,
                ..Default::default()
            })
            .await
            .map(|r| match r.into_inner().outcome {
                Some(pb::start_job_response::Outcome::Rejected(r))
                    if r.code == pb::RejectCode::Unauthorized as i32 =>
                {
                    "unauthorized"
                }
                _ => "answered",
            });
        let start = match start {
            Ok("unauthorized") => refused(Code::PermissionDenied, "UNAUTHORIZED"),
            other => got(other),
        };
        let batch = c
            .start_jobs(pb::StartJobsRequest {
                jobs: vec![pb::StartJobRequest {
                    dispatch_id: Some(id.clone()),
                    coordinator_epoch: 0,
                    ..Default::default()
                }],
            })
            .await
            .map(|r| {
                match r
                    .into_inner()
                    .results
                    .first()
                    .and_then(|r| r.outcome.clone())
                {
                    Some(pb::start_job_response::Outcome::Rejected(r))
                        if r.code == pb::RejectCode::Unauthorized as i32 =>
                    {
                        "unauthorized"
                    }
                    _ => "answered",
                }
            });
        let batch = match batch {
            Ok("unauthorized") => refused(Code::PermissionDenied, "UNAUTHORIZED"),
            other => got(other),
        };
        let cancel = got(c
            .cancel_job(pb::CancelJobRequest {
                dispatch_id: Some(id.clone()),
                reason: String::new(),
            })
            .await);
        let get = got(c
            .get_job(pb::GetJobRequest {
                dispatch_id: Some(id.clone()),
            })
            .await);
        let logs = got(c
            .stream_logs(pb::StreamJobLogsRequest {
                dispatch_id: Some(id.clone()),
                ..Default::default()
            })
            .await);
        let rows = got(c
            .stream_rows(pb::StreamJobRowsRequest {
                dispatch_id: Some(id),
            })
            .await);
        vec![
            ("StartJob", start),
            ("StartJobs", batch),
            ("CancelJob", cancel),
            ("GetJob", get),
            ("StreamLogs", logs),
            ("StreamRows", rows),
        ]
    })
}

/// A signing request for agent `name`, as a real agent makes it.
fn csr_for(name: &str) -> String {
    let params = rcgen::CertificateParams::new(vec![format!("{name}.agent.baton")]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap()
}
