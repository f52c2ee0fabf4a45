//! The status page in a real browser: Debian's headless Chromium, driven
//! through chromedriver's WebDriver HTTP API, against the admin router
//! served on a free localhost port and a fresh Postgres database. Logs in,
//! sees a parked event, clicks Replay, sees it resolved; saves screenshots
//! to `<target dir>/admin-status-page.png` (and `…-replayed.png`) for
//! review.
//!
//! Needs /usr/bin/chromium and /usr/bin/chromedriver (`bash scripts/provision`
//! installs them; `scripts/test` runs it); fails without them.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use support::{World, TOKEN};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, killed when dropped; and the browser profile it used.
struct Driver {
    child: Child,
    url: String,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver and the browser it started share a process group
        // (see `start`): end them all, also when the test failed before
        // closing its session
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A free TCP port on localhost (free when this returns).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Driver {
    async fn start(http: &reqwest::Client) -> Driver {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: the status page's browser test needs Debian's `chromium` and \
                 `chromium-driver` packages; run `bash scripts/provision` (or the test command \
                 `scripts/test`, which runs it) to install them"
            );
        }
        let port = free_port();
        let profile = std::env::temp_dir().join(format!(
            "annals-admin-browser-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&profile).expect("a profile directory");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{}/status", driver.url)).send().await;
            if let Ok(response) = ready {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    return driver;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver is not ready after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn session(&self, http: &reqwest::Client) -> Session {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-crash-reporter",
                    "--disable-breakpad",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", self.profile.display()),
                ],
            },
        }}});
        let answer = command(
            http,
            reqwest::Method::POST,
            format!("{}/session", self.url),
            Some(capabilities),
        )
        .await;
        let id = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {answer}"));
        Session {
            http: http.clone(),
            url: format!("{}/session/{id}", self.url),
        }
    }
}

/// Sends a WebDriver command; returns its `value`, or fails with the
/// driver's error.
async fn command(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> Value {
    let mut request = http.request(method.clone(), &url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let ok = response.status().is_success();
    let answer: Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: not JSON: {e}"));
    assert!(ok, "{method} {url}: {answer}");
    answer["value"].clone()
}

/// A browser session.
struct Session {
    http: reqwest::Client,
    url: String,
}

impl Session {
    async fn post(&self, path: &str, body: Value) -> Value {
        command(
            &self.http,
            reqwest::Method::POST,
            format!("{}{path}", self.url),
            Some(body),
        )
        .await
    }

    async fn get(&self, path: &str) -> Value {
        command(
            &self.http,
            reqwest::Method::GET,
            format!("{}{path}", self.url),
            None,
        )
        .await
    }

    async fn open(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// The element `css` selects, waiting up to 10 s for it to appear.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .http
                .post(format!("{}/element", self.url))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await;
            if let Ok(response) = found {
                let answer: Value = response.json().await.unwrap_or_default();
                if let Some(id) = answer["value"][ELEMENT].as_str() {
                    return id.to_owned();
                }
            }
            if Instant::now() >= deadline {
                let source = self.get("/source").await;
                panic!(
                    "no element `{css}` after 10 s; the page:\n{}",
                    source.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        let text = self.get(&format!("/element/{id}/text")).await;
        text.as_str().unwrap_or_default().to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await;
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    /// Saves a PNG screenshot of the window to `path`.
    async fn screenshot(&self, path: &Path) {
        let png = self.get("/screenshot").await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 text"))
            .expect("a base64 screenshot");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot is not a PNG"
        );
        std::fs::write(path, &png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        let written = std::fs::read(path).expect("the screenshot file");
        assert!(written.starts_with(b"\x89PNG\r\n\x1a\n") && written.len() > 1000);
    }

    async fn close(self) {
        command(&self.http, reqwest::Method::DELETE, self.url, None).await;
    }
}

/// The target directory (`target/` or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replays_a_parked_event_from_the_status_page() {
    let http = reqwest::Client::new();
    let driver = Driver::start(&http).await;

    let world = World::new().await;
    let id = world
        .park("lead-ana", "a note the projection chokes on")
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let page = format!(
        "http://127.0.0.1:{}/admin",
        listener.local_addr().expect("an address").port()
    );
    let app = world.app();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let browser = driver.session(&http).await;
    browser.open(&page).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#login").await;

    let row = browser.text(&format!("#dead-letter-{id}")).await;
    assert!(
        row.contains("lead-ana")
            && row.contains("cannot file the note a note the projection chokes on"),
        "the parked event: {row}"
    );
    let projections = browser.text("#projections").await;
    assert!(projections.contains("notes"), "{projections}");
    assert!(browser.text("#horizon").await.starts_with("Transaction "));
    browser
        .screenshot(&target_dir().join("admin-status-page.png"))
        .await;

    browser.click(&format!("#replay-{id}")).await;
    let notice = browser.text("#notice").await;
    assert_eq!(notice, format!("Dead letter {id} replayed: resolved."));
    assert_eq!(
        browser.text("#no-dead-letters").await,
        "No pending dead letters."
    );
    browser
        .screenshot(&target_dir().join("admin-status-page-replayed.png"))
        .await;

    browser.close().await;
    server.abort();
}
