//! Typed, layered configuration: built-in defaults, then `flashmart.toml` (or `--config FILE`),
//! then `FLASHMART__SECTION__KEY` environment variables. Unknown keys and bad values fail at
//! start with a message naming the key; secrets print as `***`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The file read from the working directory when `--config` is not given; optional.
pub const DEFAULT_FILE: &str = "flashmart.toml";
pub const ENV_PREFIX: &str = "FLASHMART__";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded database, generated secrets and uploads live.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub flash_sale: FlashSaleConfig,
    pub compat: CompatConfig,
    pub ops: OpsConfig,
    pub loadtest: LoadTestConfig,
    pub uploads: UploadsConfig,
    pub orders: OrdersConfig,
    pub payments: PaymentsConfig,
    pub scheduler: SchedulerConfig,
    pub otel: OtelConfig,
    pub webhooks: WebhooksConfig,
}

/// Outbound webhooks. Both keys apply live on SIGHUP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Deliver to loopback, private and link-local addresses too (a receiver on the same host
    /// or network). Off: such URLs are refused when registered, and names resolving only to
    /// such addresses fail the attempt.
    pub allow_private: bool,
    /// How long one delivery attempt may take, connecting included.
    pub timeout_secs: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            timeout_secs: 10,
        }
    }
}

impl WebhooksConfig {
    pub fn settings(&self) -> flashmart_app::webhooks::WebhookSettings {
        flashmart_app::webhooks::WebhookSettings {
            allow_private: self.allow_private,
            timeout: std::time::Duration::from_secs(self.timeout_secs),
        }
    }
}

/// OpenTelemetry traces over OTLP. Without `endpoint` nothing is exported and nothing is paid:
/// no exporter exists and the spans only OpenTelemetry would read are never made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// The collector: `http://host:4317` for grpc, `http://host:4318` for http/protobuf (to
    /// which `/v1/traces` is added when the URL has no path).
    pub endpoint: Option<String>,
    pub protocol: OtelProtocol,
    /// The spans' `service.name`.
    pub service_name: String,
    /// How long finished spans wait to be sent together.
    pub batch_delay_ms: u64,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtelProtocol::Grpc,
            service_name: "flashmart".to_owned(),
            batch_delay_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtelProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// The work that runs on one instance at a time (`--role scheduler`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// In scaled mode, how long the scheduler lease lasts from each renewal (renewed three times
    /// as often): when its holder dies, another scheduler takes over within this.
    pub lease_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { lease_ms: 10_000 }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// Which provider takes payments: the built-in `sandbox`, or `none` (nothing can be paid,
    /// no pay page is served).
    pub provider: ProviderChoice,
    /// Key the sandbox provider signs its notifications with (at least 32 bytes); generated and
    /// kept in the data directory when unset.
    pub sandbox_secret: Option<Secret>,
    /// Where the sandbox sends notifications; by default this server's own
    /// `/api/v1/payments/notify` at the address it listens on.
    pub notify_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    #[default]
    Sandbox,
    None,
}

/// The ops listener: `/readyz` with its details and `/metrics`, apart from the public one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Unset: `/readyz` and `/metrics` are served on `http.addr`.
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// How long a cart order waits for payment before it expires and its stock goes back.
    pub payment_window_secs: u64,
    /// How often unpaid orders past their window are expired.
    pub sweep_interval_ms: u64,
    /// Unpaid cart orders one user may have open at once (stock held waiting for payment).
    pub max_open_per_user: u32,
    /// Units of one product one order (and so one cart line) may hold.
    pub max_units_per_product: u32,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            payment_window_secs: 900,
            sweep_interval_ms: 1_000,
            max_open_per_user: 3,
            max_units_per_product: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsConfig {
    /// Largest image accepted.
    pub max_bytes: usize,
    /// Where uploaded images are kept (default `<data_dir>/uploads`). With several instances,
    /// a directory every one of them mounts, so that any serves what another stored.
    pub dir: Option<PathBuf>,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        Self {
            max_bytes: 5 * 1024 * 1024,
            dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlashSaleConfig {
    /// Reservations that may wait for the group commit before new ones wait for room.
    pub commit_queue: usize,
    /// How often expired reservations are swept and their stock returned.
    pub sweep_interval_ms: u64,
    /// How often live numbers are pushed to event subscribers (at most).
    pub events_interval_ms: u64,
    /// How often schedules are checked for a slot without its sale.
    pub schedule_interval_ms: u64,
    /// `Idempotency-Key`s one buyer may have live (each is kept a day); one more is 429 60011.
    pub max_idempotency_keys_per_user: u32,
    /// Event streams (`GET /flash-sales/{id}/events`) open at once, in all; one more is 503.
    pub max_event_streams: usize,
    /// Event streams open at once from one client address (IPv6: one /64); one more is 429.
    pub max_event_streams_per_ip: usize,
    /// Scaled mode: when a reservation is answered. `database` once it and its order are
    /// committed in PostgreSQL; `redis` once Redis has decided and logged it (PostgreSQL is
    /// written behind it), as durable as Redis's persistence and replication.
    pub ack: AckChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckChoice {
    #[default]
    Database,
    Redis,
}

impl Default for FlashSaleConfig {
    fn default() -> Self {
        Self {
            commit_queue: 65_536,
            sweep_interval_ms: 1_000,
            events_interval_ms: 250,
            schedule_interval_ms: 5_000,
            max_idempotency_keys_per_user: 1_000,
            max_event_streams: 10_000,
            max_event_streams_per_ip: 20,
            ack: AckChoice::Database,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompatConfig {
    /// Serve the contest compatibility API (`/checkout`, `/purchase`, `/health`) and its hourly
    /// 10,000-item sale. It trusts the caller's user id: private networks only.
    pub contest: bool,
    /// The contest API's own listener; it is never served on `http.addr`.
    pub addr: SocketAddr,
}

impl Default for CompatConfig {
    fn default() -> Self {
        Self {
            contest: false,
            addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadTestConfig {
    /// Let admins mint buyer accounts with tokens (`POST /api/v1/admin/loadtest/buyers`) for
    /// `flashmart stampede`. Never on in production.
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    pub body_limit_bytes: usize,
    pub request_timeout_secs: u64,
    /// How long a stopping server waits for requests in flight before it closes them.
    pub shutdown_grace_secs: u64,
    /// Connections the kernel queues for each listener until the server accepts them; the
    /// opening packet of a connection beyond them is dropped, and its client sends it again a
    /// second or more later. Linux takes at most `net.core.somaxconn` (4096 by default).
    pub listen_backlog: u32,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the real client. Empty:
    /// the connection's own address is the client, whatever the header says.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `flashmart_http=debug,info`, ….
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable in a terminal.
    Pretty,
    /// One JSON object a line, for log shippers.
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HMAC key for access tokens, at least 32 bytes. When unset in embedded mode, one is
    /// generated and kept in `<data_dir>/jwt_secret`.
    pub jwt_secret: Option<Secret>,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    /// Keep operators and admins whose session was not opened with a second factor (TOTP) off
    /// the staff routes (403).
    pub require_staff_totp: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// `false` switches every rate limit off (load tests from one machine).
    pub enabled: bool,
    /// Failed logins (and wrong old passwords) per client address (IPv6: per /64), on top of
    /// the `auth` group's limit.
    pub login_per_ip_per_minute: u32,
    /// Failed logins per (email, client address): what one guesser gets at one account.
    pub login_per_email_ip_per_minute: u32,
    /// Failed logins per email from every address together: a ceiling far above one guesser's
    /// budget, so an account's owner is refused only under an attack from many networks.
    pub login_per_email_per_minute: u32,
    /// Browsing and the shopper's own account, cart, orders and payments.
    pub public: GroupLimitConfig,
    /// Registration, login, refresh, logout.
    pub auth: GroupLimitConfig,
    /// `POST /api/v1/flash-sales/{id}/reservations`.
    pub reserve: GroupLimitConfig,
    /// Everything under `/api/v1/admin/`.
    pub admin: GroupLimitConfig,
    /// The contest compatibility API (its load test comes from one address).
    pub compat: GroupLimitConfig,
}

/// Requests a minute per client address and per signed-in user; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupLimitConfig {
    pub per_ip_per_minute: u32,
    pub per_user_per_minute: u32,
}

impl GroupLimitConfig {
    const fn new(per_ip_per_minute: u32, per_user_per_minute: u32) -> Self {
        Self {
            per_ip_per_minute,
            per_user_per_minute,
        }
    }
}

impl Default for GroupLimitConfig {
    fn default() -> Self {
        Self::new(0, 0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Embedded mode: `normal`, a commit survives a killed process; `full`, it also survives
    /// power loss, at the price of an fsync per commit. (PostgreSQL keeps its own settings.)
    pub synchronous: Synchronous,
    /// `postgres://user:password@host:port/database`: every record in PostgreSQL instead of the
    /// embedded SQLite file (a secret: it may carry a password).
    pub url: Option<Secret>,
    /// Connections this process keeps open to PostgreSQL at most.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Normal,
            url: None,
            max_connections: 16,
        }
    }
}

/// The shared flash-sale engine: with it, reservations are decided in Redis for every instance
/// at once (scaled mode, with `database.url`); without it, in this process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db` of one Redis (a secret: it may carry a password).
    pub url: Option<Secret>,
    /// `["redis://host:port", ...]`: nodes of a Redis Cluster (any of them; the rest are found).
    pub cluster_nodes: Vec<String>,
    /// Put before every key flashmart writes, so that two shops (or tests) can share a Redis.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            cluster_nodes: Vec::new(),
            key_prefix: "flashmart:".into(),
        }
    }
}

impl RedisConfig {
    /// Whether a shared engine is configured.
    pub fn is_set(&self) -> bool {
        self.url.is_some() || !self.cluster_nodes.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Normal,
    Full,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            rate_limit: RateLimitConfig::default(),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            flash_sale: FlashSaleConfig::default(),
            compat: CompatConfig::default(),
            ops: OpsConfig::default(),
            loadtest: LoadTestConfig::default(),
            uploads: UploadsConfig::default(),
            orders: OrdersConfig::default(),
            payments: PaymentsConfig::default(),
            scheduler: SchedulerConfig::default(),
            otel: OtelConfig::default(),
            webhooks: WebhooksConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            shutdown_grace_secs: 10,
            listen_backlog: 4096,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Pretty,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            access_ttl_secs: 15 * 60,
            refresh_ttl_secs: 30 * 24 * 60 * 60,
            require_staff_totp: false,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            login_per_ip_per_minute: 30,
            login_per_email_ip_per_minute: 10,
            login_per_email_per_minute: 200,
            // Generous per address: shoppers behind one carrier NAT share it.
            public: GroupLimitConfig::new(1_200, 600),
            auth: GroupLimitConfig::new(120, 0),
            reserve: GroupLimitConfig::new(2_400, 60),
            admin: GroupLimitConfig::new(0, 1_200),
            compat: GroupLimitConfig::new(0, 0),
        }
    }
}

/// A configuration value that must never be printed or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("{}", describe_figment(.0))]
    Figment(Box<figment::Error>),
    #[error("invalid config: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// One line per problem, each naming the key as a config file spells it and where it came from.
fn describe_figment(err: &figment::Error) -> String {
    err.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!(" (in {source})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            format!("invalid config: {key}: {}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `PREFIX_SECTION__KEY` -> `section.key`, lower case so that errors name keys as files spell them.
fn env_provider(prefix: &str) -> Env {
    Env::prefixed(prefix).map(|key| key.as_str().to_ascii_lowercase().replace("__", ".").into())
}

impl Config {
    /// Defaults, then the file (`explicit`, which must exist, or `flashmart.toml` in the working
    /// directory if present), then the environment.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(explicit, env_provider(ENV_PREFIX))
    }

    fn load_from(explicit: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let file = match explicit {
            Some(path) if !path.is_file() => return Err(ConfigError::Missing(path.to_owned())),
            Some(path) => Some(path.to_owned()),
            None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
        };
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Figment(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if self.http.body_limit_bytes < 1024 {
            return invalid("http.body_limit_bytes", "must be at least 1024");
        }
        if !(1..=65_535).contains(&self.http.listen_backlog) {
            return invalid("http.listen_backlog", "must be between 1 and 65535");
        }
        if self.http.request_timeout_secs == 0 {
            return invalid("http.request_timeout_secs", "must be at least 1");
        }
        if self.auth.access_ttl_secs == 0 {
            return invalid("auth.access_ttl_secs", "must be at least 1");
        }
        if self.auth.refresh_ttl_secs < self.auth.access_ttl_secs {
            return invalid(
                "auth.refresh_ttl_secs",
                "must be at least auth.access_ttl_secs",
            );
        }
        if self
            .auth
            .jwt_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 32)
        {
            return invalid("auth.jwt_secret", "must be at least 32 bytes");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::Invalid {
                key: "log.level",
                message: e.to_string(),
            });
        }
        if !(1..=60).contains(&self.webhooks.timeout_secs) {
            return invalid("webhooks.timeout_secs", "must be between 1 and 60");
        }
        if self.uploads.max_bytes == 0 || self.uploads.max_bytes > 256 * 1024 * 1024 {
            return invalid("uploads.max_bytes", "must be between 1 and 268435456");
        }
        if self
            .payments
            .sandbox_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 32)
        {
            return invalid("payments.sandbox_secret", "must be at least 32 bytes");
        }
        if self
            .payments
            .notify_url
            .as_deref()
            .is_some_and(|u| !u.starts_with("http://"))
        {
            return invalid("payments.notify_url", "must be an http:// URL");
        }
        if !(60..=7 * 24 * 3600).contains(&self.orders.payment_window_secs) {
            return invalid(
                "orders.payment_window_secs",
                "must be between 60 and 604800",
            );
        }
        if self.orders.max_open_per_user == 0 {
            return invalid("orders.max_open_per_user", "must be at least 1");
        }
        if !(1..=99).contains(&self.orders.max_units_per_product) {
            return invalid("orders.max_units_per_product", "must be between 1 and 99");
        }
        if self.orders.sweep_interval_ms < 10 {
            return invalid("orders.sweep_interval_ms", "must be at least 10");
        }
        if self.flash_sale.max_event_streams == 0 {
            return invalid("flash_sale.max_event_streams", "must be at least 1");
        }
        if self.flash_sale.max_event_streams_per_ip == 0 {
            return invalid("flash_sale.max_event_streams_per_ip", "must be at least 1");
        }
        if self.flash_sale.commit_queue == 0 {
            return invalid("flash_sale.commit_queue", "must be at least 1");
        }
        for (key, ms) in [
            (
                "flash_sale.sweep_interval_ms",
                self.flash_sale.sweep_interval_ms,
            ),
            (
                "flash_sale.events_interval_ms",
                self.flash_sale.events_interval_ms,
            ),
            (
                "flash_sale.schedule_interval_ms",
                self.flash_sale.schedule_interval_ms,
            ),
        ] {
            if ms < 10 {
                return invalid(key, "must be at least 10");
            }
        }
        if let Err(message) = self.trusted_proxies() {
            return Err(ConfigError::Invalid {
                key: "http.trusted_proxies",
                message,
            });
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        if let Some(url) = &self.database.url {
            let url = url.expose();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return invalid("database.url", "must be a postgres:// URL");
            }
            if let Err(e) = url.parse::<flashmart_postgres::PgConnectOptions>() {
                return Err(ConfigError::Invalid {
                    key: "database.url",
                    message: e.to_string(),
                });
            }
        }
        if self.redis.url.is_some() && !self.redis.cluster_nodes.is_empty() {
            return invalid(
                "redis.cluster_nodes",
                "set redis.url (one Redis) or redis.cluster_nodes (a cluster), not both",
            );
        }
        let redis_urls = self
            .redis
            .url
            .iter()
            .map(|u| u.expose())
            .chain(self.redis.cluster_nodes.iter().map(String::as_str));
        for url in redis_urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return invalid(
                    if self.redis.url.is_some() {
                        "redis.url"
                    } else {
                        "redis.cluster_nodes"
                    },
                    "must be a redis:// URL",
                );
            }
        }
        if self.redis.is_set() && self.database.url.is_none() {
            return invalid(
                "redis.url",
                "needs database.url: with the shared engine every record is in PostgreSQL",
            );
        }
        if self.flash_sale.ack == AckChoice::Redis && !self.redis.is_set() {
            return invalid(
                "flash_sale.ack",
                "\"redis\" needs the shared engine: set redis.url (or redis.cluster_nodes)",
            );
        }
        if !(1..=1000).contains(&self.database.max_connections) {
            return invalid("database.max_connections", "must be between 1 and 1000");
        }
        if let Some(endpoint) = &self.otel.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return invalid("otel.endpoint", "must be an http:// or https:// URL");
        }
        if !(10..=60_000).contains(&self.otel.batch_delay_ms) {
            return invalid("otel.batch_delay_ms", "must be between 10 and 60000 (ms)");
        }
        if self.otel.service_name.trim().is_empty() {
            return invalid("otel.service_name", "must not be empty");
        }
        if !(300..=600_000).contains(&self.scheduler.lease_ms) {
            return invalid("scheduler.lease_ms", "must be between 300 and 600000 (ms)");
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets shown as `***`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// `http.trusted_proxies` parsed; a bare address is a one-address range.
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.http
            .trusted_proxies
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{entry:?} is not an IP address or CIDR range"))
            })
            .collect()
    }

    pub fn database_file(&self) -> PathBuf {
        self.data_dir.join("flashmart.db")
    }

    /// Where uploaded images are kept: `uploads.dir`, by default `<data_dir>/uploads`.
    pub fn uploads_dir(&self) -> PathBuf {
        self.uploads
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("uploads"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn no_env() -> Env {
        env_provider("FLASHMART_TEST_UNUSED_PREFIX__")
    }

    #[test]
    fn defaults_need_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.toml");
        // No explicit file and no flashmart.toml in a fresh directory: the defaults.
        let config = Config::load_from(None, no_env());
        // The test's working directory is the crate, which has no flashmart.toml.
        assert_eq!(config.unwrap(), Config::default());
        assert!(matches!(
            Config::load_from(Some(&missing), no_env()),
            Err(ConfigError::Missing(_))
        ));
    }

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    #[test]
    fn a_file_overrides_defaults() {
        let f = file(
            "data_dir = \"/tmp/x\"\n[http]\naddr = \"0.0.0.0:9000\"\n[log]\nformat = \"json\"\n",
        );
        let config = Config::load_from(Some(f.path()), no_env()).unwrap();
        assert_eq!(config.http.addr.port(), 9000);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(
            config.auth.access_ttl_secs, 900,
            "untouched keys keep defaults"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[http]\naddr = \"nowhere\"\n", "http.addr"),
            (
                "[auth]\naccess_ttl_secs = \"soon\"\n",
                "auth.access_ttl_secs",
            ),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            ("[http]\nlisten_backlog = 0\n", "http.listen_backlog"),
            ("[http]\nlisten_backlog = 70000\n", "http.listen_backlog"),
            ("[http]\nadr = \"127.0.0.1:1\"\n", "adr"),
            ("[auth]\njwt_secret = \"short\"\n", "auth.jwt_secret"),
            ("[rate_limit]\nenabled = \"maybe\"\n", "rate_limit.enabled"),
            (
                "[rate_limit.reserve]\nper_user_per_minute = -1\n",
                "rate_limit.reserve.per_user_per_minute",
            ),
            (
                "[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.local\"]\n",
                "http.trusted_proxies",
            ),
            (
                "[database]\nsynchronous = \"sometimes\"\n",
                "database.synchronous",
            ),
            ("[flash_sale]\nack = \"disk\"\n", "flash_sale.ack"),
            // Only the shared engine can answer before the records have it.
            ("[flash_sale]\nack = \"redis\"\n", "flash_sale.ack"),
        ];
        for (contents, key) in cases {
            let f = file(contents);
            let err = Config::load_from(Some(f.path()), no_env())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{contents:?}: {err}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let mut config = Config::default();
        config.auth.jwt_secret = Some(Secret::new("super-secret-value-that-is-long-enough"));
        assert!(!config.to_toml().contains("super-secret"));
        assert!(config.to_toml().contains("jwt_secret = \"***\""));
        assert!(!format!("{config:?}").contains("super-secret"));
    }
}
