//! Multi-process tests live in `tests/it/`; `etcd` starts real etcd servers
//! for them and for the coordinator's etcd tests.

pub mod etcd;
