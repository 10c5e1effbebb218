//! [`RedisServer`]: a throwaway `redis-server` for tests.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Process, free_port};

/// Longest Redis may take to answer PING after starting.
const READY: Duration = Duration::from_secs(10);

/// A `redis-server` on a free loopback port, persistence off, killed by its PID when dropped
/// (and restartable on the same port, to test reconnection).
#[derive(Debug)]
pub struct RedisServer {
    process: Option<Process>,
    port: u16,
    /// With TLS: the directory holding the CA, certificate and key (deleted on drop).
    tls: Option<PathBuf>,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.tls {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl RedisServer {
    /// Starts one, or returns `None` (with a note on stderr) when `redis-server` is not
    /// installed.
    ///
    /// # Panics
    ///
    /// When it does not answer PING within 10 s; under `CI=true`, when it is not installed.
    pub fn start() -> Option<RedisServer> {
        if !installed("redis-server", "--version") {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is not installed, and CI=true requires it (.ci/run installs it)"
            );
            // Test output, captured by the harness: the test that asked passes without Redis.
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let mut server = RedisServer {
            process: None,
            port: free_port(),
            tls: None,
        };
        server.restart();
        Some(server)
    }

    /// Like [`start`](Self::start), but speaking only TLS, with a throwaway CA and a
    /// certificate for `localhost` made by `openssl`; `None` when either tool is missing.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start), and when `openssl` fails.
    pub fn start_tls() -> Option<RedisServer> {
        if !installed("openssl", "version") {
            eprintln!("SKIPPED: openssl is not installed");
            return None;
        }
        let mut server = RedisServer::start()?;
        server.kill();
        let dir = std::env::temp_dir().join(format!("redis-tls-{}", server.port));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let run = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl runs");
            assert!(status.success(), "openssl {args:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("write ext.cnf");
        run(&[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "redis.crt",
        ]);
        server.tls = Some(dir);
        server.restart();
        Some(server)
    }

    /// The CA that signed a TLS server's certificate.
    pub fn tls_ca(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|dir| dir.join("ca.crt"))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it hard (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts it (again) on the same port and waits until it answers PING.
    ///
    /// # Panics
    ///
    /// When it cannot be started or does not answer within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(dir) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(dir.join("redis.crt"))
                .arg("--tls-key-file")
                .arg(dir.join("redis.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.crt")),
        };
        command.args(["--save", "", "--appendonly", "no"]);
        self.process = Some(Process::start(command));
        let deadline = Instant::now() + READY;
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it answers PING with PONG (with TLS: whether it accepts connections).
    pub fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls.is_some() {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Runs one command with `redis-cli` and returns its output, trimmed.
    ///
    /// # Panics
    ///
    /// When `redis-cli` cannot be run.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

/// Whether `tool` runs (asked for its version with `arg`).
fn installed(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
