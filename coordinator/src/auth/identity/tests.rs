//! Revocation against renewal, the renewal bound, and enrolment rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::store::embedded::EmbeddedStore;

fn store() -> (tempfile::TempDir, Arc<EmbeddedStore>) {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    (dir, Arc::new(s))
}

async fn register(store: &dyn Store, name: &str) {
    store
        .commit(vec![Op::Put {
            key: crate::records::agent_key(name),
            value: b"{}".to_vec(),
            pre: Precondition::Any,
        }])
        .await
        .unwrap();
}

const FAR: i64 = 4_000_000_000;

#[tokio::test]
async fn a_renewal_after_revocation_is_refused() {
    let (_d, s) = store();
    register(s.as_ref(), "a1").await;
    record_renewal(s.as_ref(), "a1", "fp1", FAR, 1_000, 0)
        .await
        .unwrap();
    let fps = revoke(s.as_ref(), "a1", 1).await.unwrap();
    assert_eq!(fps, vec!["fp1".to_string()]);
    let e = record_renewal(s.as_ref(), "a1", "fp2", FAR, 2_000_000, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "AGENT_REVOKED");
    assert_eq!(
        check(s.as_ref(), "a1").await.unwrap_err().code(),
        "AGENT_REVOKED"
    );
    // The one check: the revoked certificate itself first.
    assert_eq!(
        check_certificate(s.as_ref(), "a1", "fp1")
            .await
            .unwrap_err()
            .code(),
        "CERT_REVOKED"
    );
    assert_eq!(
        check_certificate(s.as_ref(), "a1", "other")
            .await
            .unwrap_err()
            .code(),
        "AGENT_REVOKED"
    );
    // Nothing recorded for the refused one.
    let issued = s.range(&crate::records::issued_prefix("a1")).await.unwrap();
    assert_eq!(issued.len(), 1);
    // Unknown names are not revoked into existence.
    assert_eq!(
        revoke(s.as_ref(), "nobody", 1).await.unwrap_err().code(),
        "AGENT_NOT_FOUND"
    );
}

/// Eight renewal loops race a revocation: every renewal that succeeded is
/// among the certificates the revocation returns, and none succeeds after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_racing_a_revocation_never_escape_it() {
    for round in 0..5 {
        let (_d, s) = store();
        register(s.as_ref(), "a1").await;
        let mut loops = tokio::task::JoinSet::new();
        for t in 0..8 {
            let s = s.clone();
            loops.spawn(async move {
                let mut ok = Vec::new();
                let mut after_revoke_errors = 0;
                for i in 0..60u64 {
                    let fp = format!("fp-{t}-{i}");
                    match record_renewal(s.as_ref(), "a1", &fp, FAR, 1 + i, 0).await {
                        Ok(()) => ok.push(fp),
                        Err(e) if e.code() == "AGENT_REVOKED" => after_revoke_errors += 1,
                        Err(e) => assert_eq!(e.code(), "RENEW_TOO_SOON", "{e}"),
                    }
                    tokio::task::yield_now().await;
                }
                (ok, after_revoke_errors)
            });
        }
        tokio::task::yield_now().await;
        let fps = revoke(s.as_ref(), "a1", 1).await.unwrap();
        let mut succeeded = Vec::new();
        while let Some(r) = loops.join_next().await {
            succeeded.extend(r.unwrap().0);
        }
        for fp in &succeeded {
            assert!(
                fps.contains(fp),
                "round {round}: certificate {fp} was issued but escaped the revocation"
            );
        }
        let e = record_renewal(s.as_ref(), "a1", "late", FAR, 10_000, 0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "AGENT_REVOKED");
        // Every certificate issued was revoked in the revocation's commit.
        for fp in &succeeded {
            assert!(
                s.get(&crate::records::revoked_key(fp))
                    .await
                    .unwrap()
                    .is_some(),
                "round {round}: {fp} has no v/ record"
            );
        }
    }
}

#[tokio::test]
async fn one_identity_renews_at_most_once_per_interval() {
    let (_d, s) = store();
    record_renewal(s.as_ref(), "a1", "fp1", FAR, 10_000, 5_000)
        .await
        .unwrap();
    let e = record_renewal(s.as_ref(), "a1", "fp2", FAR, 12_000, 5_000)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "RENEW_TOO_SOON");
    assert!(matches!(
        e,
        CoordinatorError::RenewTooSoon {
            retry_after_s: 3,
            ..
        }
    ));
    assert_eq!(
        may_renew(s.as_ref(), "a1", 14_000, 5_000)
            .await
            .unwrap_err()
            .code(),
        "RENEW_TOO_SOON"
    );
    record_renewal(s.as_ref(), "a1", "fp3", FAR, 15_000, 5_000)
        .await
        .unwrap();
    assert_eq!(renew_interval_ms(86_400_000), 21_600_000);
    assert_eq!(renew_interval_ms(100), 1000);
}

fn enrolment<'a>(name: &'a str, labels: &[&str]) -> Enrolment<'a> {
    Enrolment {
        name,
        token_id: "t1",
        allowed_labels: labels.iter().map(|l| (*l).to_string()).collect(),
        fingerprint: "fpE",
        not_after: FAR,
        now_s: 100,
    }
}

#[tokio::test]
async fn enrolment_cannot_take_a_held_name() {
    let (_d, s) = store();
    // A registered agent (an offline certificate) holds its name.
    register(s.as_ref(), "v1").await;
    let e = enrolment_ops(s.as_ref(), &enrolment("v1", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "AGENT_NAME_TAKEN");
    assert!(e.to_string().contains("baton agents revoke v1"), "{e}");
    // A fresh name enrols; then it is held too.
    let ops = enrolment_ops(s.as_ref(), &enrolment("v2", &[]))
        .await
        .unwrap();
    s.commit(ops).await.unwrap();
    let e = enrolment_ops(s.as_ref(), &enrolment("v2", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "AGENT_NAME_TAKEN");
    // After a revocation it can be enrolled again, deliberately.
    revoke(s.as_ref(), "v1", 1).await.unwrap();
    let ops = enrolment_ops(s.as_ref(), &enrolment("v1", &[]))
        .await
        .unwrap();
    s.commit(ops).await.unwrap();
    assert!(check(s.as_ref(), "v1").await.unwrap().is_some());
    // `agents rm` frees a name.
    forget(s.as_ref(), "v2", "", 100).await.unwrap();
    assert!(
        enrolment_ops(s.as_ref(), &enrolment("v2", &[]))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_enrolment_racing_another_for_the_same_name_loses() {
    let (_d, s) = store();
    let first = enrolment_ops(s.as_ref(), &enrolment("v3", &[]))
        .await
        .unwrap();
    let second = enrolment_ops(s.as_ref(), &enrolment("v3", &[]))
        .await
        .unwrap();
    s.commit(first).await.unwrap();
    assert!(matches!(
        s.commit(second).await,
        Err(StoreError::Conflict { .. })
    ));
}

#[test]
fn labels_are_bounded_by_the_token() {
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    };
    let rec = AgentIdentity {
        allowed_labels: Some(vec!["zone=eu".into(), "tier=*".into()]),
        ..Default::default()
    };
    let ok = labels(&[("zone", "eu"), ("tier", "gold")]);
    check_labels("a1", Some(&rec), &ok).unwrap();
    let bad = labels(&[("zone", "us")]);
    let e = check_labels("a1", Some(&rec), &bad).unwrap_err();
    assert_eq!(e.code(), "AGENT_LABEL_NOT_ALLOWED");
    assert!(e.to_string().contains("zone=us"), "{e}");
    // A token with no labels allows none.
    let none = AgentIdentity {
        allowed_labels: Some(vec![]),
        ..Default::default()
    };
    assert!(check_labels("a1", Some(&none), &ok).is_err());
    check_labels("a1", Some(&none), &labels(&[])).unwrap();
    // An identity not enrolled with a token (an offline certificate) is unrestricted.
    check_labels("a1", None, &bad).unwrap();
}

/// A revocation revokes the certificates in its own commit, whether or not the
/// agent ever registered; a later enrolment of the name does not bring them back.
#[tokio::test]
async fn revoked_certificates_stay_refused_after_the_name_enrols_again() {
    let (_d, s) = store();
    // Enrolled, never registered (the scheduler never hears of it).
    s.commit(
        enrolment_ops(s.as_ref(), &enrolment("e1", &["zone=a"]))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    record_renewal(s.as_ref(), "e1", "fpR", FAR, 1_000, 0)
        .await
        .unwrap();
    let fps = revoke(s.as_ref(), "e1", 100).await.unwrap();
    assert_eq!(fps.len(), 2, "{fps:?}");
    for fp in ["fpE", "fpR"] {
        let v = s.get(&crate::records::revoked_key(fp)).await.unwrap();
        assert_eq!(v.unwrap().value, b"e1".to_vec(), "{fp}");
    }
    // A new machine enrols as e1: the stolen ones stay refused, the new one works.
    let mut again = enrolment("e1", &[]);
    again.fingerprint = "fpNew";
    s.commit(enrolment_ops(s.as_ref(), &again).await.unwrap())
        .await
        .unwrap();
    for fp in ["fpE", "fpR"] {
        assert_eq!(
            check_certificate(s.as_ref(), "e1", fp)
                .await
                .unwrap_err()
                .code(),
            "CERT_REVOKED",
            "{fp}"
        );
    }
    assert!(check_certificate(s.as_ref(), "e1", "fpNew").await.is_ok());
}

/// Data from before revocations wrote `v/` records: an identity revoked with
/// certificates left unrevoked. Enrolling over it revokes them.
#[tokio::test]
async fn an_enrolment_over_a_revoked_identity_revokes_what_remains() {
    let (_d, s) = store();
    let rec = AgentIdentity {
        revoked: true,
        ..Default::default()
    };
    s.commit(vec![
        Op::Put {
            key: identity_key("o1"),
            value: encode(&rec).unwrap(),
            pre: Precondition::Any,
        },
        Op::Put {
            key: format!("{}fpOld", crate::records::issued_prefix("o1")),
            value: FAR.to_string().into_bytes(),
            pre: Precondition::Any,
        },
    ])
    .await
    .unwrap();
    s.commit(
        enrolment_ops(s.as_ref(), &enrolment("o1", &[]))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        check_certificate(s.as_ref(), "o1", "fpOld")
            .await
            .unwrap_err()
            .code(),
        "CERT_REVOKED"
    );
    assert!(check_certificate(s.as_ref(), "o1", "fpE").await.is_ok());
}

/// `agents rm` forgets the record and revokes the name's certificates: the
/// removed machine cannot come back without the record's label bound.
#[tokio::test]
async fn forgetting_an_identity_revokes_its_certificates() {
    let (_d, s) = store();
    s.commit(
        enrolment_ops(s.as_ref(), &enrolment("m1", &["zone=a"]))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let fps = forget(s.as_ref(), "m1", "fpOffline", 100).await.unwrap();
    assert_eq!(fps, vec!["fpE".to_string(), "fpOffline".to_string()]);
    assert!(load(s.as_ref(), "m1").await.unwrap().0.is_none());
    for fp in ["fpE", "fpOffline"] {
        assert_eq!(
            check_certificate(s.as_ref(), "m1", fp)
                .await
                .unwrap_err()
                .code(),
            "CERT_REVOKED"
        );
    }
    // The name is free for a new enrolment.
    let mut again = enrolment("m1", &[]);
    again.fingerprint = "fpNew";
    s.commit(enrolment_ops(s.as_ref(), &again).await.unwrap())
        .await
        .unwrap();
    assert!(check_certificate(s.as_ref(), "m1", "fpNew").await.is_ok());
}
