//! Outbound webhooks against a receiver of the test's own on 127.0.0.1: signed deliveries, a
//! retry after a 500 within 10 s, no redirect followed, dead after the schedule, manual
//! redelivery, pause, and private addresses refused unless allowed.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, StatusCode};
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;
use time::Duration;

use crate::catalog::{operator, product_id};
use crate::commerce::{address, put_in_cart};
use crate::support::TestApp;

/// What the receiver got, and the statuses it answers with (the last one again when they run
/// out).
pub struct Receiver {
    got: Mutex<Vec<(HeaderMap, String)>>,
    answers: Mutex<Vec<u16>>,
    /// How many requests arrived, for a test that waits on a server process's worker.
    count: tokio::sync::watch::Sender<usize>,
}

impl Receiver {
    pub async fn start(answers: &[u16]) -> (Arc<Self>, String) {
        let receiver = Arc::new(Self {
            got: Mutex::default(),
            answers: Mutex::new(answers.iter().rev().copied().collect()),
            count: tokio::sync::watch::Sender::new(0),
        });
        let shared = Arc::clone(&receiver);
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: String| {
            let shared = Arc::clone(&shared);
            async move {
                shared.got.lock().unwrap().push((headers, body));
                shared.count.send_modify(|n| *n += 1);
                let mut answers = shared.answers.lock().unwrap();
                let status = if answers.len() > 1 {
                    answers.pop().unwrap()
                } else {
                    answers[0]
                };
                let mut response = axum::response::Response::new(axum::body::Body::empty());
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                if status == 302 {
                    response
                        .headers_mut()
                        .insert("location", "/elsewhere".parse().unwrap());
                }
                response
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/flashmart", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    /// Waits until `n` requests have arrived.
    pub async fn arrived(&self, n: usize) {
        let mut count = self.count.subscribe();
        count.wait_for(|got| *got >= n).await.unwrap();
    }

    pub fn got(&self) -> Vec<(HeaderMap, String)> {
        self.got.lock().unwrap().clone()
    }
}

/// Checks `flashmart-signature` as a receiver would, with its own HMAC.
fn verify(secret: &str, headers: &HeaderMap, body: &str) -> i64 {
    let header = headers["flashmart-signature"].to_str().unwrap();
    let (t, v1) = header.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "the signature verifies");
    t.parse().unwrap()
}

async fn deliveries(app: &TestApp, admin: &str, hook: &str) -> Vec<Value> {
    app.get(&format!("/api/v1/admin/webhooks/{hook}/deliveries"))
        .bearer(admin)
        .send()
        .await
        .data()["items"]
        .as_array()
        .unwrap()
        .clone()
}

async fn deliver(app: &TestApp) -> usize {
    app.services.state.webhooks.deliver_due(50).await.unwrap()
}

async fn order(app: &TestApp) -> (String, String) {
    let op = operator(app).await;
    let item = product_id(
        app,
        &op,
        json!({"name": "Kettle", "price_cents": 5000, "stock": 5}),
    )
    .await;
    let (customer, _) = app
        .customer("hooked@example.com", "customer password")
        .await;
    put_in_cart(app, &customer, &item, 1).await;
    let order = app
        .post("/api/v1/cart/checkout")
        .bearer(&customer)
        .json(&json!({"shipping_address": address()}))
        .send()
        .await
        .data();
    (order["id"].as_str().unwrap().to_owned(), customer)
}

#[tokio::test]
async fn events_are_delivered_signed_and_retried_until_delivered_or_dead() {
    let app = TestApp::with_config(|c| c.webhooks.allow_private = true).await;
    let admin = app
        .staff(
            "hooks-admin@example.com",
            "admin password",
            flashmart_domain::Role::Admin,
        )
        .await;
    let (receiver, url) = Receiver::start(&[500, 200, 302, 500]).await;
    let res = app
        .post("/api/v1/admin/webhooks")
        .bearer(&admin)
        .json(&json!({
            "url": url,
            "events": ["order.created", "order.cancelled"],
            "description": "the warehouse",
        }))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let hook = res.data();
    let secret = hook["secret"].as_str().unwrap().to_owned();
    let id = hook["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    // The secret is shown once.
    let listed = app
        .get("/api/v1/admin/webhooks")
        .bearer(&admin)
        .send()
        .await
        .data();
    assert_eq!(listed["total"], 1);
    assert!(listed["items"][0].get("secret").is_none(), "{listed}");

    let (order_id, _) = order(&app).await;
    assert_eq!(deliver(&app).await, 1);
    let got = receiver.got();
    assert_eq!(got.len(), 1);
    let (headers, body) = &got[0];
    let t = verify(&secret, headers, body);
    assert_eq!(t, flashmart_app::Clock::now(&app.clock).unix_timestamp());
    assert_eq!(headers["content-type"], "application/json");
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["type"], "order.created");
    assert_eq!(event["data"]["order_id"], order_id);
    assert_eq!(event["data"]["status"], "pending_payment");
    assert_eq!(event["data"]["total_cents"], 5000);
    assert!(event["created_at"].as_str().unwrap().ends_with('Z'));

    // The receiver answered 500: retried within 10 s, not before it is due.
    let log = deliveries(&app, &admin, &id).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], "pending");
    assert_eq!(log[0]["attempts"], 1);
    assert_eq!(log[0]["last_status"], 500);
    assert_eq!(log[0]["event_id"], event["id"]);
    let next = time::OffsetDateTime::parse(
        log[0]["next_attempt_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(next - flashmart_app::Clock::now(&app.clock) <= Duration::seconds(10));
    assert_eq!(deliver(&app).await, 0, "not due yet");
    app.clock.advance(Duration::seconds(10));
    assert_eq!(deliver(&app).await, 1);
    let got = receiver.got();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].1, *body, "the same event, byte for byte");
    verify(&secret, &got[1].0, &got[1].1);
    let log = deliveries(&app, &admin, &id).await;
    assert_eq!(log[0]["status"], "delivered");
    assert_eq!(log[0]["attempts"], 2);
    assert_eq!(log[0]["last_status"], 200);
    assert_eq!(deliver(&app).await, 0, "delivered once");

    // A manual redelivery sends it again; a redirect is an answer, never followed.
    let event_id = event["id"].as_str().unwrap();
    let res = app
        .post(&format!(
            "/api/v1/admin/webhooks/{id}/deliveries/{event_id}/redeliver"
        ))
        .bearer(&admin)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.data()["status"], "pending");
    assert_eq!(deliver(&app).await, 1);
    assert_eq!(receiver.got().len(), 3, "the redirect was not followed");
    let log = deliveries(&app, &admin, &id).await;
    assert_eq!(log[0]["last_status"], 302);
    assert_eq!(log[0]["status"], "pending");

    // Then 500 for ever: the schedule runs out and the delivery is dead.
    for _ in 0..12 {
        app.clock.advance(Duration::hours(17));
        deliver(&app).await;
    }
    let (admin, _) = app.login("hooks-admin@example.com", "admin password").await;
    let log = deliveries(&app, &admin, &id).await;
    assert_eq!(log[0]["status"], "dead", "{log:?}");
    assert_eq!(log[0]["attempts"], 11);
    assert_eq!(receiver.got().len(), 2 + 11);
    // Those hours outlived the customer's token too.
    let (customer, _) = app.login("hooked@example.com", "customer password").await;

    // Paused, the endpoint gets no new events; resumed, it does.
    let res = app
        .post(&format!("/api/v1/admin/webhooks/{id}/pause"))
        .bearer(&admin)
        .send()
        .await;
    assert_eq!(res.data()["active"], false);
    let res = app
        .post(&format!("/api/v1/orders/{order_id}/cancel"))
        .bearer(&customer)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(deliveries(&app, &admin, &id).await.len(), 1);
    app.post(&format!("/api/v1/admin/webhooks/{id}/resume"))
        .bearer(&admin)
        .send()
        .await;

    // Every change to the endpoint is in the audit log.
    let audit = app
        .get("/api/v1/admin/audit?entity=webhook")
        .bearer(&admin)
        .send()
        .await
        .data();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "webhook.resumed",
            "webhook.paused",
            "webhook.redelivery_requested",
            "webhook.created"
        ]
    );
    assert!(
        !audit.to_string().contains(&secret),
        "the audit log never holds the secret"
    );

    let res = app
        .req(Method::DELETE, &format!("/api/v1/admin/webhooks/{id}"))
        .bearer(&admin)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    app.get(&format!("/api/v1/admin/webhooks/{id}/deliveries"))
        .bearer(&admin)
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 404);
}

#[tokio::test]
async fn only_public_http_urls_unless_private_ones_are_allowed() {
    let app = TestApp::start().await;
    let admin = app
        .staff(
            "hooks-admin@example.com",
            "admin password",
            flashmart_domain::Role::Admin,
        )
        .await;
    let create = |url: &str, events: Value| {
        app.post("/api/v1/admin/webhooks")
            .bearer(&admin)
            .json(&json!({"url": url, "events": events}))
    };
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.8/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest",
        "ftp://example.com/hook",
        "not a url",
    ] {
        let body = create(url, json!(["order.paid"]))
            .send()
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
        assert_eq!(body["details"][0]["field"], "url", "{url}: {body}");
    }
    let long = format!("https://hooks.example.com/{}", "a".repeat(2048));
    let body = create(&long, json!(["order.paid"]))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    assert_eq!(body["details"][0]["field"], "url", "{body}");
    let body = create("https://hooks.example.com/in", json!(["order.shipped"]))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    assert_eq!(body["details"][0]["field"], "events[0]", "{body}");

    // A name that resolves only to loopback is refused when the attempt is made.
    let res = create("http://localhost:9/hook", json!(["order.created"]))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let id = res.data()["id"].as_str().unwrap().to_owned();
    order(&app).await;
    assert_eq!(deliver(&app).await, 1);
    let log = deliveries(&app, &admin, &id).await;
    assert_eq!(log[0]["status"], "pending");
    assert_eq!(log[0]["last_status"], Value::Null);
    let error = log[0]["last_error"].as_str().unwrap();
    assert!(error.contains("non-public address"), "{error}");

    // Allowed (as a SIGHUP with webhooks.allow_private = true does), loopback is fine.
    let mut settings = app.services.state.webhooks.settings();
    settings.allow_private = true;
    app.services.state.webhooks.set_settings(settings);
    let res = create("http://127.0.0.1:9/hook", json!(["order.paid"]))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let local = res.data()["id"].as_str().unwrap().to_owned();

    // Disallowed again, the endpoint can still be paused; only a new URL is judged.
    settings.allow_private = false;
    app.services.state.webhooks.set_settings(settings);
    let res = app
        .post(&format!("/api/v1/admin/webhooks/{local}/pause"))
        .bearer(&admin)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let body = app
        .req(Method::PATCH, &format!("/api/v1/admin/webhooks/{local}"))
        .bearer(&admin)
        .json(&json!({"url": "http://127.0.0.2:9/hook"}))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    assert_eq!(body["details"][0]["field"], "url", "{body}");

    // Operators cannot see or change endpoints.
    let (op, _) = app
        .login("catalog-ops@example.com", "operator password")
        .await;
    app.get("/api/v1/admin/webhooks")
        .bearer(&op)
        .send()
        .await
        .assert_error(StatusCode::FORBIDDEN, 403);
}

/// The event types a receiver got, in the order it got them.
fn types(receiver: &Receiver) -> Vec<String> {
    receiver
        .got()
        .iter()
        .map(|(_, body)| {
            let event: Value = serde_json::from_str(body).unwrap();
            event["type"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn every_event_type_is_reported_by_the_change_that_makes_it() {
    let app = crate::commerce::app().await;
    let hooks = &app.services.state.webhooks;
    let mut settings = hooks.settings();
    settings.allow_private = true;
    hooks.set_settings(settings);
    let admin = app
        .staff(
            "hooks-admin@example.com",
            "admin password",
            flashmart_domain::Role::Admin,
        )
        .await;
    let (receiver, url) = Receiver::start(&[200]).await;
    let all = [
        "order.created",
        "order.paid",
        "order.cancelled",
        "order.expired",
        "order.refunded",
        "flash_sale.started",
        "flash_sale.sold_out",
        "flash_sale.ended",
        "reservation.expired",
    ];
    let res = app
        .post("/api/v1/admin/webhooks")
        .bearer(&admin)
        .json(&json!({"url": url, "events": all}))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let report = || async {
        hooks
            .report_sales(&app.services.state.flash_sales)
            .await
            .unwrap()
    };

    // A cart order made and cancelled.
    let (cart_order, customer) = order(&app).await;
    app.post(&format!("/api/v1/orders/{cart_order}/cancel"))
        .bearer(&customer)
        .send()
        .await
        .data();

    // A sale of two units: started, one bought and refunded, one left to expire: sold out.
    let sale = crate::flash_sales::live_sale(&app, &admin, &[1, 1], 1).await;
    assert_eq!(report().await, 1, "started");
    assert_eq!(report().await, 0, "once");
    let reserved = crate::flash_sales::reserve(&app, &customer, &sale, 1, 1)
        .await
        .data();
    let sale_order = reserved["order_id"].as_str().unwrap().to_owned();
    crate::commerce::pay(&app, &customer, &sale_order, 0).await;
    let res = app
        .post(&format!("/api/v1/admin/orders/{sale_order}/refund"))
        .bearer(&admin)
        .json(&json!({"amount_cents": 100}))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let (other, _) = app.customer("late@example.com", "customer password").await;
    let held = crate::flash_sales::reserve(&app, &other, &sale, 2, 1)
        .await
        .data();
    assert_eq!(report().await, 1, "sold out");
    app.clock.advance(Duration::minutes(11));
    assert_eq!(
        app.services
            .state
            .flash_sales
            .sweep_expired()
            .await
            .unwrap(),
        1
    );
    app.clock.advance(Duration::hours(1));
    assert_eq!(report().await, 1, "ended");
    assert_eq!(report().await, 0);

    while deliver(&app).await > 0 {}
    let got = types(&receiver);
    let mut kinds = got.clone();
    kinds.sort();
    kinds.dedup();
    let mut want = all.to_vec();
    want.sort_unstable();
    assert_eq!(kinds, want, "every type, in {got:?}");
    let count = |t: &str| got.iter().filter(|g| *g == t).count();
    assert_eq!(
        count("order.created"),
        3,
        "the cart order and both sale orders"
    );
    assert_eq!(count("flash_sale.started"), 1);
    assert_eq!(count("flash_sale.sold_out"), 1);
    assert_eq!(count("flash_sale.ended"), 1);

    let bodies: Vec<Value> = receiver
        .got()
        .iter()
        .map(|(_, b)| serde_json::from_str(b).unwrap())
        .collect();
    let find = |t: &str| bodies.iter().find(|b| b["type"] == t).unwrap().clone();
    let expired = find("reservation.expired");
    assert_eq!(expired["data"]["reservation_id"], held["id"]);
    assert_eq!(expired["data"]["sale_id"], sale);
    assert_eq!(find("order.expired")["data"]["order_id"], held["order_id"]);
    let refunded = find("order.refunded");
    assert_eq!(refunded["data"]["order_id"], sale_order);
    assert_eq!(refunded["data"]["refunded_cents"], 100);
    assert_eq!(refunded["data"]["status"], "partially_refunded");
    assert_eq!(find("order.paid")["data"]["status"], "paid");
    assert_eq!(find("order.cancelled")["data"]["order_id"], cart_order);
    assert_eq!(find("flash_sale.sold_out")["data"]["remaining"], 0);
    let ids: std::collections::HashSet<&str> =
        bodies.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), bodies.len(), "every event has an id of its own");
}
