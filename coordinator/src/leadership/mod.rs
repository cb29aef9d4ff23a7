//! Leadership: which coordinator may write the store, and the fencing token
//! that proves it.
//!
//! A coordinator [`Leadership::campaign`]s until it leads, and gets a
//! [`Term`]: its epoch (strictly greater than every earlier term's, so agents
//! refuse dispatches of a deposed leader with `STALE_EPOCH`) and the key and
//! revision that every commit of the term checks, so that a commit made after
//! the term ended is refused by the store itself (`StoreError::Fenced`) rather
//! than by each writer remembering to ask. A term ends when `Term::lost` is
//! cancelled (lease expired, store unreachable for longer than the lease) or
//! when the coordinator resigns (a commit fenced, an agent said
//! `STALE_EPOCH`); the coordinator then drops its in-memory state and
//! campaigns again — it never exits for that.
//!
//! Two implementations: embedded (one node; the epoch taken with a
//! compare-and-set on `m/epoch`) and etcd (the election API on a lease; the
//! epoch is the leader key's creation revision).

mod contract;
pub mod embedded;
pub mod etcd;

pub use contract::{Leadership, Term};
