//! etcd's failures as store errors, classified by what a caller can do:
//! no quorum, a lost connection or a timeout may pass (`Unavailable`); a
//! request over etcd's limits never will (`TooLarge`); anything else is
//! `Backend`.

use crate::store::kv::StoreError;

/// What kind of failure an etcd error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// No leader, no connection, a timeout: the same call may succeed later.
    Unavailable,
    /// The request exceeds `--max-txn-ops` or `--max-request-bytes`.
    TooLarge,
    /// A response larger than the client decodes: read less at once.
    ResponseTooLarge,
    /// Refused for good (permissions, a malformed request, a full database).
    Backend,
}

/// Classifies an etcd client error.
pub(crate) fn kind(e: &etcd_client::Error) -> Kind {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => {
            let msg = s.message();
            match s.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                    Kind::Unavailable
                }
                Code::InvalidArgument
                    if msg.contains("too many operations") || msg.contains("too large") =>
                {
                    Kind::TooLarge
                }
                Code::ResourceExhausted | Code::OutOfRange
                    if msg.contains("decoded message length too large") =>
                {
                    Kind::ResponseTooLarge
                }
                Code::ResourceExhausted if msg.contains("larger than max") => Kind::TooLarge,
                // "database space exceeded" needs an operator (compact, defrag, quota).
                Code::ResourceExhausted if msg.contains("space exceeded") => Kind::Backend,
                // "too many requests": etcd sheds load; it passes.
                Code::ResourceExhausted => Kind::Unavailable,
                Code::Unknown
                    if msg.contains("transport")
                        || msg.contains("connect")
                        || msg.contains("broken pipe")
                        || msg.contains("h2 protocol") =>
                {
                    Kind::Unavailable
                }
                _ => Kind::Backend,
            }
        }
        E::TransportError(_)
        | E::IoError(_)
        | E::WatchError(_)
        | E::LeaseKeepAliveError(_)
        | E::ElectError(_) => Kind::Unavailable,
        _ => Kind::Backend,
    }
}

/// Whether the request never left this process: the connection to the member
/// the client picked was refused. etcd's client spreads requests over every
/// endpoint, a dead one included, so such a call is made again at once (a
/// commit too: it cannot have applied).
pub(crate) fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("connect error")
        }
        _ => false,
    }
}

/// Attempts of a call that was not sent (see [`not_sent`]).
pub(crate) const NOT_SENT_ATTEMPTS: u32 = 8;

/// The store error of a failed read or of a call that writes nothing
/// (`TooLarge` cannot apply to those: it reads as a backend failure).
pub(crate) fn store_error(what: &str, e: etcd_client::Error) -> StoreError {
    match kind(&e) {
        Kind::Unavailable => StoreError::Unavailable(format!("etcd {what}: {e}")),
        _ => StoreError::Backend(format!("etcd {what}: {e}")),
    }
}

/// The error of a call that got no answer within `timeout`.
pub(crate) fn timed_out(what: &str, timeout: std::time::Duration) -> StoreError {
    StoreError::Unavailable(format!(
        "etcd {what}: no answer within {} ms",
        timeout.as_millis()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    #[test]
    fn etcd_errors_are_classified_by_what_a_caller_can_do() {
        use tonic::Code;
        for (e, want) in [
            (
                status(Code::Unavailable, "etcdserver: no leader"),
                Kind::Unavailable,
            ),
            (
                status(Code::Unavailable, "etcdserver: request timed out"),
                Kind::Unavailable,
            ),
            (
                status(Code::Unavailable, "tcp connect error: Connection refused"),
                Kind::Unavailable,
            ),
            (
                status(Code::DeadlineExceeded, "deadline"),
                Kind::Unavailable,
            ),
            (
                status(
                    Code::InvalidArgument,
                    "etcdserver: too many operations in txn request",
                ),
                Kind::TooLarge,
            ),
            (
                status(Code::InvalidArgument, "etcdserver: request is too large"),
                Kind::TooLarge,
            ),
            (
                status(
                    Code::ResourceExhausted,
                    "grpc: received message larger than max (2 vs. 1)",
                ),
                Kind::TooLarge,
            ),
            (
                status(
                    Code::OutOfRange,
                    "Error, decoded message length too large: found 9 bytes",
                ),
                Kind::ResponseTooLarge,
            ),
            (
                status(Code::ResourceExhausted, "etcdserver: too many requests"),
                Kind::Unavailable,
            ),
            (
                status(
                    Code::ResourceExhausted,
                    "etcdserver: mvcc: database space exceeded",
                ),
                Kind::Backend,
            ),
            (
                status(Code::PermissionDenied, "etcdserver: permission denied"),
                Kind::Backend,
            ),
            (
                status(
                    Code::InvalidArgument,
                    "etcdserver: duplicate key given in txn request",
                ),
                Kind::Backend,
            ),
            (etcd_client::Error::InvalidArgs("x".into()), Kind::Backend),
        ] {
            assert_eq!(kind(&e), want, "{e}");
        }
        assert!(store_error("get", status(Code::Unavailable, "no leader")).retryable());
        assert!(!store_error("get", status(Code::PermissionDenied, "no")).retryable());
        assert!(not_sent(&status(Code::Unavailable, "tcp connect error")));
        assert!(!not_sent(&status(
            Code::Unavailable,
            "etcdserver: no leader"
        )));
        assert!(timed_out("commit", std::time::Duration::from_secs(1)).retryable());
    }
}
