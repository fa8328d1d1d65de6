//! What the server shows, and to whom: metrics and readiness details on their own listener when
//! asked, no driver error text in readiness, a sandbox pay page that no other site can press or
//! frame, and a shop that can run without the sandbox.

use axum::http::{Method, StatusCode, header};
use serde_json::json;

use crate::catalog::{operator, product_id};
use crate::commerce::{address, app, put_in_cart};
use crate::support::TestApp;

#[tokio::test]
async fn metrics_and_readiness_can_move_to_the_ops_listener() {
    let app = TestApp::with_config(|c| c.ops.addr = Some("127.0.0.1:0".parse().unwrap())).await;
    for path in ["/metrics", "/readyz"] {
        assert_eq!(
            app.get(path).send().await.status,
            StatusCode::NOT_FOUND,
            "{path} on the public listener"
        );
        assert_eq!(
            app.ops(Method::GET, path).send().await.status,
            StatusCode::OK
        );
    }
    assert_eq!(app.get("/healthz").send().await.status, StatusCode::OK);
    let doc = app.get("/openapi.json").send().await.json();
    assert!(doc["paths"].get("/metrics").is_none());
    // Unset (the default), everything is on the main listener.
    let app = TestApp::start().await;
    assert_eq!(app.get("/metrics").send().await.status, StatusCode::OK);
}

#[tokio::test]
async fn readiness_shows_no_driver_error_text() {
    let app = TestApp::start().await;
    app.services.records.close().await;
    let res = app.get("/readyz").send().await;
    let body = res.assert_error(StatusCode::SERVICE_UNAVAILABLE, 503);
    assert_eq!(body["details"][0]["field"], crate::support::records_probe());
    assert_eq!(body["details"][0]["message"], "unavailable", "{body}");
}

async fn open_payment(app: &TestApp) -> String {
    let op = operator(app).await;
    let item = product_id(
        app,
        &op,
        json!({"name": "Mug", "price_cents": 1500, "stock": 3}),
    )
    .await;
    let (buyer, _) = app.customer("mug@example.com", "mug password").await;
    put_in_cart(app, &buyer, &item, 1).await;
    let order = app
        .post("/api/v1/cart/checkout")
        .bearer(&buyer)
        .json(&json!({"shipping_address": address()}))
        .send()
        .await
        .data();
    let res = app
        .post(&format!(
            "/api/v1/orders/{}/payments",
            order["id"].as_str().unwrap()
        ))
        .bearer(&buyer)
        .send()
        .await;
    res.data()["pay_url"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_sandbox_pay_page_cannot_be_pressed_or_framed_by_another_site() {
    let app = app().await;
    let pay_url = open_payment(&app).await;
    let page = app.get(&pay_url).send().await;
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("script-src"), "no script at all: {csp}");
    assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY");
    let cookie = page.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    // A form posted from elsewhere carries no cookie, or no token, or another browser's.
    let forged = [
        (None, "csrf=".to_owned()),
        (Some("sandbox_nonce=mine"), "csrf=00".to_owned()),
        (
            Some("sandbox_nonce=mine"),
            format!(
                "csrf={}",
                app.sandbox()
                    .form_token("someone-else", pay_url.rsplit('/').next().unwrap())
            ),
        ),
    ];
    for (cookie, body) in forged {
        let mut req = app.post(&format!("{pay_url}/pay"));
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        let res = req
            .raw("application/x-www-form-urlencoded", body)
            .send()
            .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.text());
    }
    assert!(
        app.get(&pay_url)
            .send()
            .await
            .text()
            .contains("Pay</button>"),
        "still open"
    );
    // The page's own form goes through.
    assert_eq!(
        app.press(&pay_url, "pay").await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn the_sandbox_can_be_switched_off() {
    let app = TestApp::with_config(|c| {
        c.payments.provider = flashmart_server::config::ProviderChoice::None;
    })
    .await;
    assert!(app.services.sandbox.is_none());
    assert!(!app.config.data_dir.join("sandbox.db").exists());
    let op = operator(&app).await;
    let item = product_id(
        &app,
        &op,
        json!({"name": "Mug", "price_cents": 1500, "stock": 3}),
    )
    .await;
    let (buyer, _) = app.customer("mug@example.com", "mug password").await;
    put_in_cart(&app, &buyer, &item, 1).await;
    let order = app
        .post("/api/v1/cart/checkout")
        .bearer(&buyer)
        .json(&json!({"shipping_address": address()}))
        .send()
        .await
        .data();
    app.post(&format!(
        "/api/v1/orders/{}/payments",
        order["id"].as_str().unwrap()
    ))
    .bearer(&buyer)
    .send()
    .await
    .assert_error(StatusCode::CONFLICT, 40006);
    let res = app.get("/sandbox/pay/sbx_anything").send().await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(res.json()["message"], "no such route");
    let doc = app.get("/openapi.json").send().await.json();
    assert!(doc["paths"].get("/sandbox/pay/{reference}").is_none());
}
