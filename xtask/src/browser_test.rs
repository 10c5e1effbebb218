//! `cargo xtask browser-test`: the chat example in headless Chromium, driven by
//! `tests/browser/chat.test.js` through playwright-core.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`) and `node`/`npm`; playwright-core, pinned in
//! `tests/browser/package.json`, is installed into `target/browser-test/` (never globally).
//! Without Chromium or node the test is skipped, except under `CI=true`, where that fails.

use std::{
    env, fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{cargo, demo::Server, project_root, target_dir};

/// Longest the browser test may run; it waits at most seconds for each step itself.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

pub(crate) fn run() -> Result<(), String> {
    let in_ci = env::var("CI").is_ok_and(|ci| ci == "true");
    let chromium = env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let missing = if !Path::new(&chromium).is_file() {
        Some(format!(
            "no Chromium at {chromium} (apt-get install -y chromium, or set CHROMIUM)"
        ))
    } else if !succeeds(Command::new("node").arg("--version").stdout(Stdio::null())) {
        Some("no `node` on PATH (apt-get install -y nodejs npm)".to_owned())
    } else {
        None
    };
    if let Some(missing) = missing {
        if in_ci {
            return Err(format!("browser test cannot run: {missing}"));
        }
        eprintln!("xtask: browser test skipped: {missing}");
        return Ok(());
    }

    let modules = install_playwright()?;
    cargo(&["build", "--example", "chat"], &[])?;
    let mut chat = Server::start(
        "chat",
        &[
            ("HTTP_HOST", "127.0.0.1"),
            ("HTTP_PORT", "0"),
            ("METRICS_PORT", "0"),
            ("LOG_LEVEL", "INFO"),
        ],
    )?;
    let result = run_node(&chat, &chromium, &modules);
    chat.stop();
    result
}

/// Installs the pinned playwright-core into `target/browser-test/node_modules` unless it is
/// there already; returns that folder.
fn install_playwright() -> Result<std::path::PathBuf, String> {
    let dir = target_dir().join("browser-test");
    let manifest = fs::read_to_string(project_root().join("tests/browser/package.json"))
        .map_err(|e| format!("tests/browser/package.json: {e}"))?;
    let installed = fs::read_to_string(dir.join("package.json")).ok();
    let modules = dir.join("node_modules");
    if installed.as_deref() == Some(manifest.as_str())
        && modules.join("playwright-core/package.json").is_file()
    {
        return Ok(modules);
    }
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    fs::write(dir.join("package.json"), &manifest)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!("xtask: npm install (playwright-core) in {}", dir.display());
    let installed = succeeds(
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-package-lock",
                "--ignore-scripts",
            ])
            .current_dir(&dir),
    );
    if installed {
        Ok(modules)
    } else {
        Err(format!("npm install in {} failed", dir.display()))
    }
}

/// Runs the test file against the running chat, bounded by [`TEST_TIMEOUT`].
fn run_node(chat: &Server, chromium: &str, modules: &Path) -> Result<(), String> {
    let test = project_root().join("tests/browser/chat.test.js");
    eprintln!("xtask: node {}", test.display());
    let mut node = Command::new("node")
        .arg(&test)
        .env("CHAT_URL", format!("http://{}/", chat.address))
        .env("CHROMIUM", chromium)
        .env("NODE_PATH", modules)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run node: {e}"))?;
    let deadline = Instant::now() + TEST_TIMEOUT;
    loop {
        match node.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("browser test failed ({status})")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = node.kill();
                let _ = node.wait();
                return Err(format!("browser test took longer than {TEST_TIMEOUT:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("cannot wait for node: {e}")),
        }
    }
}

fn succeeds(command: &mut Command) -> bool {
    command.status().is_ok_and(|status| status.success())
}
