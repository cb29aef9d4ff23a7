//! Sealing: round trips, tampering, binding to the record, the key file, and
//! what reaches the store.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use super::key::base64;
use super::*;
use crate::records::{ExecutionState, execution_key};
use crate::store::embedded::EmbeddedStore;

fn key() -> SealingKey {
    SealingKey::generate().unwrap()
}

#[test]
fn seal_then_open_round_trips() {
    let k = key();
    let aad = param_aad("e1", "token");
    for plain in ["", "s3cr3t", "päss wörd ✓", &"x".repeat(10_000)] {
        let sealed = k.seal(plain, &aad).unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX), "{sealed}");
        if !plain.is_empty() {
            assert!(!sealed.contains(plain));
        }
        assert_eq!(k.open(&sealed, &aad).unwrap(), plain);
    }
    // A fresh nonce every time: equal values do not look equal at rest.
    assert_ne!(k.seal("same", &aad).unwrap(), k.seal("same", &aad).unwrap());
}

#[test]
fn any_altered_byte_is_detected() {
    let k = key();
    let aad = param_aad("e1", "token");
    let sealed = k.seal("s3cr3t-value", &aad).unwrap();
    let raw = base64::decode(&sealed[SEALED_PREFIX.len()..]).unwrap();
    for i in 0..raw.len() {
        let mut bad = raw.clone();
        bad[i] ^= 0x01;
        let text = format!("{SEALED_PREFIX}{}", base64::encode(&bad));
        let e = k.open(&text, &aad).unwrap_err();
        assert_eq!(e.code(), "SECRET_UNSEALABLE", "byte {i}");
    }
    let mut short = raw.clone();
    short.pop();
    let text = format!("{SEALED_PREFIX}{}", base64::encode(&short));
    assert!(k.open(&text, &aad).is_err());
}

#[test]
fn a_value_opens_only_for_its_record_and_name() {
    let k = key();
    let sealed = k.seal("s3cr3t", &param_aad("e1", "token")).unwrap();
    for (exec, name) in [
        ("e2", "token"),
        ("e1", "other"),
        ("e1token", ""),
        ("", "e1token"),
    ] {
        let e = k.open(&sealed, &param_aad(exec, name)).unwrap_err();
        assert_eq!(e.code(), "SECRET_UNSEALABLE");
    }
}

#[test]
fn another_key_cannot_open() {
    let (a, b) = (key(), key());
    assert_ne!(a.id(), b.id());
    let aad = param_aad("e1", "token");
    let sealed = a.seal("s3cr3t", &aad).unwrap();
    let e = b.open(&sealed, &aad).unwrap_err();
    assert!(e.to_string().contains("wrong key"), "{e}");
    assert!(!e.to_string().contains(&sealed));
}

#[test]
fn malformed_values_are_refused_without_quoting_them() {
    let k = key();
    let aad = param_aad("e1", "token");
    for text in [
        "s3cr3t-plain",
        "sealed:v1:",
        "sealed:v1:not base64!",
        "sealed:v1:AAAA",
        "sealed:v2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let e = k.open(text, &aad).unwrap_err();
        assert_eq!(e.code(), "SECRET_UNSEALABLE", "{text}");
        assert!(!e.to_string().contains(text), "{e}");
    }
}

#[test]
fn debug_shows_only_the_key_id() {
    let k = key();
    assert_eq!(
        format!("{k:?}"),
        format!("SealingKey {{ id: {:?} }}", k.id())
    );
    assert_eq!(k.id().len(), 16);
}

#[test]
fn base64_matches_rfc_4648_and_is_canonical() {
    for (plain, text) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64::encode(plain.as_bytes()), text);
        assert_eq!(base64::decode(text).unwrap(), plain.as_bytes());
    }
    for bad in ["Zg=", "Zh==", "Zm9=", "Z===", "Zg==Zg==", "Zm9v\n", "Zm-v"] {
        assert!(base64::decode(bad).is_none(), "{bad}");
    }
}

proptest::proptest! {
    #[test]
    fn base64_round_trips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        proptest::prop_assert_eq!(base64::decode(&base64::encode(&data)), Some(data));
    }
}

#[test]
fn the_key_file_is_created_0600_and_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(KEY_FILE);
    let created = create_key_file(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), KEY_LEN as u64);
    let bytes = std::fs::read(&path).unwrap();
    let again = read_key_file(&path).unwrap().unwrap();
    assert_eq!(again.id(), created.id());
    let aad = param_aad("e", "p");
    assert_eq!(
        again.open(&created.seal("v", &aad).unwrap(), &aad).unwrap(),
        "v"
    );
    let e = create_key_file(&path).unwrap_err();
    assert_eq!(e.code(), "SECRET_KEY_INVALID");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "an existing key was replaced"
    );
    assert!(!path.with_extension("key.tmp").exists());
    assert!(read_key_file(&dir.path().join("absent")).unwrap().is_none());
}

#[test]
fn a_bad_key_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    for len in [0, 16, 31, 33, 64] {
        let path = dir.path().join(format!("k{len}"));
        std::fs::write(&path, vec![7u8; len]).unwrap();
        let e = read_key_file(&path).unwrap_err();
        assert_eq!(e.code(), "SECRET_KEY_INVALID");
        assert!(e.to_string().contains(&format!("holds {len} bytes")), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; len]);
    }
    // Unreadable (a directory stands in for a file we may not read: tests may run as root).
    let path = dir.path().join("kdir");
    std::fs::create_dir(&path).unwrap();
    let e = read_key_file(&path).unwrap_err();
    assert_eq!(e.code(), "SECRET_KEY_INVALID");
    assert!(e.to_string().contains("cannot be read"), "{e}");
}

#[tokio::test]
async fn load_creates_the_key_once_and_holds_the_store_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("coordinator.redb")).unwrap();
    let path = dir.path().join(KEY_FILE);
    let first = load(dir.path(), &store).await.unwrap();
    assert!(path.exists());
    let stored = store.get(KEY_ID_KEY).await.unwrap().unwrap();
    assert_eq!(stored.value, first.id().as_bytes());
    assert_eq!(load(dir.path(), &store).await.unwrap().id(), first.id());

    // Missing while the store expects a key: refused, and no new key is made.
    let original = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let e = load(dir.path(), &store).await.unwrap_err();
    assert_eq!(e.code(), "SECRET_KEY_INVALID");
    assert!(e.to_string().contains("missing"), "{e}");
    assert!(!path.exists(), "a replacement key was created");

    // Another key: refused, and left as it is.
    std::fs::write(&path, [9u8; KEY_LEN]).unwrap();
    let e = load(dir.path(), &store).await.unwrap_err();
    assert_eq!(e.code(), "SECRET_KEY_INVALID");
    assert!(e.to_string().contains(first.id()), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), [9u8; KEY_LEN]);

    std::fs::write(&path, &original).unwrap();
    assert_eq!(load(dir.path(), &store).await.unwrap().id(), first.id());
}

const PARENT: &str = "name='p'\n[parameters.token]\ntype='string'\nsensitive=true\nrequired=true\n\
    [parameters.region]\ntype='string'\ndefault='eu'\n\
    [tasks.fan]\nforeach={items=['a','b']}\nchild='c.toml'\n\
    params={token='${params.token}', shard='${item}'}\n";
const CHILD: &str = "name='c'\n[parameters.token]\ntype='string'\nsensitive=true\n\
    [parameters.shard]\ntype='string'\n[tasks.run]\nexec=['sh','-c','test -n \"$BATON_PARAM_TOKEN\"']\n";

fn bundle() -> BTreeMap<String, String> {
    [
        ("p.toml".to_string(), PARENT.to_string()),
        ("c.toml".to_string(), CHILD.to_string()),
    ]
    .into()
}

async fn start_coordinator(dir: &Path) -> (crate::Running, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = crate::CoordinatorConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    let running = crate::start(config, listener, shutdown.clone())
        .await
        .unwrap();
    (running, shutdown)
}

async fn stop(running: crate::Running, shutdown: tokio_util::sync::CancellationToken) {
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

/// The store-level promise: after starting an execution with a sensitive
/// parameter, the store file holds it only sealed; a restart opens it again.
#[tokio::test]
async fn the_store_holds_sensitive_values_only_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
    let (running, shutdown) = start_coordinator(dir.path()).await;
    let id = running
        .coordinator()
        .unwrap()
        .start(
            "p.toml".into(),
            bundle(),
            [
                ("token".to_string(), secret.clone()),
                ("region".to_string(), "us-west".to_string()),
            ]
            .into(),
            "/".to_string(),
        )
        .await
        .unwrap();
    stop(running, shutdown).await;

    let bytes = std::fs::read(dir.path().join("coordinator.redb")).unwrap();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(secret.as_bytes()),
        "the store file holds the plaintext"
    );
    assert!(
        contains(SEALED_PREFIX.as_bytes()),
        "no sealed value in the store"
    );
    assert!(
        contains(b"us-west"),
        "non-sensitive values are stored as given"
    );

    // The record holds the sealed value, bound to this execution.
    let store = EmbeddedStore::open(&dir.path().join("coordinator.redb")).unwrap();
    let kv = store.get(&execution_key(&id)).await.unwrap().unwrap();
    let mut rec: ExecutionRecord = serde_json::from_slice(&kv.value).unwrap();
    // Which parameters are sensitive is in the package: its text is a blob.
    crate::bundles::load(&store, &mut rec).await.unwrap();
    assert!(rec.params["token"].starts_with(SEALED_PREFIX));
    assert_eq!(rec.params["region"], "us-west");
    let key = read_key_file(&dir.path().join(KEY_FILE)).unwrap().unwrap();
    assert_eq!(open_params(&key, &rec).unwrap()["token"], secret);

    // A copy of the sealed value in another record does not open there.
    let mut copy = rec.clone();
    copy.id = format!("{}0", rec.id);
    copy.params = rec.params.clone();
    let e = open_params(&key, &copy).unwrap_err();
    assert_eq!(e.code(), "SECRET_UNSEALABLE");
    assert!(!e.to_string().contains(&secret));
    store
        .commit(vec![Op::Put {
            key: execution_key(&copy.id),
            value: serde_json::to_vec(&copy).unwrap(),
            pre: Precondition::Absent,
        }])
        .await
        .unwrap();

    // Recovery opens the value into the in-memory plan (what StartJob is built from).
    let sched = crate::recovery::load(&store, Default::default(), &key, 1)
        .await
        .unwrap();
    let (rec, plan) = sched
        .running_execution(&id)
        .expect("the execution was resumed");
    assert_eq!(plan.params.get("token"), Some(secret.as_str()));
    assert!(plan.params.is_sensitive("token"));
    assert!(!format!("{:?}", plan.params).contains(&secret));
    assert!(rec.params["token"].starts_with(SEALED_PREFIX));
    drop(sched);
    drop(store);

    // A restarted coordinator resumes the execution; the copy fails without quoting anything.
    let (running, shutdown) = start_coordinator(dir.path()).await;
    let view = running.coordinator().unwrap().view(&id).await.unwrap();
    assert_eq!(view.summary.state, "running", "{}", view.summary.reason);
    let copied = running.coordinator().unwrap().view(&copy.id).await.unwrap();
    assert_eq!(copied.summary.state, ExecutionState::Failed.as_str());
    assert!(
        copied.summary.reason.contains("cannot be opened"),
        "{}",
        copied.summary.reason
    );
    assert!(!copied.summary.reason.contains(&secret));
    stop(running, shutdown).await;
    let bytes = std::fs::read(dir.path().join("coordinator.redb")).unwrap();
    assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

#[tokio::test]
async fn a_sensitive_value_cannot_leak_through_a_non_sensitive_child_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let (running, shutdown) = start_coordinator(dir.path()).await;
    let leaky_child = CHILD.replace("sensitive=true", "sensitive=false");
    let mut files = bundle();
    files.insert("c.toml".into(), leaky_child);
    let e = running
        .coordinator()
        .unwrap()
        .start(
            "p.toml".into(),
            files,
            [("token".to_string(), "s3cr3t-x".to_string())].into(),
            "/".to_string(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "PARAM_INVALID");
    assert!(e.to_string().contains("sensitive = true"), "{e}");
    assert!(!e.to_string().contains("s3cr3t-x"), "{e}");
    stop(running, shutdown).await;
}
