//! `cargo xtask demo [inter-service|cluster]`: build example programs, start them, show what they do,
//! and stop them cleanly on Ctrl-C. Also the process helpers `browser-test` uses.
//!
//! Ctrl-C: the terminal sends SIGINT to the whole foreground process group, so the servers get
//! it straight away and shut down gracefully (close 1001 to every socket). xtask itself must
//! outlive them to wait for them, and std cannot install a signal handler, so before starting
//! them xtask re-executes itself through `sh` with SIGINT ignored (an ignored signal stays
//! ignored across `exec`; the servers install their own handler). It then waits for the
//! servers; once one has exited it stops the others by PID (SIGINT, then SIGKILL after a grace
//! period) and exits.

use std::{
    env,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{cargo, logged_field, project_root, target_dir};

/// Set in the re-executed xtask: SIGINT is ignored and the examples are built.
const SIGINT_IGNORED: &str = "XTASK_DEMO_SIGINT_IGNORED";
/// How long a server may take to log its address once started (it is already built).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server gets to exit after SIGINT before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the inter-service demo waits for the notification to show up on the other side.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// `cargo xtask demo [inter-service]`.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        None | Some("chat") => chat(),
        Some("inter-service") => inter_service(),
        Some("cluster") => cluster(),
        Some(other) => Err(format!(
            "unknown demo {other:?}: use `cargo xtask demo` (the chat), `cargo xtask demo \
             inter-service` or `cargo xtask demo cluster`"
        )),
    }
}

/// Builds and starts the chat on `HTTP_PORT` (default 8000), prints the URL, runs until Ctrl-C.
/// Metrics go to `METRICS_PORT` if set, else to a free port (so that a busy 2121 does not stop
/// the demo).
fn chat() -> Result<(), String> {
    if env::var_os(SIGINT_IGNORED).is_none() {
        cargo(&["build", "--example", "chat"], &[])?;
        reexec_ignoring_sigint(&["demo", "chat"])?;
    }
    let port = env::var("HTTP_PORT").unwrap_or_else(|_| "8000".to_owned());
    let host = env::var("HTTP_HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let metrics_port = env::var("METRICS_PORT").unwrap_or_else(|_| "0".to_owned());
    let chat = Server::start(
        "chat",
        &[
            ("HTTP_PORT", &port),
            ("HTTP_HOST", &host),
            ("METRICS_PORT", &metrics_port),
        ],
    )?;
    let url = format!("http://{}/", browsable(chat.address));
    let metrics = chat.metrics_address.map_or_else(String::new, |address| {
        format!(" Metrics: http://{}/metrics.", browsable(address))
    });
    eprintln!(
        "\nxtask: the chat is up. Open {url} in two browser windows, join the same room and \
         talk; a third window in another room hears nothing.{metrics} Ctrl-C stops it.\n"
    );
    wait_then_stop_all(vec![chat])
}

/// Starts notification-service and ws-inter-service on ports the OS picks, points the second
/// at the first, sends one `POST /send-notification` and shows the service logging it.
fn inter_service() -> Result<(), String> {
    if env::var_os(SIGINT_IGNORED).is_none() {
        cargo(
            &[
                "build",
                "--example",
                "notification-service",
                "--example",
                "ws-inter-service",
            ],
            &[],
        )?;
        reexec_ignoring_sigint(&["demo", "inter-service"])?;
    }
    let local = [
        ("HTTP_HOST", "127.0.0.1"),
        ("HTTP_PORT", "0"),
        ("METRICS_PORT", "0"),
    ];
    // Ctrl-C reaches only the sender; the service is stopped by PID after it, so the sender
    // closes its connection to a service that is still there.
    let service = Server::start_in_own_process_group("notification-service", &local)?;
    let notification_url = format!("ws://{}/ws", service.address);
    let mut sender_env = local.to_vec();
    sender_env.push(("NOTIFICATION_URL", &notification_url));
    let sender = Server::start("ws-inter-service", &sender_env)?;

    let (status, body) = http_post(sender.address, "/send-notification")?;
    eprintln!(
        "\nxtask: POST http://{}/send-notification -> {status} {body}",
        sender.address
    );
    let line = service.wait_for_log("notification received", DELIVERY_TIMEOUT)?;
    eprintln!(
        "xtask: ws-inter-service wrote it to {notification_url}; notification-service logged:\n  \
         {line}\n\nxtask: both are running. Send more with\n  \
         curl -X POST http://{}/send-notification\nCtrl-C stops both.\n",
        sender.address
    );
    wait_then_stop_all(vec![sender, service])
}

/// Starts a throwaway Redis and two chat instances in cluster mode on ports the OS picks,
/// prints both URLs, runs until Ctrl-C. Redis is stopped by PID after the chats.
fn cluster() -> Result<(), String> {
    if env::var_os(SIGINT_IGNORED).is_none() {
        cargo(&["build", "--example", "chat"], &[])?;
        reexec_ignoring_sigint(&["demo", "cluster"])?;
    }
    let (_redis, redis_url) = crate::cluster::start_redis(false)?;
    // One app, two instances: they share APP_NAME, which names their Redis channels.
    let env = |_instance: &str| {
        [
            ("APP_NAME", "chat"),
            ("HTTP_HOST", "127.0.0.1"),
            ("HTTP_PORT", "0"),
            ("METRICS_PORT", "0"),
            ("REDIS_URL", redis_url.as_str()),
        ]
    };
    let a = Server::start("chat", &env("chat-a"))?;
    let b = Server::start("chat", &env("chat-b"))?;
    eprintln!(
        "\nxtask: two chat instances share their rooms through {redis_url}:\n\n  \
         instance A: http://{}/\n  instance B: http://{}/\n\n\
         Open one in each browser window and join the same room: messages cross instances. \
         /me shows your id; /dm <id> <text> and /kick <id> reach a connection on either. \
         Ctrl-C stops everything.\n",
        browsable(a.address),
        browsable(b.address),
    );
    wait_then_stop_all(vec![a, b])
}

/// Replaces this process with `sh`, which ignores SIGINT and executes xtask again with `args`.
/// Returns only if that cannot be done; elsewhere than on Unix it does nothing, and Ctrl-C
/// ends xtask together with the servers.
fn reexec_ignoring_sigint(args: &[&str]) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let xtask = env::current_exe().map_err(|e| format!("cannot find xtask's binary: {e}"))?;
        let error = Command::new("sh")
            .arg("-c")
            .arg("trap '' INT; exec \"$0\" \"$@\"")
            .arg(xtask)
            .args(args)
            .env(SIGINT_IGNORED, "1")
            .exec();
        Err(format!("cannot re-execute xtask through sh: {error}"))
    }
    #[cfg(not(unix))]
    {
        let _ = args;
        Ok(())
    }
}

/// A started example program. Its stdout (JSON logs) is copied to ours with its name in front,
/// and kept for [`wait_for_log`](Server::wait_for_log). Killed when dropped.
pub(crate) struct Server {
    name: &'static str,
    child: Child,
    /// Where it listens, from its "server listening" log line.
    pub(crate) address: SocketAddr,
    /// Where its `/metrics` is, from the log line before that one.
    metrics_address: Option<SocketAddr>,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `target/debug/examples/<name>` (built already) with `env` added to ours, and
    /// waits for it to log the address it listens on.
    pub(crate) fn start(name: &'static str, env: &[(&str, &str)]) -> Result<Server, String> {
        Server::spawn(name, env, false)
    }

    /// [`start`](Server::start), in a process group of its own, so that the terminal's Ctrl-C
    /// does not reach it: it is stopped by PID.
    fn start_in_own_process_group(
        name: &'static str,
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        Server::spawn(name, env, true)
    }

    fn spawn(
        name: &'static str,
        env: &[(&str, &str)],
        own_process_group: bool,
    ) -> Result<Server, String> {
        let program = target_dir().join("debug").join("examples").join(name);
        let mut command = Command::new(&program);
        #[cfg(unix)]
        if own_process_group {
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        #[cfg(not(unix))]
        let _ = own_process_group;
        let mut child = command
            .envs(env.iter().copied())
            .env_remove(SIGINT_IGNORED)
            .current_dir(project_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let stdout = child.stdout.take();
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[{name}] {line}");
                // Nobody may be listening any more; the copy above is what matters then.
                let _ = sender.send(line);
            }
        });
        let mut server = Server {
            name,
            child,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_address: None,
            lines,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        server.address = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = server.lines.recv_timeout(left).map_err(|_| {
                format!(
                    "{name} did not log its address within {START_TIMEOUT:?} ({})",
                    server.exit_description()
                )
            })?;
            let logged =
                |field| logged_field(&line, field).and_then(|address| address.parse().ok());
            if let Some(address) = logged("metrics_address") {
                server.metrics_address = Some(address);
            } else if let Some(address) = logged("address") {
                break address;
            }
        };
        Ok(server)
    }

    /// The first log line from now on whose `message` is `message`.
    pub(crate) fn wait_for_log(&self, message: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if logged_field(&line, "message").as_deref() == Some(message) => {
                    return Ok(line);
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "{} logged no {message:?} within {timeout:?}",
                        self.name
                    ));
                }
            }
        }
    }

    /// Whether it has exited (and how), or that it is still running.
    fn exit_description(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => format!("it exited: {status}"),
            Ok(None) => "it is still running".to_owned(),
            Err(e) => format!("its state is unknown: {e}"),
        }
    }

    /// Stops it by PID: SIGINT (a graceful shutdown), then SIGKILL if it is still running
    /// after [`STOP_GRACE`].
    pub(crate) fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        eprintln!("xtask: stopping {} (pid {})", self.name, self.child.id());
        let pid = self.child.id().to_string();
        let interrupted = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .is_ok_and(|status| status.success());
        let deadline = Instant::now() + STOP_GRACE;
        while interrupted && Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("xtask: {} did not stop; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until one server exits (Ctrl-C reaches them all), then stops the rest by PID.
fn wait_then_stop_all(mut servers: Vec<Server>) -> Result<(), String> {
    let (name, status) = 'wait: loop {
        for server in &mut servers {
            match server.child.try_wait() {
                Ok(Some(status)) => break 'wait (server.name, status),
                Ok(None) => {}
                Err(e) => return Err(format!("cannot wait for {}: {e}", server.name)),
            }
        }
        thread::sleep(Duration::from_millis(100));
    };
    for server in &mut servers {
        server.stop();
    }
    if status.success() {
        eprintln!("xtask: {name} exited cleanly; all stopped");
        Ok(())
    } else {
        Err(format!("{name} exited: {status}"))
    }
}

/// One `POST path` with an empty body; returns the status code and the body.
fn http_post(address: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let failed = |e: std::io::Error| format!("POST http://{address}{path}: {e}");
    let mut stream = TcpStream::connect_timeout(&address, DELIVERY_TIMEOUT).map_err(failed)?;
    stream
        .set_read_timeout(Some(DELIVERY_TIMEOUT))
        .map_err(failed)?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(failed)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(failed)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            format!("POST http://{address}{path}: not an HTTP response: {response:?}")
        })?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

/// An address a browser can open: an unspecified host (`0.0.0.0`) becomes localhost.
fn browsable(address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], address.port()))
    } else {
        address
    }
}
