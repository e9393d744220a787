//! Headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`; `scripts/test` installs them): each [`Browser`]
//! starts its own chromedriver on a free port.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long a page may take to show what a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// A fresh headless Chromium, `width`×`height` pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromedriver =
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // Its own process group, so the browsers it starts end with it.
        let driver = Command::new(&chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {chromedriver} ({e}): install chromium and chromium-driver (scripts/test does)")
            });
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}"), "--lang=en-US"],
            }
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let client = loop {
            let builder =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await;
            match builder {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromedriver did not start a session: {e}"),
            }
        };
        Browser { client, driver }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// The button whose accessible name (its text) is `name`, within `scope`
    /// (a CSS selector) when given.
    pub async fn button(&self, scope: Option<&str>, name: &str) -> Element {
        self.find_in(scope, &format!(".//button[normalize-space(.)='{name}']"))
            .await
    }

    /// Clicks [`Browser::button`].
    pub async fn click(&self, scope: Option<&str>, name: &str) {
        self.button(scope, name)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {name}: {e}"));
    }

    /// Types `text` into [`Browser::field`].
    pub async fn type_into(&self, scope: Option<&str>, label: &str, text: &str) {
        self.field(scope, label)
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("cannot type into {label}: {e}"));
    }

    /// The form control labelled `label`, within `scope`.
    pub async fn field(&self, scope: Option<&str>, label: &str) -> Element {
        let label_el = self
            .find_in(scope, &format!(".//label[normalize-space(.)='{label}']"))
            .await;
        let id = label_el
            .attr("for")
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("label {label} names no control"));
        self.client
            .find(Locator::Id(&id))
            .await
            .unwrap_or_else(|e| panic!("no control #{id} for label {label}: {e}"))
    }

    async fn find_in(&self, scope: Option<&str>, xpath: &str) -> Element {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let found = match scope {
                Some(css) => match self.client.find(Locator::Css(css)).await {
                    Ok(root) => root.find(Locator::XPath(xpath)).await,
                    Err(e) => Err(e),
                },
                None => {
                    self.client
                        .find(Locator::XPath(&xpath.replacen(".//", "//", 1)))
                        .await
                }
            };
            match found {
                Ok(el) if el.is_displayed().await.unwrap_or(false) => return el,
                _ if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => panic!(
                    "no visible {xpath} in {scope:?}; the page:\n{}",
                    self.text("body").await
                ),
            }
        }
    }

    /// The text of the first element `css` selects ("" when none).
    pub async fn text(&self, css: &str) -> String {
        self.client
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                vec![json!(css)],
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Waits until the text of `css` contains `needle`; that text.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let text = self.text(css).await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{css}` never said {needle:?}; it says:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A marker on `window` that a reload would drop: set it, and check
    /// later with [`Browser::still_same_page`] that nothing reloaded.
    pub async fn mark_page(&self) {
        self.client
            .execute("window.__gantryTestMark = 42; return null;", vec![])
            .await
            .unwrap();
    }

    pub async fn still_same_page(&self) -> bool {
        self.client
            .execute("return window.__gantryTestMark === 42;", vec![])
            .await
            .unwrap()
            == json!(true)
    }

    /// Controls without an accessible name (a label, aria-label or text):
    /// their outer HTML.
    pub async fn unnamed_controls(&self) -> Vec<String> {
        let v = self
            .client
            .execute(
                "return [...document.querySelectorAll('button, input:not([type=hidden]), select, textarea, a[href]')]
                   .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                                && !(e.innerText || '').trim() && !e.title)
                   .map(e => e.outerHTML);",
                vec![],
            )
            .await
            .unwrap();
        serde_json::from_value(v).unwrap_or_default()
    }

    /// Saves a screenshot of the page as `docs/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started (same process group).
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}
