//! [`Process`]: a child process that cannot outlive its test.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// A program started by a test: its stdout read line by line on a thread of its own (so a
/// full pipe never blocks it), its stderr dropped, and the process killed by its PID when
/// this guard is dropped, whatever the test did.
#[derive(Debug)]
pub struct Process {
    child: Child,
    program: String,
    lines: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `command` with stdout piped and stderr dropped; stdin is as `command` says.
    ///
    /// # Panics
    ///
    /// When it cannot be started.
    pub fn start(mut command: Command) -> Process {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {program}: {error}"));
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Process {
            child,
            program,
            lines,
        }
    }

    /// The next line of its stdout that contains `what`, skipping others; waits at most
    /// `bound`.
    ///
    /// # Panics
    ///
    /// When no such line comes in time.
    pub fn line_with(&self, what: &str, bound: Duration) -> String {
        let deadline = Instant::now() + bound;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("{}: no line with {what:?} within {bound:?}", self.program);
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdin, if `command` piped it; dropping it closes the pipe.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Waits at most `bound` for it to exit; its exit status.
    ///
    /// # Panics
    ///
    /// When it is still running after `bound`.
    pub fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    // std has no wait with a timeout for a child.
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => panic!("{} did not exit within {bound:?}", self.program),
                Err(error) => panic!("cannot wait for {}: {error}", self.program),
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL to this child's PID only, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
