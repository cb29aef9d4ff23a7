//! The web dashboard's HTTP surface, against the real `baton coordinator
//! --dashboard-listen`, with curl as the client: the page and its security
//! headers, the certificate a browser checks (Baton's CA, the names given),
//! login with an API token into a session cookie, the same folder
//! permissions as the CLI (deny by default), the CSRF guard, live summaries
//! and a child's logs as server-sent events, cancel from the API, and an
//! audit trail that names who did what and holds no token.
//!
//! The same pages in a real browser: `dashboard_browser.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Cluster, FanoutSpec, wait_until};

/// A free loopback port (bound, then released for the coordinator).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// What curl got.
pub struct Got {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Got {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// A curl that trusts the cluster's CA and reaches `dashboard.test` on loopback.
pub struct Client {
    pub port: u16,
    pub ca: PathBuf,
    pub jar: PathBuf,
}

impl Client {
    pub fn new(root: &Path, ca: PathBuf, port: u16, who: &str) -> Client {
        Client {
            port,
            ca,
            jar: root.join(format!("cookies-{who}.txt")),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://dashboard.test:{}{path}", self.port)
    }

    /// `curl` with `args` on `path`; `max_s` bounds it (an event stream is
    /// read until then).
    pub fn call(&self, method: &str, path: &str, args: &[&str], max_s: u32) -> Got {
        let dir = tempfile::tempdir().unwrap();
        let headers = dir.path().join("h");
        let out = Command::new("curl")
            .args(["-sS", "-X", method, "--max-time", &max_s.to_string()])
            .arg("--cacert")
            .arg(&self.ca)
            .args([
                "--resolve",
                &format!("dashboard.test:{}:127.0.0.1", self.port),
            ])
            .arg("-b")
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .arg("-D")
            .arg(&headers)
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .arg(self.url(path))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let status = code.trim().parse().unwrap_or(0);
        Got {
            status,
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            // No answer at all: what curl says instead.
            body: if status == 0 {
                format!("{body}\ncurl: {}", String::from_utf8_lossy(&out.stderr))
            } else {
                body.to_string()
            },
        }
    }

    pub fn get(&self, path: &str) -> Got {
        self.call("GET", path, &[], 20)
    }

    pub fn post(&self, path: &str, body: &str) -> Got {
        self.call(
            "POST",
            path,
            &[
                "-H",
                "X-Baton-Request: 1",
                "-H",
                "Content-Type: application/json",
                "--data",
                body,
            ],
            20,
        )
    }

    pub fn login(&self, token: &str) -> Got {
        self.post(
            "/api/login",
            &serde_json::json!({"token": token}).to_string(),
        )
    }
}

/// An API token for `name`, made by the admin.
pub fn api_token(c: &Cluster, name: &str) -> String {
    let out = c.cli(&["token", "create", "--api", name, "--output", "json"]);
    out.expect_code(0);
    out.json()["token"].as_str().unwrap().to_owned()
}

#[test]
fn dashboard_api_logs_in_reads_streams_and_cancels_within_folder_permissions() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIP: curl is not installed");
        return;
    }
    let mut c = Cluster::new("dashboard-api");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    c.start_coordinator_with(&[
        "--dashboard-listen",
        &listen,
        "--dashboard-name",
        "dashboard.test,127.0.0.1",
    ]);
    c.start_agent("a1", 2);
    c.start_agent("a2", 2);
    c.agents_ready(2);
    c.cli(&["folder", "create", "/team"]).expect_code(0);
    c.cli(&["folder", "create", "/other"]).expect_code(0);
    let alice_token = api_token(&c, "alice");
    let bob_token = api_token(&c, "bob");
    c.cli(&["role", "grant", "alice", "read", "/"])
        .expect_code(0);
    c.cli(&["role", "grant", "alice", "run", "/team"])
        .expect_code(0);
    c.cli(&["role", "grant", "bob", "read", "/other"])
        .expect_code(0);

    let spec = FanoutSpec::new(6, "echo hello-from-$BATON_PARAM_SHARD; sleep 60").parallelism(4);
    let parent = c.write_fanout("dash", &spec);
    let id = c.start_run(&parent, &["--folder", "/team"]);

    let ca = c.ca_dir().join("ca.pem");
    let alice = Client::new(c.root(), ca.clone(), port, "alice");
    let bob = Client::new(c.root(), ca.clone(), port, "bob");
    let nobody = Client::new(c.root(), ca.clone(), port, "nobody");

    // The page, with its security headers; the certificate verified by curl
    // against Baton's CA for dashboard.test.
    let page = nobody.get("/");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("/assets/app.js"), "{}", page.body);
    let h = page.headers.to_ascii_lowercase();
    assert!(
        h.contains("content-security-policy: default-src 'self'"),
        "{h}"
    );
    assert!(h.contains("x-frame-options: deny"), "{h}");
    assert_eq!(nobody.get("/assets/app.js").status, 200);
    // And for 127.0.0.1, one of the names given, over HTTP/1.1 (a client
    // that does not offer HTTP/2).
    let by_ip = Command::new("curl")
        .args([
            "-sS",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(&ca)
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&by_ip.stdout), "200");

    // Nobody: refused without a session, with the stable code.
    let g = nobody.get("/api/executions");
    assert_eq!(g.status, 401, "{}", g.body);
    assert_eq!(g.json()["code"], "UNAUTHENTICATED");
    let g = nobody.login("btn_api_not-a-token");
    assert_eq!(g.status, 401, "{}", g.body);
    // A POST without the CSRF header is refused before anything else.
    let g = nobody.call(
        "POST",
        "/api/login",
        &[
            "--data",
            &serde_json::json!({"token": alice_token}).to_string(),
        ],
        10,
    );
    assert_eq!(g.status, 403, "{}", g.body);
    assert_eq!(g.json()["code"], "CSRF_HEADER_MISSING");
    // A refusal of a POST over HTTP/2 reaches the client every time (the server
    // reads the body before it answers; answering first reset the stream, and
    // curl saw no answer in more than half of the tries).
    for _ in 0..20 {
        let g = nobody.call("POST", "/api/login", &["--data", "{\"token\":\"x\"}"], 10);
        assert_eq!(g.status, 403, "{}", g.body);
    }
    let g = nobody.get("/api/nothing-here");
    assert_eq!(
        g.status, 401,
        "an unknown API path is not revealed before login"
    );

    // Alice logs in: a session cookie, HttpOnly and Secure; the token is not in it.
    let g = alice.login(&alice_token);
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(g.json()["principal"], "alice");
    let cookie = g.headers.to_ascii_lowercase();
    assert!(
        cookie.contains("set-cookie: __host-baton_session="),
        "{cookie}"
    );
    assert!(
        cookie.contains("httponly")
            && cookie.contains("secure")
            && cookie.contains("samesite=strict")
    );
    let jar = std::fs::read_to_string(&alice.jar).unwrap();
    assert!(!jar.contains(&alice_token), "the cookie holds the token");
    assert_eq!(alice.get("/api/whoami").json()["principal"], "alice");

    // Alice reads the fleet, the list, the execution.
    let fleet = alice.get("/api/agents").json();
    assert_eq!(fleet["agents"].as_array().unwrap().len(), 2, "{fleet}");
    let list = alice.get("/api/executions?folder=%2Fteam").json();
    assert_eq!(list["executions"][0]["execution_id"], id.as_str(), "{list}");
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            alice.get(&format!("/api/executions/{id}")).json()["summary"]["running"] == 4
        }),
        "four children never ran"
    );
    let detail = alice.get(&format!("/api/executions/{id}")).json();
    assert_eq!(detail["summary"]["total"], 6, "{detail}");
    assert!(!detail["tasks"].as_array().unwrap().is_empty(), "{detail}");
    assert_eq!(detail["may_cancel"], true, "{detail}");
    assert_eq!(
        detail["may_resume"], false,
        "run on /team, not execute: {detail}"
    );
    let fan = detail["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["children"] == 6)
        .unwrap_or_else(|| panic!("no task of 6 children: {detail}"));
    assert_eq!(fan["counts"]["running"], 4, "{fan}");
    let page = alice
        .get(&format!("/api/executions/{id}/children?offset=4&limit=10"))
        .json();
    assert_eq!(page["total"], 6);
    assert_eq!(page["children"].as_array().unwrap().len(), 2, "{page}");

    // A running child's logs, live.
    let running = detail["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ch| ch["phase"] == "running")
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let logs = alice.call(
        "GET",
        &format!(
            "/api/executions/{id}/logs?child={}",
            running.replace('[', "%5B").replace(']', "%5D")
        ),
        &[],
        3,
    );
    assert!(logs.body.contains("event: log"), "{}", logs.body);
    assert!(logs.body.contains("hello-from-"), "{}", logs.body);
    // The summary stream.
    let events = alice.call("GET", &format!("/api/events/execution/{id}"), &[], 2);
    assert!(events.body.contains("event: summary"), "{}", events.body);
    assert!(events.body.contains(&id), "{}", events.body);

    // Bob may read /other only: nothing of /team, in the list or by id.
    assert_eq!(bob.login(&bob_token).status, 200);
    let list = bob.get("/api/executions").json();
    assert_eq!(list["executions"].as_array().unwrap().len(), 0, "{list}");
    let g = bob.get(&format!("/api/executions/{id}"));
    assert_eq!(g.status, 403, "{}", g.body);
    assert_eq!(g.json()["code"], "PERMISSION_DENIED");
    assert!(!g.body.contains("hello"), "{}", g.body);
    let g = bob.get("/api/agents");
    assert_eq!(g.status, 403, "the fleet needs read on /: {}", g.body);
    let g = bob.call("GET", &format!("/api/events/execution/{id}"), &[], 3);
    assert_eq!(g.status, 403, "{}", g.body);
    let g = bob.post(&format!("/api/executions/{id}/cancel"), "{}");
    assert_eq!(g.status, 403, "{}", g.body);

    // The catalog: a package deployed in /team is listed for alice, not for bob.
    let pkg_dir = parent.parent().unwrap().display().to_string();
    c.cli(&["package", "deploy", &pkg_dir, "--folder", "/team"])
        .expect_code(0);
    let cat = alice.get("/api/catalog").json();
    let team = cat["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/team")
        .unwrap_or_else(|| panic!("no /team for alice: {cat}"));
    assert_eq!(team["packages"][0]["versions"][0]["version"], 1, "{cat}");
    let cat = bob.get("/api/catalog");
    assert_eq!(cat.status, 200, "{}", cat.body);
    assert!(!cat.body.contains("/team"), "bob sees /team: {}", cat.body);

    // Alice cancels it.
    let g = alice.post(&format!("/api/executions/{id}/cancel"), "{}");
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(g.json()["outcome"], "cancelled", "{}", g.body);
    let v = c.wait_exec_terminal(&id, Duration::from_secs(30));
    assert_eq!(v.status, "cancelled", "{}", v.brief());

    // Logging out ends the session at once.
    assert_eq!(alice.post("/api/logout", "{}").status, 204);
    assert_eq!(alice.get("/api/whoami").status, 401);
    // A revoked token ends the sessions opened with it.
    assert_eq!(bob.get("/api/whoami").status, 200);
    let tokens = c.cli(&["token", "list", "--output", "json"]);
    let listed = tokens.json();
    let bob_id = listed["tokens"]
        .as_array()
        .or_else(|| listed["items"].as_array())
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|t| t["name"] == "bob")
        .map(|t| t["token_id"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no bob token: {}", tokens.stdout));
    c.cli(&["token", "revoke", &bob_id]).expect_code(0);
    let g = bob.get("/api/whoami");
    assert_eq!(g.status, 401, "{}", g.body);
    assert_eq!(g.json()["code"], "TOKEN_REVOKED");

    // The audit trail: the login, the cancellation, bob's refusals; no token.
    let audit = std::fs::read_to_string(c.root().join("coordinator/data/audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"who\":\"alice\"") && l.contains("DashboardLogin")),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"who\":\"alice\"") && l.contains("CancelExecution")),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"who\":\"bob\"") && l.contains("denied")),
        "{audit}"
    );
    assert!(!audit.contains(&alice_token) && !audit.contains(&bob_token));
    c.finish(&[]);
}
