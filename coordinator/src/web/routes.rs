//! The dashboard's routes: the embedded page, the login, and the JSON and
//! event-stream API the page reads (listed in `docs/observability.md`).
//! Every API route but login and logout authenticates its session first and
//! then asks the access layer ([`crate::access`]), which checks and audits
//! the folder permission of what is asked for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio_stream::StreamExt;

use super::assets;
use super::json;
use super::live::{self, Standing};
use super::reply::{self, ApiError, Body};
use super::session;
use super::state::Web;
use crate::access::Access;
use crate::auth::{Auth, Credential, Permission, Principal};
use crate::error::CoordinatorError;
use crate::grpc::child_output::ChildOutputs;

/// The most bytes of a request body (a login's token, an empty action).
pub const MAX_BODY: usize = 8 * 1024;
/// Time to send a request body (a login's token).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest execution id or child path accepted in a URL.
const MAX_ID: usize = 128;
/// Children of an execution's page when the request names no limit, and the most.
const DEFAULT_CHILDREN: usize = 200;
const MAX_CHILDREN: usize = 2000;
/// Rows of a child the page reads at most.
const MAX_ROWS: usize = 1000;
/// Header every state-changing request must carry: a page of another site
/// cannot send it without a preflight this server never grants.
pub const CSRF_HEADER: &str = "x-baton-request";

/// Serves one request; never fails (errors are answers).
pub(super) async fn handle(web: Arc<Web>, req: Request<Incoming>) -> Response<Body> {
    match route(web, req).await {
        Ok(r) => r,
        Err(e) => reply::error(&e),
    }
}

/// The query string's parameters, percent-decoded.
fn query(req: &Parts) -> HashMap<String, String> {
    req.uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Percent-decodes `s` (`+` is a space); `None` if it is not UTF-8 after.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'%' => return None,
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn param<'a>(q: &'a HashMap<String, String>, k: &str) -> &'a str {
    q.get(k).map_or("", String::as_str)
}

fn number(
    q: &HashMap<String, String>,
    k: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match q.get(k) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map(|n| n.min(max))
            .map_err(|_| ApiError::bad_request(format!("{k} must be a number"))),
    }
}

fn checked_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty()
        || id.len() > MAX_ID
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError::bad_request("invalid execution id"));
    }
    Ok(id)
}

async fn route(web: Arc<Web>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (req, body) = req.into_parts();
    let method = req.method.clone();
    let path = req.uri.path().to_string();
    if method == Method::GET || method == Method::HEAD {
        if let Some((content_type, text)) = assets::get(&path) {
            return Ok(reply::asset(content_type, text));
        }
        if path == "/favicon.ico" {
            return Ok(reply::empty(StatusCode::NO_CONTENT));
        }
    }
    let Some(api) = path.strip_prefix("/api/") else {
        return Err(ApiError::not_found(&path));
    };
    let segments: Vec<&str> = api.split('/').collect();
    // A POST's body is read (bounded) before any answer: an answer sent
    // while the client still sends would reset its HTTP/2 stream, and the
    // client would see an error instead of the answer.
    let body = if method == Method::POST {
        read_body(body).await?
    } else {
        Bytes::new()
    };
    if method == Method::POST {
        let marked = req
            .headers
            .get(CSRF_HEADER)
            .is_some_and(|v| v.as_bytes() == b"1");
        if !marked {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "CSRF_HEADER_MISSING",
                format!("a POST to the dashboard's API must carry the header {CSRF_HEADER}: 1"),
            ));
        }
    } else if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{method} is not served here"),
        ));
    }
    let Some(coordinator) = web.current.borrow().clone() else {
        return Err(ApiError::from(CoordinatorError::NotLeader { leader: None }));
    };
    let access = Access::new(
        coordinator.clone(),
        Auth::new(coordinator.store.clone(), web.audit.clone()),
    );
    match (&method, segments.as_slice()) {
        (&Method::POST, ["login"]) => return login(&web, &access, &body).await,
        (&Method::POST, ["logout"]) => return Ok(logout(&web, &req)),
        _ => {}
    }
    let call = call_name(&method, &segments);
    let (who, session_id) = authenticated(&web, &access, &req, call).await?;
    let q = query(&req);
    match (&method, segments.as_slice()) {
        (&Method::GET, ["whoami"]) => Ok(reply::json(
            StatusCode::OK,
            &json!({"principal": who.name, "method": who.method.as_str()}),
        )),
        (&Method::GET, ["agents"]) => {
            let agents = access.agents(&who, call).await?;
            Ok(reply::json(StatusCode::OK, &json::agents(&agents)))
        }
        (&Method::GET, ["executions"]) => {
            let (list, next) = access
                .list(
                    &who,
                    param(&q, "state"),
                    param(&q, "package"),
                    param(&q, "folder"),
                    number(&q, "limit", 50, 1000)?,
                    param(&q, "page_token"),
                )
                .await?;
            Ok(reply::json(StatusCode::OK, &json::summaries(&list, &next)))
        }
        (&Method::GET, ["executions", id]) => {
            let id = checked_id(id)?;
            let limit = number(&q, "limit", DEFAULT_CHILDREN, MAX_CHILDREN)?;
            let view = access.view(&who, id, limit, call).await?;
            let folder = &view.summary.folder;
            let may_cancel = access.holds(&who, Permission::Run, folder).await?;
            let may_resume = access.holds(&who, Permission::Execute, folder).await?;
            Ok(reply::json(
                StatusCode::OK,
                &json::detail(&view, may_cancel, may_resume),
            ))
        }
        (&Method::GET, ["executions", id, "children"]) => {
            let id = checked_id(id)?;
            children(&access, &who, id, &q, call).await
        }
        (&Method::GET, ["executions", id, "rows"]) => {
            let id = checked_id(id)?;
            rows(&web, &access, &who, id, param(&q, "child"), call).await
        }
        (&Method::GET, ["executions", id, "logs"]) => {
            let id = checked_id(id)?;
            let child = param(&q, "child");
            if child.len() > MAX_ID {
                return Err(ApiError::bad_request("child path too long"));
            }
            let folder = access.child_folder_check(&who, id, call).await?;
            let outputs = ChildOutputs::new(access.coordinator().clone(), web.dialer.clone());
            let target = outputs.target(id, child, 0).await?;
            let standing = standing(&web, access, who, session_id, Some(folder))?;
            Ok(reply::events(live::logs(standing, outputs, target)))
        }
        (&Method::GET, ["events", "execution", id]) => {
            let id = checked_id(id)?;
            let folder = access
                .on_execution(&who, id, Permission::Read, call)
                .await?;
            let watched = access.coordinator().watch(id).await?;
            Ok(reply::events(live::execution(
                standing(&web, access, who, session_id, Some(folder))?,
                watched,
            )))
        }
        (&Method::GET, ["events", "fleet"]) => {
            // Refused at once, not in the stream, when `read` on "/" is missing.
            access.agents(&who, call).await?;
            Ok(reply::events(live::fleet(standing(
                &web, access, who, session_id, None,
            )?)))
        }
        (&Method::GET, ["events", "executions"]) => Ok(reply::events(live::executions(
            standing(&web, access, who, session_id, None)?,
            param(&q, "state").to_string(),
            param(&q, "package").to_string(),
            param(&q, "folder").to_string(),
        ))),
        (&Method::POST, ["executions", id, "cancel"]) => {
            let id = checked_id(id)?;
            let reason = format!("cancelled from the dashboard by {}", who.name);
            let done = access.cancel(&who, id, &reason, call).await?;
            Ok(reply::json(
                StatusCode::OK,
                &json!({
                    "outcome": if done.already_ended { "already_ended" } else { "cancelled" },
                    "state": done.state.as_str(),
                    "children_cancelled": done.children_cancelled,
                    "children_stopping": done.children_stopping,
                }),
            ))
        }
        (&Method::POST, ["executions", id, "resume"]) => {
            let id = checked_id(id)?;
            let (children, resumes) = access.resume(&who, id, call).await?;
            Ok(reply::json(
                StatusCode::OK,
                &json!({"resumed": children, "resumes": resumes}),
            ))
        }
        (&Method::GET, ["catalog"]) => {
            let (folders, truncated) = access.catalog(&who).await?;
            Ok(reply::json(
                StatusCode::OK,
                &json::catalog(&folders, truncated),
            ))
        }
        _ => Err(ApiError::not_found(&path)),
    }
}

/// The name a request is audited under.
fn call_name(method: &Method, segments: &[&str]) -> &'static str {
    match (method, segments) {
        (_, ["whoami"]) => "DashboardWhoAmI",
        (_, ["agents"] | ["events", "fleet"]) => "DashboardFleet",
        (_, ["executions"] | ["events", "executions"]) => "DashboardExecutions",
        (&Method::POST, ["executions", _, "cancel"]) => "CancelExecution",
        (&Method::POST, ["executions", _, "resume"]) => "ResumeExecution",
        (_, ["executions", _, "logs"]) => "StreamLogs",
        (_, ["executions", _, "rows"]) => "StreamRows",
        (_, ["catalog"]) => "DashboardCatalog",
        _ => "DashboardExecution",
    }
}

/// The principal of the request's session (its token authenticated again).
async fn authenticated(
    web: &Web,
    access: &Access,
    req: &Parts,
    call: &str,
) -> Result<(Principal, String), ApiError> {
    let id = req
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session::from_cookie)
        .map(str::to_string);
    let token = id
        .as_deref()
        .and_then(|id| web.sessions.token(id, Instant::now()));
    let (Some(id), Some(token)) = (id, token) else {
        // Refused (and the refusal aggregated per source) without a read.
        let e = access
            .authenticate(&Credential::Bearer(None), call)
            .await
            .err()
            .unwrap_or_else(|| CoordinatorError::Unauthenticated("log in first".into()));
        return Err(ApiError::from(CoordinatorError::Unauthenticated(format!(
            "{}: log in with an API token",
            e
        ))));
    };
    match access
        .authenticate(&Credential::Bearer(Some(token)), call)
        .await
    {
        Ok(p) => Ok((p, id)),
        Err(e) => {
            // A store that does not answer now is no reason to log out.
            if matches!(
                e,
                CoordinatorError::Unauthenticated(_)
                    | CoordinatorError::TokenRevoked(_)
                    | CoordinatorError::TokenExpired(_)
            ) {
                web.sessions.close(&id);
            }
            Err(ApiError::from(e))
        }
    }
}

/// Gives a session's stream place back when its stream ends.
struct StreamSlot {
    web: Arc<Web>,
    session_id: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.web.sessions.close_stream(&self.session_id);
    }
}

/// What a new event stream of the session checks as it runs; refused when
/// the session has its most streams open.
fn standing(
    web: &Arc<Web>,
    access: Access,
    who: Principal,
    session_id: String,
    folder: Option<String>,
) -> Result<Standing, ApiError> {
    if !web.sessions.open_stream(&session_id) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_STREAMS",
            format!(
                "this session has {} live streams open already; close a page",
                session::MAX_STREAMS
            ),
        ));
    }
    let slot = StreamSlot {
        web: web.clone(),
        session_id: session_id.clone(),
    };
    let web = web.clone();
    Ok(Standing {
        access,
        who,
        token: Arc::new(move || web.sessions.token(&session_id, Instant::now())),
        folder,
        checked: Instant::now(),
        _slot: Some(Box::new(slot)),
    })
}

/// A request's body, at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    Ok(
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "BODY_TIMEOUT",
                    format!(
                        "the request body did not arrive within {} s",
                        BODY_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BODY_TOO_LARGE",
                    format!("a request body holds at most {MAX_BODY} bytes"),
                )
            })?
            .to_bytes(),
    )
}

async fn login(web: &Web, access: &Access, body: &Bytes) -> Result<Response<Body>, ApiError> {
    let token = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_string))
        .ok_or_else(|| ApiError::bad_request("send {\"token\": \"btn_api_…\"}"))?;
    let who = access
        .authenticate(&Credential::Bearer(Some(token.clone())), "DashboardLogin")
        .await?;
    let Some(id) = web.sessions.open(&token, &who.name, Instant::now()) else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "IO_FAILED",
            "no random bytes for a session id",
        ));
    };
    access
        .auth()
        .audit
        .changed(&who.name, "DashboardLogin", "/", "dashboard session opened");
    let mut r = reply::json(StatusCode::OK, &json!({"principal": who.name}));
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

fn logout(web: &Web, req: &Parts) -> Response<Body> {
    for v in req.headers.get_all(header::COOKIE) {
        if let Some(id) = v.to_str().ok().and_then(session::from_cookie) {
            web.sessions.close(id);
        }
    }
    let mut r = reply::empty(StatusCode::NO_CONTENT);
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A page of an execution's children in child order, optionally of one phase.
async fn children(
    access: &Access,
    who: &Principal,
    id: &str,
    q: &HashMap<String, String>,
    call: &str,
) -> Result<Response<Body>, ApiError> {
    let offset = number(q, "offset", 0, usize::MAX)?;
    let limit = number(q, "limit", 100, MAX_CHILDREN)?;
    let phase = param(q, "phase");
    access.on_execution(who, id, Permission::Read, call).await?;
    let (page, total) = access
        .coordinator()
        .children_page(id, offset, limit, phase)
        .await?;
    let page: Vec<serde_json::Value> = page.iter().map(|(c, w)| json::child(c, w)).collect();
    Ok(reply::json(
        StatusCode::OK,
        &json!({"children": page, "total": total}),
    ))
}

/// A succeeded child's rows (at most [`MAX_ROWS`]).
async fn rows(
    web: &Web,
    access: &Access,
    who: &Principal,
    id: &str,
    child: &str,
    call: &str,
) -> Result<Response<Body>, ApiError> {
    if child.len() > MAX_ID {
        return Err(ApiError::bad_request("child path too long"));
    }
    access.child_folder_check(who, id, call).await?;
    let outputs = ChildOutputs::new(access.coordinator().clone(), web.dialer.clone());
    let target = outputs.target(id, child, 0).await?;
    let mut stream = outputs.rows(&target).await?;
    let mut rows = Vec::new();
    let mut truncated = false;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|s| {
            ApiError::from(crate::grpc::child_output::from_agent(&target.agent, &s))
        })?;
        truncated |= batch.truncated;
        for r in batch.rows {
            if rows.len() == MAX_ROWS {
                truncated = true;
                break;
            }
            rows.push(r);
        }
        if batch.end || rows.len() == MAX_ROWS {
            break;
        }
    }
    Ok(reply::json(
        StatusCode::OK,
        &json!({"rows": rows, "truncated": truncated}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(decode("fan%5B3%5D").as_deref(), Some("fan[3]"));
        assert_eq!(decode("a+b").as_deref(), Some("a b"));
        assert_eq!(decode("%2Fetl").as_deref(), Some("/etl"));
        assert_eq!(decode("bad%2"), None);
        assert_eq!(decode("bad%zz"), None);
        assert_eq!(decode("%ff"), None, "not UTF-8");
    }

    #[test]
    fn ids_outside_the_alphabet_are_refused() {
        assert!(checked_id("0193ab-cd").is_ok());
        assert!(checked_id("../x").is_err());
        assert!(checked_id("").is_err());
        assert!(checked_id(&"a".repeat(200)).is_err());
    }

    #[test]
    fn calls_are_audited_under_stable_names() {
        assert_eq!(
            call_name(&Method::POST, &["executions", "x", "cancel"]),
            "CancelExecution"
        );
        assert_eq!(
            call_name(&Method::GET, &["events", "fleet"]),
            "DashboardFleet"
        );
        assert_eq!(
            call_name(&Method::GET, &["executions", "x"]),
            "DashboardExecution"
        );
    }
}
