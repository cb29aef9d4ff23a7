//! Harness code shared by the integration tests. The multi-process tests of the `baton`
//! binary live in `tests/it/` with their own harness (the local etcd servers the etcd
//! tests start are `baton_coordinator::store::etcd::local`); this library holds what
//! is reused across test binaries:
//!
//! - [`browser`]: headless Chromium over WebDriver in a network namespace of the test,
//!   for tests of web pages served over HTTPS.

pub mod browser;
