//! Background retries that end and sweeps that reach everything: a notification the shop keeps
//! refusing is retried on a bounded schedule and then dead-lettered where admins see it; the
//! closer of stale payments pages through all of them; a shopper's cancel closes only its own
//! order's payment.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;
use flashmart_app::payments::PaymentStatus;
use flashmart_domain::{OrderId, UserId};
use flashmart_sandbox::RETRY_SCHEDULE_SECS;
use serde_json::json;
use time::Duration;

use crate::catalog::{operator, product_id};
use crate::commerce::{address, app, put_in_cart};
use crate::support::TestApp;

/// A merchant endpoint that refuses every notification (as a shop with a broken key would).
#[derive(Debug, Default)]
struct Refusing(AtomicUsize);

#[async_trait::async_trait]
impl flashmart_sandbox::Transport for Refusing {
    async fn post(&self, _url: &str, _sig: &str, _body: Vec<u8>) -> Result<u16, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(400)
    }
}

/// An order awaiting payment with its payment started; returns (order id, pay url, user id).
async fn order_with_payment(app: &TestApp, token: &str, item: &str) -> (String, String, UserId) {
    put_in_cart(app, token, item, 1).await;
    let order = app
        .post("/api/v1/cart/checkout")
        .bearer(token)
        .json(&json!({"shipping_address": address()}))
        .send()
        .await
        .data();
    let id = order["id"].as_str().unwrap().to_owned();
    let payment = app
        .post(&format!("/api/v1/orders/{id}/payments"))
        .bearer(token)
        .send()
        .await
        .data();
    let me = app.user_id(token).await;
    (id, payment["pay_url"].as_str().unwrap().to_owned(), me)
}

async fn item(app: &TestApp) -> String {
    let op = operator(app).await;
    product_id(
        app,
        &op,
        json!({"name": "Lamp", "price_cents": 2500, "stock": 50}),
    )
    .await
}

#[tokio::test]
async fn a_refused_notification_is_retried_on_a_schedule_then_dead_lettered() {
    let app = app().await;
    let refusing = Arc::new(Refusing::default());
    app.sandbox().set_transport(refusing.clone());
    let item = item(&app).await;
    let (buyer, _) = app.customer("buyer@example.com", "buyer password").await;
    let (_, pay_url, _) = order_with_payment(&app, &buyer, &item).await;
    let mut attempted = app.sandbox().attempted();
    assert_eq!(
        app.press(&pay_url, "pay").await.status,
        StatusCode::SEE_OTHER
    );
    attempted.wait_for(|n| *n >= 1).await.unwrap();
    assert_eq!(refusing.0.load(Ordering::SeqCst), 1);

    for wait in RETRY_SCHEDULE_SECS {
        assert_eq!(
            app.sandbox().redeliver_due().await.unwrap(),
            0,
            "not due yet"
        );
        app.clock.advance(Duration::seconds(wait));
        assert_eq!(app.sandbox().redeliver_due().await.unwrap(), 1);
    }
    assert_eq!(refusing.0.load(Ordering::SeqCst), 11);
    app.clock.advance(Duration::days(2));
    assert_eq!(
        app.sandbox().redeliver_due().await.unwrap(),
        0,
        "dead: never again"
    );

    let admin = app
        .staff(
            "root@example.com",
            "root password",
            flashmart_domain::Role::Admin,
        )
        .await;
    let dead = app
        .get("/api/v1/admin/payments/dead-letters")
        .bearer(&admin)
        .send()
        .await
        .data();
    assert_eq!(dead["total"], 1, "{dead}");
    let letter = &dead["items"][0];
    assert_eq!(letter["attempts"], 11);
    assert_eq!(letter["last_status"], 400);
    assert_eq!(
        letter["payment_ref"].as_str(),
        pay_url.rsplit('/').next(),
        "{letter}"
    );
}

#[tokio::test]
async fn the_stale_payment_closer_reaches_every_page() {
    let app = TestApp::with_config(|c| {
        c.payments.sandbox_secret = Some(flashmart_server::config::Secret::new(
            "test-sandbox-secret-of-at-least-32-bytes",
        ));
        c.orders.max_open_per_user = 10;
    })
    .await;
    // Notifications go nowhere, so payments paid at the provider stay open here.
    app.sandbox().set_transport(Arc::new(Refusing::default()));
    let item = item(&app).await;
    let (buyer, _) = app.customer("many@example.com", "many password").await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(order_with_payment(&app, &buyer, &item).await);
    }
    // The first two (the lowest payment ids) were paid at the provider, which therefore will
    // not close them; all three orders are cancelled without the shopper's request closing
    // anything.
    for (_, pay_url, _) in &orders[..2] {
        assert_eq!(
            app.press(pay_url, "pay").await.status,
            StatusCode::SEE_OTHER
        );
    }
    for (order, _, user) in &orders {
        app.services
            .state
            .shop
            .cancel(*user, order.parse().unwrap())
            .await
            .unwrap();
    }
    let payments = &app.services.state.payments;
    assert_eq!(payments.close_stale_in_pages(2).await.unwrap(), 1);
    let status = |order: &str| {
        let order: OrderId = order.parse().unwrap();
        let store = std::sync::Arc::clone(&app.services.ports.payments);
        async move { store.payments_for_order(order).await.unwrap()[0].status }
    };
    assert_eq!(status(&orders[2].0).await, PaymentStatus::Closed);
    assert_eq!(status(&orders[0].0).await, PaymentStatus::Pending);
}

#[tokio::test]
async fn a_shoppers_cancel_closes_only_its_own_payment() {
    let app = app().await;
    let item = item(&app).await;
    let (a, _) = app.customer("a@example.com", "first password").await;
    let (b, _) = app.customer("b@example.com", "second password").await;
    let (order_a, _, user_a) = order_with_payment(&app, &a, &item).await;
    let (order_b, _, _) = order_with_payment(&app, &b, &item).await;
    // A's order ends without its payment being closed (the closer has not run yet).
    app.services
        .state
        .shop
        .cancel(user_a, order_a.parse().unwrap())
        .await
        .unwrap();
    let res = app
        .post(&format!("/api/v1/orders/{order_b}/cancel"))
        .bearer(&b)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let status = |order: &str| {
        let order: OrderId = order.parse().unwrap();
        let store = std::sync::Arc::clone(&app.services.ports.payments);
        async move { store.payments_for_order(order).await.unwrap()[0].status }
    };
    assert_eq!(status(&order_b).await, PaymentStatus::Closed);
    assert_eq!(
        status(&order_a).await,
        PaymentStatus::Pending,
        "another order's payment is the closer's work"
    );
}
