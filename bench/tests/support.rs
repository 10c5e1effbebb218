//! Start the built programs as processes on 127.0.0.1 with OS-chosen ports, and stop them.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A running program; killed by its PID when dropped.
pub(crate) struct Process {
    child: Child,
    pub(crate) lines: mpsc::Receiver<String>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub(crate) fn start(program: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Process { child, lines }
    }

    /// The first line containing `what`, waiting at most [`WAIT`].
    pub(crate) fn line_with(&self, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no line with {what:?} within {WAIT:?}");
    }

    pub(crate) fn stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Waits (at most [`WAIT`]) for the program to exit; true if it succeeded.
    pub(crate) fn exited_ok(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
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
    let process = Process::start(program, &[], &env);
    // The app logs its metrics address first; the server's own line is the one without it.
    let line = loop {
        let line = process.line_with("127.0.0.1:");
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
    let mut process = Process::start(env!("CARGO_BIN_EXE_loadgen"), args, &[]);
    drop(process.stdin());
    let result = process.line_with("result ");
    assert!(process.exited_ok(), "loadgen failed: {result}");
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
