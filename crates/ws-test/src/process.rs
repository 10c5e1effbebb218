//! [`AppProcess`]: a gofr-app program run as a child process on free loopback ports.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    panic::Location,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{
    served::Served,
    wait::{DEFAULT_TIMEOUT, fail},
};

/// How long a program may take to log that it listens.
const START_WAIT: Duration = Duration::from_secs(10);

/// A gofr-app program (an example, the service's own binary) started as a child process
/// with `HTTP_HOST=127.0.0.1`, `HTTP_PORT=0` and `METRICS_PORT=0`, so the OS picks its ports;
/// its addresses are read from its JSON log on stdout (gofr-app's `server listening` and
/// `metrics` lines, `LOG_LEVEL=INFO`). Killed by its PID when dropped, so no test leaves a
/// process behind.
///
/// ```no_run
/// # async fn run() {
/// use std::process::Command;
///
/// let server = ws_test::AppProcess::start(Command::new("target/debug/examples/echo"));
/// // or, in a package's integration test: AppProcess::example("echo", &[])
/// let mut client = server.connect("/ws").await;
/// client.send_text("hi").await;
/// assert_eq!(client.recv_text().await, "hi");
/// # }
/// ```
pub type AppProcess = Served<ChildProcess>;

/// What runs an [`AppProcess`]: a child process, killed by its PID when dropped.
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    log: mpsc::Receiver<serde_json::Value>,
}

impl AppProcess {
    /// Starts `command`; environment variables set on it win over the kit's. Waits (at most
    /// 10 s) for the program to log the address it listens on.
    ///
    /// # Panics
    ///
    /// When the program cannot be started or does not log its address in time.
    #[track_caller]
    pub fn start(mut command: Command) -> AppProcess {
        let caller = Location::caller();
        let program = command.get_program().to_string_lossy().into_owned();
        let set: Vec<_> = command.get_envs().map(|(k, _)| k.to_owned()).collect();
        for (name, value) in [
            ("HTTP_HOST", "127.0.0.1"),
            ("HTTP_PORT", "0"),
            ("METRICS_PORT", "0"),
            ("LOG_LEVEL", "INFO"),
        ] {
            if !set.iter().any(|k| k == name) {
                command.env(name, value);
            }
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| fail(caller, &format!("cannot start {program}: {e}")));
        let Some(stdout) = child.stdout.take() else {
            fail(caller, "the child's stdout was not piped")
        };
        let (tx, log) = mpsc::channel();
        // Drain every line, so a full pipe never blocks the server; pass on the JSON ones.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                    let _ = tx.send(json);
                }
            }
        });
        let deadline = Instant::now() + START_WAIT;
        let mut metrics_addr = None;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = log.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                fail(
                    caller,
                    &format!("{program} did not log its address within {START_WAIT:?}"),
                );
            };
            if let Some(addr) = logged_address(&line, "metrics_address") {
                metrics_addr = Some(addr);
            } else if let Some(addr) = logged_address(&line, "address") {
                break addr;
            }
        };
        AppProcess {
            addr,
            metrics_addr,
            kind: ChildProcess { child, log },
        }
    }

    /// Starts the package's example `name` (see [`example_path`]) with `envs` set, as
    /// [`start`](AppProcess::start).
    ///
    /// # Panics
    ///
    /// As [`start`](AppProcess::start) and [`example_path`].
    #[track_caller]
    pub fn example(name: &str, envs: &[(&str, &str)]) -> AppProcess {
        let mut command = Command::new(example_path(name));
        command.envs(envs.iter().copied());
        AppProcess::start(command)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.kind.child.id()
    }

    /// The next log line (JSON) whose `message` is `message`, skipping others; waits at
    /// most [`DEFAULT_TIMEOUT`].
    ///
    /// # Panics
    ///
    /// When no such line comes in time.
    #[track_caller]
    pub fn expect_log(&self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.kind.log.recv_timeout(left) {
                Ok(line) if line["message"] == message => return line,
                Ok(_) => continue,
                Err(_) => fail(
                    Location::caller(),
                    &format!("no log line {message:?} within {DEFAULT_TIMEOUT:?}"),
                ),
            }
        }
    }

    /// Sends SIGTERM (a graceful shutdown) to the process, by its PID. Unix only.
    ///
    /// # Panics
    ///
    /// When `kill` cannot be run or fails.
    #[track_caller]
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.kind.child.id().to_string()])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            fail(
                Location::caller(),
                &format!("kill -TERM {} failed", self.kind.child.id()),
            );
        }
    }

    /// Waits for the process to exit, at most `bound`; its exit status.
    ///
    /// # Panics
    ///
    /// When it is still running after `bound`.
    #[track_caller]
    pub fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let caller = Location::caller();
        let deadline = Instant::now() + bound;
        loop {
            match self.kind.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    // Polling a child's exit: std has no wait with a timeout.
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => fail(
                    caller,
                    &format!("the process did not exit within {bound:?}"),
                ),
                Err(error) => fail(caller, &format!("cannot wait for the process: {error}")),
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // `Child::kill` signals this child's PID only (SIGKILL), never a name.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn logged_address(line: &serde_json::Value, field: &str) -> Option<SocketAddr> {
    line.get(field)?.as_str()?.parse().ok()
}

/// The path of the package's example `name` (an `[[example]]` target), which `cargo test`
/// builds before the integration tests into `target/<profile>/examples/`, next to the test
/// binary's own directory. For starting it another way than [`AppProcess::example`] (behind
/// a shell that lowers its limits, or to check how it fails).
///
/// # Panics
///
/// When the test binary's path is unknown, or the example has not been built.
#[track_caller]
pub fn example_path(name: &str) -> PathBuf {
    let caller = Location::caller();
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| fail(caller, &format!("no test binary path: {e}")));
    let Some(profile_dir) = exe.parent().and_then(|deps| deps.parent()) else {
        fail(
            caller,
            &format!("{} is not in target/<profile>/deps", exe.display()),
        )
    };
    let program = profile_dir.join("examples").join(name);
    if !program.exists() {
        fail(
            caller,
            &format!(
                "no example {} (`cargo test` builds the examples, but not with a `--test` \
                     filter: run `cargo build --example {name}` first)",
                program.display()
            ),
        );
    }
    program
}
