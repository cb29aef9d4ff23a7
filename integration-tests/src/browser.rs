//! Headless Chromium driven over WebDriver, isolated in a network namespace, for tests
//! of a web page served (over HTTPS) by a process the test starts on the host.
//!
//! The recipe, and why:
//! - [`Netns`] makes a namespace joined to the host by a veth pair on a private /30 and
//!   no default route: the browser reaches the server under test, which listens on
//!   [`Netns::host_ip`], and nothing else (no DNS, no update or metrics calls).
//! - chromedriver runs inside (`ip netns exec`) in a process group of its own, on port
//!   [`CHROMEDRIVER_PORT`] of [`Netns::ns_ip`] with `--allowed-ips=<host ip>`, so that
//!   the test on the host can drive it; chromedriver then listens on every address of
//!   the namespace and accepts a `Host` that is an IP literal.
//! - Chromium trusts the test's CA through an NSS database under a temporary `HOME`
//!   (as a user importing a CA once would: no certificate check is turned off), and
//!   `--host-resolver-rules` maps names such as `coordinator.baton` to addresses, so a
//!   page is opened by the name its certificate carries.
//! - Dropping the [`Browser`] ends the session, kills chromedriver's process group and
//!   then every process left in the namespace (Chromium's crash handler leaves the
//!   group), by pid. The temporary directory (profile, NSS database, chromedriver's
//!   log) is kept when the test panicked.
//!
//! Every wait is bounded; a failed wait panics with what it saw last and leaves a
//! screenshot named after it.

mod netns;
mod tools;
mod trust;
mod wire;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

pub use netns::Netns;

/// The port chromedriver listens on inside the namespace (fresh, so always free).
pub const CHROMEDRIVER_PORT: u16 = 9515;
/// How long chromedriver may take to answer `/status` as ready.
const DRIVER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long creating a session (starting Chromium) may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one WebDriver command may take on the wire (above the page-load timeout).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(45);
/// How long ending the session may take when the browser is dropped.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Session timeouts given to Chromium (milliseconds).
const PAGE_LOAD_MS: u64 = 30_000;
const SCRIPT_MS: u64 = 15_000;
/// How often `wait_for` looks again.
const POLL: Duration = Duration::from_millis(100);
/// WebDriver's key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The Chromium flags of every session, beside the profile and the host map.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    // Root cannot use Chromium's sandbox; the namespace is the isolation here.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    // No calls of its own (component updates, sync, metrics, first-run pages): the
    // namespace would refuse them anyway, this keeps them from being tried.
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--no-default-browser-check",
    "--lang=en-US",
    "--window-size=1280,900",
];

/// Why the browser harness cannot run here, if it cannot: it needs root (network
/// namespaces), `ip`, chromium, chromedriver and certutil (libnss3-tools), and the
/// right to create a namespace. A test prints the reason and skips.
pub fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root (network namespaces need root)".to_string());
    }
    let mut missing = Vec::new();
    if tools::which("ip").is_none() {
        missing.push("ip (iproute2)");
    }
    if tools::chromium().is_none() {
        missing.push("chromium");
    }
    if tools::which("chromedriver").is_none() {
        missing.push("chromedriver (chromium-driver)");
    }
    if tools::which("certutil").is_none() {
        missing.push("certutil (libnss3-tools)");
    }
    if !missing.is_empty() {
        return Err(format!("missing: {}", missing.join(", ")));
    }
    // Root in a container may still lack the right to make namespaces.
    Netns::try_create().map(drop)
}

/// A reference to an element of the current page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementId(String);

/// An error answered by chromedriver (or met on the way to it).
#[derive(Clone, Debug)]
pub struct WebDriverError {
    /// The WebDriver error code, e.g. `no such element`; `transport` when there was no answer.
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = self.message.lines().next().unwrap_or_default();
        write!(f, "{}: {first}", self.error)
    }
}

/// One Chromium session in a namespace, driven through chromedriver.
pub struct Browser<'n> {
    netns: &'n Netns,
    driver: SocketAddr,
    session: Option<String>,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    screenshots: PathBuf,
}

impl Browser<'_> {
    /// See [`available`].
    pub fn available() -> Result<(), String> {
        available()
    }

    /// Starts chromedriver in `netns` and a session whose Chromium trusts the CA in
    /// `ca_pem`, resolves each name of `host_map` to its address, and saves
    /// screenshots into `screenshots_dir`. Panics (after cleaning up) when it cannot.
    pub fn start<'n>(
        netns: &'n Netns,
        ca_pem: &Path,
        host_map: &[(&str, IpAddr)],
        screenshots_dir: &Path,
    ) -> Browser<'n> {
        let dir = tempfile::Builder::new()
            .prefix("baton-browser-")
            .tempdir()
            .expect("browser temp dir");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("browser HOME");
        if let Err(e) = trust::import_ca(&home, ca_pem) {
            panic!("cannot import the CA into an NSS database: {e}");
        }
        let log_path = dir.path().join("chromedriver.log");
        let log = std::fs::File::create(&log_path).expect("chromedriver log");
        let chromedriver = tools::which("chromedriver").expect("chromedriver not found");
        let host_ip = netns.host_ip();
        let child = netns
            .command(chromedriver)
            .arg(format!("--port={CHROMEDRIVER_PORT}"))
            .arg(format!("--allowed-ips={host_ip}"))
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            // Its own group: chromedriver and the Chromium it starts die together.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser {
            netns,
            driver: SocketAddr::new(netns.ns_ip(), CHROMEDRIVER_PORT),
            session: None,
            child: Some(child),
            dir: Some(dir),
            screenshots: screenshots_dir.to_path_buf(),
        };
        browser.wait_driver_ready();
        let session = browser.new_session(dir_of(&browser).join("profile"), host_map);
        browser.session = Some(session);
        browser
    }

    /// Chromedriver's log (kept with the temp dir when the test panicked).
    pub fn log_path(&self) -> PathBuf {
        dir_of(self).join("chromedriver.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn wait_driver_ready(&mut self) {
        let deadline = Instant::now() + DRIVER_READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "chromedriver exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            match wire::request(self.driver, "GET", "/status", None, Duration::from_secs(2)) {
                Ok(r) if r.body["value"]["ready"] == json!(true) => return,
                Ok(r) => last = format!("status {}: {}", r.status, r.body),
                Err(e) => last = e,
            }
            std::thread::sleep(POLL);
        }
        panic!(
            "chromedriver not ready within {DRIVER_READY_TIMEOUT:?} ({last}):\n{}",
            self.log_tail()
        );
    }

    fn new_session(&self, profile: PathBuf, host_map: &[(&str, IpAddr)]) -> String {
        let binary = tools::chromium().expect("chromium not found");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        if !host_map.is_empty() {
            let rules: Vec<String> = host_map
                .iter()
                .map(|(name, ip)| format!("MAP {name} {ip}"))
                .collect();
            args.push(format!("--host-resolver-rules={}", rules.join(", ")));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": false,
            "timeouts": {"implicit": 0, "pageLoad": PAGE_LOAD_MS, "script": SCRIPT_MS},
            "goog:chromeOptions": {"binary": binary, "args": args},
        }}});
        let answer = wire::request(
            self.driver,
            "POST",
            "/session",
            Some(&caps),
            SESSION_TIMEOUT,
        )
        .and_then(|r| {
            r.body["value"]["sessionId"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("status {}: {}", r.status, r.body))
        });
        match answer {
            Ok(id) => id,
            Err(e) => panic!(
                "cannot create a WebDriver session: {e}\n{}",
                self.log_tail()
            ),
        }
    }

    /// Sends a command of the session (`suffix` after `/session/<id>`) and returns
    /// the answer's `value`.
    pub fn command(
        &self,
        method: &str,
        suffix: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let session = self.session.as_deref().unwrap_or_default();
        let path = format!("/session/{session}{suffix}");
        // WebDriver wants a JSON object on every POST, `{}` when there is nothing to say.
        let body = body.or_else(|| (method == "POST").then(|| json!({})));
        let r = wire::request(self.driver, method, &path, body.as_ref(), COMMAND_TIMEOUT).map_err(
            |message| WebDriverError {
                error: "transport".to_string(),
                message,
            },
        )?;
        let value = match r.body {
            Value::Object(mut map) => map.remove("value").unwrap_or(Value::Null),
            other => other,
        };
        if r.status == 200 {
            return Ok(value);
        }
        let text = |k: &str| value[k].as_str().unwrap_or_default().to_string();
        Err(WebDriverError {
            error: text("error"),
            message: format!("{} (HTTP {})", text("message"), r.status),
        })
    }

    fn call(&self, what: &str, method: &str, suffix: &str, body: Option<Value>) -> Value {
        self.command(method, suffix, body)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Opens `url` and waits (bounded by the page-load timeout) until it has loaded.
    pub fn goto(&self, url: &str) {
        self.call(
            &format!("goto {url}"),
            "POST",
            "/url",
            Some(json!({ "url": url })),
        );
    }

    /// The URL of the current page.
    pub fn current_url(&self) -> String {
        let v = self.call("current url", "GET", "/url", None);
        v.as_str().unwrap_or_default().to_string()
    }

    /// The title of the current page.
    pub fn title(&self) -> String {
        let v = self.call("title", "GET", "/title", None);
        v.as_str().unwrap_or_default().to_string()
    }

    /// The first element matching `css`, or `None`.
    pub fn try_find(&self, css: &str) -> Result<Option<ElementId>, WebDriverError> {
        let body = json!({"using": "css selector", "value": css});
        match self.command("POST", "/element", Some(body)) {
            Ok(v) => Ok(element_id(&v)),
            Err(e) if e.error == "no such element" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The first element matching `css`; panics when there is none.
    pub fn find(&self, css: &str) -> ElementId {
        match self.try_find(css) {
            Ok(Some(id)) => id,
            Ok(None) => panic!("no element matches {css:?} on {}", self.current_url()),
            Err(e) => panic!("find {css:?}: {e}"),
        }
    }

    /// Every element matching `css`, in document order.
    pub fn find_all(&self, css: &str) -> Vec<ElementId> {
        let body = json!({"using": "css selector", "value": css});
        let v = self.call(
            &format!("find all {css:?}"),
            "POST",
            "/elements",
            Some(body),
        );
        v.as_array()
            .map(|a| a.iter().filter_map(element_id).collect())
            .unwrap_or_default()
    }

    /// The rendered text of an element.
    pub fn element_text(&self, id: &ElementId) -> String {
        let v = self.call(
            "element text",
            "GET",
            &format!("/element/{}/text", id.0),
            None,
        );
        v.as_str().unwrap_or_default().to_string()
    }

    /// The rendered text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        self.element_text(&self.find(css))
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) {
        let id = self.find(css);
        self.call(
            &format!("click {css:?}"),
            "POST",
            &format!("/element/{}/click", id.0),
            None,
        );
    }

    /// Types `text` into the first element matching `css` (as key presses).
    pub fn type_text(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call(
            &format!("type into {css:?}"),
            "POST",
            &format!("/element/{}/value", id.0),
            Some(json!({ "text": text })),
        );
    }

    /// Polls until an element matches `css` and its text satisfies `accept`, and
    /// returns that text; panics after `timeout` with what it saw last (and leaves a
    /// screenshot `timeout-<n>.png`).
    pub fn wait_for(&self, css: &str, accept: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            let seen = self.try_find(css).and_then(|found| match found {
                Some(id) => self
                    .command("GET", &format!("/element/{}/text", id.0), None)
                    .map(|v| Some(v.as_str().unwrap_or_default().to_string())),
                None => Ok(None),
            });
            match seen {
                Ok(Some(text)) if accept(&text) => return text,
                Ok(Some(text)) => last = format!("text {text:?}"),
                Ok(None) => last = "no element matches".to_string(),
                // A page re-rendering between find and text: look again.
                Err(e) if e.error == "stale element reference" => last = e.to_string(),
                Err(e) => panic!("wait for {css:?}: {e}"),
            }
            if Instant::now() >= deadline {
                let shot = self.try_screenshot(&format!("timeout-{}", std::process::id()));
                panic!(
                    "{css:?} not as expected within {timeout:?}; last: {last}; url {}; screenshot {}",
                    self.current_url(),
                    shot.map(|p| p.display().to_string())
                        .unwrap_or_else(|e| format!("failed: {e}")),
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the text of the element matching `css` is `expected`.
    pub fn wait_text(&self, css: &str, expected: &str, timeout: Duration) {
        self.wait_for(css, |t| t == expected, timeout);
    }

    /// Runs `js` (a function body; `return` gives the result) in the page.
    pub fn execute(&self, js: &str) -> Value {
        let body = json!({"script": js, "args": []});
        self.call("execute script", "POST", "/execute/sync", Some(body))
    }

    /// Runs `js` in the page; it ends by calling `arguments[0](result)`. Bounded by
    /// the session's script timeout.
    pub fn execute_async(&self, js: &str) -> Value {
        let body = json!({"script": js, "args": []});
        self.call("execute async script", "POST", "/execute/async", Some(body))
    }

    /// Saves a PNG of the viewport as `<screenshots_dir>/<name>.png` and returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        self.try_screenshot(name)
            .unwrap_or_else(|e| panic!("screenshot {name:?}: {e}"))
    }

    fn try_screenshot(&self, name: &str) -> Result<PathBuf, String> {
        let v = self
            .command("GET", "/screenshot", None)
            .map_err(|e| e.to_string())?;
        let png = wire::base64_decode(v.as_str().unwrap_or_default())?;
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        std::fs::create_dir_all(&self.screenshots).map_err(|e| e.to_string())?;
        let path = self.screenshots.join(format!("{safe}.png"));
        std::fs::write(&path, png).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }
}

fn dir_of<'a>(browser: &'a Browser<'_>) -> &'a Path {
    browser
        .dir
        .as_ref()
        .map(|d| d.path())
        .unwrap_or(Path::new("."))
}

fn element_id(v: &Value) -> Option<ElementId> {
    v[ELEMENT_KEY].as_str().map(|s| ElementId(s.to_string()))
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let path = format!("/session/{session}");
            let _ = wire::request(self.driver, "DELETE", &path, None, QUIT_TIMEOUT);
        }
        if let Some(mut child) = self.child.take() {
            // The group's id is chromedriver's pid (`process_group(0)`).
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
        // Chromium's crash handler detaches into a session of its own.
        let left = self.netns.kill_all();
        if !left.is_empty() {
            eprintln!("browser: processes outlived SIGKILL: {left:?}");
        }
        if let Some(dir) = self.dir.take()
            && std::thread::panicking()
        {
            eprintln!("browser: temp dir kept at {}", dir.keep().display());
        }
    }
}
