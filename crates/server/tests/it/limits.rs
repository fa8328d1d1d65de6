//! Rate limits by route group over HTTP: per address and per user, 429 with `Retry-After`, the
//! real client address behind trusted proxies only, and the switch that turns them all off.

use axum::http::StatusCode;
use flashmart_server::config::GroupLimitConfig;
use serde_json::json;

use crate::flash_sales::{live_sale, operator, reserve};
use crate::support::{TestApp, TestResponse};

fn limit(per_ip_per_minute: u32, per_user_per_minute: u32) -> GroupLimitConfig {
    GroupLimitConfig {
        per_ip_per_minute,
        per_user_per_minute,
    }
}

/// A 429 in the error envelope, with a `Retry-After` of at most the one-minute window.
fn assert_limited(res: &TestResponse) {
    res.assert_error(StatusCode::TOO_MANY_REQUESTS, 429);
    let retry: u64 = res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
}

async fn products_from(app: &TestApp, ip: &str) -> TestResponse {
    app.get("/api/v1/products").peer(ip).send().await
}

#[tokio::test]
async fn each_group_has_its_own_per_address_budget() {
    let app = TestApp::with_config(|c| {
        c.rate_limit.public = limit(3, 0);
        c.rate_limit.auth = limit(2, 0);
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            products_from(&app, "198.51.100.1").await.status,
            StatusCode::OK
        );
    }
    assert_limited(&products_from(&app, "198.51.100.1").await);
    assert_eq!(
        products_from(&app, "198.51.100.2").await.status,
        StatusCode::OK,
        "another address has its own budget"
    );
    // The auth group is counted apart from browsing.
    let refresh = || {
        app.post("/api/v1/auth/refresh")
            .peer("198.51.100.1")
            .json(&json!({"refresh_token": "not-a-token"}))
            .send()
    };
    assert_eq!(refresh().await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refresh().await.status, StatusCode::UNAUTHORIZED);
    assert_limited(&refresh().await);
    // Probes are never limited.
    for _ in 0..5 {
        let res = app.get("/healthz").peer("198.51.100.1").send().await;
        assert_eq!(res.status, StatusCode::OK);
    }
    assert!(app.metric("rate_limited_total{group=\"public\"}").await >= 1.0);
    assert!(app.metric("rate_limited_total{group=\"auth\"}").await >= 1.0);
}

#[tokio::test]
async fn reservations_are_limited_per_user() {
    let app = TestApp::with_config(|c| {
        c.rate_limit.reserve = limit(1_000, 2);
    })
    .await;
    let limited = "rate_limited_total{group=\"reserve\"}";
    let before = app.metric(limited).await;
    let ops = operator(&app).await;
    let sale = live_sale(&app, &ops, &[100, 100, 100], 10).await;
    let (alice, _) = app.customer("alice@example.com", "alice password").await;
    let (bob, _) = app.customer("bob@example.com", "bob password").await;
    assert_eq!(
        reserve(&app, &alice, &sale, 1, 1).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        reserve(&app, &alice, &sale, 2, 1).await.status,
        StatusCode::CREATED
    );
    let third = reserve(&app, &alice, &sale, 3, 1).await;
    assert_limited(&third);
    assert!(app.metric(limited).await > before);
    // Bob, from the same address, has his own budget; the refused request reserved nothing.
    assert_eq!(
        reserve(&app, &bob, &sale, 3, 1).await.status,
        StatusCode::CREATED
    );
    let sale_view = app
        .get(&format!("/api/v1/flash-sales/{sale}"))
        .send()
        .await
        .data();
    assert_eq!(sale_view["remaining"], 300 - 3, "{sale_view}");
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let app = TestApp::with_config(|c| {
        c.http.trusted_proxies = vec!["10.0.0.0/8".into()];
        c.rate_limit.public = limit(2, 0);
    })
    .await;
    let via = |peer: &'static str, client: &'static str| {
        app.get("/api/v1/products")
            .peer(peer)
            .header("x-forwarded-for", client)
            .send()
    };
    // A direct client cannot escape its budget by writing a new address each time.
    assert_eq!(via("203.0.113.7", "1.1.1.1").await.status, StatusCode::OK);
    assert_eq!(via("203.0.113.7", "2.2.2.2").await.status, StatusCode::OK);
    assert_limited(&via("203.0.113.7", "3.3.3.3").await);
    // Behind the trusted proxy, each real client is counted apart.
    assert_eq!(via("10.0.0.2", "198.51.100.9").await.status, StatusCode::OK);
    assert_eq!(via("10.0.0.2", "198.51.100.9").await.status, StatusCode::OK);
    assert_limited(&via("10.0.0.2", "198.51.100.9").await);
    assert_eq!(
        via("10.0.0.2", "198.51.100.10").await.status,
        StatusCode::OK,
        "another client behind the same proxy"
    );
    // A client's forged entry before the proxy's own is ignored: the right-most untrusted
    // address is the client.
    assert_limited(&via("10.0.0.3", "6.6.6.6, 198.51.100.9").await);
}

#[tokio::test]
async fn switching_limits_off_lifts_them_all() {
    let app = TestApp::with_config(|c| {
        c.rate_limit.enabled = false;
        c.rate_limit.public = limit(1, 1);
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            products_from(&app, "198.51.100.1").await.status,
            StatusCode::OK
        );
    }
}
