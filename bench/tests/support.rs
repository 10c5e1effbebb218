//! Start the built programs as processes on 127.0.0.1 with OS-chosen ports, and stop them.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::Duration,
};

use test_support::Process;

pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Starts `program` with `args` and `env`, its stdin piped (closing it tells the load
/// generator to finish); killed by its PID when dropped.
pub(crate) fn start(program: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped());
    Process::start(command)
}

/// A benchmark server and the `host:port` it printed.
pub(crate) fn server(program: &str) -> (Process, String) {
    server_with(program, &[])
}

/// A benchmark server started with variables of its own too (`DEFLATE=1`).
pub(crate) fn server_with(program: &str, extra_env: &[(&str, &str)]) -> (Process, String) {
    let mut env = vec![
        ("HTTP_HOST", "127.0.0.1"),
        ("HTTP_PORT", "0"),
        ("METRICS_PORT", "0"),
    ];
    env.extend_from_slice(extra_env);
    let process = start(program, &[], &env);
    // The app logs its metrics address first; the server's own line is the one without it.
    let line = loop {
        let line = process.line_with("127.0.0.1:", WAIT);
        if !line.contains("metrics_address") {
            break line;
        }
    };
    let start = line.find("127.0.0.1:").expect("address");
    let address: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    (process, address)
}

/// Runs the load generator to its end; returns the fields of its `result` line.
pub(crate) fn loadgen(args: &[&str]) -> BTreeMap<String, String> {
    let mut process = start(env!("CARGO_BIN_EXE_loadgen"), args, &[]);
    drop(process.take_stdin());
    let result = process.line_with("result ", WAIT);
    assert!(
        process.wait_exit(WAIT).success(),
        "loadgen failed: {result}"
    );
    fields(&result)
}

pub(crate) fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

pub(crate) fn number(fields: &BTreeMap<String, String>, name: &str) -> f64 {
    fields
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {name} in {fields:?}"))
}
