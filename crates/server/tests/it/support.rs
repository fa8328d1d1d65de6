//! A test application (router driven in process) and a small request builder.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use flashmart_app::ManualClock;
use flashmart_server::{Config, Services, build};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt as _;

pub struct TestApp {
    pub router: Router,
    /// The contest API's listener (`compat.addr`), apart from the public one.
    pub compat: Router,
    /// The ops listener (`ops.addr`): `/readyz` and `/metrics` when they are kept apart.
    pub ops: Router,
    /// What the sandbox sent, as (signature, body).
    pub notifications: Arc<RouterTransport>,
    pub clock: ManualClock,
    pub config: Config,
    pub services: Services,
    _dir: TempDir,
    /// The PostgreSQL schema the records are in, under `FLASHMART_TEST_RECORDS=postgres`.
    _schema: Option<flashmart_postgres::testing::TestSchema>,
    /// The test's keys in Redis, deleted with it.
    _redis: Option<RedisKeys>,
}

/// Deletes every Redis key under a test's prefix when dropped.
pub struct RedisKeys {
    /// The Redis, or every node of the Redis Cluster.
    urls: Vec<String>,
    prefix: String,
}

impl RedisKeys {
    /// For a configuration's shared engine, when its keys are a test's own (`test:` prefix).
    pub fn of(config: &Config) -> Option<Self> {
        let urls = match &config.redis.url {
            Some(url) => vec![url.expose().to_owned()],
            None if !config.redis.cluster_nodes.is_empty() => config.redis.cluster_nodes.clone(),
            None => return None,
        };
        let prefix = config.redis.key_prefix.clone();
        prefix.starts_with("test:").then_some(Self { urls, prefix })
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let (urls, prefix) = (self.urls.clone(), self.prefix.clone());
        // From a thread of its own: the test's runtime may be the one being left.
        let _ = std::thread::spawn(move || {
            for url in urls {
                // Each node's own keys, one at a time (a Cluster node refuses keys of several
                // slots in one command).
                // Bounded: a test may leave its Redis hanging (stopped, not killed).
                let bound = std::time::Duration::from_secs(5);
                let mut conn =
                    redis::Client::open(url.as_str())?.get_connection_with_timeout(bound)?;
                conn.set_read_timeout(Some(bound))?;
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}*"))
                    .query(&mut conn)?;
                for key in keys {
                    redis::cmd("UNLINK").arg(key).query::<()>(&mut conn)?;
                }
            }
            Ok::<_, redis::RedisError>(())
        })
        .join();
    }
}

/// The one Redis the tests use: `FLASHMART_TEST_REDIS_URL`, by default the local one.
pub fn redis_url() -> String {
    std::env::var("FLASHMART_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Points `config`'s shared engine at the test Redis: the Redis Cluster whose nodes
/// `FLASHMART_TEST_REDIS_CLUSTER` lists (comma-separated URLs; scripts/test starts one), or
/// else the Redis at `FLASHMART_TEST_REDIS_URL` (by default the local one).
pub fn test_redis(config: &mut Config) {
    match std::env::var("FLASHMART_TEST_REDIS_CLUSTER") {
        Ok(nodes) if !nodes.is_empty() => {
            config.redis.url = None;
            config.redis.cluster_nodes = nodes.split(',').map(str::to_owned).collect();
        }
        _ => {
            config.redis.url = Some(flashmart_server::config::Secret::new(redis_url()));
        }
    }
}

/// The keys every instance of one scaled shop shares, which scaled mode needs set explicitly:
/// as environment variables for a `flashmart` process.
pub const SHARED_SECRETS: [(&str, &str); 2] = [
    (
        "FLASHMART__AUTH__JWT_SECRET",
        "a shared token key of at least 32 bytes",
    ),
    (
        "FLASHMART__PAYMENTS__SANDBOX_SECRET",
        "a shared sandbox key of at least 32 bytes",
    ),
];

/// The same keys in `config`, where it sets none of its own.
pub fn shared_secrets(config: &mut Config) {
    use flashmart_server::config::Secret;
    let (auth, payments) = (&mut config.auth, &mut config.payments);
    auth.jwt_secret
        .get_or_insert_with(|| Secret::new(SHARED_SECRETS[0].1));
    payments
        .sandbox_secret
        .get_or_insert_with(|| Secret::new(SHARED_SECRETS[1].1));
}

/// A schema of its own and a key prefix of its own on the local Redis, for a test that runs
/// `flashmart` processes in scaled mode; the keys go when it is dropped, then the schema.
pub struct ScaledStores {
    _keys: Option<RedisKeys>,
    pub schema: flashmart_postgres::testing::TestSchema,
    pub redis_url: String,
    pub prefix: String,
}

impl ScaledStores {
    pub async fn create() -> Self {
        let schema = flashmart_postgres::testing::TestSchema::create().await;
        let redis_url = redis_url();
        let prefix = format!("test:{}:", schema.name());
        let mut config = Config::default();
        config.redis.url = Some(flashmart_server::config::Secret::new(redis_url.clone()));
        config.redis.key_prefix = prefix.clone();
        Self {
            _keys: RedisKeys::of(&config),
            schema,
            redis_url,
            prefix,
        }
    }
}

/// Under `FLASHMART_TEST_RECORDS=postgres`, a fresh schema for `config`'s records (unless it
/// names a database already), which must live as long as they are used.
pub async fn records_for(config: &mut Config) -> Option<flashmart_postgres::testing::TestSchema> {
    if !on_postgres() || config.database.url.is_some() {
        return None;
    }
    let schema = flashmart_postgres::testing::TestSchema::create().await;
    config.database.url = Some(flashmart_server::config::Secret::new(schema.url()));
    if on_redis() {
        // The shared engine on the test Redis, under a key prefix of this test's own.
        test_redis(config);
        shared_secrets(config);
        config.redis.key_prefix = format!("test:{}:", schema.name());
        if std::env::var("FLASHMART_TEST_ACK").is_ok_and(|v| v == "redis") {
            config.flash_sale.ack = flashmart_server::config::AckChoice::Redis;
        }
    }
    Some(schema)
}

/// Whether this run decides reservations in Redis (`FLASHMART_TEST_ENGINE=redis`, with
/// `FLASHMART_TEST_RECORDS=postgres`; on a Redis Cluster with `FLASHMART_TEST_REDIS_CLUSTER`).
/// `FLASHMART_TEST_ACK=redis` answers them as soon as Redis has (`flash_sale.ack = "redis"`).
pub fn on_redis() -> bool {
    on_postgres() && std::env::var("FLASHMART_TEST_ENGINE").is_ok_and(|v| v == "redis")
}

/// The name `/readyz` gives the record store this run uses.
pub fn records_probe() -> &'static str {
    if on_postgres() { "postgres" } else { "sqlite" }
}

/// Whether this run keeps the records in PostgreSQL (`FLASHMART_TEST_RECORDS=postgres`, each
/// test in a schema of its own) instead of the embedded SQLite file.
pub fn on_postgres() -> bool {
    std::env::var("FLASHMART_TEST_RECORDS").is_ok_and(|v| v == "postgres")
}

impl TestApp {
    pub async fn start() -> Self {
        Self::with_config(|_| {}).await
    }

    pub async fn with_config(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        tweak(&mut config);
        Self::on(dir, config).await
    }

    /// An application over an existing data directory (to see what another process left there).
    pub async fn on(dir: TempDir, mut config: Config) -> Self {
        let schema = records_for(&mut config).await;
        Self::on_records(dir, config, schema).await
    }

    /// `on`, with the schema `records_for` made for `config` (to run commands on the same
    /// records before the application starts).
    pub async fn on_records(
        dir: TempDir,
        config: Config,
        schema: Option<flashmart_postgres::testing::TestSchema>,
    ) -> Self {
        let clock = ManualClock::starting_mid_hour();
        let services = build(&config, Arc::new(clock.clone())).await.unwrap();
        let redis = RedisKeys::of(&config);
        let mut app = Self::from_services(dir, config, clock, services, Router::new());
        app._schema = schema;
        app._redis = redis;
        app
    }

    pub fn from_services(
        dir: TempDir,
        config: Config,
        clock: ManualClock,
        services: Services,
        extra: Router<flashmart_http::AppState>,
    ) -> Self {
        let peer = MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000)));
        let router = flashmart_http::router_with_fallback(
            services.state.clone(),
            &services.http,
            services.mounted(),
            flashmart_web::routes(services.state.clone(), services.state.uploads.max_bytes())
                .merge(extra),
            flashmart_web::not_found,
        )
        .layer(peer);
        let compat = services.compat_router().layer(peer);
        let ops = services.ops_router().layer(peer);
        // The sandbox provider notifies this application in process.
        let transport = Arc::new(RouterTransport {
            router: router.clone(),
            sent: Default::default(),
        });
        if let Some(sandbox) = &services.sandbox {
            sandbox.set_transport(transport.clone());
            sandbox.set_notify_url("http://flashmart.test/api/v1/payments/notify".into());
        }
        Self {
            router,
            compat,
            ops,
            clock,
            config,
            services,
            notifications: transport,
            _dir: dir,
            _schema: None,
            _redis: None,
        }
    }

    /// Waits until the sandbox has delivered `n` notifications in all.
    pub async fn notifications_delivered(&self, n: u64) {
        let mut rx = self.sandbox().delivered();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|d| *d >= n))
            .await
            .expect("the sandbox delivers within 10 s")
            .unwrap();
    }

    /// The sandbox provider (`payments.provider = "sandbox"`, the default).
    pub fn sandbox(&self) -> &Arc<flashmart_sandbox::Sandbox> {
        self.services
            .sandbox
            .as_ref()
            .expect("the sandbox provider is on")
    }

    /// Presses Pay (`"pay"`) or Fail (`"fail"`) on a sandbox pay page, as a browser does: it
    /// opens the page (getting its nonce cookie) and posts the button's form with its token.
    pub async fn press(&self, pay_url: &str, button: &str) -> TestResponse {
        let page = self.get(pay_url).send().await;
        let cookie = page.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let html = page.text();
        let token = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no form token on the page: {html}"))
            .to_owned();
        self.post(&format!("{pay_url}/{button}"))
            .header("cookie", &cookie)
            .raw("application/x-www-form-urlencoded", format!("csrf={token}"))
            .send()
            .await
    }

    pub fn req(&self, method: Method, path: &str) -> Req {
        Req {
            router: self.router.clone(),
            builder: Request::builder().method(method).uri(path),
            body: Body::empty(),
        }
    }

    /// A request to the ops listener.
    pub fn ops(&self, method: Method, path: &str) -> Req {
        Req {
            router: self.ops.clone(),
            ..self.req(method, path)
        }
    }

    /// A request to the contest API's own listener.
    pub fn compat(&self, method: Method, path: &str) -> Req {
        Req {
            router: self.compat.clone(),
            ..self.req(method, path)
        }
    }

    pub fn get(&self, path: &str) -> Req {
        self.req(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> Req {
        self.req(Method::POST, path)
    }

    /// The value of one series on `/metrics` (0 when absent). The recorder is shared by every
    /// test in the process, so compare with what was there before, never with a fixed number.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").send().await.text();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Registers a customer and logs in; returns (access, refresh) tokens.
    pub async fn customer(&self, email: &str, password: &str) -> (String, String) {
        let res = self
            .post("/api/v1/auth/register")
            .json(&json!({"email": email, "password": password, "name": "Test Customer"}))
            .send()
            .await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
        self.login(email, password).await
    }

    /// Creates an account with `role` as `flashmart admin create-user` does, and logs it in;
    /// returns its access token.
    pub async fn staff(&self, email: &str, password: &str, role: flashmart_domain::Role) -> String {
        flashmart_server::commands::create_user(&self.config, email, password.into(), None, role)
            .await
            .unwrap();
        self.login(email, password).await.0
    }

    /// The id of the user `token` belongs to.
    pub async fn user_id(&self, token: &str) -> flashmart_domain::UserId {
        self.get("/api/v1/users/me")
            .bearer(token)
            .send()
            .await
            .data()["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let res = self
            .post("/api/v1/auth/login")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        let data = res.data();
        (
            data["access_token"].as_str().unwrap().to_owned(),
            data["refresh_token"].as_str().unwrap().to_owned(),
        )
    }
}

pub struct Req {
    router: Router,
    builder: axum::http::request::Builder,
    body: Body,
}

impl Req {
    pub fn json(mut self, value: &Value) -> Self {
        self.builder = self
            .builder
            .header(header::CONTENT_TYPE, "application/json");
        self.body = Body::from(value.to_string());
        self
    }

    pub fn raw(mut self, content_type: &str, body: impl Into<Body>) -> Self {
        self.builder = self.builder.header(header::CONTENT_TYPE, content_type);
        self.body = body.into();
        self
    }

    pub fn bearer(mut self, token: &str) -> Self {
        self.builder = self
            .builder
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        self
    }

    /// Sends the request as if its connection came from `ip`.
    pub fn peer(mut self, ip: &str) -> Self {
        let addr = SocketAddr::new(ip.parse().unwrap(), 40001);
        self.builder = self.builder.extension(axum::extract::ConnectInfo(addr));
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.builder = self.builder.header(name, value);
        self
    }

    pub async fn send(self) -> TestResponse {
        let request = self.builder.body(self.body).unwrap();
        let response = self.router.oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        TestResponse {
            status,
            headers,
            body,
        }
    }
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `data` of a successful envelope, after checking the envelope itself.
    pub fn data(&self) -> Value {
        let body = self.json();
        assert_eq!(body["code"], 0, "{body}");
        assert_eq!(body["message"], "ok");
        self.assert_trace_id(&body);
        body["data"].clone()
    }

    /// Checks an error envelope: status, code, no data, trace id in body and header.
    pub fn assert_error(&self, status: StatusCode, code: u32) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/json",
            "{}",
            self.text()
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(body.get("data").is_none(), "errors carry no data: {body}");
        self.assert_trace_id(&body);
        body
    }

    fn assert_trace_id(&self, body: &Value) {
        let trace_id = body["trace_id"].as_str().expect("trace_id in body");
        assert_eq!(trace_id.len(), 32, "{trace_id}");
        assert!(trace_id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(self.headers["x-request-id"], trace_id);
    }
}

/// A running `flashmart` child with JSON logs, whose stderr lines arrive on a channel.
pub struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    pub base: String,
    /// The contest API's listener, when `compat.contest` is on.
    pub compat_base: Option<String>,
}

impl Server {
    pub fn start(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_under(&[], dir, args, envs)
    }

    /// Starts the binary under another program (`strace ... --`), which is given the binary's
    /// path and `args` after its own `wrapper` arguments.
    pub fn start_under(wrapper: &[&str], dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let binary = env!("CARGO_BIN_EXE_flashmart");
        let mut command = match wrapper.split_first() {
            None => Command::new(binary),
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
        };
        let mut child = command
            .args(args)
            .current_dir(dir)
            .env("FLASHMART__HTTP__ADDR", "127.0.0.1:0")
            .env("FLASHMART__COMPAT__ADDR", "127.0.0.1:0")
            .env("FLASHMART__LOG__FORMAT", "json")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child,
            lines,
            seen: Vec::new(),
            base: String::new(),
            compat_base: None,
        };
        let listening = server.wait_for(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("flashmart listening"))
        });
        server.base = format!("http://{}", listening["addr"].as_str().unwrap());
        server.compat_base = listening["compat_addr"]
            .as_str()
            .map(|a| format!("http://{a}"));
        server
    }

    /// Waits (bounded) for a log line matching `pred`; returns it.
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| {
                    panic!("no such log line ({e}); seen:\n{}", self.seen.join("\n"))
                });
            self.seen.push(line.clone());
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && pred(&value)
            {
                return value;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line the process has written so far (without waiting for more).
    pub fn lines_so_far(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    pub fn terminate(self) -> std::process::ExitStatus {
        let pid = self.child.id();
        self.terminate_pid(pid)
    }

    /// Sends SIGTERM to `pid` (the server itself when it runs under another program) and waits
    /// for the server to stop and the child to exit.
    pub fn terminate_pid(mut self, pid: u32) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_for(|v| v["message"] == "flashmart stopped");
        self.child.wait().unwrap()
    }
}

impl Server {
    /// `POST /api/v1/auth/login` over the server's socket; the whole answer.
    pub async fn login(&self, client: &reqwest::Client, email: &str, password: &str) -> Value {
        login_at(client, &self.base, email, password).await
    }

    /// SIGKILL: no shutdown, no flush, as a crash.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Delivers the sandbox's notifications to the application in process, and keeps a copy.
#[derive(Debug)]
pub struct RouterTransport {
    router: Router,
    pub sent: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
}

#[async_trait::async_trait]
impl flashmart_sandbox::Transport for RouterTransport {
    async fn post(&self, url: &str, signature: &str, body: Vec<u8>) -> Result<u16, String> {
        self.sent
            .lock()
            .unwrap()
            .push((signature.to_owned(), body.clone()));
        let path = url
            .split_once("//")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
            .unwrap_or_default();
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(flashmart_sandbox::SIGNATURE_HEADER, signature)
            .body(Body::from(body))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        Ok(response.status().as_u16())
    }
}

/// `POST /api/v1/auth/login` at `base` (a server, or a load balancer in front of several); the
/// whole answer.
pub async fn login_at(client: &reqwest::Client, base: &str, email: &str, password: &str) -> Value {
    client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
