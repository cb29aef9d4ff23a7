//! Which store backend a coordinator uses (`baton coordinator --store`).

use std::path::PathBuf;

/// The store backend and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// One redb file in the data directory (`coordinator.redb`): the
    /// zero-setup default, one coordinator.
    #[default]
    Embedded,
    /// An etcd cluster shared by any number of coordinators (one leads).
    Etcd(EtcdConfig),
}

/// How to reach etcd (`--store etcd://h1:2379,h2:2379 --etcd-ca … --etcd-cert … --etcd-key …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// Mutual TLS to etcd; `None` is plaintext, allowed to loopback only.
    pub tls: Option<EtcdTls>,
    /// Every key Baton writes starts with this (several clusters may share one etcd).
    pub key_prefix: String,
}

/// Files of the mutual TLS connection to etcd (its own CA, not Baton's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}
