//! The console in a real browser: `tests/browser/console.test.mjs` drives Debian's
//! `chromium` with `playwright-core` against this server (embedded store; the console is the
//! same on both). It runs its own webhook receivers and saves a screenshot of each screen
//! to `target/console-screenshots/`.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules` (`npm ci`). Without
//! them the test says what is missing and passes, except under `CI=true`, where it fails.

use std::path::PathBuf;
use std::process::Stdio;

use crate::harness::{ADMIN_TOKEN, TestApp};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What is missing to run the browser, if anything.
fn missing() -> Option<String> {
    let browser = repository().join("tests/browser");
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        return Some("/usr/bin/chromium (apt-get install chromium)".into());
    }
    if !browser.join("node_modules/playwright-core").exists() {
        return Some(format!("{}/node_modules (npm ci)", browser.display()));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    if let Some(what) = missing() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the browser test needs {what}"
        );
        eprintln!("skipping the browser test: it needs {what}");
        return;
    }
    let app = TestApp::spawn_with(|config| {
        config.allow_private_destinations = true;
        config.delivery_retry_base_ms = 20;
        config.delivery_breaker_cool_down_ms = 500;
        config.webhook_timeout_ms = 2_000;
    })
    .await;
    let screenshots = repository().join("target/console-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let script = repository().join("tests/browser/console.test.mjs");
    let mut command = std::process::Command::new("node");
    command
        .arg("--test")
        .arg("--test-reporter=spec")
        // Each test of the script has its own timeout; this bounds the whole run.
        .arg("--test-timeout=300000")
        .arg(&script)
        .current_dir(repository().join("tests/browser"))
        .env("PULSESTREAM_URL", &app.base)
        .env("PULSESTREAM_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SCREENSHOT_DIR", &screenshots)
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
}
