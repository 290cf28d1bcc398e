//! A small W3C WebDriver client for the dashboard's browser test: starts
//! ChromeDriver on a free loopback port, opens one headless Chromium session,
//! and offers the few commands the test needs (navigate, find, click, type,
//! read text, run a script, wait). Dropping it ends the session and stops the
//! driver it started, by pid, also when the test panics.
//!
//! The browser is Debian's Chromium (`cargo xtask test` installs it when
//! missing; see `xtask::browser`), started with the flags that keep it off
//! the network: these machines refuse connections to the outside, and a
//! Chromium that tries them stalls.

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The W3C name of an element reference in a JSON answer.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

/// A running ChromeDriver with one browser session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: crate::PersistDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium.
    pub fn start() -> Self {
        let tools = xtask::browser::Browser::locate();
        assert!(
            tools.present(),
            "Chromium and ChromeDriver are missing ({} and {}): `cargo xtask test` installs them",
            tools.chromium.display(),
            tools.chromedriver.display()
        );
        let port = crate::free_port();
        let log_dir = xtask::repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&log_dir).expect("create target/e2e-logs");
        let log = std::fs::File::create(log_dir.join(format!("chromedriver-{port}.log")))
            .expect("create the driver log");
        use std::os::unix::process::CommandExt;
        let driver = Command::new(&tools.chromedriver)
            // Its own process group, so the browser it starts stops with it.
            .process_group(0)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let profile = crate::PersistDir::new("chromium-profile");
        let mut browser = Self {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            _profile: profile,
        };
        browser.wait_driver();
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,1000".to_owned(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The dashboard asks before it revokes or deletes: say yes.
            "unhandledPromptBehavior": "accept",
            "goog:chromeOptions": {
                "binary": tools.chromium.display().to_string(),
                "args": args,
            },
        }}});
        let reply = browser.command("POST", "/session", caps);
        browser.session = reply["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {reply}"))
            .to_owned();
        browser
    }

    fn wait_driver(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/status", self.base);
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited early ({status})");
            }
            let ready = ureq::get(&url)
                .timeout(Duration::from_secs(2))
                .call()
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not get ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends one WebDriver command and returns its `value`; a WebDriver
    /// error fails the test with the driver's message.
    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_command(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    fn try_command(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = ureq::request(method, &url).timeout(Duration::from_secs(60));
        let result = if method == "GET" || method == "DELETE" {
            req.call()
        } else {
            req.send_json(body)
        };
        let reply: Value = match result {
            Ok(r) => r.into_json().map_err(|e| e.to_string())?,
            Err(ureq::Error::Status(code, r)) => {
                let v: Value = r.into_json().unwrap_or(Value::Null);
                return Err(format!(
                    "{code} {}: {}",
                    v["value"]["error"], v["value"]["message"]
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        Ok(reply["value"].clone())
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.command("POST", &self.session_path("/url"), json!({ "url": url }));
    }

    /// The first element matching the CSS `selector`, if any.
    pub fn find(&self, selector: &str) -> Option<Element> {
        let found = self.try_command(
            "POST",
            &self.session_path("/element"),
            json!({"using": "css selector", "value": selector}),
        );
        found
            .ok()
            .and_then(|v| v[ELEMENT_KEY].as_str().map(|id| Element(id.to_owned())))
    }

    /// Waits (up to `timeout`) for an element matching `selector` that is
    /// displayed, and returns it.
    pub fn wait_for(&self, selector: &str, timeout: Duration) -> Element {
        self.wait_until(&format!("a visible {selector}"), timeout, || {
            self.find(selector).filter(|e| self.displayed(e))
        })
    }

    /// Polls `probe` every 100 ms until it gives a value, failing the test
    /// (with `what` and the page's status line) after `timeout`.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            if Instant::now() >= deadline {
                let status = self.script(
                    "return ['#status', '#login-error'].map(s => (document.querySelector(s) || {}).textContent || '').join(' ')",
                    json!([]),
                );
                panic!("waited {timeout:?} for {what}; the page says: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks `element`.
    pub fn click(&self, element: &Element) {
        self.command(
            "POST",
            &self.session_path(&format!("/element/{}/click", element.0)),
            json!({}),
        );
    }

    /// Clicks the first element matching `selector`, finding it again if
    /// the page replaced it in between (a table re-rendered by its view).
    pub fn click_on(&self, selector: &str) {
        self.wait_until(
            &format!("a clickable {selector}"),
            Duration::from_secs(10),
            || {
                let element = self.find(selector).filter(|e| self.displayed(e))?;
                self.try_command(
                    "POST",
                    &self.session_path(&format!("/element/{}/click", element.0)),
                    json!({}),
                )
                .ok()
            },
        );
    }

    /// Replaces the value of the input matching `selector` with `text`.
    pub fn type_into(&self, selector: &str, text: &str) {
        let element = self.wait_for(selector, Duration::from_secs(10));
        self.command(
            "POST",
            &self.session_path(&format!("/element/{}/clear", element.0)),
            json!({}),
        );
        self.command(
            "POST",
            &self.session_path(&format!("/element/{}/value", element.0)),
            json!({ "text": text }),
        );
    }

    /// The rendered text of `element`.
    pub fn text(&self, element: &Element) -> String {
        self.command(
            "GET",
            &self.session_path(&format!("/element/{}/text", element.0)),
            json!({}),
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The rendered text of the first element matching `selector`, or "".
    pub fn text_of(&self, selector: &str) -> String {
        self.find(selector)
            .map(|e| self.text(&e))
            .unwrap_or_default()
    }

    /// Whether `element` is displayed.
    pub fn displayed(&self, element: &Element) -> bool {
        self.try_command(
            "GET",
            &self.session_path(&format!("/element/{}/displayed", element.0)),
            json!({}),
        )
        .is_ok_and(|v| v == json!(true))
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns.
    pub fn script(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            &self.session_path("/execute/sync"),
            json!({ "script": script, "args": args }),
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_command("DELETE", &self.session_path(""), Value::Null);
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
