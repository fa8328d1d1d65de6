//! The ops routes: readiness, metrics, the OpenAPI document and the offline API reference.

use axum::http::{Method, StatusCode, header};
use serde_json::Value;

use crate::support::{TestApp, records_probe};

#[tokio::test]
async fn readyz_reports_the_record_store_by_name() {
    let app = TestApp::start().await;
    let data = app.get("/readyz").send().await.data();
    assert_eq!(data["status"], "ready");
    assert_eq!(data["checks"][records_probe()], "ok", "{data}");

    app.services.records.close().await;
    let body = app
        .get("/readyz")
        .send()
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, 503);
    assert_eq!(body["details"][0]["field"], records_probe());
    // Liveness does not depend on storage.
    assert_eq!(app.get("/healthz").send().await.status, StatusCode::OK);
}

/// Every route the API has, as the OpenAPI document must list it.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("put", "/api/v1/auth/password"),
    ("get", "/api/v1/users/me"),
    ("get", "/api/v1/admin/users"),
    ("get", "/api/v1/admin/users/{id}"),
    ("put", "/api/v1/admin/users/{id}/role"),
    ("get", "/api/v1/admin/audit"),
    ("post", "/api/v1/admin/webhooks"),
    ("get", "/api/v1/admin/webhooks"),
    ("get", "/api/v1/admin/webhooks/{id}"),
    ("patch", "/api/v1/admin/webhooks/{id}"),
    ("delete", "/api/v1/admin/webhooks/{id}"),
    ("post", "/api/v1/admin/webhooks/{id}/pause"),
    ("post", "/api/v1/admin/webhooks/{id}/resume"),
    ("get", "/api/v1/admin/webhooks/{id}/deliveries"),
    (
        "post",
        "/api/v1/admin/webhooks/{id}/deliveries/{event_id}/redeliver",
    ),
    ("get", "/images/generated/{file}"),
    ("get", "/api/v1/flash-sales"),
    ("get", "/api/v1/flash-sales/{id}"),
    ("get", "/api/v1/flash-sales/{id}/items"),
    ("get", "/api/v1/flash-sales/{id}/events"),
    ("post", "/api/v1/flash-sales/{id}/reservations"),
    ("get", "/api/v1/flash-sales/reservations/{id}"),
    ("post", "/api/v1/admin/flash-sales"),
    ("get", "/api/v1/admin/flash-sales"),
    ("get", "/api/v1/admin/flash-sales/{id}"),
    ("get", "/api/v1/admin/flash-sales/{id}/stats"),
    ("get", "/api/v1/admin/flash-sales/{id}/reservations"),
    ("post", "/api/v1/admin/flash-sale-schedules"),
    ("get", "/api/v1/admin/flash-sale-schedules"),
    ("post", "/api/v1/admin/loadtest/buyers"),
    ("get", "/api/v1/products"),
    ("get", "/api/v1/products/{id}"),
    ("post", "/api/v1/admin/products"),
    ("get", "/api/v1/admin/products"),
    ("get", "/api/v1/admin/products/{id}"),
    ("patch", "/api/v1/admin/products/{id}"),
    ("delete", "/api/v1/admin/products/{id}"),
    ("post", "/api/v1/admin/uploads"),
    ("get", "/uploads/{name}"),
    ("get", "/api/v1/users/me/addresses"),
    ("post", "/api/v1/users/me/addresses"),
    ("get", "/api/v1/users/me/addresses/{id}"),
    ("put", "/api/v1/users/me/addresses/{id}"),
    ("delete", "/api/v1/users/me/addresses/{id}"),
    ("post", "/api/v1/users/me/addresses/{id}/default"),
    ("get", "/api/v1/cart"),
    ("delete", "/api/v1/cart"),
    ("put", "/api/v1/cart/items/{product_id}"),
    ("delete", "/api/v1/cart/items/{product_id}"),
    ("post", "/api/v1/cart/checkout"),
    ("get", "/api/v1/orders"),
    ("get", "/api/v1/orders/{id}"),
    ("post", "/api/v1/orders/{id}/cancel"),
    ("get", "/api/v1/admin/orders"),
    ("get", "/api/v1/admin/orders/{id}"),
    ("post", "/api/v1/admin/coupons"),
    ("get", "/api/v1/admin/coupons"),
    ("post", "/api/v1/orders/{id}/payments"),
    ("get", "/api/v1/payments/{id}"),
    ("post", "/api/v1/payments/notify"),
    ("post", "/api/v1/admin/orders/{id}/refund"),
    ("get", "/api/v1/admin/refunds"),
    ("post", "/api/v1/auth/totp/enroll"),
    ("post", "/api/v1/auth/totp/confirm"),
    ("get", "/api/v1/admin/payments/dead-letters"),
    ("get", "/sandbox/pay/{reference}"),
    ("post", "/sandbox/pay/{reference}/pay"),
    ("post", "/sandbox/pay/{reference}/fail"),
];

/// Operations that take no request body although their method could carry one.
const BODILESS: &[&str] = &[
    "/api/v1/auth/logout",
    "/api/v1/auth/totp/enroll",
    "/api/v1/users/me/addresses/{id}/default",
    "/api/v1/orders/{id}/cancel",
    "/api/v1/orders/{id}/payments",
    "/sandbox/pay/{reference}/pay",
    "/sandbox/pay/{reference}/fail",
    "/checkout",
    "/purchase",
    "/api/v1/admin/webhooks/{id}/pause",
    "/api/v1/admin/webhooks/{id}/resume",
    "/api/v1/admin/webhooks/{id}/deliveries/{event_id}/redeliver",
];

/// Only with `compat.contest = true`.
const CONTEST_ROUTES: &[(&str, &str)] = &[
    ("post", "/checkout"),
    ("post", "/purchase"),
    ("get", "/health"),
];

#[tokio::test]
async fn openapi_lists_every_route_and_every_listed_route_exists() {
    let app = TestApp::start().await;
    check_routes(&app, ROUTES).await;
}

/// The contest API is served on its own listener only, and documented there.
#[tokio::test]
async fn the_contest_routes_live_on_their_own_listener() {
    let app = TestApp::with_config(|c| c.compat.contest = true).await;
    check_routes(&app, ROUTES).await;
    check_listener(&app, CONTEST_ROUTES, TestApp::compat).await;
    let res = app.get("/health").send().await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
}

async fn check_routes(app: &TestApp, routes: &[(&str, &str)]) {
    let doc = check_listener(app, routes, TestApp::req).await;
    // The envelope and the bearer scheme are part of the document.
    assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// Checks that the document `listener` serves lists exactly `routes`, each served; returns it.
async fn check_listener(
    app: &TestApp,
    routes: &[(&str, &str)],
    listener: fn(&TestApp, Method, &str) -> crate::support::Req,
) -> Value {
    let res = listener(app, Method::GET, "/openapi.json").send().await;
    assert_eq!(res.status, StatusCode::OK);
    let doc: Value = res.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();

    let mut documented = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            documented.push((method.clone(), path.clone()));
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents its responses"
            );
            if matches!(method.as_str(), "post" | "put" | "patch")
                && !BODILESS.contains(&path.as_str())
            {
                assert!(
                    op.get("requestBody").is_some(),
                    "{method} {path} documents its body"
                );
            }
        }
    }
    for (method, path) in routes {
        assert!(
            documented.contains(&((*method).to_owned(), (*path).to_owned())),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    assert_eq!(documented.len(), routes.len(), "documented: {documented:?}");

    // Each documented operation is served by a route (the router's fallback says "no such
    // route"; a wrong method would be a 405).
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "01930000-0000-7000-8000-000000000000")
            .replace("{file}", "1.svg")
            .replace("{name}", "x.png")
            .replace("{product_id}", "01930000-0000-7000-8000-000000000000")
            .replace("{reference}", "sbx_nothing");
        let res = listener(
            app,
            Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
            &concrete,
        )
        .send()
        .await;
        assert_ne!(
            res.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        if res.status == StatusCode::NOT_FOUND
            && res.headers[header::CONTENT_TYPE] == "application/json"
        {
            assert_ne!(res.json()["message"], "no such route", "{method} {path}");
        }
    }
    doc
}

#[tokio::test]
async fn docs_render_with_no_network() {
    let app = TestApp::start().await;
    let res = app.get("/docs").send().await;
    assert!(res.status.is_redirection());
    let res = app.get("/docs/").send().await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(
        res.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = res.text();
    assert!(html.contains("swagger-ui"));

    // Every script and stylesheet the page loads is served here, none from elsewhere.
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for chunk in html.split(attr).skip(1) {
            assets.push(chunk.split('"').next().unwrap().to_owned());
        }
    }
    assert!(assets.iter().any(|a| a.ends_with("swagger-ui-bundle.js")));
    for asset in &assets {
        assert!(
            !asset.starts_with("http:") && !asset.starts_with("https:") && !asset.starts_with("//"),
            "{asset} would need the network"
        );
        let path = format!("/docs/{}", asset.trim_start_matches("./"));
        let res = app.get(&path).send().await;
        assert_eq!(res.status, StatusCode::OK, "{path}");
        assert!(!res.body.is_empty(), "{path}");
    }
    let init = app.get("/docs/swagger-initializer.js").send().await.text();
    assert!(init.contains("/openapi.json"));
    assert!(
        !init.contains("http://") && !init.contains("https://"),
        "{init}"
    );
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
}

#[tokio::test]
async fn metrics_label_requests_by_route_template() {
    let app = TestApp::start().await;
    let id = "01930000-0000-7000-8000-00000000abcd";
    app.get(&format!("/api/v1/admin/users/{id}")).send().await;
    let product = "01930000-0000-7000-8000-00000000beef";
    let missing = app.get(&format!("/api/v1/products/{product}")).send().await;
    missing.assert_error(StatusCode::NOT_FOUND, 20001);
    app.get("/api/v1/some/random/path/12345").send().await;
    let res = app.get("/metrics").send().await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(
        res.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("http_requests_total{")
                && l.contains("route=\"/api/v1/admin/users/{id}\"")
                && l.contains("status=\"401\"")
        })
        .unwrap_or_else(|| panic!("no templated series in:\n{text}"));
    assert!(line.contains("method=\"GET\""), "{line}");
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total{")
            && l.contains("route=\"/api/v1/products/{id}\"")
            && l.contains("status=\"404\"")),
        "no products series in:\n{text}"
    );
    assert!(!text.contains(id), "raw ids never become labels");
    assert!(!text.contains(product), "raw ids never become labels");
    assert!(
        !text.contains("12345"),
        "unmatched paths never become labels"
    );
    assert!(text.contains("route=\"unmatched\""));
    assert!(text.contains("http_request_duration_seconds_bucket{"));
}

/// Every answer counts once in its series, the first and every one after it (each worker thread
/// keeps the series it has found).
#[tokio::test]
async fn every_answer_counts_in_its_series() {
    let app = TestApp::start().await;
    // The request counter's and the duration histogram's count for one series.
    let counts = |text: &str| -> [u64; 2] {
        [
            "http_requests_total{",
            "http_request_duration_seconds_count{",
        ]
        .map(|name| {
            text.lines()
                .find(|l| {
                    l.starts_with(name)
                        && l.contains("method=\"GET\"")
                        && l.contains("route=\"/api/v1/products/{id}\"")
                        && l.contains("status=\"404\"")
                })
                .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
        })
    };
    let before = counts(&app.get("/metrics").send().await.text());
    let product = "01930000-0000-7000-8000-00000000beef";
    for _ in 0..7 {
        app.get(&format!("/api/v1/products/{product}"))
            .send()
            .await
            .assert_error(StatusCode::NOT_FOUND, 20001);
    }
    let text = app.get("/metrics").send().await.text();
    let after = counts(&text);
    assert_eq!(
        [after[0] - before[0], after[1] - before[1]],
        [7, 7],
        "{text}"
    );
}

/// Made-up methods share one label: no client can grow the label set.
#[tokio::test]
async fn metric_labels_stay_bounded_whatever_clients_send() {
    let app = TestApp::start().await;
    for i in 0..300 {
        let method = Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
        app.req(method, "/healthz").send().await;
    }
    let text = app.get("/metrics").send().await.text();
    let methods: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert!(methods.contains("other"), "{methods:?}");
    assert!(
        !methods
            .iter()
            .any(|m| m.starts_with('M') && m.len() > 1 && m[1..].parse::<u32>().is_ok()),
        "{methods:?}"
    );
    assert!(methods.len() <= 10, "{methods:?}");
}

/// Readiness reports the background work; with the group commit gone the server is not ready and
/// reservations are refused at once.
#[tokio::test]
async fn readiness_reports_the_group_commit_and_refuses_when_it_is_gone() {
    let mut app = TestApp::start().await;
    let ready = app.get("/readyz").send().await.data();
    let workers = ready["workers"].as_array().unwrap();
    assert_eq!(workers[0]["name"], "group_commit");
    assert_eq!(workers[0]["state"], "ok");

    let ops = crate::flash_sales::operator(&app).await;
    let sale = crate::flash_sales::live_sale(&app, &ops, &[3], 1).await;
    let (buyer, _) = app.customer("late@example.com", "late password").await;
    app.services.commit_task.abort();
    // Aborted is ended only once the runtime has dropped it.
    let ended = (&mut app.services.commit_task).await;
    assert!(ended.is_err_and(|e| e.is_cancelled()));
    let body = app
        .get("/readyz")
        .send()
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, 503);
    assert_eq!(body["details"][0]["field"], "group_commit", "{body}");
    assert_eq!(body["details"][0]["message"], "stopped", "{body}");
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        crate::flash_sales::reserve(&app, &buyer, &sale, 1, 1),
    )
    .await
    .expect("answered, not left hanging");
    answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, 503);
    let view = app
        .get(&format!("/api/v1/flash-sales/{sale}"))
        .send()
        .await
        .data();
    // (With the shared engine too: no place in the commit queue, so nothing was asked of it.)
    assert_eq!(view["remaining"], 3, "nothing held");
}

/// `/metrics` computes at each scrape what the dashboards and alerts need that no event records:
/// each live sale's units left and held unpaid, and the health of the background work.
#[tokio::test]
async fn metrics_show_each_live_sales_stock_and_the_background_work() {
    let app = TestApp::start().await;
    let ops = crate::catalog::operator(&app).await;
    let sale = crate::flash_sales::live_sale(&app, &ops, &[3, 4], 10).await;
    let (buyer, _) = app.customer("gauge@example.com", "a buyer password").await;
    let res = crate::flash_sales::reserve(&app, &buyer, &sale, 1, 2).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    // With the Redis engine an instance's view of a sale's stock follows the engine within a
    // moment (its event stream's pace): scrape until it has.
    let left = format!("flash_sale_remaining_units{{sale=\"{sale}\"}} 5");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = app.get("/metrics").send().await.text();
        if text.contains(&left) || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(text.contains(&left), "{text}");
    assert!(
        text.contains(&format!("flash_sale_held_units{{sale=\"{sale}\"}} 2")),
        "{text}"
    );
    assert!(text.contains("# TYPE background_work_up gauge"));
    assert!(
        text.contains("background_work_up{work=\"group_commit\"} 1"),
        "{text}"
    );
}

/// The metric names in `expr`, PromQL functions, keywords and labels aside: the tokens that
/// start the way flashmart's metrics do.
fn metric_names(expr: &str) -> Vec<String> {
    const PREFIXES: [&str; 8] = [
        "http_",
        "flash_sale_",
        "background_work_",
        "process_",
        "payments_",
        "orders_",
        "rate_limited_",
        "scheduler_",
    ];
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| PREFIXES.iter().any(|p| t.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// Every metric name recorded with `counter!`, `gauge!` or `histogram!` in the server's sources.
fn recorded_in_sources(dir: &std::path::Path, out: &mut std::collections::HashSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            recorded_in_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for macro_call in ["counter!(", "gauge!(", "histogram!("] {
                for (at, _) in text.match_indices(macro_call) {
                    let rest = &text[at + macro_call.len()..];
                    if let Some(start) = rest.find('"')
                        && rest[..start].trim().is_empty()
                        && let Some(len) = rest[start + 1..].find('"')
                    {
                        out.insert(rest[start + 1..start + 1 + len].to_owned());
                    }
                }
            }
        }
    }
}

/// Every metric a Grafana panel or an alert rule queries is one the server exports: seen on
/// `/metrics` after a sale and a reservation, or (for the few that only another mode records:
/// the stream lag of scaled mode, say) recorded under that name in the server's code.
#[tokio::test]
async fn the_dashboard_and_the_alert_rules_query_only_metrics_the_server_exports() {
    let app = TestApp::start().await;
    let ops = crate::catalog::operator(&app).await;
    let sale = crate::flash_sales::live_sale(&app, &ops, &[3], 10).await;
    let (buyer, _) = app.customer("dash@example.com", "a buyer password").await;
    crate::flash_sales::reserve(&app, &buyer, &sale, 1, 1).await;
    let scraped = app.get("/metrics").send().await.text();
    let exported: std::collections::HashSet<String> = scraped
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut recorded = std::collections::HashSet::new();
    recorded_in_sources(&root.join("crates"), &mut recorded);

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/flashmart-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    let panels = exprs.len();
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("deploy/prometheus/flashmart-rules.yml")).unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(panels >= 10 && exprs.len() > panels);
    let mut seen = 0;
    for expr in &exprs {
        for name in metric_names(expr) {
            if exported.contains(&name) {
                seen += 1;
                continue;
            }
            // Declared without samples just now, a histogram's or summary's series, or one
            // only another mode records.
            let (family, suffix) = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).map(|f| (f, *s)))
                .unwrap_or((name.as_str(), ""));
            let declared = scraped
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# TYPE {family} ")));
            if declared.is_some() {
                seen += 1;
            }
            let fits = match (declared, suffix) {
                (Some(_), "") => true,
                (Some(kind), "_bucket") => kind == "histogram",
                (Some(kind), _) => kind == "histogram" || kind == "summary",
                (None, _) => recorded.contains(family),
            };
            assert!(
                fits,
                "{name} (in `{expr}`) is neither on /metrics nor recorded by the server"
            );
        }
    }
    // How many have samples or a declaration depends on the store and engine of the run (the
    // group commit's metrics are absent with flash_sale.ack = redis); a dozen at least.
    assert!(
        seen >= 12,
        "only {seen} names were checked against a scrape"
    );
    // The gauges the alerts on stock read are there for a live sale.
    assert!(exported.contains("flash_sale_remaining_units"));
    assert!(exported.contains("flash_sale_held_units"));
}
