//! [`RedisServer`]: a throwaway `redis-server` for tests; [`RedisCluster`]: a throwaway
//! three-master, three-replica Redis Cluster.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
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

/// A throwaway Redis Cluster for tests: three masters and three replicas on loopback ports
/// that are free (and whose cluster bus port, the port plus 10,000, is free too), a node
/// timeout of one second so a replica takes over soon after its master dies, no
/// persistence; every node killed by PID when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts one and waits until every node says `cluster_state:ok`; None (with a message)
    /// when `redis-server` is not installed.
    pub fn start() -> Option<RedisCluster> {
        // Checks for the tools and the CI rule.
        drop(RedisServer::start()?);
        let mut ports = Vec::new();
        let mut holders = Vec::new();
        while ports.len() < 6 {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
            let port = listener.local_addr().expect("its address").port();
            // The cluster bus listens on port + 10,000.
            let bus = port
                .checked_add(10_000)
                .and_then(|bus| TcpListener::bind(("127.0.0.1", bus)).ok());
            if let Some(bus) = bus {
                ports.push(port);
                holders.push((listener, bus));
            }
        }
        drop(holders);
        let dir = std::env::temp_dir().join(format!("redis-cluster-{}", ports[0]));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        for port in ports {
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .arg("--cluster-config-file")
                .arg(cluster.dir.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&cluster.dir)
                .args(["--save", "", "--appendonly", "no"])
                // A replica takes over only with its master's data: sync at once, not
                // after the default 5 s wait for more replicas.
                .args(["--repl-diskless-sync-delay", "0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            cluster.nodes.push((port, Some(child)));
        }
        let deadline = Instant::now() + READY;
        for (port, _) in &cluster.nodes {
            while cli(*port, &["PING"]) != "PONG" {
                assert!(Instant::now() < deadline, "a cluster node did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_ok();
        for (port, _) in &cluster.nodes {
            while cli(*port, &["INFO", "replication"]).contains("role:slave")
                && !cli(*port, &["INFO", "replication"]).contains("master_link_status:up")
            {
                assert!(Instant::now() < deadline + READY, "a replica did not sync");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(cluster)
    }

    /// `redis://127.0.0.1:<port>` of every node, comma-separated, as `REDIS_URL` names a
    /// cluster.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A live node's port.
    fn live(&self) -> u16 {
        self.nodes
            .iter()
            .find(|(_, child)| child.is_some())
            .map(|(port, _)| *port)
            .expect("a live node")
    }

    /// The slot of a key or channel.
    pub fn slot(&self, key: &str) -> u16 {
        cli(self.live(), &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot number")
    }

    /// The port of the master serving `slot`, as a live node sees it; None while no live
    /// master serves it (a failover under way).
    pub fn master_of(&self, slot: u16) -> Option<u16> {
        for line in cli(self.live(), &["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                matches!((start.parse::<u16>(), end.parse::<u16>()),
                    (Ok(start), Ok(end)) if (start..=end).contains(&slot))
            });
            if serves {
                let address = fields[1].split('@').next().unwrap_or_default();
                return address
                    .rsplit(':')
                    .next()
                    .and_then(|port| port.parse().ok());
            }
        }
        None
    }

    /// The ports of the masters.
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = [0, 8000, 16383]
            .into_iter()
            .map(|slot| self.master_of(slot).expect("a master for every slot"))
            .collect();
        masters.sort_unstable();
        masters.dedup();
        masters
    }

    /// CPU seconds (user and system) each master used so far, by port.
    pub fn master_cpu(&self) -> Vec<(u16, f64)> {
        self.masters()
            .into_iter()
            .map(|port| (port, cpu_seconds(&cli(port, &["INFO", "cpu"]))))
            .collect()
    }

    /// How many clients subscribe to a sharded channel, over every live node.
    pub fn subscribers(&self, channel: &str) -> usize {
        self.nodes
            .iter()
            .filter(|(_, child)| child.is_some())
            .filter_map(|(port, _)| {
                cli(*port, &["PUBSUB", "SHARDNUMSUB", channel])
                    .lines()
                    .nth(1)
                    .and_then(|n| n.trim().parse::<usize>().ok())
            })
            .sum()
    }

    /// `CLUSTER NODES` as a live node says it, for failure messages.
    pub fn nodes(&self) -> String {
        cli(self.live(), &["CLUSTER", "NODES"])
    }

    /// Kills the node on `port` hard (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.nodes {
            if *p == port
                && let Some(mut child) = child.take()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Waits until every live node says `cluster_state:ok` (after a failover: once a replica
    /// took over every slot of the dead master).
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for (port, child) in &self.nodes {
            if child.is_none() {
                continue;
            }
            while !cli(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs one command with `redis-cli` on a port and returns its output, trimmed.
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// `used_cpu_sys` plus `used_cpu_user` out of an `INFO cpu` answer.
pub fn cpu_seconds(info: &str) -> f64 {
    info.lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(':')?;
            matches!(name, "used_cpu_sys" | "used_cpu_user")
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
