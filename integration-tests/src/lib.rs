//! Multi-process tests live in `tests/it/`; this library is empty (the
//! local etcd servers the etcd tests start are `baton_coordinator::store::etcd::local`).
