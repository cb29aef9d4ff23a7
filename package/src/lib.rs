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
//! The skeleton language has two task kinds: `exec` (a process, run on an
//! agent) and `foreach` (fan a child package out over items, run by the
//! coordinator). The model is shaped so that the full language (scripts,
//! `child`, groups, expressions on constraints) adds variants rather than
//! rewriting it.

mod error;
mod interpolate;
mod model;
mod params;
mod parse;

pub use error::PackageError;
pub use interpolate::interpolate;
pub use model::{
    ExecTask, ForeachOver, ForeachTask, Package, ParamType, ParameterDef, RetryPolicy, Task,
    TaskKind, valid_user_name,
};
pub use params::ParamValues;

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
