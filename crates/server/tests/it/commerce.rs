//! The commerce story over HTTP: catalog, cart, checkout with an address and a coupon, payment
//! through the sandbox provider, expiry of an unpaid order, refunds; and the rules around it.

use axum::http::{Method, StatusCode, header};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::catalog::{operator, product};
use crate::support::TestApp;

const SANDBOX_SECRET: &str = "test-sandbox-secret-of-at-least-32-bytes";

pub async fn app() -> TestApp {
    TestApp::with_config(|c| {
        c.payments.sandbox_secret = Some(flashmart_server::config::Secret::new(SANDBOX_SECRET));
    })
    .await
}

fn now(app: &TestApp) -> OffsetDateTime {
    flashmart_app::Clock::now(&app.clock)
}

pub fn address() -> Value {
    json!({
        "recipient": "Ada Lovelace", "line1": "12 St James's Square", "city": "London",
        "postal_code": "SW1Y 4JH", "country": "gb"
    })
}

pub async fn put_in_cart(app: &TestApp, token: &str, product: &str, quantity: i64) -> Value {
    app.req(Method::PUT, &format!("/api/v1/cart/items/{product}"))
        .bearer(token)
        .json(&json!({"quantity": quantity}))
        .send()
        .await
        .data()
}

pub async fn stock(app: &TestApp, product: &str) -> i64 {
    app.get(&format!("/api/v1/products/{product}"))
        .send()
        .await
        .data()["stock"]
        .as_i64()
        .unwrap()
}

/// Pays an order through the sandbox's pages, as a buyer would, and waits for the notification.
pub async fn pay(app: &TestApp, token: &str, order: &str, delivered_before: u64) -> Value {
    let payment = app
        .post(&format!("/api/v1/orders/{order}/payments"))
        .bearer(token)
        .send()
        .await;
    assert_eq!(payment.status, StatusCode::CREATED, "{}", payment.text());
    let payment = payment.data();
    let pay_url = payment["pay_url"].as_str().unwrap().to_owned();
    let page = app.get(&pay_url).send().await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().contains("Pay") && page.text().contains("Fail"));
    let done = app.press(&pay_url, "pay").await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    app.notifications_delivered(delivered_before + 1).await;
    payment
}

#[tokio::test]
async fn the_whole_commerce_story() {
    let app = app().await;
    let op = operator(&app).await;
    app.staff(
        "root@example.com",
        "root password",
        flashmart_domain::Role::Admin,
    )
    .await;

    // The operator stocks the catalog and makes a coupon.
    let sneaker = product(
        &app,
        &op,
        json!({"name": "Sneaker", "price_cents": 5000, "stock": 10}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let socks = product(
        &app,
        &op,
        json!({"name": "Socks", "price_cents": 800, "stock": 20}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let coupon = app
        .post("/api/v1/admin/coupons")
        .bearer(&op)
        .json(&json!({
            "code": "welcome10", "kind": "percent", "percent": 10,
            "min_spend_cents": 5000, "currency": "USD",
            "ends_at": (now(&app) + Duration::days(7)).format(&Rfc3339).unwrap(),
            "max_uses": 100, "per_user_limit": 1
        }))
        .send()
        .await;
    assert_eq!(coupon.status, StatusCode::CREATED, "{}", coupon.text());
    assert_eq!(coupon.data()["code"], "WELCOME10");
    // Amounts are capped like prices (the document's maximum).
    app.post("/api/v1/admin/coupons")
        .bearer(&op)
        .json(&json!({
            "code": "toomuch", "kind": "fixed", "amount_cents": 100,
            "min_spend_cents": 100_000_000_001_i64,
            "ends_at": (now(&app) + Duration::days(7)).format(&Rfc3339).unwrap(),
        }))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);

    // The customer saves an address and fills a cart; prices come from the catalog.
    let (customer, _) = app.customer("ada@example.com", "analytical engine").await;
    let saved = app
        .post("/api/v1/users/me/addresses")
        .bearer(&customer)
        .json(&address())
        .send()
        .await;
    assert_eq!(saved.status, StatusCode::CREATED, "{}", saved.text());
    let saved = saved.data();
    assert_eq!(saved["default"], true, "the first address is the default");
    assert_eq!(saved["country"], "GB");
    put_in_cart(&app, &customer, &sneaker, 2).await;
    let cart = put_in_cart(&app, &customer, &socks, 3).await;
    assert_eq!(cart["subtotal_cents"], 2 * 5000 + 3 * 800);
    assert_eq!(cart["ready"], true);
    assert_eq!(cart["items"][0]["unit_price_cents"], 5000);

    // Checkout with the saved address and the coupon.
    let order = app
        .post("/api/v1/cart/checkout")
        .bearer(&customer)
        .json(&json!({"address_id": saved["id"], "coupon_code": "Welcome10"}))
        .send()
        .await;
    assert_eq!(order.status, StatusCode::CREATED, "{}", order.text());
    let order = order.data();
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(order["subtotal_cents"], 12_400);
    assert_eq!(order["discount_cents"], 1_240);
    assert_eq!(order["total_cents"], 11_160);
    assert_eq!(order["shipping_address"]["recipient"], "Ada Lovelace");
    assert_eq!(order["items"].as_array().unwrap().len(), 2);
    assert_eq!(stock(&app, &sneaker).await, 8);
    let cart = app
        .get("/api/v1/cart")
        .bearer(&customer)
        .send()
        .await
        .data();
    assert_eq!(
        cart["items"].as_array().unwrap().len(),
        0,
        "the cart is emptied"
    );
    let order_id = order["id"].as_str().unwrap().to_owned();

    // Pay through the sandbox: pay page, Pay button, signed notification, order paid.
    let payment = pay(&app, &customer, &order_id, 0).await;
    assert_eq!(payment["amount_cents"], 11_160);
    let paid = app
        .get(&format!("/api/v1/orders/{order_id}"))
        .bearer(&customer)
        .send()
        .await
        .data();
    assert_eq!(paid["status"], "paid");
    assert!(paid["paid_at"].is_string());
    let payment = app
        .get(&format!(
            "/api/v1/payments/{}",
            payment["payment_id"].as_str().unwrap()
        ))
        .bearer(&customer)
        .send()
        .await
        .data();
    assert_eq!(payment["status"], "succeeded");

    // The coupon was counted once: the same customer cannot use it again.
    put_in_cart(&app, &customer, &sneaker, 1).await;
    app.post("/api/v1/cart/checkout")
        .bearer(&customer)
        .json(&json!({"coupon_code": "WELCOME10"}))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 30011);

    // Another order is left unpaid: it expires (the test moves the clock), its stock returns,
    // and its open payment is closed at the provider.
    let unpaid = app
        .post("/api/v1/cart/checkout")
        .bearer(&customer)
        .json(&json!({}))
        .send()
        .await
        .data();
    assert_eq!(stock(&app, &sneaker).await, 7);
    let unpaid_id = unpaid["id"].as_str().unwrap().to_owned();
    let open = app
        .post(&format!("/api/v1/orders/{unpaid_id}/payments"))
        .bearer(&customer)
        .send()
        .await
        .data();
    app.clock.advance(Duration::seconds(901));
    let expired = app.services.state.shop.sweep_expired().await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(app.services.state.payments.close_stale().await.unwrap(), 1);
    assert_eq!(stock(&app, &sneaker).await, 8, "stock back");
    let (customer, _) = app.login("ada@example.com", "analytical engine").await;
    assert_eq!(
        app.get(&format!("/api/v1/orders/{unpaid_id}"))
            .bearer(&customer)
            .send()
            .await
            .data()["status"],
        "expired"
    );
    let pay_url = open["pay_url"].as_str().unwrap();
    assert!(app.get(pay_url).send().await.text().contains("closed"));
    // Even a genuine form (a closed page shows none) cannot pay it.
    let reference = pay_url.rsplit('/').next().unwrap();
    let token = app.sandbox().form_token("a-browser", reference);
    assert_eq!(
        app.post(&format!("{pay_url}/pay"))
            .header("cookie", "sandbox_nonce=a-browser")
            .raw("application/x-www-form-urlencoded", format!("csrf={token}"))
            .send()
            .await
            .status,
        StatusCode::CONFLICT
    );
    app.post(&format!("/api/v1/orders/{unpaid_id}/payments"))
        .bearer(&customer)
        .send()
        .await
        .assert_error(StatusCode::CONFLICT, 40004);

    // Refunds: part, then the rest; never more than was paid.
    let (admin, _) = app.login("root@example.com", "root password").await;
    let refund = |amount: Value| {
        app.post(&format!("/api/v1/admin/orders/{order_id}/refund"))
            .bearer(&admin)
            .json(&json!({"amount_cents": amount, "reason": "damaged box"}))
            .send()
    };
    let part = refund(json!(1_160)).await.data();
    assert_eq!(
        (part["status"].as_str(), part["refunded_cents"].as_i64()),
        (Some("partially_refunded"), Some(1_160))
    );
    refund(json!(20_000))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 40005);
    let rest = refund(Value::Null).await.data();
    assert_eq!(
        (rest["status"].as_str(), rest["refunded_cents"].as_i64()),
        (Some("refunded"), Some(11_160))
    );
    refund(json!(1))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 40005);
}

#[tokio::test]
async fn forged_or_replayed_notifications_change_nothing() {
    let app = app().await;
    let op = operator(&app).await;
    let item = product(
        &app,
        &op,
        json!({"name": "Lamp", "price_cents": 2500, "stock": 5}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (customer, _) = app.customer("bob@example.com", "bob's password").await;
    put_in_cart(&app, &customer, &item, 1).await;
    let order = app
        .post("/api/v1/cart/checkout")
        .bearer(&customer)
        .json(&json!({"shipping_address": address()}))
        .send()
        .await
        .data();
    let order_id = order["id"].as_str().unwrap().to_owned();
    let payment = app
        .post(&format!("/api/v1/orders/{order_id}/payments"))
        .bearer(&customer)
        .send()
        .await
        .data();
    let reference = payment["pay_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let t = now(&app).unix_timestamp();
    let body = |amount: i64, event: &str| {
        json!({
            "id": event, "type": "payment.succeeded", "payment_ref": reference,
            "merchant_ref": payment["payment_id"], "amount_cents": amount, "currency": "USD",
            "occurred_at": t
        })
        .to_string()
    };
    let notify = |signature: String, body: String| {
        app.post("/api/v1/payments/notify")
            .header(flashmart_sandbox::SIGNATURE_HEADER, &signature)
            .raw("application/json", body)
            .send()
    };
    let secret = SANDBOX_SECRET.as_bytes();
    let refused =
        |reason: &str| format!("payments_notifications_refused_total{{reason=\"{reason}\"}}");
    let mut before = Vec::new();
    for reason in ["signature", "stale", "amount"] {
        before.push(app.metric(&refused(reason)).await);
    }

    // A bad signature (another key), a missing one, a stale timestamp, a wrong amount.
    let b = body(2500, "evt_forged");
    notify(
        flashmart_sandbox::sign(b"not-the-secret", t, b.as_bytes()),
        b.clone(),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, 40002);
    notify(String::new(), b.clone())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 40002);
    let stale = t - flashmart_sandbox::TOLERANCE_SECS - 1;
    notify(
        flashmart_sandbox::sign(secret, stale, b.as_bytes()),
        b.clone(),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, 40002);
    let cheap = body(1, "evt_cheap");
    notify(flashmart_sandbox::sign(secret, t, cheap.as_bytes()), cheap)
        .await
        .assert_error(StatusCode::BAD_REQUEST, 40003);
    assert_eq!(
        order_status(&app, &customer, &order_id).await,
        "pending_payment",
        "nothing changed"
    );
    // Each refusal is counted by its reason, for an alert to see.
    for (reason, before) in ["signature", "stale", "amount"].into_iter().zip(before) {
        assert!(app.metric(&refused(reason)).await > before, "{reason}");
    }

    // The genuine notification, from the sandbox itself, pays the order.
    let done = app.press(&format!("/sandbox/pay/{reference}"), "pay").await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    app.notifications_delivered(1).await;
    assert_eq!(order_status(&app, &customer, &order_id).await, "paid");
    let paid_at = app
        .get(&format!("/api/v1/orders/{order_id}"))
        .bearer(&customer)
        .send()
        .await
        .data()["paid_at"]
        .clone();

    // The same notification again: acknowledged, nothing changes.
    let (signature, genuine) = app.notifications.sent.lock().unwrap()[0].clone();
    let again = notify(signature, String::from_utf8(genuine).unwrap()).await;
    assert_eq!(again.data()["outcome"], "duplicate");
    let order = app
        .get(&format!("/api/v1/orders/{order_id}"))
        .bearer(&customer)
        .send()
        .await
        .data();
    assert_eq!(
        (order["status"].clone(), order["paid_at"].clone()),
        (json!("paid"), paid_at)
    );
}

#[tokio::test]
async fn two_customers_race_for_the_last_unit() {
    let app = app().await;
    let op = operator(&app).await;
    let last = product(
        &app,
        &op,
        json!({"name": "Last Lamp", "price_cents": 100, "stock": 1}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (a, _) = app.customer("a@example.com", "a's password!").await;
    let (b, _) = app.customer("b@example.com", "b's password!").await;
    put_in_cart(&app, &a, &last, 1).await;
    put_in_cart(&app, &b, &last, 1).await;
    let checkout = |token: &str| {
        app.post("/api/v1/cart/checkout")
            .bearer(token)
            .json(&json!({"shipping_address": address()}))
            .send()
    };
    let (ra, rb) = tokio::join!(checkout(&a), checkout(&b));
    let statuses = [ra.status, rb.status];
    assert!(statuses.contains(&StatusCode::CREATED), "{statuses:?}");
    let loser = if ra.status == StatusCode::CREATED {
        rb
    } else {
        ra
    };
    let body = loser.assert_error(StatusCode::CONFLICT, 50003);
    assert!(
        body["message"].as_str().unwrap().contains("Last Lamp"),
        "names the item: {body}"
    );
    assert_eq!(stock(&app, &last).await, 0);
}

#[tokio::test]
async fn other_users_things_are_not_found_and_admin_routes_are_forbidden() {
    let app = app().await;
    let op = operator(&app).await;
    let item = product(
        &app,
        &op,
        json!({"name": "Mug", "price_cents": 900, "stock": 9}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (alice, _) = app.customer("alice@example.com", "alice password").await;
    let (mallory, _) = app
        .customer("mallory@example.com", "mallory password")
        .await;
    put_in_cart(&app, &alice, &item, 1).await;
    let address = app
        .post("/api/v1/users/me/addresses")
        .bearer(&alice)
        .json(&address())
        .send()
        .await
        .data();
    let order = app
        .post("/api/v1/cart/checkout")
        .bearer(&alice)
        .json(&json!({}))
        .send()
        .await;
    assert_eq!(
        order.status,
        StatusCode::CREATED,
        "the default address is used: {}",
        order.text()
    );
    let order = order.data()["id"].as_str().unwrap().to_owned();
    let payment = app
        .post(&format!("/api/v1/orders/{order}/payments"))
        .bearer(&alice)
        .send()
        .await
        .data()["payment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    put_in_cart(&app, &alice, &item, 2).await;

    let mine = |method: Method, path: String| app.req(method, &path).bearer(&mallory).send();
    mine(Method::GET, format!("/api/v1/orders/{order}"))
        .await
        .assert_error(StatusCode::NOT_FOUND, 30001);
    mine(Method::POST, format!("/api/v1/orders/{order}/cancel"))
        .await
        .assert_error(StatusCode::NOT_FOUND, 30001);
    mine(Method::POST, format!("/api/v1/orders/{order}/payments"))
        .await
        .assert_error(StatusCode::NOT_FOUND, 30001);
    mine(Method::GET, format!("/api/v1/payments/{payment}"))
        .await
        .assert_error(StatusCode::NOT_FOUND, 40001);
    mine(Method::DELETE, format!("/api/v1/cart/items/{item}"))
        .await
        .assert_error(StatusCode::NOT_FOUND, 50001);
    mine(
        Method::GET,
        format!(
            "/api/v1/users/me/addresses/{}",
            address["id"].as_str().unwrap()
        ),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, 10010);
    assert_eq!(
        mine(Method::GET, "/api/v1/orders".into()).await.data()["total"],
        0
    );
    // Alice's cart line is still there.
    let cart = app.get("/api/v1/cart").bearer(&alice).send().await.data();
    assert_eq!(cart["items"][0]["quantity"], 2);

    for (method, path) in [
        (Method::GET, "/api/v1/admin/orders".to_owned()),
        (Method::GET, format!("/api/v1/admin/orders/{order}")),
        (Method::POST, format!("/api/v1/admin/orders/{order}/refund")),
        (Method::POST, "/api/v1/admin/coupons".to_owned()),
        (Method::POST, "/api/v1/admin/products".to_owned()),
    ] {
        app.req(method, &path)
            .bearer(&mallory)
            .json(&json!({}))
            .send()
            .await
            .assert_error(StatusCode::FORBIDDEN, 403);
    }

    // The owner can cancel: stock back, payment closed.
    let cancelled = app
        .post(&format!("/api/v1/orders/{order}/cancel"))
        .bearer(&alice)
        .send()
        .await
        .data();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(stock(&app, &item).await, 9);
    let closed = app
        .get(&format!("/api/v1/payments/{payment}"))
        .bearer(&alice)
        .send()
        .await
        .data();
    assert_eq!(closed["status"], "closed");
    app.post(&format!("/api/v1/orders/{order}/cancel"))
        .bearer(&alice)
        .send()
        .await
        .assert_error(StatusCode::CONFLICT, 30002);
}

#[tokio::test]
async fn paying_a_flash_sale_order_marks_the_reservation_purchased() {
    let app = app().await;
    let op = operator(&app).await;
    let sale = app
        .post("/api/v1/admin/flash-sales")
        .bearer(&op)
        .json(&json!({
            "name": "Drop", "starts_at": (now(&app) - Duration::minutes(1)).format(&Rfc3339).unwrap(),
            "ends_at": (now(&app) + Duration::hours(1)).format(&Rfc3339).unwrap(),
            "per_user_limit": 1, "generate_items": {"count": 1, "price_cents": 4200}
        }))
        .send()
        .await
        .data();
    let sale = sale["id"].as_str().unwrap().to_owned();
    let (buyer, _) = app.customer("fast@example.com", "fast fingers").await;
    let reservation = app
        .post(&format!("/api/v1/flash-sales/{sale}/reservations"))
        .bearer(&buyer)
        .json(&json!({"item_id": 1}))
        .send()
        .await
        .data();
    let order = reservation["order_id"].as_str().unwrap().to_owned();
    let order_view = app
        .get(&format!("/api/v1/orders/{order}"))
        .bearer(&buyer)
        .send()
        .await
        .data();
    assert_eq!(order_view["total_cents"], 4200);
    assert_eq!(order_view["reservation_id"], reservation["id"]);
    assert_eq!(order_view["items"][0]["name"], "Flash deal #00001");
    pay(&app, &buyer, &order, 0).await;
    let r = app
        .get(&format!(
            "/api/v1/flash-sales/reservations/{}",
            reservation["id"].as_str().unwrap()
        ))
        .bearer(&buyer)
        .send()
        .await
        .data();
    assert_eq!(r["status"], "purchased");
    let stats = app
        .get(&format!("/api/v1/admin/flash-sales/{sale}/stats"))
        .bearer(&op)
        .send()
        .await
        .data();
    assert_eq!(
        (
            stats["sold"].as_i64(),
            stats["reserved"].as_i64(),
            stats["remaining"].as_i64()
        ),
        (Some(1), Some(0), Some(0))
    );
}

#[tokio::test]
async fn cancelling_a_flash_sale_order_puts_the_item_back_on_sale() {
    let app = app().await;
    let op = operator(&app).await;
    let sale = app
        .post("/api/v1/admin/flash-sales")
        .bearer(&op)
        .json(&json!({
            "name": "Drop", "starts_at": (now(&app) - Duration::minutes(1)).format(&Rfc3339).unwrap(),
            "ends_at": (now(&app) + Duration::hours(1)).format(&Rfc3339).unwrap(),
            "per_user_limit": 1, "generate_items": {"count": 1, "price_cents": 4200}
        }))
        .send()
        .await
        .data()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (buyer, _) = app.customer("fast@example.com", "fast fingers").await;
    let (other, _) = app.customer("slow@example.com", "slow fingers").await;
    let reserve = |token: String| {
        let path = format!("/api/v1/flash-sales/{sale}/reservations");
        let app = &app;
        async move {
            app.post(&path)
                .bearer(&token)
                .json(&json!({"item_id": 1}))
                .send()
                .await
        }
    };
    let order = reserve(buyer.clone()).await.data()["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    reserve(other.clone())
        .await
        .assert_error(StatusCode::CONFLICT, 60004);
    app.post(&format!("/api/v1/orders/{order}/cancel"))
        .bearer(&buyer)
        .send()
        .await
        .data();
    assert_eq!(
        reserve(other).await.status,
        StatusCode::CREATED,
        "back on sale"
    );
}

async fn order_status(app: &TestApp, token: &str, order: &str) -> String {
    app.get(&format!("/api/v1/orders/{order}"))
        .bearer(token)
        .send()
        .await
        .data()["status"]
        .as_str()
        .unwrap()
        .to_owned()
}
