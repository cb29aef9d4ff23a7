//! Errors of the package crate, each with a stable symbolic code.

/// Everything that can be wrong with a package or its parameters.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PackageError {
    /// The file is not valid TOML or does not match the schema.
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file parses but is inconsistent (missing task, cycle, bad range).
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A run-time parameter that the package does not declare.
    #[error("unknown parameter '{name}' (the package declares: {declared})")]
    UnknownParameter { name: String, declared: String },
    /// A parameter value of the wrong type.
    #[error("parameter '{name}': {message}")]
    InvalidParameter { name: String, message: String },
    /// A required parameter with no value and no default.
    #[error("parameter '{name}' is required and has no default")]
    MissingParameter { name: String },
    /// A template that cannot be expanded.
    #[error("template '{template}': {message}")]
    Template { template: String, message: String },
    /// More tasks than one package may hold ([`crate::MAX_TASKS`]).
    #[error(
        "{origin}: the package has {tasks} tasks; the limit is {limit} per package \
         (split it into child packages)"
    )]
    TooManyTasks {
        origin: String,
        tasks: usize,
        limit: usize,
    },
}

impl PackageError {
    /// The stable symbolic code (see `docs/errors.md`).
    pub fn code(&self) -> &'static str {
        match self {
            PackageError::Parse { .. } => "PACKAGE_PARSE",
            PackageError::Invalid { .. } => "PACKAGE_INVALID",
            PackageError::UnknownParameter { .. } => "PARAM_UNKNOWN",
            PackageError::InvalidParameter { .. } => "PARAM_INVALID",
            PackageError::MissingParameter { .. } => "PARAM_REQUIRED",
            PackageError::Template { .. } => "TEMPLATE_INVALID",
            PackageError::TooManyTasks { .. } => "TOO_MANY_TASKS",
        }
    }
}
