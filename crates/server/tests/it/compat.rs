//! The contest compatibility API on its own listener (`compat.addr`): the contest's checkout and
//! purchase, and nothing of it on the public listener or for a shopper's reservation.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::flash_sales::{live_sale, operator, reserve};
use crate::support::TestApp;

#[tokio::test]
async fn the_contest_api_over_http() {
    let app = TestApp::with_config(|c| c.compat.contest = true).await;
    let post = |path: &str| app.compat(Method::POST, path);
    let health = app.compat(Method::GET, "/health").send().await;
    assert_eq!(health.json(), json!({"status": "ok"}));

    let res = post("/checkout?user_id=u1&id=17").send().await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let code = res.json()["code"].as_str().unwrap().to_owned();
    post("/checkout?user_id=u2&id=17")
        .send()
        .await
        .assert_error(StatusCode::CONFLICT, 60004);
    post("/checkout?user_id=u2&id=0")
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 60007);
    post("/checkout?id=1")
        .send()
        .await
        .assert_error(StatusCode::BAD_REQUEST, 400);

    let first = post(&format!("/purchase?code={code}")).send().await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let again = post(&format!("/purchase?code={code}")).send().await;
    assert_eq!(first.json(), again.json());
    let body = first.json();
    assert_eq!(body["user_id"], "u1");
    assert_eq!(body["item"]["id"], 17);
    assert_eq!(body["item"]["name"], "Flash deal #00017");
    post("/purchase?code=NOSUCHCODE")
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 60008);

    let doc = app.compat(Method::GET, "/openapi.json").send().await.json();
    assert!(doc["paths"]["/purchase"]["post"].is_object(), "{doc}");
}

#[tokio::test]
async fn the_public_listener_has_no_contest_routes() {
    let app = TestApp::with_config(|c| c.compat.contest = true).await;
    for path in ["/checkout?user_id=u1&id=1", "/purchase?code=X"] {
        app.post(path)
            .send()
            .await
            .assert_error(StatusCode::NOT_FOUND, 404);
    }
    let doc = app.get("/openapi.json").send().await.json();
    assert!(doc["paths"].get("/checkout").is_none());
    assert!(doc["paths"].get("/purchase").is_none());
}

/// A shopper's reservation is paid through its order; its code bought nothing on the contest API.
#[tokio::test]
async fn a_shoppers_reservation_cannot_be_bought_by_its_code() {
    let app = TestApp::with_config(|c| c.compat.contest = true).await;
    let ops = operator(&app).await;
    let sale = live_sale(&app, &ops, &[1], 1).await;
    let (token, _) = app.customer("shopper@example.com", "a fine password").await;
    let res = reserve(&app, &token, &sale, 1, 1).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let reservation = res.data();
    let code = reservation["code"].as_str().unwrap();

    app.compat(Method::POST, &format!("/purchase?code={code}"))
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 60008);

    let id = reservation["id"].as_str().unwrap();
    let after = app
        .get(&format!("/api/v1/flash-sales/reservations/{id}"))
        .bearer(&token)
        .send()
        .await
        .data();
    assert_eq!(after["status"], "reserved");
    let order = reservation["order_id"].as_str().unwrap();
    let order = app
        .get(&format!("/api/v1/orders/{order}"))
        .bearer(&token)
        .send()
        .await
        .data();
    assert_eq!(order["status"], "pending_payment");
    // Cancelling the order still puts the unit back on sale.
    let res = app
        .post(&format!(
            "/api/v1/orders/{}/cancel",
            order["id"].as_str().unwrap()
        ))
        .bearer(&token)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let stats = app
        .get(&format!("/api/v1/admin/flash-sales/{sale}/stats"))
        .bearer(&ops)
        .send()
        .await
        .data();
    assert_eq!(stats["remaining"], 1, "{stats}");
    assert_eq!(stats["sold"], 0, "{stats}");
}
