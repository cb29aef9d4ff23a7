//! The Baton package model.
//!
//! A package is a versioned, declarative unit of work written in TOML: typed
//! parameters, tasks and the precedence between them. This crate parses a file
//! into a typed [`Package`] (errors name file, line and column), binds run-time
//! parameter values ([`Package::bind`]), expands `foreach` items and
//! interpolates `${params.NAME}` / `${item}` templates. It has no IO and no
//! async: the coordinator runs parent packages with it, agents run child
//! packages with it.
//!
//! The language: typed parameters (`string`, `int`, `bool`, `float`, `list`,
//! `secret`); tasks `exec`, `script`, `child`, `foreach` (over a range, a
//! list, a parameter or the rows of an earlier task), `group` and `noop`;
//! precedence constraints on success, failure or completion with `when`
//! expressions ([`expr`]); retries with backoff, tolerated failures; outputs
//! that later tasks read (`${tasks.T.outputs.K}`). [`Engine`] is the pure
//! state machine that runs a package's control flow; [`PackageBuilder`] builds
//! the same model in Rust and [`Package::to_toml`] writes it back.

mod builder;
mod engine;
mod error;
pub mod expr;
mod interpolate;
mod items;
mod model;
mod order;
mod param_values;
mod params;
mod parse;
mod policy;
mod reference;
mod sensitive;
mod to_toml;

pub use builder::{PackageBuilder, ParamBuilder, TaskBuilder};
pub use engine::{
    Engine, EngineError, EngineSnapshot, PackageOutcome, TaskOutcome, TaskSnapshot, TaskState,
};
pub use error::PackageError;
pub use expr::{Condition, ExprError};
pub use interpolate::{interpolate, interpolate_in, template_refs};
pub use model::{
    After, CATALOG_PREFIX, ChildRef, ChildTask, ExecTask, ForeachOver, ForeachTask, GroupTask,
    MAX_FOREACH_ITEMS, MAX_TASKS, On, Package, ParamType, ParameterDef, SCRIPT_SHELL, ScriptTask,
    Task, TaskKind, valid_user_name,
};
pub use param_values::ParamValues;
pub use policy::{ChildrenOnCancel, MaxFailures, RetryPolicy};
pub use reference::{Outputs, Ref, Scope};

use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of a package's content: its identity on the wire.
pub fn content_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_hex_sha256() {
        assert_eq!(
            content_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
