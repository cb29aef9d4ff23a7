//! What the dashboard answers with: JSON bodies, errors with Baton's stable
//! codes mapped onto HTTP statuses, server-sent event streams, and the
//! security headers every answer carries.

use std::convert::Infallible;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use tokio_stream::{Stream, StreamExt};

use crate::error::CoordinatorError;

/// The body of every answer.
pub type Body = BoxBody<Bytes, Infallible>;
/// A stream of server-sent events, each already framed (`event:`/`data:`).
pub type Events = Pin<Box<dyn Stream<Item = Bytes> + Send + Sync>>;

/// The content security policy of every answer: the page's own script and
/// style only, no inline code, no frames, requests to this origin only.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// An error as the dashboard's API reports it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no such page: {what}"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> ApiError {
        let status = match crate::grpc::error_status::status_code(&e) {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::AlreadyExists | tonic::Code::Aborted => StatusCode::CONFLICT,
            tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
        }
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// Headers every answer carries.
fn secured(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    r
}

fn build(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secured(r)
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    build(
        status,
        "application/json",
        full(serde_json::to_vec(value).unwrap_or_default()),
    )
}

/// An error answer: `{"code": …, "message": …}`.
pub fn error(e: &ApiError) -> Response<Body> {
    json(
        e.status,
        &serde_json::json!({"code": e.code, "message": e.message}),
    )
}

/// An embedded asset.
pub fn asset(content_type: &'static str, text: &'static str) -> Response<Body> {
    build(StatusCode::OK, content_type, full(text))
}

/// No content.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    secured(r)
}

/// A stream of server-sent events.
pub fn events(stream: Events) -> Response<Body> {
    let frames = stream.map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = build(
        StatusCode::OK,
        "text/event-stream",
        BodyExt::boxed(StreamBody::new(frames)),
    );
    // Proxies must pass events through as they come.
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// One server-sent event: `data` is written line by line (an event's data
/// may not hold a bare newline).
pub fn event(name: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + name.len() + 16);
    out.push_str("event: ");
    out.push_str(name);
    out.push('\n');
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_s_data_is_split_at_newlines() {
        assert_eq!(
            event("log", "a\nb\r\nc"),
            Bytes::from("event: log\ndata: a\ndata: b\ndata: c\n\n")
        );
    }

    #[test]
    fn domain_errors_keep_their_code_and_get_an_http_status() {
        let e = ApiError::from(CoordinatorError::PermissionDenied("no".into()));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::FORBIDDEN, "PERMISSION_DENIED")
        );
        let e = ApiError::from(CoordinatorError::ExecutionNotFound("x".into()));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = ApiError::from(CoordinatorError::Unauthenticated("who".into()));
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    }
}
