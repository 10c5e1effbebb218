//! `cargo xtask fuzz [TARGET] [--time SECONDS]`: runs the cargo-fuzz targets of `fuzz/` with
//! `cargo +nightly fuzz run`, one after the other, and prints the executions and crashes of
//! each. Each target's body is a `fuzzing` function of the crate that owns the parser:
//! `ws_protocol` (frames, frames_deflate, inflate, negotiate), `ws_upgrader` (handshake),
//! `ws_backplane_redis` (envelope) and `gofr_app` (config).
//!
//! Needs a nightly toolchain and `cargo install cargo-fuzz`. New inputs go to
//! `fuzz/corpus/<target>/`, crashes to `fuzz/artifacts/<target>/`; each crate's stable test
//! `tests/fuzz_corpus.rs` replays both. Keep the corpus small (it is committed and replayed by
//! `cargo test`): after a run, `cargo +nightly fuzz cmin -O TARGET` in `fuzz/`; for
//! `handshake`, whose coverage is mostly the `http` crate's header parsing, merge on edges only
//! (`target/x86_64-unknown-linux-gnu/release/handshake -merge=1 -use_counters=0 NEW_DIR
//! corpus/handshake`), about a twentieth of the size for the same edges.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use crate::project_root;

/// Every target, in the order they run.
const TARGETS: &[&str] = &[
    "frames",
    "frames_deflate",
    "inflate",
    "negotiate",
    "handshake",
    "envelope",
    "config",
];
/// Seconds per target unless `--time` says otherwise.
const DEFAULT_SECONDS: u64 = 600;

/// One target's result.
struct Outcome {
    target: &'static str,
    executions: Option<u64>,
    crashes: usize,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets: Vec<&'static str> = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--time" => {
                let value = args.next().ok_or("--time needs a number of seconds")?;
                seconds = value
                    .parse()
                    .map_err(|_| format!("--time {value:?}: not a number of seconds"))?;
            }
            name => match TARGETS.iter().find(|t| **t == name) {
                Some(target) => targets.push(target),
                None => {
                    return Err(format!(
                        "unknown fuzz target {name:?}; targets: {}",
                        TARGETS.join(", ")
                    ));
                }
            },
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    let mut outcomes = Vec::new();
    for target in targets {
        outcomes.push(fuzz(target, seconds)?);
    }
    eprintln!("\nxtask fuzz: {seconds} s per target");
    eprintln!("{:<16} {:>14} {:>8}", "target", "executions", "crashes");
    for outcome in &outcomes {
        let executions = outcome
            .executions
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        eprintln!(
            "{:<16} {:>14} {:>8}",
            outcome.target, executions, outcome.crashes
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crashes > 0)
        .map(|o| o.target)
        .collect();
    if crashed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "crashes in {} (inputs under fuzz/artifacts/)",
            crashed.join(", ")
        ))
    }
}

/// Runs one target for `seconds`, echoing libFuzzer's summary lines.
fn fuzz(target: &'static str, seconds: u64) -> Result<Outcome, String> {
    let max_time = format!("-max_total_time={seconds}");
    eprintln!("xtask: cargo +nightly fuzz run -O {target} -- {max_time}");
    // `cargo` from PATH (rustup's proxy understands `+nightly`), not $CARGO.
    let mut child = Command::new("cargo")
        .args(["+nightly", "fuzz", "run", "-O", target, "--", &max_time])
        .current_dir(project_root().join("fuzz"))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo +nightly fuzz: {e}"))?;
    let mut executions = None;
    let mut crashes = 0;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // libFuzzer ends with "Done 123 runs in 60 second(s)".
            if let Some(rest) = line.strip_prefix("Done ") {
                executions = rest.split(' ').next().and_then(|n| n.parse().ok());
            }
            if line.contains("Test unit written to") {
                crashes += 1;
            }
            if line.starts_with("Done ")
                || line.contains("ERROR")
                || line.contains("SUMMARY")
                || line.contains("Test unit written to")
                || line.starts_with("error")
            {
                eprintln!("  {line}");
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cargo fuzz {target}: {e}"))?;
    if !status.success() && crashes == 0 {
        return Err(format!(
            "cargo +nightly fuzz run {target} failed ({status})"
        ));
    }
    Ok(Outcome {
        target,
        executions,
        crashes,
    })
}
