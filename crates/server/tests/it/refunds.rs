//! Refunds the shop and the provider agree on: concurrent refunds of one order take turns, a
//! refund whose answer was lost is completed once, and the refund owed for a payment that came
//! after its order ended is durable and drained by the refund worker.

use axum::http::StatusCode;
use flashmart_domain::{OrderId, UserId};
use flashmart_sandbox::RefundFault;
use serde_json::{Value, json};
use time::Duration;

use crate::catalog::{operator, product_id};
use crate::commerce::{address, app, pay, put_in_cart};
use crate::support::TestApp;

pub struct PaidOrder {
    pub id: String,
    pub customer: String,
    pub provider_ref: String,
    pub admin: String,
}

/// An order of 50.00 in `pending_payment` with its payment started, and an admin.
async fn unpaid_order(app: &TestApp) -> (String, String, Value) {
    let op = operator(app).await;
    let item = product_id(
        app,
        &op,
        json!({"name": "Kettle", "price_cents": 5000, "stock": 5}),
    )
    .await;
    let (customer, _) = app.customer("payer@example.com", "payer password").await;
    put_in_cart(app, &customer, &item, 1).await;
    let order = app
        .post("/api/v1/cart/checkout")
        .bearer(&customer)
        .json(&json!({"shipping_address": address()}))
        .send()
        .await
        .data();
    (order["id"].as_str().unwrap().to_owned(), customer, order)
}

/// A paid order of 50.00 (its product made by `catalog::operator`), and an admin.
pub async fn paid_order(app: &TestApp) -> PaidOrder {
    let (id, customer, _) = unpaid_order(app).await;
    let payment = pay(app, &customer, &id, 0).await;
    let admin = app
        .staff(
            "refunds-admin@example.com",
            "admin password",
            flashmart_domain::Role::Admin,
        )
        .await;
    PaidOrder {
        id,
        customer,
        provider_ref: reference(&payment),
        admin,
    }
}

fn reference(payment: &Value) -> String {
    payment["pay_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

pub async fn refund(
    app: &TestApp,
    order: &PaidOrder,
    amount: Value,
) -> crate::support::TestResponse {
    app.post(&format!("/api/v1/admin/orders/{}/refund", order.id))
        .bearer(&order.admin)
        .json(&json!({"amount_cents": amount}))
        .send()
        .await
}

async fn refunded_here(app: &TestApp, order: &PaidOrder) -> i64 {
    app.get(&format!("/api/v1/admin/orders/{}", order.id))
        .bearer(&order.admin)
        .send()
        .await
        .data()["refunded_cents"]
        .as_i64()
        .unwrap()
}

async fn refunded_there(app: &TestApp, provider_ref: &str) -> i64 {
    app.sandbox().refunded_cents(provider_ref).await.unwrap()
}

async fn refunds(app: &TestApp, admin: &str, status: &str) -> Vec<Value> {
    app.get(&format!("/api/v1/admin/refunds?status={status}"))
        .bearer(admin)
        .send()
        .await
        .data()["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn concurrent_refunds_of_one_order_agree_with_the_provider() {
    let app = app().await;
    let order = paid_order(&app).await;
    let (a, b, c) = tokio::join!(
        refund(&app, &order, json!(200)),
        refund(&app, &order, json!(200)),
        refund(&app, &order, json!(200)),
    );
    for res in [&a, &b, &c] {
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    }
    assert_eq!(refunded_here(&app, &order).await, 600);
    assert_eq!(refunded_there(&app, &order.provider_ref).await, 600);

    // The rest can still be refunded, and then nothing more.
    let rest = refund(&app, &order, Value::Null).await.data();
    assert_eq!(rest["status"], "refunded");
    assert_eq!(rest["refunded_cents"], 5000);
    assert_eq!(refunded_there(&app, &order.provider_ref).await, 5000);
    refund(&app, &order, json!(1))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 40005);
    assert_eq!(refunds(&app, &order.admin, "succeeded").await.len(), 4);
    // The customer's view agrees.
    let mine = app
        .get(&format!("/api/v1/orders/{}", order.id))
        .bearer(&order.customer)
        .send()
        .await
        .data();
    assert_eq!(mine["refunded_cents"], 5000);
}

#[tokio::test]
async fn a_refund_whose_answer_was_lost_is_completed_once() {
    let app = app().await;
    let order = paid_order(&app).await;
    let sandbox = app.sandbox();

    sandbox.set_refund_fault(RefundFault::LoseAnswers);
    refund(&app, &order, json!(1000))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, 40008);
    // The provider made it; the shop waits for its confirmation before counting it.
    assert_eq!(refunded_there(&app, &order.provider_ref).await, 1000);
    assert_eq!(refunded_here(&app, &order).await, 0);
    let pending = refunds(&app, &order.admin, "pending").await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["attempts"], 1);
    // One refund of an order at a time.
    refund(&app, &order, json!(500))
        .await
        .assert_error(StatusCode::CONFLICT, 40007);

    sandbox.set_refund_fault(RefundFault::None);
    let payments = &app.services.state.payments;
    assert_eq!(payments.drain_refunds(100).await.unwrap(), 0, "not due yet");
    app.clock.advance(Duration::minutes(1));
    assert_eq!(payments.drain_refunds(100).await.unwrap(), 1);
    assert_eq!(refunded_here(&app, &order).await, 1000);
    assert_eq!(
        refunded_there(&app, &order.provider_ref).await,
        1000,
        "asked twice, refunded once"
    );
    assert!(refunds(&app, &order.admin, "pending").await.is_empty());
    assert_eq!(payments.drain_refunds(100).await.unwrap(), 0);
}

#[tokio::test]
async fn a_refund_the_provider_refuses_is_failed_and_changes_nothing() {
    let app = app().await;
    let order = paid_order(&app).await;
    // The provider has refunded part of it behind the shop's back (say, from its dashboard).
    flashmart_app::payments::PaymentProvider::refund(
        app.sandbox().as_ref(),
        &order.provider_ref,
        flashmart_domain::Money::new(4900, flashmart_domain::Currency::USD).unwrap(),
        "refund-made-elsewhere",
    )
    .await
    .unwrap();
    refund(&app, &order, json!(1000))
        .await
        .assert_error(StatusCode::CONFLICT, 40006);
    assert_eq!(refunded_here(&app, &order).await, 0);
    let failed = refunds(&app, &order.admin, "failed").await;
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["last_error"].as_str().is_some());
    // Not stuck: a refund the provider accepts goes through.
    assert_eq!(
        refund(&app, &order, json!(100)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_refund_owed_for_a_late_payment_survives_a_provider_outage() {
    let app = app().await;
    let (order_id, customer, _) = unpaid_order(&app).await;
    let payment = app
        .post(&format!("/api/v1/orders/{order_id}/payments"))
        .bearer(&customer)
        .send()
        .await
        .data();
    // The order is cancelled while its payment is still open at the provider (the closer has
    // not run yet); the buyer then pays anyway.
    let me: UserId = app.user_id(&customer).await;
    app.services
        .state
        .shop
        .cancel(me, order_id.parse::<OrderId>().unwrap())
        .await
        .unwrap();
    let sandbox = app.sandbox();
    sandbox.set_refund_fault(RefundFault::Down);
    let pay_url = payment["pay_url"].as_str().unwrap();
    assert_eq!(
        app.press(pay_url, "pay").await.status,
        StatusCode::SEE_OTHER
    );
    app.notifications_delivered(1).await;

    let admin = app
        .staff(
            "refunds-admin@example.com",
            "admin password",
            flashmart_domain::Role::Admin,
        )
        .await;
    let owed = refunds(&app, &admin, "pending").await;
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert_eq!(owed[0]["kind"], "late_payment");
    assert_eq!(owed[0]["amount_cents"], 5000);
    let provider_ref = reference(&payment);
    assert_eq!(refunded_there(&app, &provider_ref).await, 0);

    // The provider's retry of the same notification is a duplicate and owes nothing more.
    let (signature, body) = app.notifications.sent.lock().unwrap()[0].clone();
    let again = app
        .post("/api/v1/payments/notify")
        .header("sandbox-signature", &signature)
        .raw("application/json", body)
        .send()
        .await
        .data();
    assert_eq!(again["outcome"], "duplicate");

    // The provider is back: the worker refunds it, once.
    sandbox.set_refund_fault(RefundFault::None);
    app.clock.advance(Duration::minutes(1));
    let payments = &app.services.state.payments;
    assert_eq!(payments.drain_refunds(100).await.unwrap(), 1);
    assert_eq!(refunded_there(&app, &provider_ref).await, 5000);
    assert!(refunds(&app, &admin, "pending").await.is_empty());
    let done = refunds(&app, &admin, "succeeded").await;
    assert_eq!(done.len(), 1);
    let payment = app
        .get(&format!(
            "/api/v1/payments/{}",
            payment["payment_id"].as_str().unwrap()
        ))
        .bearer(&customer)
        .send()
        .await
        .data();
    assert_eq!(payment["refunded_cents"], 5000);
    let order = app
        .get(&format!("/api/v1/orders/{order_id}"))
        .bearer(&customer)
        .send()
        .await
        .data();
    assert_eq!(order["status"], "cancelled");
}
