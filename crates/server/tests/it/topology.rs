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

fn deploy_file(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy")
            .join(name),
    )
    .unwrap()
}

/// `deploy/compose.yaml` cannot run here (no Docker engine): it is read instead, and checked to
/// describe the topology `scripts/cluster` runs, with a configuration the binary accepts.
#[test]
fn the_compose_file_describes_the_same_topology_with_a_valid_configuration() {
    let mut compose: serde_yaml::Value =
        serde_yaml::from_str(&deploy_file("compose.yaml")).unwrap();
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let roles = [
        ("api1", "api"),
        ("api2", "api"),
        ("api3", "api"),
        ("worker", "worker"),
        ("scheduler1", "scheduler"),
        ("scheduler2", "scheduler"),
    ];
    let mut names: Vec<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "api1",
            "api2",
            "api3",
            "migrate",
            "nginx",
            "postgres",
            "redis",
            "scheduler1",
            "scheduler2",
            "worker"
        ]
    );
    let environment = |service: &str| -> Vec<(String, String)> {
        services[service]["environment"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_owned(),
                    v.as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let shared = environment("api1");
    for (service, role) in roles {
        let command: Vec<&str> = services[service]["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(command, ["serve", "--role", role], "{service}");
        assert_eq!(
            environment(service),
            shared,
            "{service}: one configuration for all"
        );
        let volumes = services[service]["volumes"].as_sequence().unwrap();
        assert_eq!(
            volumes[0].as_str(),
            Some("uploads:/var/lib/flashmart/uploads")
        );
    }
    assert_eq!(services["migrate"]["command"][0].as_str(), Some("migrate"));
    // The signing keys come from the user's environment, refused when unset.
    for (key, from) in [
        ("FLASHMART__AUTH__JWT_SECRET", "${FLASHMART_JWT_SECRET:?"),
        (
            "FLASHMART__PAYMENTS__SANDBOX_SECRET",
            "${FLASHMART_SANDBOX_SECRET:?",
        ),
    ] {
        let value = &shared.iter().find(|(k, _)| k == key).unwrap().1;
        assert!(value.starts_with(from), "{key}: {value}");
    }

    // The binary accepts that configuration (every key exists, every value parses), with the
    // keys' placeholders given values.
    let dir = tempfile::tempdir().unwrap();
    let envs = shared.iter().map(|(k, v)| {
        let value = if v.starts_with("${") {
            "a key of at least thirty-two bytes!!".to_owned()
        } else {
            v.clone()
        };
        (k.clone(), value)
    });
    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args(["config", "print"])
        .current_dir(dir.path())
        .envs(envs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("dir = \"/var/lib/flashmart/uploads\""),
        "{printed}"
    );
    assert!(printed.contains("10.0.0.0/8"), "{printed}");

    // nginx in front of exactly the api services, on the file scripts/cluster uses.
    let nginx_volumes = services["nginx"]["volumes"].as_sequence().unwrap();
    assert_eq!(
        nginx_volumes[0].as_str(),
        Some("./nginx.conf:/etc/nginx/conf.d/default.conf:ro")
    );
    let upstreams: Vec<String> = deploy_file("nginx.conf")
        .lines()
        .filter(|l| l.ends_with("# replaced"))
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|l| l.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(upstreams, ["api1", "api2", "api3"]);
}
