//! flashmart's HTTP layer: the axum routers of the public, admin and ops APIs, the envelope and
//! `ApiError` every answer goes through, the extractors, and the OpenAPI document generated from
//! the handlers themselves.

pub mod client_ip;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod limits;
pub mod metrics;
mod observe;
mod openapi;
pub mod routes;
pub mod state;
pub mod streams;
pub mod views;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::{Config as SwaggerConfig, SwaggerUi};

pub use error::ApiError;
pub use observe::CurrentRequest;
pub use state::{AppServices, AppState, HttpSettings, Probes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flashmart",
        description = "E-commerce backend with a flash-sale engine. Every answer carries the \
                       envelope `{code, message, data, trace_id}`; errors have a non-zero code."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "ops", description = "Health, readiness and metrics"),
        (name = "auth", description = "Registration, login and sessions"),
        (name = "users", description = "The caller's account"),
        (name = "catalog", description = "Products and their pictures"),
        (name = "shop", description = "Addresses, cart, checkout and orders"),
        (name = "payments", description = "Payments, the provider's notifications, the sandbox pay page"),
        (name = "flash-sales", description = "Flash sales and reservations"),
        (name = "admin", description = "Administration (admin or operator role)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// What changes the route table.
#[derive(Debug, Clone, Copy)]
pub struct RouteOptions {
    pub upload_max_bytes: usize,
    /// `/readyz` and `/metrics` are on the ops listener, not this one.
    pub ops_apart: bool,
}

/// Every route of the public listener, with `mounted`: documented routes from outside this
/// crate (the sandbox payment provider's pay pages). The contest API is never among them: it
/// trusts the caller-named user, so it has a listener of its own (`compat_router`).
fn documented_routes(
    options: RouteOptions,
    mounted: OpenApiRouter<AppState>,
) -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::new()
        .merge(routes::auth::routes())
        .merge(routes::users::routes())
        .merge(routes::catalog::routes())
        .merge(routes::shop::routes())
        .merge(routes::payments::routes())
        .merge(routes::uploads::routes(options.upload_max_bytes))
        .merge(routes::flash_sales::routes())
        .merge(routes::admin_flash_sales::routes())
        .merge(routes::audit::routes())
        .merge(routes::webhooks::routes());
    // The API's routes name their whole path (`/api/v1/...`) rather than being nested under
    // `/api/v1`: a nested router costs every request a rewritten URI, an extension and one more
    // boxed service level.
    let mut root = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::ops::liveness())
        .merge(routes::images::routes())
        .merge(routes::uploads::serving())
        .merge(api);
    if !options.ops_apart {
        root = root.merge(routes::ops::internals());
    }
    root.merge(mounted)
}

/// The OpenAPI document of every route `router` serves.
pub fn openapi(options: RouteOptions, mounted: OpenApiRouter<AppState>) -> OpenApiDoc {
    let mut doc = documented_routes(options, mounted).split_for_parts().1;
    openapi::finish(&mut doc);
    doc
}

/// The whole HTTP application, with `mounted`: documented routes that other crates serve
/// under the same middleware (the server mounts the sandbox provider's pay pages there).
pub fn router(
    state: AppState,
    settings: &HttpSettings,
    mounted: OpenApiRouter<AppState>,
) -> Router {
    router_with(state, settings, mounted, Router::new())
}

/// The application with `extra`, undocumented routes mounted under the same middleware too: the
/// web pages (which are not API), and in tests, routes that misbehave on purpose (a handler that
/// panics).
pub fn router_with(
    state: AppState,
    settings: &HttpSettings,
    mounted: OpenApiRouter<AppState>,
    extra: Router<AppState>,
) -> Router {
    router_with_fallback(state, settings, mounted, extra, observe::no_route)
}

/// [`router_with`], with `fallback` answering what no route matched instead of the envelope's
/// 404: the web pages answer a browser with a page of their own (and anyone else as the API
/// does).
pub fn router_with_fallback<H, T>(
    state: AppState,
    settings: &HttpSettings,
    mounted: OpenApiRouter<AppState>,
    extra: Router<AppState>,
    fallback: H,
) -> Router
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    let options = RouteOptions {
        upload_max_bytes: state.uploads.max_bytes(),
        ops_apart: settings.ops_apart,
    };
    let (routes, mut doc) = documented_routes(options, mounted).split_for_parts();
    openapi::finish(&mut doc);
    let routes = routes.merge(extra).merge(
        SwaggerUi::new("/docs")
            .url("/openapi.json", doc)
            // The validator badge would call validator.swagger.io from the reader's browser.
            .config(SwaggerConfig::new(["/openapi.json"]).validator_url("none")),
    );
    with_middleware(routes.fallback(fallback), state, settings)
}

/// The ops listener (`ops.addr`): `/healthz`, `/readyz` with each dependency's state, and
/// `/metrics`, kept off the public listener.
pub fn ops_router(state: AppState, settings: &HttpSettings) -> Router {
    let (routes, _) = OpenApiRouter::new()
        .merge(routes::ops::liveness())
        .merge(routes::ops::internals())
        .split_for_parts();
    with_middleware(routes.fallback(observe::no_route), state, settings)
}

/// The contest compatibility API (`/checkout`, `/purchase`, `/health`, and its own
/// `/openapi.json`), for the listener at `compat.addr`. It trusts the caller-named user, so it
/// must never share the public listener.
pub fn compat_router(state: AppState, settings: &HttpSettings) -> Router {
    let (routes, mut doc) = OpenApiRouter::with_openapi(CompatDoc::openapi())
        .merge(routes::compat::routes())
        .split_for_parts();
    openapi::finish(&mut doc);
    let routes = routes.route(
        "/openapi.json",
        axum::routing::get(move || std::future::ready(axum::Json(doc.clone()))),
    );
    with_middleware(routes.fallback(observe::no_route), state, settings)
}

#[derive(OpenApi)]
#[openapi(info(
    title = "flashmart contest compatibility API",
    description = "The hourly-sale contest interface (compat.contest = true), served on \
                   compat.addr only. It trusts the caller's user id: private networks only."
))]
struct CompatDoc;

/// The layers every listener's routes (and their fallback) run inside, outermost first. They are one layer to the
/// router: each `Router::layer` call wraps every route in a boxed service of its own, which costs
/// every request a clone and a boxed future per call, freed only when the answer is sent (on
/// another thread, for a reservation that waited for its commit).
fn with_middleware(routes: Router<AppState>, state: AppState, settings: &HttpSettings) -> Router {
    let layers = ServiceBuilder::new()
        .layer(observe::ObserveLayer)
        // Around the rate limits too: with shared limits their check is a call to Redis.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            settings.request_timeout,
        ))
        .layer(limits::LimitLayer::new(state.clone()))
        .layer(CatchPanicLayer::custom(observe::panic_response))
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes));
    routes.layer(layers).with_state(state)
}
