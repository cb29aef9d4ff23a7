//! One child job on this agent, from its plan to its report, in layers that
//! import downwards only:
//!
//! - [`run`]: one job's run — its scratch directory, the DAG, what it left
//!   (tails, outputs, kept rows), its [`run::JobReport`];
//! - [`dag`]: drives the child package's tasks through the package engine
//!   (precedence, `when`, skips, groups, retries, outputs between tasks);
//! - [`attempt`]: one attempt of a task (a retry's delay, the task's
//!   environment, what its exit means) and what a job's processes share;
//! - [`process`]: the process layer — start one command in a process group of its
//!   own with the environment, directory and user given, feed its pipes to the
//!   captures, supervise the group (timeout, deadline, cancel: SIGTERM, grace,
//!   SIGKILL) and report its exit;
//! - [`capture`]: stdout and stderr, masked, to capped log files with tails;
//! - [`files`]: what the agent reads once a task or the job ended (`$BATON_OUTPUT`,
//!   the rows kept) and the removal of the raw files;
//! - [`leftovers`]: the journal of running process groups, so that none outlives
//!   the agent;
//! - [`layout`]: the scratch directory — where it is, its file names, how it is
//!   made (and reused from a pool), how the agent opens what a job wrote there;
//!   [`crate::logs`] and [`crate::rows`] read a job's files through it alone;
//! - [`plan`]: the plan types ([`plan::JobPlan`], [`plan::ExecStep`],
//!   [`plan::Step`]) and how a package and a ready task become them;
//! - [`cancel`]: a job's cancel handle and its reasons.
//!
//! This module only declares them: its children name each other (`super::x`),
//! never this file.

pub mod attempt;
pub mod cancel;
pub mod capture;
pub mod dag;
pub mod files;
pub mod layout;
pub mod leftovers;
pub mod plan;
pub mod process;
pub mod run;
