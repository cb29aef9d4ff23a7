//! How the CLI reads its environment: through a lookup function, so that the
//! configuration layers and contexts can be tested without setting a variable
//! of the test process.

use std::ffi::OsString;

/// Reads an environment variable (a parameter so that tests never set one).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;
