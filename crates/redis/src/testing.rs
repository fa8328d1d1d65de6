//! Redis servers of a test's own (`testing` feature), started from the `redis-server` binary on
//! free loopback ports in a temporary directory, keeping nothing on disk, and killed when
//! dropped: one server (that a test may `FLUSHALL` without touching anyone else's keys), or a
//! Redis Cluster of three masters. And the live state of a sale to load into the engine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Redis processes on loopback, killed when dropped.
#[derive(Debug)]
pub struct LocalRedis {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

/// A port free now whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// What `redis-cli` prints for `args` against the node on `port`.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (scripts/setup installs Redis)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spawn(dir: &Path, port: u16, cluster: bool) -> Child {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
    if cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ]);
    }
    cmd.args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&node_dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs (scripts/setup installs Redis)")
}

impl LocalRedis {
    fn start_nodes(count: usize, cluster: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < count {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let nodes = ports
            .iter()
            .map(|port| spawn(dir.path(), *port, cluster))
            .collect();
        let redis = Self {
            nodes,
            ports,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &redis.ports {
            while redis_cli(*port, &["ping"]).trim() != "PONG" {
                assert!(Instant::now() < deadline, "node {port} did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        redis
    }

    /// One Redis server.
    pub fn start() -> Self {
        Self::start_nodes(1, false)
    }

    /// A Redis Cluster of three masters, every slot served.
    pub fn start_cluster() -> Self {
        let cluster = Self::start_nodes(3, true);
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "the cluster was not created");
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &cluster.ports {
            while !redis_cli(*port, &["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// Kills the (single) server and starts it again on the same port, empty: a restart of a
    /// Redis that keeps nothing on disk.
    pub fn restart(&mut self) {
        assert_eq!(self.nodes.len(), 1, "restart is for a single server");
        let _ = self.nodes[0].kill();
        let _ = self.nodes[0].wait();
        let port = self.ports[0];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.nodes[0] = spawn(self._dir.path(), port, false);
            std::thread::sleep(Duration::from_millis(100));
            if redis_cli(port, &["ping"]).trim() == "PONG" {
                return;
            }
            // The port may not be free yet: try again.
            let _ = self.nodes[0].kill();
            let _ = self.nodes[0].wait();
            assert!(Instant::now() < deadline, "redis on {port} did not restart");
        }
    }

    /// Kills every server: from then on nothing answers on their ports.
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }

    /// Stops every server without killing it (SIGSTOP): connections stay open and nothing is
    /// answered on them, as with a Redis that hangs.
    pub fn freeze(&self) {
        for node in &self.nodes {
            let stopped = Command::new("kill")
                .args(["-STOP", &node.id().to_string()])
                .status()
                .unwrap();
            assert!(stopped.success(), "redis {} was not stopped", node.id());
        }
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// `redis://127.0.0.1:PORT` of each node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

/// A sale of one item with `stock` units and a per-buyer `limit`, live from a minute ago to an
/// hour from now, as the engine's `load` takes it.
pub fn live_sale_state(
    id: flashmart_domain::SaleId,
    limit: u32,
    stock: u32,
) -> flashmart_app::flash_sale::model::LiveSaleState {
    use flashmart_app::flash_sale::model::{LiveItemState, LiveSaleState, SaleRecord};
    use flashmart_domain::Currency;
    use flashmart_domain::flash_sale::{SaleRules, SaleWindow};

    let now = time::OffsetDateTime::now_utc();
    LiveSaleState {
        sale: SaleRecord {
            id,
            name: "test sale".into(),
            rules: SaleRules::new(
                SaleWindow::new(
                    now - time::Duration::minutes(1),
                    now + time::Duration::hours(1),
                )
                .unwrap(),
                i64::from(limit),
                600,
            )
            .unwrap(),
            currency: Currency::EUR,
            slot: None,
            item_count: 1,
            total_stock: u64::from(stock),
            created_at: now,
        },
        items: vec![LiveItemState {
            no: 1,
            stock,
            price_cents: 100,
            name: "Item".into(),
            held: 0,
        }],
        buyers: Vec::new(),
    }
}
