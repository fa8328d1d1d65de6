//! The topology a scaled shop runs, on loopback: `scripts/cluster` starts 3 `api` instances, a
//! `worker`, 2 `scheduler`s and nginx (`deploy/nginx.conf`) on a database and a key prefix of
//! the test's own; the test drives it from outside, as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running `scripts/cluster`, taken down (its database and keys dropped) when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    name: String,
    pub url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster")
}

impl Cluster {
    pub fn up() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("fmc_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut cluster = Self {
            dir,
            name,
            url: String::new(),
        };
        // Taken down by the drop should it fail half way.
        let out = cluster.run(&["up"]);
        assert!(out.status.success(), "{}", describe(&out));
        let url = std::fs::read_to_string(cluster.dir.path().join("url")).unwrap();
        cluster.url = url.trim().to_owned();
        cluster
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(script())
            .args(args)
            .env("FLASHMART_BIN", env!("CARGO_BIN_EXE_flashmart"))
            .env("FLASHMART_CLUSTER_DIR", self.dir.path())
            .env("FLASHMART_CLUSTER_NAME", &self.name)
            .output()
            .unwrap()
    }

    /// The address one process (`api1`, `worker`, ...) listens on.
    pub fn addr(&self, process: &str) -> String {
        let addr = std::fs::read_to_string(self.dir.path().join(format!("{process}.addr")));
        addr.unwrap().trim().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = self.run(&["down"]);
        if !out.status.success() {
            eprintln!("scripts/cluster down: {}", describe(&out));
        }
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The reservations an instance counted as made, from its `/metrics`.
async fn reserved_by(addr: &str) -> f64 {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("flash_sale_reservations_total{result=\"reserved\"} "))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_through_nginx_over_three_instances_keeps_every_invariant() {
    let cluster = Cluster::up();
    let out = cluster.run(&[
        "stampede", "--buyers", "2000", "--stock", "300", "--limit", "2", "-c", "32",
    ]);
    let report = describe(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("result: all invariants hold"), "{report}");
    assert!(report.contains("[PASS] exact sell-out"), "{report}");
    // nginx spread the race over the three instances: each made some of the reservations.
    let mut made = Vec::new();
    for api in ["api1", "api2", "api3"] {
        made.push(reserved_by(&cluster.addr(api)).await);
    }
    assert!(made.iter().all(|n| *n > 0.0), "{made:?}");
    assert_eq!(made.iter().sum::<f64>(), 300.0, "{made:?}");
    // The worker and the schedulers serve no API, through nginx or not.
    let res = reqwest::get(format!("http://{}/api/v1/products", cluster.addr("worker")))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}
