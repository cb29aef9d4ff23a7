//! The etcd backend against real etcd servers (`store::etcd::local`);
//! each test prints why it is skipped when `etcd` is not installed.

use std::time::{Duration, Instant};

use crate::store::etcd::local::EtcdCluster;

use super::*;
use crate::store::config::EtcdConfig;
use crate::store::kv::{Precondition, WatchEvent};

fn config(cluster: &EtcdCluster, prefix: &str) -> EtcdConfig {
    let mut c = EtcdConfig::new(cluster.endpoints());
    c.key_prefix = prefix.to_string();
    c.request_timeout = Duration::from_secs(2);
    c.connect_patience = Duration::from_secs(10);
    c
}

fn put(key: &str, pre: Precondition) -> Op {
    Op::Put {
        key: key.into(),
        value: key.as_bytes().to_vec(),
        pre,
    }
}

#[tokio::test]
async fn etcd_store_passes_conformance() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let store = EtcdStore::open(&config(&cluster, "/conf/")).await.unwrap();
    assert_eq!(
        store.limits(),
        Limits {
            max_ops_per_commit: Some(124),
            max_bytes_per_commit: Some(1_572_864 - 124 * (3 * 6 + BYTES_MARGIN_PER_OP)),
        }
    );
    crate::store::conformance::run_all(&store).await;
}

#[tokio::test]
async fn etcd_store_with_small_limits_passes_conformance_and_counts_compares_apart() {
    let Some(cluster) =
        EtcdCluster::start_with(1, &["--max-txn-ops", "16", "--max-request-bytes", "65536"])
    else {
        return;
    };
    let mut cfg = config(&cluster, "/small/");
    cfg.max_txn_ops = 16;
    cfg.max_request_bytes = 65536;
    let store = EtcdStore::open(&cfg).await.unwrap();
    let max = store.limits().max_ops_per_commit.unwrap();
    assert_eq!(max, 12);
    crate::store::conformance::run_all(&store).await;
    // A batch at the limit whose every operation has a precondition: etcd
    // counts the compares, the writes and the failure reads apart.
    let batch: Vec<Op> = (0..max)
        .map(|i| put(&format!("pre/{i}"), Precondition::Absent))
        .collect();
    let rev = store.commit(batch.clone()).await.unwrap();
    assert_eq!(store.range("pre/").await.unwrap().len(), max);
    let err = store.commit(batch).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref key } if key == "pre/0"),
        "{err}"
    );
    assert_eq!(store.get("pre/3").await.unwrap().unwrap().mod_revision, rev);
}

#[tokio::test]
async fn a_batch_etcd_refuses_as_too_large_is_too_large() {
    let Some(cluster) = EtcdCluster::start_with(1, &["--max-txn-ops", "8"]) else {
        return;
    };
    // The coordinator believes etcd's defaults: etcd itself refuses.
    let store = EtcdStore::open(&config(&cluster, "/big/")).await.unwrap();
    let batch: Vec<Op> = (0..20)
        .map(|i| put(&format!("k/{i}"), Precondition::Any))
        .collect();
    let err = store.commit(batch).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { ops: 20, .. }), "{err}");
    assert!(!err.retryable());
    assert!(store.range("k/").await.unwrap().is_empty());
}

#[tokio::test]
async fn prefixes_keep_clusters_apart_and_reads_page() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let a = EtcdStore::open(&config(&cluster, "/a/")).await.unwrap();
    let b = EtcdStore::new(connect(&config(&cluster, "/ab/")).await.unwrap());
    // More keys than a page, in batches the limits take.
    let keys: Vec<String> = (0..700).map(|i| format!("e/{i:04}")).collect();
    for chunk in keys.chunks(100) {
        a.commit(chunk.iter().map(|k| put(k, Precondition::Absent)).collect())
            .await
            .unwrap();
    }
    b.commit(vec![put("e/0000", Precondition::Absent)])
        .await
        .unwrap();
    let got: Vec<String> = a
        .range("e/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(got, keys);
    assert_eq!(b.range("").await.unwrap().len(), 1);
    let odd = a
        .scan(
            "e/",
            Box::new(|kv: &KeyValue| kv.key.ends_with('1') || kv.key.ends_with('3')),
        )
        .await
        .unwrap();
    assert_eq!(odd.len(), 140);
    assert_eq!(a.get("e/0007").await.unwrap().unwrap().value, b"e/0007");
    // A delete by prefix of a store leaves the other's keys alone.
    a.commit(vec![Op::DeletePrefix {
        prefix: "e/".into(),
    }])
    .await
    .unwrap();
    assert!(a.range("").await.unwrap().is_empty());
    assert_eq!(b.range("e/").await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_lags() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let store = EtcdStore::open(&config(&cluster, "/w/")).await.unwrap();
    let r1 = store
        .commit(vec![put("x/1", Precondition::Any)])
        .await
        .unwrap();
    let r2 = store
        .commit(vec![put("x/2", Precondition::Any)])
        .await
        .unwrap();
    store
        .etcd()
        .client
        .kv_client()
        .compact(r2 as i64, None)
        .await
        .unwrap();
    let mut w = store.watch("x/", Some(r1 - 1));
    let first = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_stream::StreamExt::next(&mut w),
    )
    .await
    .unwrap();
    assert!(
        matches!(first, Some(Err(StoreError::Lagged(_)))),
        "{first:?}"
    );
    // From the compaction on, the history is there.
    let mut w = store.watch("x/", Some(r2 - 1));
    let ev = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_stream::StreamExt::next(&mut w),
    )
    .await
    .unwrap();
    assert!(
        matches!(ev, Some(Ok(WatchEvent::Put(ref kv))) if kv.key == "x/2" && kv.mod_revision == r2),
        "{ev:?}"
    );
}

#[tokio::test]
async fn size_is_etcd_s_database_size() {
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let store = EtcdStore::open(&config(&cluster, "/s/")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.size_bytes() == 0 {
        assert!(Instant::now() < deadline, "no database size within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !store.compact().await.unwrap(),
        "nothing old enough to compact"
    );
}

#[tokio::test]
async fn an_unreachable_etcd_fails_the_start_as_unavailable() {
    // Nothing listens there (the port was just free).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = EtcdConfig::new(vec![format!("127.0.0.1:{port}")]);
    cfg.request_timeout = Duration::from_millis(500);
    cfg.connect_patience = Duration::from_secs(1);
    let started = Instant::now();
    let err = EtcdStore::open(&cfg).await.err().unwrap();
    assert_eq!(err.code(), "STORE_UNAVAILABLE", "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn plaintext_beyond_loopback_is_refused_before_connecting() {
    let cfg = EtcdConfig::new(vec!["127.0.0.1:2379".into(), "192.0.2.7:2379".into()]);
    let err = EtcdStore::open(&cfg).await.err().unwrap();
    assert_eq!(err.code(), "PLAINTEXT_NOT_LOOPBACK", "{err}");
    assert!(err.to_string().contains("--etcd-ca"), "{err}");
}

/// Commits go on with one member of three down; with two down they fail as
/// `Unavailable` within a bounded time and apply nothing; with one back they
/// go on again.
#[tokio::test]
async fn three_members_survive_one_loss_and_recover_from_two() {
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let store = EtcdStore::open(&config(&cluster, "/q/")).await.unwrap();
    let mut n = 0;
    let mut commit = || {
        n += 1;
        store.commit(vec![put(&format!("k/{n}"), Precondition::Absent)])
    };
    commit().await.unwrap();
    cluster.kill(0);
    // The client may first pick the dead member: a commit may fail once as
    // unavailable, then goes on.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match commit().await {
            Ok(_) => break,
            Err(e) if e.retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("a commit with 2 members of 3 failed: {e}"),
        }
    }
    for _ in 0..5 {
        commit().await.unwrap();
    }
    cluster.kill(1);
    // Every commit fails, as unavailable, within the request timeout (plus
    // slack for a loaded machine): the one sent to the member just killed at
    // once (broken connection), those sent to the survivor once it sees it has
    // no leader, or at the timeout.
    let timeout = store.etcd().config.request_timeout;
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let err = commit().await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(
            took < timeout + Duration::from_secs(3),
            "took {took:?}: {err}"
        );
        slowest = slowest.max(took);
    }
    eprintln!("no quorum: 5 commits failed as unavailable, the slowest in {slowest:?}");
    let err = store.get("k/1").await.unwrap_err();
    assert!(err.retryable(), "{err}");
    cluster.restart(1);
    let back = Instant::now();
    let deadline = back + Duration::from_secs(30);
    loop {
        match commit().await {
            Ok(_) => break,
            Err(e) if e.retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("no commit within 30 s of a member's return: {e}"),
        }
    }
    eprintln!(
        "quorum back: first commit {:?} after the restart",
        back.elapsed()
    );
    // Every commit that said it applied did; those refused may or may not
    // have (unknown outcome), never twice: each key is there at most once.
    let keys = store.range("k/").await.unwrap();
    assert!(keys.len() >= 8, "{}", keys.len());
}

/// A CA, a server certificate for 127.0.0.1 (etcd 3.4 wants client usage
/// on it too) and a client certificate, as PEM files in `dir`.
fn tls_files(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |sans: Vec<String>, usages: Vec<Eku>| {
        let mut p = CertificateParams::new(sans).unwrap();
        p.extended_key_usages = usages;
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        vec![Eku::ServerAuth, Eku::ClientAuth],
    );
    let client = leaf(vec!["coordinator".into()], vec![Eku::ClientAuth]);
    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", server.0),
        ("server.key", server.1),
        ("client.pem", client.0),
        ("client.key", client.1),
    ];
    files.map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    })
}

#[tokio::test]
async fn mutual_tls_to_etcd() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let [ca, server_cert, server_key, client_cert, client_key] = tls_files(dir.path());
    let Some(cluster) = EtcdCluster::start_tls(crate::store::etcd::local::ServerTls {
        ca: &ca,
        cert: &server_cert,
        key: &server_key,
    }) else {
        return;
    };
    let mut cfg = config(&cluster, "/tls/");
    cfg.tls = Some(crate::store::config::EtcdTls {
        ca,
        cert: client_cert,
        key: client_key,
    });
    let store = EtcdStore::open(&cfg).await.unwrap();
    let rev = store
        .commit(vec![put("k", Precondition::Absent)])
        .await
        .unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().mod_revision, rev);
    // Plaintext gets no answer from it: the start gives up in time.
    let mut anonymous = cfg.clone();
    anonymous.tls = None;
    anonymous.connect_patience = Duration::from_secs(1);
    let err = EtcdStore::open(&anonymous).await.err().unwrap();
    assert_eq!(err.code(), "STORE_UNAVAILABLE", "{err}");
}
