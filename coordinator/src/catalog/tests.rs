//! Unit tests of the catalog over a real embedded store.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::model::BLOB_PREFIX;
use super::*;
use crate::records::{CatalogRef, ExecutionRecord, ExecutionState, execution_key};
use crate::store::embedded::EmbeddedStore;
use crate::store::{Op, Precondition};

const PARENT: &str = "name='load'\ndescription='nightly load'\n[parameters.n]\ntype='int'\ndefault=2\n[parameters.pw]\ntype='string'\nsensitive=true\ndefault='hunter2'\n[tasks.fan]\nforeach={range={start=1,end='${params.n}'}}\nchild='c.toml'\nparams={shard='${item}'}\n";

fn child(v: u32) -> String {
    format!(
        "name='c'\n[parameters.shard]\ntype='int'\nrequired=true\n[tasks.run]\nexec=['echo','v{v}']\n"
    )
}

fn catalog() -> (tempfile::TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    (dir, Catalog::new(Arc::new(store)))
}

fn deploy_req(folder: &str, child_text: &str) -> Deploy {
    Deploy {
        root: "p.toml".into(),
        files: BTreeMap::from([
            ("p.toml".to_string(), PARENT.to_string()),
            ("c.toml".to_string(), child_text.to_string()),
        ]),
        folder: folder.into(),
        name: String::new(),
        who: "alice".into(),
    }
}

async fn blob_count(c: &Catalog) -> usize {
    c.store.range(BLOB_PREFIX).await.unwrap().len()
}

/// Writes an execution record of `pkg` version `version` in `state`.
async fn execution(
    c: &Catalog,
    id: &str,
    pkg: &PackageRecord,
    version: u32,
    state: ExecutionState,
) {
    let r = c.resolve(&pkg.path(), version).await.unwrap();
    let rec = ExecutionRecord {
        id: id.into(),
        package: "load".into(),
        root: r.version.root.clone(),
        files: r.files,
        file_hashes: Default::default(),
        bundle_hash: String::new(),
        texts: None,
        params: BTreeMap::new(),
        state,
        current_task: 0,
        created_unix_ms: 1,
        finished_unix_ms: 0,
        reason: String::new(),
        stale_events: 0,
        cancel_requested: false,
        final_counts: None,
        folder: pkg.folder.clone(),
        catalog: Some(CatalogRef {
            package_id: pkg.id.clone(),
            path: pkg.path(),
            version,
            hash: r.version.hash,
        }),
        resumes: 0,
        task_states: Default::default(),
        parent: None,
        rows_outcomes: Default::default(),
        trace: None,
        placement: Default::default(),
    };
    c.store
        .commit(vec![Op::Put {
            key: execution_key(id),
            value: serde_json::to_vec(&rec).unwrap(),
            pre: Precondition::Any,
        }])
        .await
        .unwrap();
}

#[tokio::test]
async fn versions_count_up_and_unchanged_content_is_not_a_version() {
    let (_d, c) = catalog();
    c.create_folder("/etl", false, "alice").await.unwrap();
    let v1 = c.deploy(deploy_req("/etl", &child(1))).await.unwrap();
    assert!(!v1.unchanged);
    assert_eq!(v1.version.version, 1);
    assert_eq!(
        v1.package.path(),
        "/etl/load",
        "named after the parent file"
    );
    assert_eq!(v1.version.files.len(), 2);
    assert_eq!(blob_count(&c).await, 2);

    let again = c.deploy(deploy_req("/etl", &child(1))).await.unwrap();
    assert!(again.unchanged);
    assert_eq!(again.version.version, 1);
    assert_eq!(again.version.hash, v1.version.hash);

    // A changed child is a new version of the whole bundle; the parent's text
    // is stored once for both.
    let v2 = c.deploy(deploy_req("/etl", &child(2))).await.unwrap();
    assert_eq!(v2.version.version, 2);
    assert_ne!(v2.version.hash, v1.version.hash);
    assert_eq!(v2.package.id, v1.package.id);
    assert_eq!(blob_count(&c).await, 3);

    // Going back to v1's content is a new version (the latest is what was
    // deployed last), with no new blob.
    let v3 = c.deploy(deploy_req("/etl", &child(1))).await.unwrap();
    assert_eq!(v3.version.version, 3);
    assert_eq!(v3.version.hash, v1.version.hash);
    assert_eq!(blob_count(&c).await, 3);

    let versions = c.versions(&v1.package.id).await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [3, 2, 1]
    );
    let latest = c.resolve("/etl/load", 0).await.unwrap();
    assert_eq!(latest.version.version, 3);
    assert_eq!(latest.files["c.toml"], child(1));
    let old = c.resolve("/etl/load", 2).await.unwrap();
    assert_eq!(old.files["c.toml"], child(2));
    let e = c.resolve("/etl/load", 9).await.unwrap_err();
    assert_eq!(e.code(), "VERSION_NOT_FOUND");
    assert!(e.to_string().contains("latest is 3"), "{e}");
}

#[tokio::test]
async fn deploy_checks_folder_bundle_and_name() {
    let (_d, c) = catalog();
    let e = c.deploy(deploy_req("/nope", &child(1))).await.unwrap_err();
    assert_eq!(e.code(), "FOLDER_NOT_FOUND");
    assert!(e.to_string().contains("baton folder create /nope"), "{e}");

    let mut d = deploy_req("/", &child(1));
    d.files.remove("c.toml");
    assert_eq!(c.deploy(d).await.unwrap_err().code(), "INVALID_REQUEST");

    let mut d = deploy_req("/", "name = ");
    d.name = "x".into();
    assert_eq!(c.deploy(d).await.unwrap_err().code(), "PACKAGE_PARSE");

    let mut d = deploy_req("/", &child(1));
    d.name = "has space".into();
    assert_eq!(c.deploy(d).await.unwrap_err().code(), "INVALID_REQUEST");

    // Files the parent does not reference are not part of the version.
    let plain = c.deploy(deploy_req("/", &child(1))).await.unwrap();
    let mut d = deploy_req("/", &child(1));
    d.files.insert("notes.txt".into(), "unrelated".into());
    let extra = c.deploy(d).await.unwrap();
    assert!(extra.unchanged);
    assert_eq!(extra.version.hash, plain.version.hash);
    assert_eq!(plain.package.path(), "/load");
}

#[tokio::test]
async fn sensitive_defaults_are_never_kept_in_the_listing() {
    let (_d, c) = catalog();
    let d = c.deploy(deploy_req("/", &child(1))).await.unwrap();
    let pw = d
        .version
        .parameters
        .iter()
        .find(|p| p.name == "pw")
        .unwrap();
    assert!(pw.sensitive && pw.has_default);
    assert_eq!(pw.default, None);
    let n = d.version.parameters.iter().find(|p| p.name == "n").unwrap();
    assert_eq!(n.default.as_deref(), Some("2"));
    assert_eq!(n.ty, "int");
    let raw = c.store.range("pv/").await.unwrap();
    assert!(!String::from_utf8_lossy(&raw[0].value).contains("hunter2"));
}

#[tokio::test]
async fn folders_nest_and_only_empty_ones_go() {
    let (_d, c) = catalog();
    let e = c.create_folder("/etl/daily", false, "a").await.unwrap_err();
    assert_eq!(e.code(), "FOLDER_NOT_FOUND");
    let made = c.create_folder("/etl/daily", true, "a").await.unwrap();
    assert_eq!(made, ["/etl", "/etl/daily"]);
    let e = c.create_folder("/etl", false, "a").await.unwrap_err();
    assert_eq!(e.code(), "FOLDER_EXISTS");
    c.create_folder("/reports", false, "a").await.unwrap();

    let all = c.folders("/").await.unwrap();
    let paths: Vec<&str> = all.iter().map(|f| f.record.path.as_str()).collect();
    assert_eq!(paths, ["/etl", "/etl/daily", "/reports"]);
    assert_eq!(all[0].folders, 1);
    let below: Vec<String> = c
        .folders("/etl")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.record.path)
        .collect();
    assert_eq!(below, ["/etl/daily"]);

    c.deploy(deploy_req("/etl/daily", &child(1))).await.unwrap();
    assert_eq!(
        c.delete_folder("/etl").await.unwrap_err().code(),
        "FOLDER_NOT_EMPTY"
    );
    assert_eq!(
        c.delete_folder("/etl/daily").await.unwrap_err().code(),
        "FOLDER_NOT_EMPTY"
    );
    assert_eq!(
        c.delete_folder("/").await.unwrap_err().code(),
        "INVALID_REQUEST"
    );
    c.delete_folder("/reports").await.unwrap();
    assert_eq!(
        c.delete_folder("/reports").await.unwrap_err().code(),
        "FOLDER_NOT_FOUND"
    );
}

#[tokio::test]
async fn renaming_a_folder_moves_everything_below_it() {
    let (_d, c) = catalog();
    c.create_folder("/etl/daily", true, "a").await.unwrap();
    c.create_folder("/prod", false, "a").await.unwrap();
    let d = c.deploy(deploy_req("/etl/daily", &child(1))).await.unwrap();
    let e = c.rename_folder("/etl", "/etl/x").await.unwrap_err();
    assert_eq!(e.code(), "INVALID_REQUEST", "not into itself");
    let e = c.rename_folder("/etl", "/prod").await.unwrap_err();
    assert_eq!(e.code(), "FOLDER_EXISTS");
    let e = c.rename_folder("/etl", "/nope/etl").await.unwrap_err();
    assert_eq!(e.code(), "FOLDER_NOT_FOUND");

    let moved = c.rename_folder("/etl", "/prod/etl").await.unwrap();
    assert_eq!((moved.folders, moved.packages), (2, 1));
    assert!(!c.folder_exists("/etl").await.unwrap());
    assert!(c.folder_exists("/prod/etl/daily").await.unwrap());
    let (p, _) = c.package("/prod/etl/daily/load").await.unwrap();
    assert_eq!(p.id, d.package.id);
    assert_eq!(p.folder, "/prod/etl/daily");
    assert_eq!(
        c.package("/etl/daily/load").await.unwrap_err().code(),
        "PACKAGE_NOT_FOUND"
    );
    assert_eq!(c.versions(&p.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn move_keeps_the_id_versions_and_executions() {
    let (_d, c) = catalog();
    c.create_folder("/a", false, "x").await.unwrap();
    c.create_folder("/b", false, "x").await.unwrap();
    let d = c.deploy(deploy_req("/a", &child(1))).await.unwrap();
    c.deploy(deploy_req("/a", &child(2))).await.unwrap();
    execution(&c, "e1", &d.package, 1, ExecutionState::Running).await;

    let renamed = c.move_package("/a/load", "/a/load2").await.unwrap();
    assert_eq!(renamed.path(), "/a/load2");
    let moved = c.move_package("/a/load2", "/b/final").await.unwrap();
    assert_eq!(moved.id, d.package.id);
    assert_eq!(moved.latest, 2);
    assert_eq!(
        c.package("/a/load").await.unwrap_err().code(),
        "PACKAGE_NOT_FOUND"
    );
    let runs = c.executions_of(&moved.id).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].catalog.as_ref().unwrap().version, 1);

    c.deploy(deploy_req("/a", &child(3))).await.unwrap();
    let e = c.move_package("/b/final", "/a/load").await.unwrap_err();
    assert_eq!(e.code(), "PACKAGE_EXISTS");
    let e = c.move_package("/b/final", "/zz/load").await.unwrap_err();
    assert_eq!(e.code(), "FOLDER_NOT_FOUND");
    let e = c.move_package("/b/none", "/a/x").await.unwrap_err();
    assert_eq!(e.code(), "PACKAGE_NOT_FOUND");
}

#[tokio::test]
async fn remove_is_refused_while_running_unless_forced_and_blobs_follow() {
    let (_d, c) = catalog();
    let d = c.deploy(deploy_req("/", &child(1))).await.unwrap();
    c.deploy(deploy_req("/", &child(2))).await.unwrap();
    execution(&c, "e1", &d.package, 1, ExecutionState::Running).await;
    execution(&c, "e0", &d.package, 2, ExecutionState::Succeeded).await;

    let e = c.delete_package("/load", false).await.unwrap_err();
    assert_eq!(e.code(), "PACKAGE_IN_USE");
    assert!(
        e.to_string().contains("e1") && e.to_string().contains("--force"),
        "{e}"
    );
    assert!(c.package("/load").await.is_ok());

    let gone = c.delete_package("/load", true).await.unwrap();
    assert_eq!(gone.versions, 2);
    assert_eq!(gone.running, ["e1"]);
    assert_eq!(
        gone.blobs_removed, 1,
        "v2's child goes; v1's files serve e1"
    );
    assert_eq!(
        c.package("/load").await.unwrap_err().code(),
        "PACKAGE_NOT_FOUND"
    );
    assert!(
        blobs::get(c.store.as_ref(), &baton_package::content_hash(&child(1)))
            .await
            .unwrap()
            .is_some()
    );

    // Once e1 ends, the next sweep removes the rest.
    let mut rec: ExecutionRecord =
        serde_json::from_slice(&c.store.get("e/e1").await.unwrap().unwrap().value).unwrap();
    rec.state = ExecutionState::Succeeded;
    c.store
        .commit(vec![Op::Put {
            key: "e/e1".into(),
            value: serde_json::to_vec(&rec).unwrap(),
            pre: Precondition::Any,
        }])
        .await
        .unwrap();
    assert_eq!(blobs::sweep(c.store.as_ref()).await.unwrap(), 2);
    assert_eq!(blob_count(&c).await, 0);

    // Without running executions, removal needs no force.
    let d = c.deploy(deploy_req("/", &child(1))).await.unwrap();
    assert_eq!(d.version.version, 1, "a new package starts at 1 again");
    let gone = c.delete_package("/load", false).await.unwrap();
    assert!(gone.running.is_empty());
}

#[tokio::test]
async fn a_blob_shared_with_another_package_survives_removal() {
    let (_d, c) = catalog();
    c.deploy(deploy_req("/", &child(1))).await.unwrap();
    let mut other = deploy_req("/", &child(1));
    other.name = "copy".into();
    c.deploy(other).await.unwrap();
    assert_eq!(blob_count(&c).await, 2, "the same two texts, stored once");
    c.delete_package("/load", false).await.unwrap();
    assert_eq!(blob_count(&c).await, 2);
    let r = c.resolve("/copy", 0).await.unwrap();
    assert_eq!(r.files["c.toml"], child(1));
}

#[tokio::test]
async fn listing_filters_by_folder_and_name() {
    let (_d, c) = catalog();
    c.create_folder("/etl/daily", true, "a").await.unwrap();
    c.create_folder("/etlx", false, "a").await.unwrap();
    for (folder, name) in [
        ("/etl", "load"),
        ("/etl/daily", "loader"),
        ("/etlx", "other"),
    ] {
        let mut d = deploy_req(folder, &child(1));
        d.name = name.into();
        c.deploy(d).await.unwrap();
    }
    let paths = |v: Vec<PackageRecord>| v.iter().map(PackageRecord::path).collect::<Vec<_>>();
    assert_eq!(
        paths(c.list("/etl", "").await.unwrap()),
        ["/etl/daily/loader", "/etl/load"]
    );
    assert_eq!(paths(c.list("/", "oth").await.unwrap()), ["/etlx/other"]);
    assert_eq!(paths(c.list("/", "").await.unwrap()).len(), 3);
    let f = c.folders("/").await.unwrap();
    assert_eq!(
        f.iter().find(|f| f.record.path == "/etl").unwrap().packages,
        1
    );
}

#[tokio::test]
async fn a_deployed_version_counts_against_its_deployer_until_the_package_is_deleted() {
    let (_dir, c) = catalog();
    let q = crate::quota::Quota::new(c.store.clone(), 0);
    let d = c.deploy(deploy_req("/", &child(1))).await.unwrap();
    assert!(d.version.bytes > 0);
    assert_eq!(q.usage("alice").await.unwrap().packages, d.version.bytes);
    let d2 = c.deploy(deploy_req("/", &child(2))).await.unwrap();
    assert_eq!(
        q.usage("alice").await.unwrap().packages,
        d.version.bytes + d2.version.bytes
    );
    c.delete_package("/load", false).await.unwrap();
    assert_eq!(q.usage("alice").await.unwrap().packages, 0);
}

#[tokio::test]
async fn a_deploy_and_a_removal_larger_than_one_commit_are_split_to_fit() {
    let store = crate::store::fake::FakeStore::new();
    store.set_limits(crate::store::Limits {
        max_ops_per_commit: Some(128),
        max_bytes_per_commit: Some(1536 * 1024),
    });
    let c = Catalog::new(store.clone());
    // A parent naming 200 distinct child packages: 201 blobs.
    let mut root = "name='wide'\n".to_string();
    let mut files = BTreeMap::new();
    for i in 0..200 {
        root.push_str(&format!("[tasks.t{i}]\nchild='c{i}.toml'\n"));
        files.insert(
            format!("c{i}.toml"),
            format!("name='c{i}'\n[tasks.run]\nexec=['echo','{i}']\n"),
        );
    }
    files.insert("p.toml".to_string(), root);
    let before = store.applied().len();
    let d = c
        .deploy(Deploy {
            root: "p.toml".into(),
            files: files.clone(),
            folder: "/".into(),
            name: String::new(),
            who: "alice".into(),
        })
        .await
        .unwrap();
    assert_eq!(d.version.files.len(), 201);
    let commits = &store.applied()[before..];
    assert!(commits.len() >= 3, "{} commits", commits.len());
    assert!(commits.iter().all(|k| k.ops.len() <= 128));
    assert_eq!(blob_count(&c).await, 201);
    let r = c.resolve("/wide", 0).await.unwrap();
    assert_eq!(r.files, files, "every file reads back from its blob");

    // 70 versions: 140 deletions and the package's own, in several commits.
    for v in 0..69 {
        let mut f = files.clone();
        f.insert(
            "c0.toml".into(),
            format!("name='c0'\n[tasks.run]\nexec=['echo','v{v}']\n"),
        );
        c.deploy(Deploy {
            root: "p.toml".into(),
            files: f,
            folder: "/".into(),
            name: String::new(),
            who: "alice".into(),
        })
        .await
        .unwrap();
    }
    let before = store.applied().len();
    let gone = c.delete_package("/wide", false).await.unwrap();
    assert_eq!(gone.versions, 70);
    assert_eq!(
        c.package("/wide").await.unwrap_err().code(),
        "PACKAGE_NOT_FOUND"
    );
    assert_eq!(blob_count(&c).await, 0, "the sweep removed every blob");
    assert!(store.applied()[before..].iter().all(|k| k.ops.len() <= 128));
}
