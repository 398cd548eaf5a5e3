//! A real `redis-server` for tests: started on a free loopback port, killed
//! when dropped (or on demand, to test outages).
//!
//! When the binary is missing, the tests that need it are compiled as
//! ignored (`build.rs` sets `cfg(no_redis_server)`; each such test carries
//! `#[cfg_attr(no_redis_server, ignore = ...)]`), so they are reported as
//! ignored, never as passed. A test that starts a server anyway (run with
//! `--include-ignored`, or under `CI=true`, where nothing is ignored) fails
//! with the reason. `TIERLIMIT_TEST_REDIS_SERVER` names another binary.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// The TLS port, for a server started with [`RedisServer::start_tls`]
    /// (its plain port stays open for the test's own commands).
    pub tls_port: Option<u16>,
    /// Arguments given after the defaults.
    args: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A server's TLS arguments with the certificates in `certs` (the
/// directory of a `tls::TestCerts`); `mutual`: clients must show a
/// certificate from the CA.
fn tls_args(certs: &std::path::Path, mutual: bool) -> Vec<String> {
    let path = |n: &str| certs.join(n).display().to_string();
    vec![
        "--tls-cert-file".to_owned(),
        path("server.pem"),
        "--tls-key-file".to_owned(),
        path("server.key"),
        "--tls-ca-cert-file".to_owned(),
        path("ca.pem"),
        "--tls-auth-clients".to_owned(),
        if mutual { "yes" } else { "no" }.to_owned(),
    ]
}

/// A new directory of this process's own under the temporary directory.
fn scratch_dir(kind: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tierlimit-{kind}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `redis-server` binary the tests run.
fn server_bin() -> String {
    std::env::var("TIERLIMIT_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

fn available() -> bool {
    Command::new(server_bin())
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl RedisServer {
    /// A fresh server. Panics when `redis-server` is not installed (the
    /// test should have been ignored; see the module docs).
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A fresh server on `port` (one a test chose, e.g. to start Redis
    /// where a store already tries to connect).
    pub fn start_on(port: u16) -> RedisServer {
        let mut server = Self::start_with(&[]);
        server.kill();
        server.port = port;
        server.restart();
        server
    }

    /// A fresh server with these arguments besides the defaults.
    pub fn start_with(args: &[&str]) -> RedisServer {
        assert!(
            available(),
            "redis-server is not installed: install it to run this test (tests that need it are \
             ignored when it is missing at build time, except under CI=true)"
        );
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            tls_port: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        server.restart();
        server
    }

    /// A server that also speaks TLS on a port of its own, with the
    /// certificates in `certs` (the directory of a `tls::TestCerts`);
    /// `mutual`: clients must show a certificate from the CA.
    pub fn start_tls(certs: &std::path::Path, mutual: bool) -> RedisServer {
        let tls_port = free_port().to_string();
        let mut args = vec!["--tls-port".to_owned(), tls_port.clone()];
        args.extend(tls_args(certs, mutual));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Self::start_with(&args);
        server.tls_port = Some(tls_port.parse().unwrap());
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The `rediss://` URL of a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}",
            self.tls_port.expect("a TLS server")
        )
    }

    /// A handle on a server this one did not start (never killed by it).
    pub fn attach(port: u16) -> RedisServer {
        RedisServer {
            child: None,
            port,
            tls_port: None,
            args: Vec::new(),
        }
    }

    /// Starts the server on its port again (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        let child = Command::new(server_bin())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("redis-server on port {} did not answer", self.port);
    }

    /// Whether the server answers PING.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// A raw command, answered as text (for memory figures and checks).
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).expect("write");
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.ends_with(b"\r\n") && bulk_complete(&out) {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Kills the server (an outage).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether `out` holds a whole reply when it is a bulk string (`$len`
/// then that many bytes); other replies are taken as they come.
fn bulk_complete(out: &[u8]) -> bool {
    let Some(rest) = out.strip_prefix(b"$") else {
        return true;
    };
    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let len: i64 = std::str::from_utf8(&rest[..eol])
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    len < 0 || rest.len() >= eol + 2 + len as usize + 2
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-node Redis Cluster (no replicas) on loopback ports at or below
/// 55535 (a node also listens on its port + 10000), in a directory of its
/// own; killed when dropped.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    /// The TLS port of each node, for a cluster started with
    /// [`RedisCluster::start_tls`] (the plain ports stay open for the
    /// test's own commands; the nodes talk to each other over TLS).
    pub tls_ports: Vec<u16>,
    /// Ports of the nodes killed.
    killed: Vec<u16>,
    dir: std::path::PathBuf,
}

/// A port for a cluster node whose bus port (+10 000) is free too, both
/// below the ephemeral range (32 768 and up on Linux), so that no outgoing
/// connection of a test can take either meanwhile.
fn cluster_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread the starting points of concurrent test processes.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() as u16).wrapping_mul(97);
    loop {
        let k = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(seed);
        let p = 20_000 + k % 2_700;
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
        {
            return p;
        }
    }
}

/// Starts a cluster node in `dir` and waits until it answers; a node that
/// could not bind its port (taken meanwhile) is started again on another.
fn start_node(
    dir: &std::path::Path,
    node_timeout_ms: u64,
    tls: Option<&std::path::Path>,
) -> (Child, u16, Option<u16>) {
    for _ in 0..20 {
        let port = cluster_port();
        let tls_port = tls.map(|_| free_port());
        let mut tls_args_here: Vec<String> = Vec::new();
        if let (Some(certs), Some(tp)) = (tls, tls_port) {
            tls_args_here.extend(["--tls-port".to_owned(), tp.to_string()]);
            tls_args_here
                .extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
            tls_args_here.extend(tls_args(certs, false));
        }
        let mut child = Command::new(server_bin())
            .args(&tls_args_here)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", &node_timeout_ms.to_string()])
            // Healthy masters keep serving while one is down (the README
            // recommends it for the rate-limit store).
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let node = RedisServer::attach(port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if node.ping() {
                return (child, port, tls_port);
            }
            if child.try_wait().ok().flatten().is_some() {
                break; // exited: its port was taken
            }
            assert!(
                Instant::now() < deadline,
                "cluster node {port} did not answer"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    panic!("no cluster node could start in 20 tries");
}

impl RedisCluster {
    /// A fresh cluster. Panics when `redis-server` or `redis-cli` is not
    /// installed (see the module docs).
    pub fn start() -> RedisCluster {
        Self::start_with(3, 0, 15_000)
    }

    /// `masters` masters with `replicas` replicas each, failing over after
    /// `node_timeout_ms` of a master's silence.
    pub fn start_with(masters: usize, replicas: usize, node_timeout_ms: u64) -> RedisCluster {
        Self::start_inner(masters, replicas, node_timeout_ms, None)
    }

    /// A cluster whose nodes also speak TLS, to clients and to each other,
    /// with the certificates in `certs` (the directory of a
    /// `tls::TestCerts`).
    pub fn start_tls(certs: &std::path::Path, masters: usize, replicas: usize) -> RedisCluster {
        Self::start_inner(masters, replicas, 15_000, Some(certs))
    }

    fn start_inner(
        masters: usize,
        replicas: usize,
        node_timeout_ms: u64,
        tls: Option<&std::path::Path>,
    ) -> RedisCluster {
        let cli = Command::new("redis-cli")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            available() && cli,
            "redis-server or redis-cli is not installed: install them to run this test"
        );
        let dir = scratch_dir("cluster");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            tls_ports: Vec::new(),
            killed: Vec::new(),
            dir,
        };
        for _ in 0..masters * (1 + replicas) {
            let (child, port, tls_port) = start_node(&cluster.dir, node_timeout_ms, tls);
            cluster.nodes.push(child);
            cluster.ports.push(port);
            cluster.tls_ports.extend(tls_port);
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(out.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        // Ready: every node agrees, and every replica has synced with its
        // master (a replica that never did cannot take over).
        let synced = |p: &u16| {
            let info = RedisServer::attach(*p).command(&["INFO", "replication"]);
            !info.contains("role:slave") || info.contains("master_link_status:up")
        };
        while !(cluster.healthy() && cluster.ports.iter().all(synced)) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The ports of the nodes still running.
    fn alive(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|p| !self.killed.contains(p))
            .collect()
    }

    /// Whether every running node says the cluster is ok and every slot
    /// has a running master (as `CLUSTER NODES` of each says).
    pub fn healthy(&self) -> bool {
        let alive = self.alive();
        alive.iter().all(|&p| {
            let node = RedisServer::attach(p);
            let masters: Vec<String> = node
                .command(&["CLUSTER", "NODES"])
                .lines()
                .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
                .map(str::to_owned)
                .collect();
            node.command(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
                && masters.len() >= 3
                && masters.iter().all(|l| {
                    let port = l.split(' ').nth(1).and_then(|a| a.split([':', '@']).nth(1));
                    port.and_then(|p| p.parse::<u16>().ok())
                        .is_some_and(|p| alive.contains(&p))
                })
        })
    }

    /// Kills (SIGKILL) the master serving `slot`; its port.
    pub fn kill_master_of(&mut self, slot: u16) -> u16 {
        let port = self.master_of(slot);
        let i = self.ports.iter().position(|&p| p == port).unwrap();
        let _ = self.nodes[i].kill();
        let _ = self.nodes[i].wait();
        self.killed.push(port);
        port
    }

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        let reply = RedisServer::attach(port).command(&["CLUSTER", "MYID"]);
        reply
            .lines()
            .find(|l| !l.starts_with('$'))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The port of a replica of the master on `master`.
    pub fn replica_of(&self, master: u16) -> u16 {
        let id = self.node_id(master);
        let nodes = RedisServer::attach(self.alive()[0]).command(&["CLUSTER", "NODES"]);
        nodes
            .lines()
            .filter(|l| l.contains("slave") && l.contains(&id) && !l.contains("fail"))
            .find_map(|l| {
                l.split(' ')
                    .nth(1)
                    .and_then(|a| a.split([':', '@']).nth(1))
                    .and_then(|p| p.parse().ok())
            })
            .expect("the master has a replica")
    }

    /// Moves `count` slots from the master on `from` to the master on
    /// `to` with `redis-cli --cluster reshard` (keys and all), waiting
    /// until it is done.
    pub fn reshard(&self, from: u16, to: u16, count: u16) {
        let status = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &self.node_id(from)])
            .args(["--cluster-to", &self.node_id(to)])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
            .args(["--cluster-pipeline", "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster reshard failed");
    }

    /// The port of the master serving `slot`.
    pub fn master_of(&self, slot: u16) -> u16 {
        let nodes = RedisServer::attach(self.alive()[0]).command(&["CLUSTER", "NODES"]);
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find(|l| {
                l.split(' ').skip(8).any(|range| {
                    let mut ends = range.split('-').map(|n| n.trim().parse::<u16>().ok());
                    match (ends.next().flatten(), ends.next().flatten()) {
                        (Some(a), Some(b)) => (a..=b).contains(&slot),
                        (Some(a), None) => a == slot,
                        _ => false,
                    }
                })
            })
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|a| a.split([':', '@']).nth(1))
            .and_then(|p| p.parse::<u16>().ok())
            .expect("a master serves the slot")
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The `rediss://` URLs of a cluster started with
    /// [`RedisCluster::start_tls`].
    pub fn tls_urls(&self) -> Vec<String> {
        self.tls_ports
            .iter()
            .map(|p| format!("rediss://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Redis Sentinels watching one master (`mymaster`), each a
/// `redis-server --sentinel` on a free loopback port with a configuration
/// file of its own (a sentinel rewrites it); killed when dropped.
pub struct RedisSentinels {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl RedisSentinels {
    /// `n` sentinels for the master on `master_port`, agreeing with a
    /// quorum of 2 that it is down after `down_after_ms` of silence.
    pub fn start(master_port: u16, n: usize, down_after_ms: u64) -> RedisSentinels {
        let dir = scratch_dir("sentinel");
        let mut s = RedisSentinels {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for _ in 0..n {
            let port = free_port();
            let conf = s.dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\n\
                     sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds mymaster {down_after_ms}\n\
                     sentinel failover-timeout mymaster 10000\n\
                     sentinel parallel-syncs mymaster 1\n"
                ),
            )
            .unwrap();
            let child = Command::new(server_bin())
                .arg(&conf)
                .arg("--sentinel")
                .current_dir(&s.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel starts");
            s.nodes.push(child);
            s.ports.push(port);
        }
        // Ready: every sentinel knows the master, the other sentinels and
        // its replica.
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = |p: &u16| {
            let node = RedisServer::attach(*p);
            if !node.ping() {
                return false;
            }
            let master = node.command(&["SENTINEL", "MASTER", "mymaster"]);
            master.contains(&master_port.to_string())
                && field(&master, "num-other-sentinels") == Some(n as u64 - 1)
                && field(&master, "num-slaves").is_some_and(|r| r >= 1)
        };
        while !s.ports.iter().all(ready) {
            assert!(
                Instant::now() < deadline,
                "the sentinels did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The port of the master the sentinels name now.
    pub fn master_port(&self) -> Option<u16> {
        let reply = RedisServer::attach(self.ports[0]).command(&[
            "SENTINEL",
            "GET-MASTER-ADDR-BY-NAME",
            "mymaster",
        ]);
        reply
            .lines()
            .filter(|l| !l.starts_with(['*', '$']))
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }
}

/// A numeric field of a RESP reply listing names and values in turn.
fn field(reply: &str, name: &str) -> Option<u64> {
    let lines: Vec<&str> = reply
        .lines()
        .filter(|l| !l.starts_with(['*', '$']))
        .collect();
    let i = lines.iter().position(|l| l.trim() == name)?;
    lines.get(i + 1)?.trim().parse().ok()
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
