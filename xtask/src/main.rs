//! Project tasks in Rust, run as `cargo xtask <task>` (the cargo-xtask convention:
//! <https://github.com/matklad/cargo-xtask>). Only std, so it builds in seconds.

mod bench_cluster;
mod cluster;
mod tidy;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  ci     everything CI checks: fmt, clippy -D warnings, rustdoc -D warnings, all tests, tidy
  tidy   workspace conventions (crate READMEs, changelogs, docs lints, no println! in libraries)
  demo cluster    Redis and two chat instances sharing rooms; prints both URLs; Ctrl-C stops all
  bench-cluster   cross-instance delivery at 1,000 and 5,000 msgs/s: delivery ratio, p99
";

fn main() -> ExitCode {
    let task = env::args().nth(1);
    let result = match task.as_deref() {
        Some("ci") => ci(),
        Some("tidy") => tidy::check(&project_root()).map_err(|problems| problems.join("\n")),
        Some("demo") => match env::args().nth(2).as_deref() {
            Some("cluster") => cluster::demo(),
            _ => Err(format!("usage: cargo xtask demo cluster\n\n{USAGE}")),
        },
        Some("bench-cluster") => bench_cluster::run(&env::args().skip(2).collect::<Vec<_>>()),
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
    Ok(())
}
