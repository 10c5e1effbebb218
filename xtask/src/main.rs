//! Project tasks in Rust, run as `cargo xtask <task>` (the cargo-xtask convention:
//! <https://github.com/matklad/cargo-xtask>). Only std, so it builds in seconds.

mod autobahn;
mod bench;
mod bench_cluster;
mod browser_test;
mod cluster;
mod demo;
mod fuzz;
mod tidy;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  ci     everything CI checks: fmt, clippy -D warnings, rustdoc -D warnings, all tests (the
         interop clients of examples/tests/interop.rs included), tidy
  tidy   workspace conventions (crate READMEs, changelogs, docs lints, no println! in libraries)
  bench  release-build performance comparison with the raw engine and peers (see bench/README.md)
  autobahn  the Autobahn TestSuite (517 cases, kosoku from PyPI in target/autobahn/venv)
            against the echo example; fails unless every case passes
  demo   build and start the chat example, print its URL; Ctrl-C stops it
  demo inter-service
         start notification-service and ws-inter-service, send one notification between them
  demo cluster
         start Redis and two chat instances sharing rooms through it; print both URLs
  fuzz [TARGET] [--time SECONDS]
         the ws-protocol fuzz targets (frames, frames_deflate, inflate, negotiate; default
         all, 600 s each) with cargo +nightly fuzz; prints executions and crashes per target
  browser-test
         the chat example in headless Chromium (playwright-core); CI=true makes a missing
         browser a failure instead of a skip
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench::run(&args[1..]),
        Some("tidy") => tidy::check(&project_root()).map_err(|problems| problems.join("\n")),
        Some("autobahn") => autobahn::run(),
        Some("demo") => demo::run(&args[1..]),
        Some("browser-test") => browser_test::run(),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            eprint!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown task {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: xtask's manifest directory is `<root>/xtask`.
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Cargo's target directory: `CARGO_TARGET_DIR` or `<root>/target`, where the tasks find what
/// cargo built and keep their own files.
pub(crate) fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| project_root().join("target"), PathBuf::from)
}

/// The value of a top-level string field in one of gofr-app's flat JSON log lines, such as
/// `"address":"127.0.0.1:80"` (enough for our own logs: the value holds no quote). Every task
/// that starts an example finds its address this way.
pub(crate) fn logged_field(line: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\":\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(line[start..start + len].to_owned())
}

/// Runs `cargo` (the one that runs us) with `args` at the root; an error names the step.
fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(project_root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// One build profile for everything (debug), so clippy, doc and test reuse the same artifacts
/// where they can.
fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    tidy::check(&project_root()).map_err(|problems| problems.join("\n"))?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    cargo(&["test", "--workspace"], &[])?;
    // In the workspace the examples turn on gofr-app's `redis` feature; built alone, its
    // branches without the feature are checked and tested too.
    cargo(
        &[
            "clippy",
            "-p",
            "gofr-app",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(&["test", "-p", "gofr-app"], &[])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::logged_field;

    #[test]
    fn reads_string_fields_of_a_log_line() {
        let line =
            r#"{"level":"INFO","metrics_address":"127.0.0.1:2121","address":"127.0.0.1:8000"}"#;
        assert_eq!(
            logged_field(line, "address").as_deref(),
            Some("127.0.0.1:8000")
        );
        assert_eq!(
            logged_field(line, "metrics_address").as_deref(),
            Some("127.0.0.1:2121")
        );
        assert_eq!(logged_field(line, "port"), None);
    }
}
