//! One module per command group.

pub mod agents;
pub mod bench;
pub mod bench_failover;
pub mod certs;
pub mod context;
pub mod daemons;
pub mod demo;
pub mod duration_arg;
pub mod exec;
pub mod exec_child;
pub mod folder;
pub mod follow;
pub mod package;
pub mod roles;
pub mod run;
pub mod run_local;
pub mod signals;
pub mod token;
pub mod validate;
