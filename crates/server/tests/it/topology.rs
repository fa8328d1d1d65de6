//! The topology a scaled shop runs, on loopback: `scripts/cluster` starts 3 `api` instances, a
//! `worker`, 2 `scheduler`s and nginx (`deploy/nginx.conf`) on a database and a key prefix of
//! the test's own; the test drives it from outside, as a user would.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::flash_sales::at;

/// A running `scripts/cluster`, taken down (its database and keys dropped) when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    name: String,
    /// `flash_sale.ack` of every instance.
    ack: &'static str,
    /// The Redis the instances use, when not the local one.
    redis_url: Option<String>,
    /// Where the instances reach PostgreSQL, when not at 127.0.0.1:5432 (a proxy).
    pg_addr: Option<String>,
    pub url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster")
}

impl Cluster {
    pub fn up() -> Self {
        Self::up_with("database")
    }

    pub fn up_with(ack: &'static str) -> Self {
        Self::up_on(ack, None)
    }

    /// On the Redis at `redis_url` (a test's own, which it may restart), or the local one.
    pub fn up_on(ack: &'static str, redis_url: Option<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("fmc_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self {
            dir,
            name,
            ack,
            redis_url,
            pg_addr: None,
            url: String::new(),
        }
        .start()
    }

    fn start(mut self) -> Self {
        let cluster = &mut self;
        // Taken down by the drop should it fail half way.
        let out = cluster.run(&["up"]);
        assert!(out.status.success(), "{}", describe(&out));
        let url = std::fs::read_to_string(cluster.dir.path().join("url")).unwrap();
        cluster.url = url.trim().to_owned();
        self
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(script());
        if let Some(url) = &self.redis_url {
            command.env("FLASHMART_CLUSTER_REDIS_URL", url);
        }
        if let Some(addr) = &self.pg_addr {
            command.env("FLASHMART_CLUSTER_PG_ADDR", addr);
        }
        command
            .args(args)
            .env("FLASHMART_BIN", env!("CARGO_BIN_EXE_flashmart"))
            .env("FLASHMART_CLUSTER_DIR", self.dir.path())
            .env("FLASHMART_CLUSTER_NAME", &self.name)
            .env("FLASHMART_CLUSTER_ACK", self.ack)
            .output()
            .unwrap()
    }

    /// Every process's log (each failed request's line counted, not shown) and the cluster's
    /// Redis keys, for a failed test's output: the directory and the keys go with the cluster.
    fn print_what_happened(&self) {
        let dirs = [self.dir.path().to_owned(), self.dir.path().join("nginx")];
        let mut logs: Vec<PathBuf> = dirs
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // Each failed request logs a line: those are counted, the rest shown.
            let (failed, rest): (Vec<&str>, Vec<&str>) = text
                .lines()
                .partition(|l| l.contains(r#""message":"request failed""#));
            eprintln!(
                "--- {} ({} failed requests logged), its other lines:",
                log.display(),
                failed.len()
            );
            for line in &rest[rest.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
            if let Some(first) = failed.first() {
                eprintln!("the first failed request: {first}");
            }
        }
        let url = self
            .redis_url
            .as_deref()
            .unwrap_or("redis://127.0.0.1:6379");
        let pattern = format!("{}:*", self.name);
        if let Ok(out) = Command::new("redis-cli")
            .args(["-u", url, "--scan", "--pattern", &pattern])
            .output()
        {
            eprintln!(
                "--- the cluster's Redis keys:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    /// The address one process (`api1`, `worker`, ...) listens on.
    pub fn addr(&self, process: &str) -> String {
        let addr = std::fs::read_to_string(self.dir.path().join(format!("{process}.addr")));
        addr.unwrap().trim().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_what_happened();
        }
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

/// What `flashmart config print` says with `envs` (it must accept them: every key exists, every
/// value parses).
fn config_print(dir: &Path, envs: impl IntoIterator<Item = (String, String)>) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args(["config", "print"])
        .current_dir(dir)
        .envs(envs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The address `up` reports is nginx's own. Here another process holds the port and answers
/// every request 200: `up` must fail and say why, not take that process's answers for nginx's
/// (it once checked only that something answered `/healthz` on the port it had picked free).
#[test]
fn up_fails_when_another_process_holds_nginxs_port() {
    use std::io::{Read as _, Write as _};
    let stranger = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stranger.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in stranger.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let name = format!("fmc_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let out = Command::new(script())
        .arg("up")
        .env("FLASHMART_BIN", env!("CARGO_BIN_EXE_flashmart"))
        .env("FLASHMART_CLUSTER_DIR", dir.path())
        .env("FLASHMART_CLUSTER_NAME", &name)
        .env("FLASHMART_CLUSTER_PORT", port.to_string())
        .output()
        .unwrap();
    let told = describe(&out);
    assert!(!out.status.success(), "{told}");
    assert!(
        told.contains(&format!("nginx did not start on port {port}"))
            && told.contains("Address already in use"),
        "{told}"
    );
    assert!(!dir.path().join("url").exists(), "{told}");
}

/// `deploy/compose.embedded.yaml`: one container, its data directory on a volume.
#[test]
fn the_embedded_compose_file_runs_one_server_on_a_volume() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&deploy_file("compose.embedded.yaml")).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    assert_eq!(services.len(), 1);
    let server = &compose["services"]["flashmart"];
    assert_eq!(server["command"][0].as_str(), Some("serve"));
    assert_eq!(
        server["volumes"][0].as_str(),
        Some("data:/var/lib/flashmart"),
        "the image's data directory"
    );
    assert!(compose["volumes"].get("data").is_some());
    assert!(deploy_file("Dockerfile").contains("ENV FLASHMART__DATA_DIR=/var/lib/flashmart"));
}

/// The Kubernetes manifests: a Deployment per role with probes on /healthz and /readyz and a
/// termination grace that covers `http.shutdown_grace_secs`, the api's autoscaler and disruption
/// budget, and a configuration the binary accepts.
#[test]
fn the_kubernetes_manifests_run_every_role_with_probes_and_a_long_enough_grace() {
    let mut docs = Vec::new();
    for file in [
        "k8s/config.yaml",
        "k8s/api.yaml",
        "k8s/worker.yaml",
        "k8s/scheduler.yaml",
    ] {
        for doc in serde_yaml::Deserializer::from_str(&deploy_file(file)) {
            docs.push(<serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap());
        }
    }
    let of_kind = |kind: &str| -> Vec<&serde_yaml::Value> {
        docs.iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    };
    let config = of_kind("ConfigMap")[0]["data"]
        .as_mapping()
        .unwrap()
        .clone();
    let grace: u64 = config[&serde_yaml::Value::from("FLASHMART__HTTP__SHUTDOWN_GRACE_SECS")]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let deployments = of_kind("Deployment");
    let mut roles: Vec<&str> = Vec::new();
    for d in &deployments {
        let pod = &d["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[..2], ["serve", "--role"]);
        roles.push(args[2]);
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz")
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz")
        );
        let pause: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            termination >= pause + grace + 5,
            "{}: {termination} s cannot hold a {pause} s pause and a {grace} s drain",
            args[2]
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    }
    roles.sort_unstable();
    assert_eq!(roles, ["api", "scheduler", "worker"]);
    let hpa = of_kind("HorizontalPodAutoscaler");
    assert_eq!(
        hpa[0]["spec"]["scaleTargetRef"]["name"].as_str(),
        Some("flashmart-api")
    );
    assert!(hpa[0]["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let pdb = of_kind("PodDisruptionBudget");
    assert_eq!(
        pdb[0]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"].as_str(),
        Some("api")
    );
    assert_eq!(of_kind("Secret").len(), 1);

    // The binary accepts the ConfigMap and the Secret together.
    let secret = of_kind("Secret")[0]["stringData"]
        .as_mapping()
        .unwrap()
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let envs: Vec<(String, String)> = config
        .iter()
        .chain(secret.iter())
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let printed = config_print(dir.path(), envs);
    assert!(
        printed.contains(&format!("shutdown_grace_secs = {grace}")),
        "{printed}"
    );
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
            "grafana",
            "migrate",
            "nginx",
            "postgres",
            "prometheus",
            "redis",
            "scheduler1",
            "scheduler2",
            "worker"
        ]
    );
    // Prometheus scrapes every flashmart service, with the rules the test command checks, and
    // Grafana shows the dashboard it checks.
    let prometheus: serde_yaml::Value =
        serde_yaml::from_str(&deploy_file("prometheus/prometheus.yml")).unwrap();
    let targets: Vec<&str> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let wanted: Vec<String> = roles.iter().map(|(s, _)| format!("{s}:8080")).collect();
    assert_eq!(targets, wanted);
    let mounts = |service: &str| -> Vec<String> {
        services[service]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(mounts("prometheus").contains(
        &"./prometheus/flashmart-rules.yml:/etc/prometheus/flashmart-rules.yml:ro".to_owned()
    ));
    assert!(
        mounts("grafana")
            .iter()
            .any(|m| m.starts_with("./grafana/flashmart-dashboard.json:"))
    );
    for provisioned in [
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/flashmart.yml",
    ] {
        let file: serde_yaml::Value = serde_yaml::from_str(&deploy_file(provisioned)).unwrap();
        assert_eq!(file["apiVersion"].as_u64(), Some(1), "{provisioned}");
    }
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
    let printed = config_print(dir.path(), envs);
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

/// An answer a retrying client gives up on or settles with: the status and the envelope.
async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    key: Option<&str>,
    body: &Value,
) -> Result<(u16, Value), reqwest::Error> {
    let mut req = client.post(url).bearer_auth(token).json(body);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let res = req.send().await?;
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// A sale on a running cluster, its buyers and the admin who made it.
struct Race {
    client: reqwest::Client,
    base: String,
    admin: String,
    sale: String,
    buyers: Vec<String>,
    stock: u64,
}

impl Race {
    /// `buyers` load-test buyers and a sale of `stock` units of one item, a limit of 3 a buyer
    /// (so a retry that reserved a second time would show as a buyer holding 2).
    async fn prepare(cluster: &Cluster, buyers: usize, stock: u64) -> Self {
        let client = reqwest::Client::new();
        let base = cluster.url.clone();
        let login = crate::support::login_at(
            &client,
            &base,
            "admin@demo.flashmart.dev",
            "demo-admin-pass",
        )
        .await;
        let admin = login["data"]["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("the admin's login answered {login}"))
            .to_owned();
        let (status, minted) = post(
            &client,
            &format!("{base}/api/v1/admin/loadtest/buyers"),
            &admin,
            None,
            &json!({"count": buyers}),
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{minted}");
        let buyers = minted["data"]["buyers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["access_token"].as_str().unwrap().to_owned())
            .collect();
        let now = time::OffsetDateTime::now_utc();
        let (status, sale) = post(
            &client,
            &format!("{base}/api/v1/admin/flash-sales"),
            &admin,
            None,
            &json!({
                "name": "a race with a fault", "starts_at": at(now - time::Duration::seconds(1)),
                "ends_at": at(now + time::Duration::hours(1)), "per_user_limit": 3,
                "reservation_ttl_secs": 3600,
                "generate_items": {"count": 1, "price_cents": 100, "stock": stock},
            }),
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{sale}");
        let sale = sale["data"]["id"].as_str().unwrap().to_owned();
        Self {
            client,
            base,
            admin,
            sale,
            buyers,
            stock,
        }
    }

    /// Every buyer sends one reservation under a key of its own and retries it, with the same
    /// key, until it gets an answer that is not the proxy's or an instance's failure; `fault`
    /// runs once a sixth of the buyers have theirs. Returns the reservations answered 201, and
    /// how many answers had come when the fault began.
    async fn run(&self, fault: impl FnOnce() + Send + 'static) -> (HashSet<String>, usize, usize) {
        let url = format!(
            "{}/api/v1/flash-sales/{}/reservations",
            self.base, self.sale
        );
        let answered = Arc::new(AtomicUsize::new(0));
        let retries = Arc::new(AtomicUsize::new(0));
        let unavailable = Arc::new(AtomicUsize::new(0));
        let race = futures_util::stream::iter(self.buyers.iter().enumerate().map(|(i, token)| {
            let (client, url, token) = (self.client.clone(), url.clone(), token.clone());
            let (answered, retries) = (Arc::clone(&answered), Arc::clone(&retries));
            let unavailable = Arc::clone(&unavailable);
            async move {
                let key = format!("buyer-{i}-first-try");
                for _ in 0..600 {
                    match post(&client, &url, &token, Some(&key), &json!({"item_id": 1})).await {
                        Ok((status, body)) if !matches!(status, 502..=504) => {
                            answered.fetch_add(1, Ordering::SeqCst);
                            return (status, body);
                        }
                        Ok((503, _)) => {
                            unavailable.fetch_add(1, Ordering::SeqCst);
                            retries.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        _ => {
                            retries.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                panic!("buyer {i} got no answer in 600 tries");
            }
        }))
        .buffer_unordered(32)
        .collect::<Vec<_>>();
        let total = self.buyers.len();
        let faulted = {
            let answered = Arc::clone(&answered);
            tokio::spawn(async move {
                while answered.load(Ordering::SeqCst) < total / 6 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let at = answered.load(Ordering::SeqCst);
                tokio::task::spawn_blocking(fault).await.unwrap();
                at
            })
        };
        let answers = race.await;
        let faulted_at = faulted.await.unwrap();
        let unavailable = unavailable.load(Ordering::SeqCst);
        eprintln!(
            "the fault came after {faulted_at} of {total} answers; {} retries, {unavailable} \
             of them after a 503",
            retries.load(Ordering::SeqCst)
        );
        assert!(faulted_at < total, "the fault came after the race");
        let mut accepted = HashSet::new();
        for (status, body) in &answers {
            match status {
                201 => assert!(accepted.insert(body["data"]["id"].as_str().unwrap().to_owned())),
                409 => assert_eq!(body["code"], 60004, "{body}"),
                other => panic!("{other}: {body}"),
            }
        }
        (accepted, faulted_at, unavailable)
    }

    async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Exactly the stock sold, and what the server holds (once it has stored what a dead
    /// instance left in the sale's log) exactly the reservations answered, each once, one unit
    /// per buyer.
    async fn assert_holds_exactly(&self, accepted: &HashSet<String>) {
        assert_eq!(
            accepted.len() as u64,
            self.stock,
            "demand > stock: exactly the stock sold"
        );
        let mut stats = Value::Null;
        for _ in 0..300 {
            stats = self
                .get(&format!("/api/v1/admin/flash-sales/{}/stats", self.sale))
                .await;
            if stats["data"]["reserved"] == self.stock {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stats = &stats["data"];
        assert_eq!(stats["reserved"], self.stock, "{stats}");
        assert_eq!(stats["remaining"], 0, "{stats}");
        assert_eq!(stats["sold"], 0, "{stats}");
        assert_eq!(stats["buyers"], self.stock, "one unit each: {stats}");
        let mut stored = HashSet::new();
        let mut after = String::new();
        loop {
            let page = self
                .get(&format!(
                    "/api/v1/admin/flash-sales/{}/reservations?per_page=100{after}",
                    self.sale
                ))
                .await;
            let items = page["data"]["items"].as_array().expect("a page").clone();
            let Some(last) = items.last() else { break };
            after = format!("&after={}", last["id"].as_str().unwrap());
            for r in &items {
                assert!(
                    stored.insert(r["id"].as_str().unwrap().to_owned()),
                    "listed twice"
                );
            }
        }
        assert_eq!(&stored, accepted, "stored = answered");
    }
}

fn kill(cluster_dir: &Path, process: &str) {
    let pid = std::fs::read_to_string(cluster_dir.join(format!("{process}.pid"))).unwrap();
    let killed = Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_instance_killed_mid_race_loses_nothing_its_retrying_clients_were_told() {
    killed_mid_race("database").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_instance_killed_mid_race_loses_nothing_answered_from_redis() {
    killed_mid_race("redis").await;
}

/// 600 buyers race through nginx for 200 units while api2 is killed (SIGKILL).
async fn killed_mid_race(ack: &'static str) {
    let cluster = Cluster::up_with(ack);
    let race = Race::prepare(&cluster, 600, 200).await;
    let dir = cluster.dir.path().to_owned();
    let (accepted, _, _) = race.run(move || kill(&dir, "api2")).await;
    race.assert_holds_exactly(&accepted).await;
}

/// With `ack = redis` an instance killed between Redis's answer and its PostgreSQL write
/// leaves the reservation to the workers. Here the worker is killed at the same moment as
/// api2, and another worker started a second later catches up: nothing answered is lost,
/// nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_killed_mid_stream_another_catches_up() {
    let cluster = Cluster::up_with("redis");
    let race = Race::prepare(&cluster, 600, 200).await;
    let dir = cluster.dir.path().to_owned();
    let script_env = (cluster.name.clone(), cluster.dir.path().to_owned());
    let (accepted, _, _) = race
        .run(move || {
            kill(&dir, "api2");
            kill(&dir, "worker");
            std::thread::sleep(Duration::from_secs(1));
            let out = Command::new(script())
                .args(["start", "worker2"])
                .env("FLASHMART_BIN", env!("CARGO_BIN_EXE_flashmart"))
                .env("FLASHMART_CLUSTER_DIR", &script_env.1)
                .env("FLASHMART_CLUSTER_NAME", &script_env.0)
                .env("FLASHMART_CLUSTER_ACK", "redis")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", describe(&out));
        })
        .await;
    race.assert_holds_exactly(&accepted).await;
    let log = std::fs::read_to_string(cluster.dir.path().join("worker2.log")).unwrap();
    assert!(log.contains("flashmart listening"), "{log}");
}

/// Redis restarted empty mid-sale (it keeps nothing on disk), `ack = database`: the instances
/// answer 503 while the sale is rebuilt from the records, never a wrong answer, and then the
/// sale sells exactly its stock, every answered reservation stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_mid_sale_is_rebuilt_and_sells_exactly_its_stock() {
    let redis = Arc::new(std::sync::Mutex::new(
        flashmart_redis::testing::LocalRedis::start(),
    ));
    let url = redis.lock().unwrap().urls()[0].clone();
    let cluster = Cluster::up_on("database", Some(url));
    let race = Race::prepare(&cluster, 600, 200).await;
    let restarted = Arc::clone(&redis);
    let (accepted, _, unavailable) = race.run(move || restarted.lock().unwrap().restart()).await;
    assert!(unavailable > 0, "503 while the sale was rebuilt");
    race.assert_holds_exactly(&accepted).await;
}

/// A TCP proxy to PostgreSQL that a test can cut: every connection through it closed and new
/// ones refused, until it is restored.
struct CutProxy {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    async fn to(upstream: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_cut, all) = (Arc::clone(&cut), Arc::clone(&links));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                all.lock().unwrap().push(link.abort_handle());
            }
        });
        Self {
            port,
            cut,
            links,
            _accept: accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// PostgreSQL unreachable for 10 s, `ack = database`: a reservation that needs it answers 503
/// within 3 s, a sold-out answer still comes from Redis, `/readyz` says 503; afterwards
/// everything recovers by itself, and nothing answered before, during or after is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_for_ten_seconds_answers_503_and_recovers() {
    let proxy = CutProxy::to("127.0.0.1:5432").await;
    let cluster = {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("fmc_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Cluster {
            dir,
            name,
            ack: "database",
            redis_url: None,
            pg_addr: Some(format!("127.0.0.1:{}", proxy.port)),
            url: String::new(),
        }
        .start()
    };
    let race = Race::prepare(&cluster, 600, 200).await;
    let url = format!(
        "{}/api/v1/flash-sales/{}/reservations",
        race.base, race.sale
    );
    let reserve = |i: usize| {
        let (client, url, token) = (race.client.clone(), url.clone(), race.buyers[i].clone());
        async move {
            let started = std::time::Instant::now();
            let key = format!("buyer-{i}-first-try");
            let answer = post(&client, &url, &token, Some(&key), &json!({"item_id": 1})).await;
            (answer.unwrap(), started.elapsed())
        }
    };
    // Acknowledged before the cut.
    let mut before = HashSet::new();
    for i in 0..30 {
        let ((status, body), _) = reserve(i).await;
        assert_eq!(status, 201, "{body}");
        before.insert(body["data"]["id"].as_str().unwrap().to_owned());
    }
    // A sale of one unit, sold out before the cut.
    let now = time::OffsetDateTime::now_utc();
    let (status, small) = post(
        &race.client,
        &format!("{}/api/v1/admin/flash-sales", race.base),
        &race.admin,
        None,
        &json!({
            "name": "one unit", "starts_at": at(now - time::Duration::seconds(1)),
            "ends_at": at(now + time::Duration::hours(1)), "per_user_limit": 1,
            "items": [{"name": "the one", "price_cents": 100, "stock": 1}],
        }),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{small}");
    let small_url = format!(
        "{}/api/v1/flash-sales/{}/reservations",
        race.base,
        small["data"]["id"].as_str().unwrap()
    );
    let body = json!({"item_id": 1});
    let (status, _) = post(&race.client, &small_url, &race.buyers[599], None, &body)
        .await
        .unwrap();
    assert_eq!(status, 201);

    proxy.cut();
    let cut_at = std::time::Instant::now();
    // A reservation needs PostgreSQL (its commit): 503 within 3 s, never a hang.
    for i in 30..40 {
        let ((status, body), took) = reserve(i).await;
        assert_eq!(status, 503, "{body}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }
    // Sold out is Redis's answer alone.
    let started = std::time::Instant::now();
    let (status, body) = post(&race.client, &small_url, &race.buyers[598], None, &body)
        .await
        .unwrap();
    assert_eq!((status, &body["code"]), (409, &json!(60004)), "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
    for api in ["api1", "api2", "api3"] {
        let res = reqwest::get(format!("http://{}/readyz", cluster.addr(api)))
            .await
            .unwrap();
        assert_eq!(res.status(), 503, "{api}");
    }
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(cut_at.elapsed())).await;
    proxy.restore();

    // Ready again by itself.
    for api in ["api1", "api2", "api3"] {
        let mut ready = false;
        for _ in 0..300 {
            let res = reqwest::get(format!("http://{}/readyz", cluster.addr(api)))
                .await
                .unwrap();
            if res.status() == 200 {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "{api} not ready again");
    }
    // Every buyer, those above included, under the same keys: the sale sells exactly its
    // stock, and what was answered before the cut is among what is held.
    let (accepted, _, _) = race.run(|| {}).await;
    assert!(
        before.is_subset(&accepted),
        "an answer from before the cut is lost"
    );
    race.assert_holds_exactly(&accepted).await;
}
