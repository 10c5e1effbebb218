//! Process helpers for the cluster demo and benchmark: a throwaway `redis-server`, and chat
//! instances joined through it, on ports the OS picks, stopped by PID.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::logged_field;

/// Longest Redis or an instance may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process, killed by its PID when dropped.
pub(crate) struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program`, run at nice -10 when `nice` (ahead of other work on a shared machine).
fn command(program: &std::path::Path, nice: bool) -> Command {
    if nice {
        let mut command = Command::new("nice");
        command.args(["-n", "-10"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A `redis-server` on a free loopback port, persistence off, in a process group of its own
/// (the terminal's Ctrl-C does not reach it: it is stopped by PID after the apps, so they
/// never see it vanish while shutting down). Returns it and its URL.
pub(crate) fn start_redis(nice: bool) -> Result<(Process, String), String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let mut redis = command(std::path::Path::new("redis-server"), nice);
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut redis, 0);
    let child = redis
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start redis-server ({e}); install it with `apt-get install redis-server`"
            )
        })?;
    let redis = Process { child };
    let deadline = Instant::now() + START_TIMEOUT;
    while !answers_ping(port) {
        if Instant::now() > deadline {
            return Err("redis-server did not answer PING".to_owned());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok((redis, format!("redis://127.0.0.1:{port}/")))
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// Starts one chat instance on free ports, joined to `redis_url`; returns it and its HTTP
/// address, read from its JSON log line. Every instance gets `APP_NAME=chat`: the app name
/// is the channel prefix, so instances of one app must share it; `name` tells them apart
/// in the error messages only.
pub(crate) fn start_chat(
    binary: &std::path::Path,
    name: &str,
    redis_url: &str,
    nice: bool,
) -> Result<(Process, String), String> {
    let mut child = command(binary, nice)
        .env("APP_NAME", "chat")
        .env("HTTP_HOST", "127.0.0.1")
        .env("HTTP_PORT", "0")
        .env("METRICS_PORT", "0")
        .env("REDIS_URL", redis_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let process = Process { child };
    let (tx, rx) = mpsc::channel();
    // Keeps draining the log so the pipe never fills and blocks the server.
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(address) = logged_field(&line, "address") {
                let _ = tx.send(address);
            }
        }
    });
    let address = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| format!("{name} did not log its address"))?;
    Ok((process, address))
}
