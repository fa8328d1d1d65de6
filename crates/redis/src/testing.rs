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

/// Whether the server answering on `port` is `node` (by the process id it reports).
fn answered_by(port: u16, node: &Child) -> bool {
    let id = format!("process_id:{}", node.id());
    redis_cli(port, &["info", "server"])
        .lines()
        .any(|l| l.trim() == id)
}

/// Waits until `node` answers on `port`: true, or false if it stopped first (its port was
/// taken). A port found free can be taken by another process before redis-server binds it; then
/// another server (another test's Redis) may answer there, which is why the answer's process id
/// is checked, not just that something answers. Past `deadline` it panics, so that the callers'
/// tries with another port (or the same one again) are bounded too.
fn wait_until_serving(port: u16, node: &mut Child, deadline: Instant) -> bool {
    loop {
        assert!(Instant::now() < deadline, "redis on {port} did not start");
        if answered_by(port, node) {
            return true;
        }
        if node.try_wait().ok().flatten().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl LocalRedis {
    fn start_nodes(count: usize, cluster: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ports: Vec<u16> = Vec::new();
        let mut nodes = Vec::new();
        while ports.len() < count {
            let port = free_port();
            if ports.contains(&port) {
                continue;
            }
            let mut node = spawn(dir.path(), port, cluster);
            if wait_until_serving(port, &mut node, deadline) {
                ports.push(port);
                nodes.push(node);
            }
        }
        Self {
            nodes,
            ports,
            _dir: dir,
        }
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
            if wait_until_serving(port, &mut self.nodes[0], deadline) {
                return;
            }
            // The port was not free yet: try again.
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
        self.signal("-STOP", "stopped");
    }

    /// Lets every server stopped by `freeze` go on (SIGCONT): what was sent meanwhile is
    /// answered.
    pub fn thaw(&self) {
        self.signal("-CONT", "resumed");
    }

    fn signal(&self, signal: &str, done: &str) {
        for node in &self.nodes {
            let sent = Command::new("kill")
                .args([signal, &node.id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success(), "redis {} was not {done}", node.id());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A server started on a port another one holds stops, and the one answering there is not
    /// taken for it.
    #[test]
    fn a_node_whose_port_is_taken_is_not_taken_for_the_server_answering_there() {
        let first = LocalRedis::start();
        let port = first.ports()[0];
        let dir = tempfile::tempdir().unwrap();
        let mut second = spawn(dir.path(), port, false);
        assert_eq!(redis_cli(port, &["ping"]).trim(), "PONG");
        let deadline = Instant::now() + Duration::from_secs(20);
        assert!(!wait_until_serving(port, &mut second, deadline));
        assert!(answered_by(port, &first.nodes[0]));
    }
}
