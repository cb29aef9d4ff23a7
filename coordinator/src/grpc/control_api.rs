//! `ControlService`: what the CLI and SDKs call.
//!
//! Every call first authenticates the caller ([`crate::auth::Auth::authenticate`])
//! and checks its permission on the folder concerned; refusals are audited.
//! The calls the web dashboard also serves (executions, agents, cancel,
//! resume) go through the shared access layer ([`crate::access`]).
//!
//! | call | needs |
//! | --- | --- |
//! | StartExecution, CancelExecution, CancelChild, ResumeExecution | `execute` on the execution's folder |
//! | GetExecution, WatchExecution, StreamLogs, StreamRows | `read` on the execution's folder |
//! | ListExecutions | lists only folders the caller may read |
//! | ListAgents | `read` on "/" |
//! | SetAgentState, tokens, RevokeCertificate | `manage` on "/" |
//! | GrantRole, RevokeRole | `manage` on the folder |
//! | ListRoles | `read` on the folder |
//! | WhoAmI | any principal |
//! | the catalog's calls | see `grpc/catalog_api.rs` |

use std::pin::Pin;

use baton_proto as pb;
use pb::control_service_server::ControlService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub use super::control_state::ControlApi;

use super::convert;
use super::error_status::status;
use crate::api::Watched;
use crate::auth::tokens::TokenKind;
use crate::auth::{Permission, normalize_folder};
use crate::error::CoordinatorError;

/// Children `GetExecution` returns when the request names no limit.
const DEFAULT_CHILDREN_LIMIT: usize = 10_000;
/// The most children one `GetExecution` returns (about 6 MB of JSON).
const MAX_CHILDREN_LIMIT: usize = 100_000;

fn grant_rows(rows: Vec<(String, Permission, String)>) -> Vec<pb::RoleGrant> {
    rows.into_iter()
        .map(|(principal, p, folder)| pb::RoleGrant {
            principal,
            permission: p.as_str().to_string(),
            folder,
        })
        .collect()
}

type SummaryStream = Pin<Box<dyn Stream<Item = Result<pb::ExecutionSummary, Status>> + Send>>;

impl ControlApi {
    /// StartExecution, inside its request span.
    async fn start_execution_traced(
        &self,
        request: Request<pb::StartExecutionRequest>,
    ) -> Result<Response<pb::StartExecutionResponse>, Status> {
        if !request.get_ref().package.is_empty() {
            return self.start_package(request).await;
        }
        let folder = normalize_folder(&request.get_ref().folder).map_err(status)?;
        let who = self
            .allow(&request, "StartExecution", Permission::Execute, &folder)
            .await?;
        // An execution belongs to a folder that exists, as a deployed package
        // does: a typo must not file it under a folder nobody can list.
        if !self
            .coordinator
            .catalog()
            .folder_exists(&folder)
            .await
            .map_err(status)?
        {
            return Err(status(CoordinatorError::FolderNotFound(folder)));
        }
        let r = request.into_inner();
        let placement = convert::placement(&r).map_err(status)?;
        let bundle = r.bundle.ok_or_else(|| {
            status(CoordinatorError::InvalidRequest(
                "bundle is required".into(),
            ))
        })?;
        let mut files: std::collections::BTreeMap<String, String> =
            bundle.files.into_iter().collect();
        self.add_catalog_children(&who, &bundle.root, &mut files)
            .await?;
        let params: std::collections::BTreeMap<String, String> = r.parameters.into_iter().collect();
        let bytes = crate::quota::bundle_bytes(&bundle.root, &files, &params);
        // Held while it plans (released if the start fails or the caller goes).
        let reservation = self.quota.reserve(&who, bytes).await.map_err(status)?;
        let id = self
            .coordinator
            .start_placed(bundle.root, files, params, folder, placement)
            .await
            .map_err(status)?;
        self.quota.record_execution(&id, &who, bytes).await;
        drop(reservation);
        Ok(Response::new(pb::StartExecutionResponse {
            execution_id: id,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn start_execution(
        &self,
        request: Request<pb::StartExecutionRequest>,
    ) -> Result<Response<pb::StartExecutionResponse>, Status> {
        // A caller is authenticated before anything is traced: a request from
        // nobody makes no span and joins no trace it names.
        self.who(&request, "StartExecution").await?;
        // The execution's trace starts under this span (and so under the
        // caller's `traceparent`, when it sent one).
        let span = crate::traces::request_span("StartExecution", request.metadata());
        self.start_execution_traced(request).instrument(span).await
    }

    type WatchExecutionStream = SummaryStream;

    async fn watch_execution(
        &self,
        request: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        let who = self.who(&request, "WatchExecution").await?;
        let id = request.into_inner().execution_id;
        let watched = self
            .access()
            .watch(&who, &id, "WatchExecution")
            .await
            .map_err(status)?;
        let out: SummaryStream = match watched {
            Watched::Live(rx) => {
                // Ends with the last summary when the execution ends.
                let s = tokio_stream::wrappers::WatchStream::new(rx)
                    .filter(|s| !s.execution_id.is_empty())
                    .map(|s| Ok(convert::summary(&s)));
                Box::pin(s)
            }
            Watched::Ended(s) => Box::pin(tokio_stream::once(Ok(convert::summary(&s)))),
        };
        Ok(Response::new(out))
    }

    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::ExecutionDetail>, Status> {
        let who = self.who(&request, "GetExecution").await?;
        let r = request.into_inner();
        let id = r.execution_id;
        let limit = match r.children_limit {
            0 => DEFAULT_CHILDREN_LIMIT,
            n => (n as usize).min(MAX_CHILDREN_LIMIT),
        };
        // The access layer reads the folder first: a refusal reads nothing else.
        let access = self.access();
        let view = match r.child {
            None => access.view(&who, &id, limit, "GetExecution").await,
            Some(key) => {
                access
                    .view_child(&who, &id, &key.task_path, key.item_index, "GetExecution")
                    .await
            }
        }
        .map_err(status)?;
        Ok(Response::new(convert::detail(view)))
    }

    async fn cancel_execution(
        &self,
        request: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::CancelExecutionResponse>, Status> {
        let who = self.who(&request, "CancelExecution").await?;
        let r = request.into_inner();
        let done = self
            .access()
            .cancel(&who, &r.execution_id, &r.reason, "CancelExecution")
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CancelExecutionResponse {
            state: done.state.to_string(),
            already_ended: done.already_ended,
            children_cancelled: done.children_cancelled,
            children_stopping: done.children_stopping,
        }))
    }

    async fn resume_execution(
        &self,
        request: Request<pb::ResumeExecutionRequest>,
    ) -> Result<Response<pb::ResumeExecutionResponse>, Status> {
        let who = self.who(&request, "ResumeExecution").await?;
        let r = request.into_inner();
        let (children, resumes) = self
            .access()
            .resume(&who, &r.execution_id, "ResumeExecution")
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ResumeExecutionResponse {
            state: "running".into(),
            children,
            resumes,
        }))
    }

    // One child: super::child_output.
    async fn cancel_child(
        &self,
        request: Request<pb::CancelChildRequest>,
    ) -> Result<Response<pb::CancelChildResponse>, Status> {
        self.cancel_child_call(request).await
    }

    type StreamLogsStream = super::child_output::Proxied<pb::LogChunk>;

    async fn stream_logs(
        &self,
        request: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        self.stream_logs_call(request).await
    }

    type StreamRowsStream = super::child_output::Proxied<pb::RowBatch>;

    async fn stream_rows(
        &self,
        request: Request<pb::StreamRowsRequest>,
    ) -> Result<Response<Self::StreamRowsStream>, Status> {
        self.stream_rows_call(request).await
    }

    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let who = self.who(&request, "ListExecutions").await?;
        let r = request.into_inner();
        let (list, next) = self
            .access()
            .list(
                &who,
                &r.state,
                &r.package,
                "",
                r.limit as usize,
                &r.page_token,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListExecutionsResponse {
            executions: list.iter().map(convert::summary).collect(),
            next_page_token: next,
        }))
    }

    async fn set_agent_state(
        &self,
        request: Request<pb::SetAgentStateRequest>,
    ) -> Result<Response<pb::AgentInfo>, Status> {
        let who = self
            .allow(&request, "SetAgentState", Permission::Manage, "/")
            .await?;
        let r = request.into_inner();
        let agent = self
            .coordinator
            .set_agent(&r.name, &r.action)
            .await
            .map_err(status)?;
        self.auth.audit.changed(
            &who.name,
            "SetAgentState",
            "/",
            &format!("{} {}", r.action, r.name),
        );
        Ok(Response::new(convert::agent(agent)))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let who = self.who(&request, "ListAgents").await?;
        let agents = self
            .access()
            .agents(&who, "ListAgents")
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.into_iter().map(convert::agent).collect(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let who = self
            .allow(&request, "CreateToken", Permission::Manage, "/")
            .await?;
        let r = request.into_inner();
        let kind = match r.kind.as_str() {
            "agent" => TokenKind::Agent,
            "api" => TokenKind::Api,
            other => {
                return Err(status(CoordinatorError::InvalidRequest(format!(
                    "token kind '{other}' is not agent or api"
                ))));
            }
        };
        let mut t = self
            .auth
            .create_token(kind, &r.name, r.ttl_s, &who.name, r.labels.clone())
            .await
            .map_err(status)?;
        if kind == TokenKind::Agent {
            let Some(live) = &self.tls else {
                return Err(status(CoordinatorError::InvalidRequest(
                    "enrolment needs TLS; this coordinator runs --insecure".into(),
                )));
            };
            // The CA pin lets the new agent check it reached this coordinator.
            t.secret_text = format!("{}_{}", t.secret_text, live.ca_pin());
        }
        self.auth.audit.changed(
            &who.name,
            "CreateToken",
            "/",
            &if r.labels.is_empty() {
                format!("{} token {} for '{}'", kind.as_str(), t.record.id, r.name)
            } else {
                format!(
                    "{} token {} for '{}' with labels {}",
                    kind.as_str(),
                    t.record.id,
                    r.name,
                    r.labels.join(",")
                )
            },
        );
        Ok(Response::new(pb::CreateTokenResponse {
            token_id: t.record.id.clone(),
            expires_unix_s: t.record.expires_unix_s,
            token: std::mem::take(&mut t.secret_text),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.allow(&request, "ListTokens", Permission::Manage, "/")
            .await?;
        let now = crate::auth::now_s();
        let tokens = self.auth.list_tokens().await.map_err(status)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens
                .into_iter()
                .map(|t| pb::TokenInfo {
                    state: t.state(now).to_string(),
                    token_id: t.id,
                    kind: t.kind.as_str().to_string(),
                    name: t.name,
                    created_unix_s: t.created_unix_s,
                    expires_unix_s: t.expires_unix_s,
                    created_by: t.created_by,
                })
                .collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let who = self
            .allow(&request, "RevokeToken", Permission::Manage, "/")
            .await?;
        let id = request.into_inner().token_id;
        if self.auth.revoke_token(&id).await.map_err(status)? {
            self.auth.audit.changed(
                &who.name,
                "RevokeToken",
                "/",
                &format!("token {id} revoked"),
            );
        }
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn grant_role(
        &self,
        request: Request<pb::RoleRequest>,
    ) -> Result<Response<pb::RoleResponse>, Status> {
        self.set_role(request, true).await
    }

    async fn revoke_role(
        &self,
        request: Request<pb::RoleRequest>,
    ) -> Result<Response<pb::RoleResponse>, Status> {
        self.set_role(request, false).await
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        let folder = normalize_folder(&request.get_ref().folder).map_err(status)?;
        self.allow(&request, "ListRoles", Permission::Read, &folder)
            .await?;
        let r = request.into_inner();
        let rows = self
            .auth
            .list_grants(&folder, &r.principal)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListRolesResponse {
            grants: grant_rows(rows),
        }))
    }

    async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::RevokeCertificateResponse>, Status> {
        let who = self
            .allow(&request, "RevokeCertificate", Permission::Manage, "/")
            .await?;
        let fp = request.into_inner().fingerprint;
        if self.auth.revoke_certificate(&fp).await.map_err(status)? {
            self.auth.audit.changed(
                &who.name,
                "RevokeCertificate",
                "/",
                &format!("certificate {fp} revoked"),
            );
        }
        Ok(Response::new(pb::RevokeCertificateResponse {}))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let who = self.who(&request, "WhoAmI").await?;
        let rows = self
            .auth
            .list_grants("/", &who.name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::WhoAmIResponse {
            principal: who.name.clone(),
            method: who.method.as_str().to_string(),
            grants: grant_rows(rows),
        }))
    }

    // The catalog: super::catalog_api.
    async fn create_folder(
        &self,
        request: Request<pb::CreateFolderRequest>,
    ) -> Result<Response<pb::CreateFolderResponse>, Status> {
        self.catalog_create_folder(request).await
    }

    async fn list_folders(
        &self,
        request: Request<pb::ListFoldersRequest>,
    ) -> Result<Response<pb::ListFoldersResponse>, Status> {
        self.catalog_list_folders(request).await
    }

    async fn rename_folder(
        &self,
        request: Request<pb::RenameFolderRequest>,
    ) -> Result<Response<pb::RenameFolderResponse>, Status> {
        self.catalog_rename_folder(request).await
    }

    async fn delete_folder(
        &self,
        request: Request<pb::DeleteFolderRequest>,
    ) -> Result<Response<pb::DeleteFolderResponse>, Status> {
        self.catalog_delete_folder(request).await
    }

    async fn deploy_package(
        &self,
        request: Request<pb::DeployPackageRequest>,
    ) -> Result<Response<pb::DeployPackageResponse>, Status> {
        self.catalog_deploy(request).await
    }

    async fn list_packages(
        &self,
        request: Request<pb::ListPackagesRequest>,
    ) -> Result<Response<pb::ListPackagesResponse>, Status> {
        self.catalog_list_packages(request).await
    }

    async fn get_package(
        &self,
        request: Request<pb::GetPackageRequest>,
    ) -> Result<Response<pb::PackageDetail>, Status> {
        self.catalog_get_package(request).await
    }

    async fn move_package(
        &self,
        request: Request<pb::MovePackageRequest>,
    ) -> Result<Response<pb::MovePackageResponse>, Status> {
        self.catalog_move_package(request).await
    }

    async fn delete_package(
        &self,
        request: Request<pb::DeletePackageRequest>,
    ) -> Result<Response<pb::DeletePackageResponse>, Status> {
        self.catalog_delete_package(request).await
    }
}

impl ControlApi {
    async fn set_role(
        &self,
        request: Request<pb::RoleRequest>,
        add: bool,
    ) -> Result<Response<pb::RoleResponse>, Status> {
        let call = if add { "GrantRole" } else { "RevokeRole" };
        let folder = normalize_folder(&request.get_ref().folder).map_err(status)?;
        let who = self
            .allow(&request, call, Permission::Manage, &folder)
            .await?;
        let r = request.into_inner();
        let p: Permission = r.permission.parse().map_err(status)?;
        let changed = self
            .auth
            .set_grant(&r.principal, p, &folder, add)
            .await
            .map_err(status)?;
        if changed {
            let sign = if add { '+' } else { '-' };
            self.auth.audit.changed(
                &who.name,
                call,
                &folder,
                &format!("{} {sign}{p}", r.principal),
            );
        }
        Ok(Response::new(pb::RoleResponse {}))
    }
}

/// The three calls about one child (the trait impl above forwards to these):
/// permission checks here, the child and its agent in [`super::child_output`].
impl ControlApi {
    async fn cancel_child_call(
        &self,
        request: tonic::Request<pb::CancelChildRequest>,
    ) -> Result<tonic::Response<pb::CancelChildResponse>, tonic::Status> {
        const CALL: &str = "CancelChild";
        let who = self.who(&request, CALL).await?;
        let r = request.into_inner();
        let folder = self.folder_of(&r.execution_id).await?;
        self.auth
            .require(&who, Permission::Run, &folder, CALL)
            .await
            .map_err(status)?;
        if r.reason.len() > 1024 {
            return Err(status(CoordinatorError::InvalidRequest(
                "reason is longer than 1024 bytes".into(),
            )));
        }
        let path = super::child_output::ChildPath::parse(&r.child).map_err(status)?;
        let state = self
            .coordinator
            .cancel_child(&r.execution_id, &path.task, path.index, &r.reason)
            .await
            .map_err(status)?;
        Ok(tonic::Response::new(pb::CancelChildResponse { state }))
    }

    /// The child (and attempt) whose logs or rows `who` asks for, once `read` on
    /// its execution's folder is checked.
    async fn readable_child(
        &self,
        who: &crate::auth::Principal,
        call: &str,
        execution_id: &str,
        child: &str,
        attempt: u32,
    ) -> Result<super::child_output::Target, tonic::Status> {
        self.access()
            .child_folder_check(who, execution_id, call)
            .await
            .map_err(status)?;
        self.outputs
            .target(execution_id, child, attempt)
            .await
            .map_err(status)
    }

    async fn stream_logs_call(
        &self,
        request: tonic::Request<pb::StreamLogsRequest>,
    ) -> Result<tonic::Response<super::child_output::Proxied<pb::LogChunk>>, tonic::Status> {
        let who = self.who(&request, "StreamLogs").await?;
        let r = request.into_inner();
        let target = self
            .readable_child(&who, "StreamLogs", &r.execution_id, &r.child, r.attempt)
            .await?;
        let req = pb::StreamJobLogsRequest {
            dispatch_id: None,
            stream: r.stream,
            follow: r.follow,
            stdout_offset: r.stdout_offset,
            stderr_offset: r.stderr_offset,
        };
        let s = self.outputs.logs(&target, req).await.map_err(status)?;
        Ok(tonic::Response::new(s))
    }

    async fn stream_rows_call(
        &self,
        request: tonic::Request<pb::StreamRowsRequest>,
    ) -> Result<tonic::Response<super::child_output::Proxied<pb::RowBatch>>, tonic::Status> {
        let who = self.who(&request, "StreamRows").await?;
        let r = request.into_inner();
        let target = self
            .readable_child(&who, "StreamRows", &r.execution_id, &r.child, r.attempt)
            .await?;
        let s = self.outputs.rows(&target).await.map_err(status)?;
        Ok(tonic::Response::new(s))
    }
}
