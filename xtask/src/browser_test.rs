//! `cargo xtask browser-test`: the examples in headless Chromium, driven through
//! playwright-core: the chat (`tests/browser/chat.test.js`), then the interop schedule against
//! the echo example (`tests/browser/echo.test.js`) three times: permessage-deflate as the
//! server's defaults answer it (no context takeover), with context takeover, and declined.
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
    cargo(&["build", "--example", "chat", "--example", "echo"], &[])?;
    let mut chat = Server::start("chat", SERVER_ENV)?;
    let url = format!("http://{}/", chat.address);
    let result = run_node("chat.test.js", &[("CHAT_URL", &url)], &chromium, &modules);
    chat.stop();
    result?;
    for (variant, settings) in ECHO_VARIANTS {
        let env: Vec<_> = SERVER_ENV
            .iter()
            .chain(ECHO_PINGS)
            .chain(settings.iter())
            .copied()
            .collect();
        let mut echo = Server::start("echo", &env)?;
        let url = format!("ws://{}/ws", echo.address);
        let vars = [("ECHO_URL", url.as_str()), ("ECHO_VARIANT", variant)];
        let result = run_node("echo.test.js", &vars, &chromium, &modules);
        echo.stop();
        result?;
    }
    Ok(())
}

/// Every server the browser test starts: loopback, ports the OS picks.
const SERVER_ENV: &[(&str, &str)] = &[
    ("HTTP_HOST", "127.0.0.1"),
    ("HTTP_PORT", "0"),
    ("METRICS_PORT", "0"),
    ("LOG_LEVEL", "INFO"),
];

/// The echo server pings a connection quiet for 100 ms and gives the pong 300 ms, so that the
/// idle second at the end of the echo test shows the browser answering pings.
const ECHO_PINGS: &[(&str, &str)] = &[
    ("WS_PING_INTERVAL_MS", "100"),
    ("WS_PONG_TIMEOUT_MS", "300"),
];

/// The echo test's variants (`ECHO_VARIANT`) and the echo server's settings for each.
const ECHO_VARIANTS: [(&str, &[(&str, &str)]); 3] = [
    ("default", &[]),
    ("takeover", &[("WS_CONTEXT_TAKEOVER", "1")]),
    ("off", &[("WS_COMPRESSION", "off")]),
];

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

/// Runs `tests/browser/<file>` with `vars` (where its server is), bounded by
/// [`TEST_TIMEOUT`].
fn run_node(
    file: &str,
    vars: &[(&str, &str)],
    chromium: &str,
    modules: &Path,
) -> Result<(), String> {
    let test = project_root().join("tests/browser").join(file);
    eprintln!("xtask: node {}", test.display());
    let mut node = Command::new("node")
        .arg(&test)
        .envs(vars.iter().copied())
        .env("CHROMIUM", chromium)
        .env("NODE_PATH", modules)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run node: {e}"))?;
    let deadline = Instant::now() + TEST_TIMEOUT;
    loop {
        match node.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("browser test {file} failed ({status})")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = node.kill();
                let _ = node.wait();
                return Err(format!(
                    "browser test {file} took longer than {TEST_TIMEOUT:?}"
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("cannot wait for node: {e}")),
        }
    }
}

fn succeeds(command: &mut Command) -> bool {
    command.status().is_ok_and(|status| status.success())
}
