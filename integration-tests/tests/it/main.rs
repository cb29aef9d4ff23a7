//! Multi-process integration tests of Baton, run against the real `baton` binary.
//!
//! Each test starts its own coordinator and agents as separate processes (port 0,
//! a temp dir per node), all over mutual TLS with a CA made for the test, and drives
//! them through the CLI (`docs/errors.md` lists its exit codes) and, for the agent's
//! admission edge, through a direct gRPC `StartJob`. Unit tests cannot show that the pieces agree on the wire, that a
//! killed process loses nothing, or that the CLI keeps its promises (exit codes, JSON
//! shapes); these tests do.
//!
//! Build the binary first: `cargo build -p baton-cli`, then
//! `cargo test -p baton-integration-tests`. `BATON_BIN` overrides the binary,
//! `BATON_LOG` (default `info`) the log level of the processes.

mod harness;

mod agent_frozen;
mod agent_loss;
mod agent_processes;
mod bad_input;
mod bench;
mod builder_example;
mod cancel;
mod capacity;
mod catalog;
mod catalog_child;
mod child_dag;
mod cli_frictions;
mod cli_surface;
mod coordinator_restart;
mod dashboard;
mod dashboard_browser;
mod deploy_compose;
mod deploy_kubernetes;
mod deploy_support;
mod deploy_systemd;
mod deploy_yaml;
mod docker_cluster;
mod drain;
mod etcd_store;
mod etl_example;
mod failover_clients;
mod fanout;
mod foreign_report;
mod ha_cluster;
mod hardening;
mod history_check;
mod listing;
mod local;
mod log_format;
mod logs_reconnect;
mod logs_rows;
mod metrics;
mod nested;
mod parent_flow;
mod placement;
mod planning;
mod resume;
mod retention;
mod rpc_matrix;
mod run_as;
mod secrets;
mod security;
mod show_limit;
mod tls;
mod traces;
mod transport;
