//! Admission: the decisions behind `StartJob`'s immediate answer.
//!
//! Checks, in this order:
//! 1. the request converts (done at the edge: `StartJob::try_from`) — `INVALID_REQUEST`;
//! 2. epoch: older than the highest epoch seen → `STALE_EPOCH` (a newer one raises it);
//! 3. idempotency: a dispatch id accepted before by this process → `Accepted` again,
//!    nothing new starts;
//! 4. draining → `DRAINING`;
//! 5. capacity: running jobs ≥ slots → `AT_CAPACITY`;
//! 6. package: inline content whose SHA-256 matches (`UNKNOWN_PACKAGE` otherwise), that
//!    parses and whose parameters bind (`INVALID_REQUEST`);
//! 7. run-as, when the package has `run_as`: the user is allowed for the job's folder
//!    by `--allow-run-as`, exists on this host, is not uid 0 (nor of primary group 0),
//!    and this agent can switch to it (runs as root, or already as that user) —
//!    `RUN_AS_DENIED` otherwise. Looked up again at every start, never cached.
//!
//! **Rejections are not remembered.** A rejection starts nothing, so asking again is
//! harmless, and may well be accepted later (a slot freed, draining ended). Acceptances
//! are remembered for the life of the process, bounded to the last
//! [`ACCEPTED_KEYS_MAX`] keys: the coordinator treats a new `boot_id` as "every job of
//! the old boot is lost" and never re-sends an old dispatch id to a new boot, so memory
//! is enough.
//!
//! This module holds state and decisions only; [`crate::supervisor`] calls it under its
//! lock and does the spawning.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use baton_package::{Package, ParamValues};
use baton_proto::RejectCode;

use crate::model::{DispatchKey, Epoch, PackageSource, StartJob};
use crate::run_as::{Host, RunAsRule, RunAsUser};

/// Accepted dispatch ids remembered for idempotency.
pub const ACCEPTED_KEYS_MAX: usize = 100_000;

/// A `StartJob` refusal: code plus a reason that names the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: RejectCode,
    pub reason: String,
}

impl Rejection {
    pub fn new(code: RejectCode, reason: impl Into<String>) -> Rejection {
        Rejection {
            code,
            reason: reason.into(),
        }
    }

    /// The symbolic code for logs (`AT_CAPACITY`, ...).
    pub fn code_str(&self) -> &'static str {
        match self.code {
            RejectCode::AtCapacity => "AT_CAPACITY",
            RejectCode::Draining => "DRAINING",
            RejectCode::UnknownPackage => "UNKNOWN_PACKAGE",
            RejectCode::InvalidRequest => "INVALID_REQUEST",
            RejectCode::StaleEpoch => "STALE_EPOCH",
            RejectCode::Unauthorized => "UNAUTHORIZED",
            RejectCode::RunAsDenied => "RUN_AS_DENIED",
            RejectCode::Unspecified => "UNSPECIFIED",
        }
    }
}

/// Outcome of the state checks (steps 2–5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// New work: check the package, then start it.
    New,
    /// Accepted before: answer `Accepted`, start nothing.
    Duplicate,
    Reject(Rejection),
}

/// Admission state: slots, highest epoch seen, draining flag, accepted keys.
#[derive(Debug)]
pub struct Admission {
    slots: u32,
    max_epoch: Epoch,
    draining: bool,
    accepted: BoundedSet,
}

impl Admission {
    pub fn new(slots: u32) -> Admission {
        Admission::with_memory(slots, ACCEPTED_KEYS_MAX)
    }

    /// Like `new`, remembering at most `keys_max` accepted ids (tests use a small one).
    pub fn with_memory(slots: u32, keys_max: usize) -> Admission {
        Admission {
            slots,
            max_epoch: Epoch(0),
            draining: false,
            accepted: BoundedSet::new(keys_max),
        }
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    pub fn max_epoch(&self) -> Epoch {
        self.max_epoch
    }

    /// Raises the highest epoch seen (from a dispatch or a registration).
    pub fn observe_epoch(&mut self, epoch: Epoch) {
        self.max_epoch = self.max_epoch.max(epoch);
    }

    /// Steps 2–5, given how many jobs run now.
    pub fn check(&mut self, job: &StartJob, running: usize) -> Decision {
        if job.epoch < self.max_epoch {
            return Decision::Reject(Rejection::new(
                RejectCode::StaleEpoch,
                format!(
                    "coordinator epoch {} is older than epoch {} already seen",
                    job.epoch, self.max_epoch
                ),
            ));
        }
        self.observe_epoch(job.epoch);
        if self.accepted.contains(&job.dispatch) {
            return Decision::Duplicate;
        }
        if self.draining {
            return Decision::Reject(Rejection::new(
                RejectCode::Draining,
                "agent is draining and accepts no new jobs",
            ));
        }
        if running >= self.slots as usize {
            return Decision::Reject(Rejection::new(
                RejectCode::AtCapacity,
                format!("{running} of {} slots busy", self.slots),
            ));
        }
        Decision::New
    }

    /// Remembers an accepted dispatch id (call when the job is registered as running).
    pub fn record_accepted(&mut self, key: DispatchKey) {
        self.accepted.insert(key);
    }
}

/// Step 6: verify, parse and bind the package of a request.
pub fn check_package(job: &StartJob) -> Result<(Arc<Package>, ParamValues), Rejection> {
    check_package_with(job, None)
}

/// [`check_package`], taking the parsed package from `cache` when it holds the
/// same text (and leaving it there when it does not yet).
pub fn check_package_with(
    job: &StartJob,
    cache: Option<&crate::parsed::ParsedPackages>,
) -> Result<(Arc<Package>, ParamValues), Rejection> {
    let src = &job.package;
    let Some(content) = &src.content else {
        return Err(Rejection::new(
            RejectCode::UnknownPackage,
            format!(
                "package {:?} ({}) was not sent inline and this agent cannot fetch packages yet",
                src.name, src.content_hash
            ),
        ));
    };
    let cached = cache.and_then(|c| c.get(&src.content_hash, content));
    let package = match cached {
        Some(p) => p,
        None => {
            let p = Arc::new(parse_package(src, content)?);
            if let Some(c) = cache {
                c.put(&src.content_hash, content, p.clone());
            }
            p
        }
    };
    let params = package.bind(&job.parameters).map_err(|e| {
        Rejection::new(
            RejectCode::InvalidRequest,
            format!("parameters do not bind: {}: {e}", e.code()),
        )
    })?;
    Ok((package, params))
}

/// Checks the text against its hash and parses it.
fn parse_package(src: &PackageSource, content: &str) -> Result<Package, Rejection> {
    let actual = baton_package::content_hash(content);
    if actual != src.content_hash {
        return Err(Rejection::new(
            RejectCode::UnknownPackage,
            format!(
                "package {:?}: content hash {actual} does not match content_hash {}",
                src.name, src.content_hash
            ),
        ));
    }
    let origin = if src.name.is_empty() {
        "package"
    } else {
        &src.name
    };
    Package::parse(origin, content).map_err(|e| {
        Rejection::new(
            RejectCode::InvalidRequest,
            format!("package {origin:?} does not parse: {}: {e}", e.code()),
        )
    })
}

/// Step 7: the user a job runs as. `Ok(None)`: the package names no `run_as`, the job
/// runs as the agent's own user. Every refusal is `RUN_AS_DENIED` with a reason that
/// says which condition failed (and, for the folder, what this agent allows).
pub fn check_run_as(
    package: &Package,
    folder: &str,
    rules: &[RunAsRule],
    host: &impl Host,
) -> Result<Option<RunAsUser>, Rejection> {
    let Some(name) = &package.run_as else {
        return Ok(None);
    };
    let deny = |reason: String| Err(Rejection::new(RejectCode::RunAsDenied, reason));
    if !rules.iter().any(|r| r.allows(name, folder)) {
        let allowed: Vec<String> = rules
            .iter()
            .filter(|r| r.user() == name)
            .map(|r| r.to_string())
            .collect();
        return deny(if allowed.is_empty() {
            format!(
                "run_as user {name:?} is not allowed on this agent (no --allow-run-as {name}[:FOLDER])"
            )
        } else {
            format!(
                "run_as user {name:?} is not allowed for folder {folder:?} on this agent (allowed: {})",
                allowed.join(", ")
            )
        });
    }
    let user = match host.user(name) {
        Ok(Some(user)) => user,
        Ok(None) => return deny(format!("run_as user {name:?} does not exist on this host")),
        Err(e) => return deny(format!("cannot look up run_as user {name:?}: {e}")),
    };
    if user.uid == 0 {
        return deny(format!(
            "run_as user {name:?} has uid 0; run-as is for unprivileged users"
        ));
    }
    if user.gid == 0 {
        return deny(format!(
            "run_as user {name:?} has primary group 0 (root); run-as is for unprivileged users"
        ));
    }
    let euid = host.euid();
    if euid != 0 && euid != user.uid {
        return deny(format!(
            "this agent runs as uid {euid}, not root, and cannot switch to run_as user {name:?} (uid {})",
            user.uid
        ));
    }
    Ok(Some(user))
}

/// A set that forgets its oldest entries past a bound.
#[derive(Debug)]
struct BoundedSet {
    max: usize,
    order: VecDeque<DispatchKey>,
    set: HashSet<DispatchKey>,
}

impl BoundedSet {
    fn new(max: usize) -> BoundedSet {
        BoundedSet {
            max: max.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    fn contains(&self, key: &DispatchKey) -> bool {
        self.set.contains(key)
    }

    fn insert(&mut self, key: DispatchKey) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
            while self.order.len() > self.max {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PackageSource;

    pub(crate) const CHILD: &str = "name = 'child'\n[parameters.n]\ntype = 'int'\nrequired = true\n[tasks.a]\nexec = ['true']\n";

    fn job(item: u32, epoch: u64) -> StartJob {
        StartJob {
            dispatch: DispatchKey {
                execution_id: "e".into(),
                task_path: "fan".into(),
                item_index: item,
                attempt: 1,
            },
            package: PackageSource {
                name: "child".into(),
                content_hash: baton_package::content_hash(CHILD),
                content: Some(CHILD.into()),
            },
            parameters: [("n".to_string(), "5".to_string())].into(),
            epoch: Epoch(epoch),
            deadline: None,
            traceparent: None,
            tracestate: None,
            folder: "/".into(),
        }
    }

    fn code(d: Decision) -> RejectCode {
        match d {
            Decision::Reject(r) => r.code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn capacity_is_the_final_word() {
        let mut a = Admission::new(2);
        assert_eq!(a.check(&job(1, 0), 1), Decision::New);
        let Decision::Reject(r) = a.check(&job(1, 0), 2) else {
            panic!()
        };
        assert_eq!(r.code, RejectCode::AtCapacity);
        assert_eq!(r.reason, "2 of 2 slots busy");
    }

    #[test]
    fn draining_rejects_new_but_not_duplicates() {
        let mut a = Admission::new(4);
        a.record_accepted(job(1, 0).dispatch);
        a.set_draining(true);
        assert_eq!(code(a.check(&job(2, 0), 0)), RejectCode::Draining);
        assert_eq!(a.check(&job(1, 0), 0), Decision::Duplicate);
    }

    #[test]
    fn stale_epoch_is_rejected_and_newer_raises_the_bar() {
        let mut a = Admission::new(4);
        assert_eq!(
            a.check(&job(1, 0), 0),
            Decision::New,
            "epoch 0 while nothing higher seen"
        );
        assert_eq!(a.check(&job(1, 5), 0), Decision::New);
        assert_eq!(a.max_epoch(), Epoch(5));
        assert_eq!(code(a.check(&job(1, 4), 0)), RejectCode::StaleEpoch);
        assert_eq!(code(a.check(&job(1, 0), 0)), RejectCode::StaleEpoch);
        a.observe_epoch(Epoch(9));
        assert_eq!(code(a.check(&job(2, 5), 0)), RejectCode::StaleEpoch);
        a.observe_epoch(Epoch(3));
        assert_eq!(a.max_epoch(), Epoch(9), "never lowers");
    }

    #[test]
    fn duplicates_win_over_capacity_and_memory_is_bounded() {
        let mut a = Admission::with_memory(1, 2);
        a.record_accepted(job(1, 0).dispatch);
        assert_eq!(
            a.check(&job(1, 0), 1),
            Decision::Duplicate,
            "full, but already accepted"
        );
        a.record_accepted(job(2, 0).dispatch);
        a.record_accepted(job(3, 0).dispatch);
        assert_eq!(
            code(a.check(&job(1, 0), 1)),
            RejectCode::AtCapacity,
            "oldest forgotten"
        );
    }

    #[test]
    fn package_checks() {
        let (pkg, params) = check_package(&job(1, 0)).unwrap();
        assert_eq!(pkg.name, "child");
        assert_eq!(params.get("n"), Some("5"));

        let mut j = job(1, 0);
        j.package.content = None;
        let r = check_package(&j).unwrap_err();
        assert_eq!(r.code, RejectCode::UnknownPackage);
        assert!(r.reason.contains("cannot fetch"), "{}", r.reason);

        let mut j = job(1, 0);
        j.package.content_hash = "00".repeat(32);
        assert_eq!(
            check_package(&j).unwrap_err().code,
            RejectCode::UnknownPackage
        );

        let mut j = job(1, 0);
        let bad = "name = \n";
        j.package.content = Some(bad.into());
        j.package.content_hash = baton_package::content_hash(bad);
        let r = check_package(&j).unwrap_err();
        assert_eq!(r.code, RejectCode::InvalidRequest);
        assert!(r.reason.contains("PACKAGE_PARSE"), "{}", r.reason);

        let mut j = job(1, 0);
        j.parameters.clear();
        let r = check_package(&j).unwrap_err();
        assert_eq!(r.code, RejectCode::InvalidRequest);
        assert!(r.reason.contains("PARAM_REQUIRED"), "{}", r.reason);

        let mut j = job(1, 0);
        j.parameters
            .insert("n".into(), "not-a-number-secret".into());
        let r = check_package(&j).unwrap_err();
        assert_eq!(r.code, RejectCode::InvalidRequest);
    }

    /// A host with a fixed euid and user table.
    struct FakeHost {
        euid: u32,
        users: Vec<RunAsUser>,
        broken: bool,
    }

    impl Host for FakeHost {
        fn euid(&self) -> u32 {
            self.euid
        }
        fn user(&self, name: &str) -> Result<Option<RunAsUser>, String> {
            if self.broken {
                return Err("NSS unavailable".into());
            }
            Ok(self.users.iter().find(|u| u.name == name).cloned())
        }
    }

    fn user(name: &str, uid: u32, gid: u32) -> RunAsUser {
        RunAsUser {
            name: name.into(),
            uid,
            gid,
            home: format!("/home/{name}").into(),
        }
    }

    fn root_host() -> FakeHost {
        FakeHost {
            euid: 0,
            users: vec![
                user("etl", 1500, 1500),
                user("toor", 0, 0),
                user("wheel", 1600, 0),
            ],
            broken: false,
        }
    }

    fn runs_as(user: &str) -> Package {
        let text = format!("name = 'child'\nrun_as = '{user}'\n[tasks.a]\nexec = ['true']\n");
        Package::parse("child", &text).unwrap()
    }

    fn rules(specs: &[&str]) -> Vec<RunAsRule> {
        specs.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn denied(r: Result<Option<RunAsUser>, Rejection>) -> String {
        match r {
            Err(r) => {
                assert_eq!(r.code, RejectCode::RunAsDenied, "{}", r.reason);
                assert_eq!(r.code_str(), "RUN_AS_DENIED");
                r.reason
            }
            Ok(u) => panic!("expected RUN_AS_DENIED, got {u:?}"),
        }
    }

    #[test]
    fn run_as_allowed_for_the_folder_and_below() {
        let host = root_host();
        let pkg = runs_as("etl");
        for (allow, folder) in [
            (&["etl"][..], "/"),
            (&["etl"][..], "/hr"),
            (&["etl:/etl"][..], "/etl"),
            (&["etl:/etl"][..], "/etl/daily"),
            (&["nobody", "etl:/x", "etl:/etl"][..], "/etl/daily"),
        ] {
            let got = check_run_as(&pkg, folder, &rules(allow), &host).unwrap();
            assert_eq!(got, Some(user("etl", 1500, 1500)), "{allow:?} {folder}");
        }
    }

    #[test]
    fn no_run_as_needs_no_rule() {
        let pkg = Package::parse("child", CHILD).unwrap();
        let host = FakeHost {
            euid: 1000,
            users: vec![],
            broken: true,
        };
        assert_eq!(check_run_as(&pkg, "/", &[], &host).unwrap(), None);
    }

    #[test]
    fn run_as_wrong_folder_or_no_rule_is_denied() {
        let host = root_host();
        let pkg = runs_as("etl");
        let r = denied(check_run_as(&pkg, "/etlx", &rules(&["etl:/etl"]), &host));
        assert!(r.contains("not allowed for folder \"/etlx\""), "{r}");
        assert!(r.contains("etl for /etl"), "{r}");
        let r = denied(check_run_as(&pkg, "/", &rules(&["etl:/etl/daily"]), &host));
        assert!(r.contains("not allowed for folder \"/\""), "{r}");
        let r = denied(check_run_as(&pkg, "/etl", &rules(&["nobody"]), &host));
        assert!(r.contains("no --allow-run-as etl"), "{r}");
        let r = denied(check_run_as(&pkg, "/etl", &[], &host));
        assert!(r.contains("not allowed on this agent"), "{r}");
    }

    #[test]
    fn run_as_unknown_user_is_denied() {
        let pkg = runs_as("ghost");
        let r = denied(check_run_as(&pkg, "/", &rules(&["ghost"]), &root_host()));
        assert_eq!(r, "run_as user \"ghost\" does not exist on this host");
        let broken = FakeHost {
            broken: true,
            ..root_host()
        };
        let r = denied(check_run_as(&pkg, "/", &rules(&["ghost"]), &broken));
        assert!(r.contains("cannot look up") && r.contains("NSS"), "{r}");
    }

    #[test]
    fn run_as_uid_0_or_root_group_is_denied() {
        let r = denied(check_run_as(
            &runs_as("toor"),
            "/",
            &rules(&["toor"]),
            &root_host(),
        ));
        assert!(r.contains("uid 0"), "{r}");
        let r = denied(check_run_as(
            &runs_as("wheel"),
            "/",
            &rules(&["wheel"]),
            &root_host(),
        ));
        assert!(r.contains("primary group 0"), "{r}");
    }

    #[test]
    fn run_as_needs_a_root_agent_unless_it_is_that_user() {
        let pkg = runs_as("etl");
        let host = FakeHost {
            euid: 1000,
            ..root_host()
        };
        let r = denied(check_run_as(&pkg, "/", &rules(&["etl"]), &host));
        assert!(r.contains("runs as uid 1000, not root"), "{r}");
        let same = FakeHost {
            euid: 1500,
            ..root_host()
        };
        assert_eq!(
            check_run_as(&pkg, "/", &rules(&["etl"]), &same).unwrap(),
            Some(user("etl", 1500, 1500))
        );
    }

    /// Check with the cache of parsed packages ([`crate::parsed`]).
    mod parsed_cache {
        use super::*;
        use crate::parsed::{ENTRIES_MAX, ParsedPackages};
        use baton_proto::RejectCode;

        fn job(text: &str, hash: String) -> StartJob {
            StartJob {
                dispatch: DispatchKey {
                    execution_id: "e".into(),
                    task_path: "t".into(),
                    item_index: 0,
                    attempt: 1,
                },
                package: PackageSource {
                    name: "child".into(),
                    content_hash: hash,
                    content: Some(text.into()),
                },
                parameters: Default::default(),
                epoch: Epoch(1),
                deadline: None,
                traceparent: None,
                tracestate: None,
                folder: "/".into(),
            }
        }

        #[test]
        fn a_package_is_parsed_once_and_a_different_text_is_checked_again() {
            let cache = ParsedPackages::new();
            let text = "name = 'child'\n[tasks.a]\nnoop = true\n";
            let hash = baton_package::content_hash(text);
            let (first, _) = check_package_with(&job(text, hash.clone()), Some(&cache)).unwrap();
            let (again, _) = check_package_with(&job(text, hash.clone()), Some(&cache)).unwrap();
            assert!(
                Arc::ptr_eq(&first, &again),
                "the second is the cached parse"
            );

            // Same claimed hash, other text: not taken from the cache; its hash fails.
            let forged = "name = 'forged'\n[tasks.a]\nnoop = true\n";
            let r = check_package_with(&job(forged, hash), Some(&cache)).unwrap_err();
            assert_eq!(r.code, RejectCode::UnknownPackage);

            for i in 0..(ENTRIES_MAX + 1) {
                let t = format!("name = 'p{i}'\n[tasks.a]\nnoop = true\n");
                check_package_with(&job(&t, baton_package::content_hash(&t)), Some(&cache))
                    .unwrap();
            }
            assert!(cache.kept() <= ENTRIES_MAX);
        }
    }
}
