//! Limits that keep one account from holding the shop hostage: unpaid orders and units per
//! order are capped, a coupon use comes back with the stock of an order that was never paid,
//! and caps hold under parallel requests.

use axum::http::{Method, StatusCode};
use flashmart_domain::OrderId;
use serde_json::{Value, json};
use time::Duration;
use time::format_description::well_known::Rfc3339;

use crate::catalog::{operator, product_id};
use crate::commerce::{address, app, put_in_cart, stock};
use crate::support::TestApp;

async fn new_product(app: &TestApp, op: &str, name: &str, stock: i64) -> String {
    product_id(
        app,
        op,
        json!({"name": name, "price_cents": 6000, "stock": stock}),
    )
    .await
}

async fn checkout(
    app: &TestApp,
    token: &str,
    coupon: Option<&str>,
) -> crate::support::TestResponse {
    let mut body = json!({"shipping_address": address()});
    if let Some(code) = coupon {
        body["coupon_code"] = json!(code);
    }
    app.post("/api/v1/cart/checkout")
        .bearer(token)
        .json(&body)
        .send()
        .await
}

#[tokio::test]
async fn one_account_cannot_hold_the_catalogue() {
    let app = app().await;
    let op = operator(&app).await;
    let item = new_product(&app, &op, "Console", 100).await;
    let (hoarder, _) = app
        .customer("hoarder@example.com", "hoarder password")
        .await;

    // At most orders.max_units_per_product (10) of one product in a line.
    app.req(Method::PUT, &format!("/api/v1/cart/items/{item}"))
        .bearer(&hoarder)
        .json(&json!({"quantity": 11}))
        .send()
        .await
        .assert_error(StatusCode::CONFLICT, 50006);

    // At most orders.max_open_per_user (3) unpaid orders at once.
    let mut orders = Vec::new();
    for _ in 0..3 {
        put_in_cart(&app, &hoarder, &item, 10).await;
        let res = checkout(&app, &hoarder, None).await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
        orders.push(res.data()["id"].as_str().unwrap().to_owned());
    }
    put_in_cart(&app, &hoarder, &item, 10).await;
    checkout(&app, &hoarder, None)
        .await
        .assert_error(StatusCode::CONFLICT, 30003);
    assert_eq!(stock(&app, &item).await, 70, "30 held, no more");

    // Paying or cancelling one makes room again.
    let res = app
        .post(&format!("/api/v1/orders/{}/cancel", orders[0]))
        .bearer(&hoarder)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(
        checkout(&app, &hoarder, None).await.status,
        StatusCode::CREATED
    );

    // Someone else is not affected.
    let (other, _) = app.customer("other@example.com", "other password").await;
    put_in_cart(&app, &other, &item, 2).await;
    assert_eq!(
        checkout(&app, &other, None).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_units_cap_lowered_after_carting_is_enforced_at_checkout() {
    let app = TestApp::with_config(|c| c.orders.max_units_per_product = 2).await;
    let op = operator(&app).await;
    let item = new_product(&app, &op, "Card", 10).await;
    let (buyer, _) = app.customer("buyer@example.com", "buyer password").await;
    put_in_cart(&app, &buyer, &item, 2).await;
    app.req(Method::PUT, &format!("/api/v1/cart/items/{item}"))
        .bearer(&buyer)
        .json(&json!({"quantity": 3}))
        .send()
        .await
        .assert_error(StatusCode::CONFLICT, 50006);
    assert_eq!(
        checkout(&app, &buyer, None).await.status,
        StatusCode::CREATED
    );
}

async fn coupon(app: &TestApp, op: &str, code: &str) {
    let now = flashmart_app::Clock::now(&app.clock);
    let res = app
        .post("/api/v1/admin/coupons")
        .bearer(op)
        .json(&json!({
            "code": code, "kind": "percent", "percent": 50, "currency": "USD",
            "ends_at": (now + Duration::days(7)).format(&Rfc3339).unwrap(),
            "max_uses": 1, "per_user_limit": 1
        }))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
}

#[tokio::test]
async fn an_unpaid_order_gives_its_coupon_use_back() {
    let app = app().await;
    let op = operator(&app).await;
    let item = new_product(&app, &op, "Headphones", 10).await;
    coupon(&app, &op, "ONCE").await;
    let (a, _) = app.customer("a@example.com", "first password").await;
    let (b, _) = app.customer("b@example.com", "second password").await;

    // Cancelled: the use comes back, to anyone.
    put_in_cart(&app, &a, &item, 1).await;
    let order = checkout(&app, &a, Some("ONCE")).await.data();
    put_in_cart(&app, &b, &item, 1).await;
    checkout(&app, &b, Some("ONCE"))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 30011);
    app.post(&format!(
        "/api/v1/orders/{}/cancel",
        order["id"].as_str().unwrap()
    ))
    .bearer(&a)
    .send()
    .await;
    let order = checkout(&app, &b, Some("ONCE")).await;
    assert_eq!(order.status, StatusCode::CREATED, "{}", order.text());

    // Expired: the use comes back too, and the same buyer may use it again.
    app.clock.advance(Duration::seconds(901));
    let expired = app.services.state.shop.sweep_expired().await.unwrap();
    assert_eq!(expired.len(), 1);
    let (b, _) = app.login("b@example.com", "second password").await;
    put_in_cart(&app, &b, &item, 1).await;
    let again = checkout(&app, &b, Some("ONCE")).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text());
    assert_eq!(again.data()["discount_cents"], 3000);
}

#[tokio::test]
async fn parallel_requests_do_not_pass_the_address_cap() {
    let app = app().await;
    let (token, _) = app.customer("many@example.com", "many password").await;
    let adds: Vec<_> = (0..40)
        .map(|_| {
            app.post("/api/v1/users/me/addresses")
                .bearer(&token)
                .json(&address())
                .send()
        })
        .collect();
    let answers = futures_util::future::join_all(adds).await;
    let created = answers
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 20);
    assert!(
        answers
            .iter()
            .all(|r| r.status == StatusCode::CREATED || r.status == StatusCode::CONFLICT)
    );
    let list = app
        .get("/api/v1/users/me/addresses")
        .bearer(&token)
        .send()
        .await
        .data();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 20);
    assert_eq!(
        list.iter().filter(|a| a["default"] == true).count(),
        1,
        "one default"
    );
}

#[tokio::test]
async fn parallel_payment_starts_share_one_payment() {
    let app = app().await;
    let op = operator(&app).await;
    let item = new_product(&app, &op, "Speaker", 5).await;
    let (buyer, _) = app.customer("payer@example.com", "payer password").await;
    put_in_cart(&app, &buyer, &item, 1).await;
    let order = checkout(&app, &buyer, None).await.data();
    let id = order["id"].as_str().unwrap();
    let starts: Vec<_> = (0..6)
        .map(|_| {
            app.post(&format!("/api/v1/orders/{id}/payments"))
                .bearer(&buyer)
                .send()
        })
        .collect();
    let answers = futures_util::future::join_all(starts).await;
    let ids: Vec<Value> = answers
        .iter()
        .map(|r| {
            assert!(r.status.is_success(), "{}", r.text());
            r.data()["payment_id"].clone()
        })
        .collect();
    assert!(ids.iter().all(|p| *p == ids[0]), "{ids:?}");
    let stored = app
        .services
        .ports
        .payments
        .payments_for_order(id.parse::<OrderId>().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
}
