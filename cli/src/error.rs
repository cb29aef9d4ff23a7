//! CLI errors: a stable code, a message with a hint, and an exit code.
//!
//! Exit codes: 0 success; 1 the execution failed or was cancelled; 2 invalid
//! input (usage, package, parameters, unknown id); 3 the coordinator is
//! unavailable; 4 any other error; 5 the coordinator is busy (retry later);
//! 6 `baton agent` stopped because the coordinator revoked it.

use std::fmt;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 3;
pub const EXIT_OTHER: u8 = 4;
/// The coordinator is busy (COORDINATOR_BUSY): the same command may work later.
pub const EXIT_BUSY: u8 = 5;
/// `baton agent` stopped because the coordinator revoked it (AGENT_REVOKED): a
/// supervisor should not restart it until the machine is enrolled again.
pub const EXIT_REVOKED: u8 = 6;

#[derive(Debug)]
pub struct CliError {
    pub code: String,
    pub message: String,
    pub exit: u8,
}

impl CliError {
    pub fn new(code: &str, message: impl Into<String>, exit: u8) -> Self {
        CliError {
            code: code.to_string(),
            message: message.into(),
            exit,
        }
    }
    pub fn invalid(code: &str, message: impl Into<String>) -> Self {
        Self::new(code, message, EXIT_INVALID)
    }
    pub fn other(code: &str, message: impl Into<String>) -> Self {
        Self::new(code, message, EXIT_OTHER)
    }
    pub fn unavailable(url: &str, detail: impl fmt::Display) -> Self {
        Self::new(
            "COORDINATOR_UNAVAILABLE",
            format!(
                "cannot reach the coordinator at {url}: {detail}\n  hint: start one with `baton coordinator`, \
                 or point --coordinator / BATON_COORDINATOR at it"
            ),
            EXIT_UNAVAILABLE,
        )
    }

    /// Maps a gRPC status, preferring the server's stable code.
    pub fn from_status(url: &str, s: tonic::Status) -> Self {
        use tonic::Code;
        let server_code = s
            .metadata()
            .get("baton-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let exit = match s.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::OutOfRange => EXIT_INVALID,
            Code::Unavailable | Code::DeadlineExceeded => EXIT_UNAVAILABLE,
            _ => EXIT_OTHER,
        };
        if server_code.is_none() && exit == EXIT_UNAVAILABLE {
            return Self::unavailable(url, s.message());
        }
        if server_code.is_none()
            && matches!(s.code(), Code::Unknown | Code::Cancelled | Code::Internal)
        {
            // Baton's servers put a code on every error they return; a status
            // without one came from the transport: typically plaintext spoken to
            // a TLS port (or the reverse), or a handshake the server refused.
            return Self::unavailable(
                url,
                "the connection broke at once; a coordinator serves mutual TLS unless started with \
                 --insecure, so use https:// (or http:// for an --insecure one)",
            );
        }
        if server_code.as_deref() == Some("COORDINATOR_BUSY") {
            let secs = s
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(30);
            return CliError {
                code: "COORDINATOR_BUSY".into(),
                message: format!("busy, retry after {secs} s: {}", s.message()),
                exit: EXIT_BUSY,
            };
        }
        if server_code.as_deref() == Some("NO_LEADER") {
            return CliError {
                code: "NO_LEADER".into(),
                message: format!(
                    "{}\n  hint: list every coordinator in --coordinator / BATON_COORDINATOR \
                     (comma-separated), check that they reach their store, or wait longer \
                     with --failover-wait SECS",
                    s.message()
                ),
                exit: EXIT_UNAVAILABLE,
            };
        }
        let code = server_code.unwrap_or_else(|| format!("GRPC_{:?}", s.code()).to_uppercase());
        CliError {
            code,
            message: s.message().to_string(),
            exit,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<baton_package::PackageError> for CliError {
    fn from(e: baton_package::PackageError) -> Self {
        CliError::invalid(e.code(), e.to_string())
    }
}

impl From<baton_coordinator::CoordinatorError> for CliError {
    fn from(e: baton_coordinator::CoordinatorError) -> Self {
        let exit = match e.code() {
            "INVALID_REQUEST" | "EXECUTION_NOT_FOUND" => EXIT_INVALID,
            c if c.starts_with("PACKAGE_")
                || c.starts_with("PARAM_")
                || c.starts_with("TEMPLATE_") =>
            {
                EXIT_INVALID
            }
            _ => EXIT_OTHER,
        };
        CliError::new(e.code(), e.to_string(), exit)
    }
}
