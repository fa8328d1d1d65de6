//! Rate limits for every route, by route group: per client address and, for callers with a valid
//! token, per user. Checked after routing (the group comes from the route template) and before the
//! handler; over the limit is a 429 with `Retry-After`. The token verified here is handed on to
//! the `Auth` extractor, so a request's token is checked once.
//!
//! One process keeps its buckets in memory. The instances of a scaled shop keep them in Redis
//! (`SharedLimits`, one script per bucket), so that a client's budget is the same whichever
//! instance it reaches; that costs each limited request a round trip to Redis, taken only then.

use arc_swap::ArcSwap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use flashmart_app::auth::Principal;
use flashmart_app::ports::SharedLimits;
use flashmart_app::rate_limit::{KeyedLimiter, RetryAfter, client_key};
use flashmart_domain::UserId;
use futures_util::FutureExt as _;
use futures_util::future::{Either, Map};
use tower::{Layer, Service};

use crate::AppState;
use crate::error::ApiError;

/// Routes that share one set of limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// Browsing and the shopper's own account, cart and orders.
    Public,
    /// Registration, login, refresh.
    Auth,
    /// Placing flash-sale reservations.
    Reserve,
    /// Operator and admin routes.
    Admin,
    /// The contest compatibility API.
    Compat,
    /// Health, readiness, metrics, docs, the payment provider's callback.
    Unlimited,
}

impl Group {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Auth => "auth",
            Self::Reserve => "reserve",
            Self::Admin => "admin",
            Self::Compat => "compat",
            Self::Unlimited => "unlimited",
        }
    }

    pub fn of(method: &Method, route: &str) -> Self {
        match route {
            "/healthz" | "/readyz" | "/metrics" | "/api/v1/payments/notify" => Self::Unlimited,
            "/checkout" | "/purchase" | "/health" => Self::Compat,
            "/api/v1/flash-sales/{id}/reservations" | "/flash-sales/{id}/reserve"
                if method == Method::POST =>
            {
                Self::Reserve
            }
            // The web pages' forms count as the API routes they stand for.
            "/signin" | "/register" | "/signout" if method == Method::POST => Self::Auth,
            r if r.starts_with("/api/v1/auth/") => Self::Auth,
            r if r.starts_with("/api/v1/admin/") || r.starts_with("/admin") => Self::Admin,
            r if r.starts_with("/docs") || r == "/openapi.json" || r.starts_with("/assets/") => {
                Self::Unlimited
            }
            _ => Self::Public,
        }
    }
}

/// One group's limits; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupLimit {
    pub per_ip_per_minute: u32,
    pub per_user_per_minute: u32,
}

#[derive(Debug, Clone, Default)]
pub struct LimitSettings {
    pub enabled: bool,
    pub public: GroupLimit,
    pub auth: GroupLimit,
    pub reserve: GroupLimit,
    pub admin: GroupLimit,
    pub compat: GroupLimit,
}

#[derive(Debug)]
struct Buckets {
    by_ip: KeyedLimiter<IpAddr>,
    by_user: KeyedLimiter<UserId>,
}

impl Buckets {
    fn new(limit: GroupLimit, enabled: bool) -> Self {
        Self {
            by_ip: KeyedLimiter::per_minute(limit.per_ip_per_minute, enabled),
            by_user: KeyedLimiter::per_minute(limit.per_user_per_minute, enabled),
        }
    }
}

/// Every group's limits, replaceable while the server runs (a SIGHUP reloads them): requests
/// take from the buckets of the limits in force when they arrive.
#[derive(Debug)]
pub struct RateLimits {
    current: ArcSwap<Limiters>,
    /// Scaled mode's buckets in Redis, used whenever limits are on.
    shared_port: Option<Arc<dyn SharedLimits>>,
}

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            current: ArcSwap::from_pointee(Limiters::new(settings)),
            shared_port: None,
        }
    }

    /// Every instance's buckets in one place (scaled mode): the in-memory ones go unused.
    pub fn shared(settings: &LimitSettings, shared: Arc<dyn SharedLimits>) -> Self {
        Self {
            current: ArcSwap::from_pointee(Limiters::shared(settings, Arc::clone(&shared))),
            shared_port: Some(shared),
        }
    }

    /// Puts `settings` in force, with fresh buckets.
    pub fn reload(&self, settings: &LimitSettings) {
        let next = match &self.shared_port {
            Some(shared) => Limiters::shared(settings, Arc::clone(shared)),
            None => Limiters::new(settings),
        };
        self.current.store(Arc::new(next));
    }

    /// What the limits in force say of one request, read once.
    fn decide(&self, group: Group, ip: Option<IpAddr>, user: Option<UserId>) -> Admission {
        let limits = self.current.load();
        if let Some((shared, checks)) = limits.shared_checks(group, ip, user) {
            return Admission::Ask(group, Arc::clone(shared), checks);
        }
        match limits.check(group, ip, user) {
            Ok(()) => Admission::Through,
            Err(retry) => Admission::Refused(retry),
        }
    }

    pub fn check(
        &self,
        group: Group,
        ip: Option<IpAddr>,
        user: Option<UserId>,
    ) -> Result<(), RetryAfter> {
        self.current.load().check(group, ip, user)
    }

    /// Forgets idle keys; called now and then.
    pub fn retain_recent(&self) {
        self.current.load().retain_recent();
    }
}

/// Every group's buckets under one set of limits.
#[derive(Debug)]
struct Limiters {
    public: Buckets,
    auth: Buckets,
    reserve: Buckets,
    admin: Buckets,
    compat: Buckets,
    /// Buckets in Redis instead of the ones above, with these limits.
    shared: Option<(Arc<dyn SharedLimits>, LimitSettings)>,
}

/// The buckets in Redis one request takes from: (key, requests a minute).
type SharedChecks = Vec<(String, u32)>;

impl Limiters {
    fn new(settings: &LimitSettings) -> Self {
        let on = settings.enabled;
        Self {
            public: Buckets::new(settings.public, on),
            auth: Buckets::new(settings.auth, on),
            reserve: Buckets::new(settings.reserve, on),
            admin: Buckets::new(settings.admin, on),
            compat: Buckets::new(settings.compat, on),
            shared: None,
        }
    }

    fn shared(settings: &LimitSettings, shared: Arc<dyn SharedLimits>) -> Self {
        if !settings.enabled {
            return Self::new(settings);
        }
        Self {
            shared: Some((shared, settings.clone())),
            ..Self::new(&LimitSettings::default())
        }
    }

    /// With shared buckets, the ones `group` takes from for this client and user.
    fn shared_checks(
        &self,
        group: Group,
        ip: Option<IpAddr>,
        user: Option<UserId>,
    ) -> Option<(&Arc<dyn SharedLimits>, SharedChecks)> {
        let (shared, settings) = self.shared.as_ref()?;
        let limit = match group {
            Group::Public => settings.public,
            Group::Auth => settings.auth,
            Group::Reserve => settings.reserve,
            Group::Admin => settings.admin,
            Group::Compat => settings.compat,
            Group::Unlimited => return None,
        };
        let mut checks = Vec::with_capacity(2);
        if let Some(ip) = ip
            && limit.per_ip_per_minute > 0
        {
            checks.push((
                format!("rl:{}:ip:{}", group.as_str(), client_key(ip)),
                limit.per_ip_per_minute,
            ));
        }
        if let Some(user) = user
            && limit.per_user_per_minute > 0
        {
            checks.push((
                format!("rl:{}:user:{user}", group.as_str()),
                limit.per_user_per_minute,
            ));
        }
        (!checks.is_empty()).then_some((shared, checks))
    }

    fn buckets(&self, group: Group) -> Option<&Buckets> {
        match group {
            Group::Public => Some(&self.public),
            Group::Auth => Some(&self.auth),
            Group::Reserve => Some(&self.reserve),
            Group::Admin => Some(&self.admin),
            Group::Compat => Some(&self.compat),
            Group::Unlimited => None,
        }
    }

    fn check(
        &self,
        group: Group,
        ip: Option<IpAddr>,
        user: Option<UserId>,
    ) -> Result<(), RetryAfter> {
        let Some(b) = self.buckets(group) else {
            return Ok(());
        };
        if let Some(ip) = ip {
            // An IPv6 client is one /64.
            b.by_ip.check(&client_key(ip))?;
        }
        if let Some(user) = user {
            b.by_user.check(&user)?;
        }
        Ok(())
    }

    fn retain_recent(&self) {
        for b in [
            &self.public,
            &self.auth,
            &self.reserve,
            &self.admin,
            &self.compat,
        ] {
            b.by_ip.retain_recent();
            b.by_user.retain_recent();
        }
    }
}

/// The client address as the limits and the login limit see it.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedClient(pub IpAddr);

/// The rate-limit layer: resolves the client address, verifies a bearer token once (the `Auth`
/// extractor reuses the principal) and checks the route group's budgets before the route runs.
/// All of it is decided before the inner service is called, so its future is the inner one's or
/// a ready refusal, never a box.
#[derive(Debug, Clone)]
pub struct LimitLayer {
    state: AppState,
}

impl LimitLayer {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            state: self.state.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limit<S> {
    state: AppState,
    inner: S,
}

type Answered<F, R> = Map<F, fn(Result<R, Infallible>) -> Result<Response, Infallible>>;
type Boxed = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// The inner layers' answer (tower-http's bodies) as axum's.
fn answer<R: IntoResponse>(answer: Result<R, Infallible>) -> Result<Response, Infallible> {
    let Ok(response) = answer;
    Ok(response.into_response())
}

impl<S> Service<Request> for Limit<S>
where
    S: Service<Request, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: IntoResponse,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        Ready<Result<Response, Infallible>>,
        Either<Answered<S::Future, S::Response>, Boxed>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match admit(&self.state, &mut req) {
            Admission::Through => Either::Right(Either::Left(
                self.inner
                    .call(req)
                    .map(answer::<S::Response> as fn(_) -> _),
            )),
            Admission::Refused(retry) => Either::Left(ready(Ok(refusal(retry)))),
            Admission::Ask(group, shared, checks) => {
                // The inner service was made ready for this request: it goes into the future,
                // a fresh clone stays for the next.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Either::Right(Either::Right(Box::pin(async move {
                    for (key, per_minute) in checks {
                        match shared.take(&key, per_minute).await {
                            Ok(None) => {}
                            Ok(Some(wait)) => {
                                metrics::counter!("rate_limited_total", "group" => group.as_str())
                                    .increment(1);
                                return Ok(refusal(RetryAfter(wait)));
                            }
                            // Redis away: the request goes on (and meets Redis's absence
                            // itself if it needs it) rather than every request refused.
                            Err(err) => {
                                tracing::warn!(%err, "cannot read the shared rate limits");
                                break;
                            }
                        }
                    }
                    let answered = inner.call(req).await;
                    answer::<S::Response>(answered)
                })))
            }
        }
    }
}

fn refusal(retry: RetryAfter) -> Response {
    ApiError::too_many_requests(retry.as_secs_ceil()).into_response()
}

/// What the layer decided before the route runs.
enum Admission {
    Through,
    Refused(RetryAfter),
    /// Through once the shared buckets let it.
    Ask(Group, Arc<dyn SharedLimits>, SharedChecks),
}

/// Lets `req` through, with its client address and verified caller in its extensions, or says
/// when the caller may try again (a 429), or which shared buckets to ask.
fn admit(limiter: &AppState, req: &mut Request) -> Admission {
    let group = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(Group::Public, |p| Group::of(req.method(), p.as_str()));
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
        .or_else(|| {
            req.extensions()
                .get::<axum::extract::connect_info::MockConnectInfo<SocketAddr>>()
                .map(|m| m.0.ip())
        });
    let ip = peer.map(|p| limiter.proxies.client(p, req.headers()));
    if let Some(ip) = ip {
        req.extensions_mut().insert(ResolvedClient(ip));
    }
    let principal: Option<Principal> = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::extract::bearer_token)
        .and_then(|token| limiter.auth.authenticate(token).ok());
    if let Some(p) = principal {
        req.extensions_mut().insert(p);
    }
    let user = principal.map(|p| p.user_id);
    let admission = limiter.limits.decide(group, ip, user);
    if matches!(admission, Admission::Refused(_)) {
        metrics::counter!("rate_limited_total", "group" => group.as_str()).increment(1);
    }
    admission
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_fall_into_groups() {
        let cases = [
            (
                Method::POST,
                "/api/v1/flash-sales/{id}/reservations",
                Group::Reserve,
            ),
            (Method::GET, "/api/v1/flash-sales/{id}", Group::Public),
            (Method::POST, "/api/v1/auth/login", Group::Auth),
            (Method::GET, "/api/v1/admin/orders", Group::Admin),
            (Method::POST, "/checkout", Group::Compat),
            (Method::POST, "/api/v1/payments/notify", Group::Unlimited),
            (Method::GET, "/healthz", Group::Unlimited),
            (Method::GET, "/api/v1/cart", Group::Public),
            (Method::POST, "/flash-sales/{id}/reserve", Group::Reserve),
            (Method::POST, "/signin", Group::Auth),
            (Method::GET, "/signin", Group::Public),
            (Method::GET, "/admin/orders", Group::Admin),
            (Method::GET, "/assets/app.js", Group::Unlimited),
            (Method::GET, "/", Group::Public),
        ];
        for (m, route, want) in cases {
            assert_eq!(Group::of(&m, route), want, "{m} {route}");
        }
    }

    #[test]
    fn per_ip_and_per_user_buckets_are_separate() {
        let limits = RateLimits::new(&LimitSettings {
            enabled: true,
            reserve: GroupLimit {
                per_ip_per_minute: 100,
                per_user_per_minute: 2,
            },
            ..LimitSettings::default()
        });
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        let (a, b) = (UserId::new(), UserId::new());
        assert!(limits.check(Group::Reserve, Some(ip), Some(a)).is_ok());
        assert!(limits.check(Group::Reserve, Some(ip), Some(a)).is_ok());
        assert!(limits.check(Group::Reserve, Some(ip), Some(a)).is_err());
        assert!(
            limits.check(Group::Reserve, Some(ip), Some(b)).is_ok(),
            "b has its own bucket"
        );
        assert!(
            limits.check(Group::Public, Some(ip), Some(a)).is_ok(),
            "other groups unlimited"
        );
        let off = RateLimits::new(&LimitSettings::default());
        for _ in 0..10 {
            assert!(off.check(Group::Reserve, Some(ip), Some(a)).is_ok());
        }
    }

    #[test]
    fn reloaded_limits_are_in_force_at_once() {
        let limits = RateLimits::new(&LimitSettings::default());
        let ip: IpAddr = "203.0.113.2".parse().unwrap();
        for _ in 0..5 {
            assert!(limits.check(Group::Public, Some(ip), None).is_ok());
        }
        limits.reload(&LimitSettings {
            enabled: true,
            public: GroupLimit {
                per_ip_per_minute: 1,
                per_user_per_minute: 0,
            },
            ..LimitSettings::default()
        });
        assert!(limits.check(Group::Public, Some(ip), None).is_ok());
        assert!(limits.check(Group::Public, Some(ip), None).is_err());
        limits.reload(&LimitSettings::default());
        assert!(limits.check(Group::Public, Some(ip), None).is_ok());
    }
}
