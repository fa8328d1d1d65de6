//! The flash-sale API over HTTP: creating sales, reserving with the codes of the contract,
//! idempotency, owner-only reads, live events, schedules and load-test buyers.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use tower::ServiceExt as _;

use crate::support::TestApp;

pub fn at(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// An operator's token.
pub async fn operator(app: &TestApp) -> String {
    app.staff(
        "ops@example.com",
        "operator password",
        flashmart_domain::Role::Operator,
    )
    .await
}

/// Creates a sale live now; returns its id.
pub async fn live_sale(app: &TestApp, token: &str, stock: &[i64], limit: i64) -> String {
    let items: Vec<Value> = stock
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"name": format!("Sneaker {i}"), "price_cents": 12900, "stock": s}))
        .collect();
    let res = post_live_sale(app, token, limit, &items).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    res.data()["id"].as_str().unwrap().to_owned()
}

/// Asks for a sale of `items` live from a minute ago to an hour from now; the answer as given.
pub async fn post_live_sale(
    app: &TestApp,
    token: &str,
    limit: i64,
    items: &[Value],
) -> crate::support::TestResponse {
    let now = flashmart_app::Clock::now(&app.clock);
    app.post("/api/v1/admin/flash-sales")
        .bearer(token)
        .json(&json!({
            "name": "Midnight drop",
            "starts_at": at(now - Duration::minutes(1)),
            "ends_at": at(now + Duration::hours(1)),
            "per_user_limit": limit,
            "reservation_ttl_secs": 600,
            "items": items,
        }))
        .send()
        .await
}

pub async fn reserve(
    app: &TestApp,
    token: &str,
    sale: &str,
    item: i64,
    qty: i64,
) -> crate::support::TestResponse {
    app.post(&format!("/api/v1/flash-sales/{sale}/reservations"))
        .bearer(token)
        .json(&json!({"item_id": item, "quantity": qty}))
        .send()
        .await
}

/// One unit of item 1 of `sale`, asked for with `Idempotency-Key: key`.
pub async fn reserve_keyed(
    app: &TestApp,
    token: &str,
    sale: &str,
    key: &str,
) -> crate::support::TestResponse {
    app.post(&format!("/api/v1/flash-sales/{sale}/reservations"))
        .bearer(token)
        .header("idempotency-key", key)
        .json(&json!({"item_id": 1, "quantity": 1}))
        .send()
        .await
}

#[tokio::test]
async fn creating_sales_is_for_operators_and_validated() {
    let app = TestApp::start().await;
    let (customer, _) = app.customer("c@example.com", "customer password").await;
    let now = flashmart_app::Clock::now(&app.clock);
    let body = json!({
        "name": "x", "starts_at": at(now), "ends_at": at(now + Duration::hours(1)),
        "per_user_limit": 1, "generate_items": {"count": 3, "price_cents": 100}
    });
    app.post("/api/v1/admin/flash-sales")
        .bearer(&customer)
        .json(&body)
        .send()
        .await
        .assert_error(StatusCode::FORBIDDEN, 403);

    let op = operator(&app).await;
    let sale = app
        .post("/api/v1/admin/flash-sales")
        .bearer(&op)
        .json(&body)
        .send()
        .await;
    assert_eq!(sale.status, StatusCode::CREATED);
    let sale = sale.data();
    assert_eq!(sale["item_count"], 3);
    assert_eq!(sale["stock"], 3);
    assert_eq!(sale["remaining"], 3);
    assert_eq!(sale["status"], "live");
    assert_eq!(sale["currency"], "USD");

    let bad = app
        .post("/api/v1/admin/flash-sales")
        .bearer(&op)
        .json(&json!({
            "name": " ", "starts_at": at(now), "ends_at": at(now - Duration::hours(1)),
            "per_user_limit": 0, "items": [{"name": "", "price_cents": -1, "stock": 0}]
        }))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    let fields: Vec<&str> = bad["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for f in [
        "name",
        "ends_at",
        "items[0].name",
        "items[0].price_cents",
        "items[0].stock",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
    app.post("/api/v1/admin/flash-sales")
        .bearer(&op)
        .json(&json!({
            "name": "both", "starts_at": at(now), "ends_at": at(now + Duration::hours(1)),
            "per_user_limit": 1, "items": [], "generate_items": {"count": 1, "price_cents": 1}
        }))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
}

#[tokio::test]
async fn reservations_answer_with_the_contract_codes() {
    let app = TestApp::start().await;
    let op = operator(&app).await;
    let (alice, _) = app.customer("alice@example.com", "alice password").await;
    let (bob, _) = app.customer("bob@example.com", "bob password!").await;
    let sale = live_sale(&app, &op, &[2, 5], 2).await;

    let res = reserve(&app, &alice, &sale, 1, 2).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let r = res.data();
    assert_eq!(r["sale_id"], sale.as_str());
    assert_eq!(
        (r["item_id"].as_i64(), r["quantity"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(r["status"], "reserved");
    assert_eq!(r["code"].as_str().unwrap().len(), 26);
    assert!(r["order_id"].is_string());
    assert!(r["expires_at"].is_string());

    // 60004 sold out, 60005 limit, 60007 no item, 60001 no sale.
    reserve(&app, &bob, &sale, 1, 1)
        .await
        .assert_error(StatusCode::CONFLICT, 60004);
    reserve(&app, &alice, &sale, 2, 1)
        .await
        .assert_error(StatusCode::CONFLICT, 60005);
    reserve(&app, &bob, &sale, 3, 1)
        .await
        .assert_error(StatusCode::NOT_FOUND, 60007);
    reserve(&app, &bob, "01930000-0000-7000-8000-000000000000", 1, 1)
        .await
        .assert_error(StatusCode::NOT_FOUND, 60001);
    reserve(&app, &bob, &sale, 2, 0)
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    app.post(&format!("/api/v1/flash-sales/{sale}/reservations"))
        .json(&json!({"item_id": 2}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10003);

    // The sale and its items show what remains.
    let view = app
        .get(&format!("/api/v1/flash-sales/{sale}"))
        .send()
        .await
        .data();
    assert_eq!(
        (view["stock"].as_i64(), view["remaining"].as_i64()),
        (Some(7), Some(5))
    );
    let items = app
        .get(&format!("/api/v1/flash-sales/{sale}/items"))
        .send()
        .await
        .data();
    assert_eq!(items["total"], 2);
    assert_eq!(items["items"][0]["remaining"], 0);
    assert_eq!(items["items"][1]["remaining"], 5);

    // 60003 once the sale has ended (a fresh token: the old one expired meanwhile).
    app.clock.advance(Duration::hours(2));
    let (bob, _) = app.login("bob@example.com", "bob password!").await;
    reserve(&app, &bob, &sale, 2, 1)
        .await
        .assert_error(StatusCode::CONFLICT, 60003);
}

#[tokio::test]
async fn a_sale_not_started_answers_60002() {
    let app = TestApp::start().await;
    let op = operator(&app).await;
    let (alice, _) = app.customer("alice@example.com", "alice password").await;
    let now = flashmart_app::Clock::now(&app.clock);
    let sale = app
        .post("/api/v1/admin/flash-sales")
        .bearer(&op)
        .json(&json!({
            "name": "Tomorrow", "starts_at": at(now + Duration::days(1)),
            "ends_at": at(now + Duration::days(1) + Duration::hours(1)),
            "per_user_limit": 1, "generate_items": {"count": 2, "price_cents": 100}
        }))
        .send()
        .await
        .data();
    assert_eq!(sale["status"], "upcoming");
    let id = sale["id"].as_str().unwrap();
    reserve(&app, &alice, id, 1, 1)
        .await
        .assert_error(StatusCode::CONFLICT, 60002);
    let upcoming = app
        .get("/api/v1/flash-sales?status=upcoming")
        .send()
        .await
        .data();
    assert_eq!(upcoming["total"], 1);
    let live = app
        .get("/api/v1/flash-sales?status=live")
        .send()
        .await
        .data();
    assert_eq!(live["total"], 0);
    app.get("/api/v1/flash-sales?status=someday")
        .send()
        .await
        .assert_error(StatusCode::BAD_REQUEST, 400);
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer() {
    let app = TestApp::start().await;
    let op = operator(&app).await;
    let (alice, _) = app.customer("alice@example.com", "alice password").await;
    let sale = live_sale(&app, &op, &[10], 5).await;
    let path = format!("/api/v1/flash-sales/{sale}/reservations");
    let send = |qty: i64| {
        app.post(&path)
            .bearer(&alice)
            .header("idempotency-key", "checkout-7f3a")
            .json(&json!({"item_id": 1, "quantity": qty}))
            .send()
    };
    let first = send(2).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let second = send(2).await;
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(first.data(), second.data(), "the same answer");
    send(3)
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 60006);
    let view = app
        .get(&format!("/api/v1/flash-sales/{sale}"))
        .send()
        .await
        .data();
    assert_eq!(view["remaining"], 8, "reserved once");
}

/// Keys are bounded: a buyer has at most `flash_sale.max_idempotency_keys_per_user` live (on the
/// Redis engine: in each sale), and a refusal for a sale that does not exist is not remembered
/// at all.
#[tokio::test]
async fn idempotency_keys_are_bounded_per_buyer() {
    let app = TestApp::with_config(|c| c.flash_sale.max_idempotency_keys_per_user = 3).await;
    let op = operator(&app).await;
    let (alice, _) = app.customer("alice@example.com", "alice password").await;
    let sale = live_sale(&app, &op, &[10], 5).await;
    for i in 0..50 {
        let nowhere = "01930000-0000-7000-8000-000000000000";
        reserve_keyed(&app, &alice, nowhere, &format!("made-up-{i}"))
            .await
            .assert_error(StatusCode::NOT_FOUND, 60001);
    }
    for i in 0..3 {
        let res = reserve_keyed(&app, &alice, &sale, &format!("real-{i}")).await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    }
    reserve_keyed(&app, &alice, &sale, "one-too-many")
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, 60011);
    // A live key still replays, and so does anyone else's.
    assert_eq!(
        reserve_keyed(&app, &alice, &sale, "real-0").await.status,
        StatusCode::CREATED
    );
    let (bob, _) = app.customer("bob@example.com", "bob's password").await;
    let res = reserve_keyed(&app, &bob, &sale, "one-too-many").await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
}

#[tokio::test]
async fn a_reservation_is_visible_to_its_owner_only() {
    let app = TestApp::start().await;
    let op = operator(&app).await;
    let (alice, _) = app.customer("alice@example.com", "alice password").await;
    let (bob, _) = app.customer("bob@example.com", "bob password!").await;
    let sale = live_sale(&app, &op, &[3], 3).await;
    let id = reserve(&app, &alice, &sale, 1, 1).await.data()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/flash-sales/reservations/{id}");
    let mine = app.get(&path).bearer(&alice).send().await.data();
    assert_eq!(mine["id"], id.as_str());
    app.get(&path)
        .bearer(&bob)
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 60008);

    // It expires unpaid; its stock comes back.
    app.clock.advance(Duration::minutes(10));
    app.services
        .state
        .flash_sales
        .sweep_expired()
        .await
        .unwrap();
    assert_eq!(
        app.get(&path).bearer(&alice).send().await.data()["status"],
        "expired"
    );
    let stats = app
        .get(&format!("/api/v1/admin/flash-sales/{sale}/stats"))
        .bearer(&op)
        .send()
        .await
        .data();
    assert_eq!(
        stats,
        json!({"stock": 3, "reserved": 0, "sold": 0, "remaining": 3, "released": 1, "buyers": 0, "attempts": 0})
    );
    let list = app
        .get(&format!("/api/v1/admin/flash-sales/{sale}/reservations"))
        .bearer(&op)
        .send()
        .await
        .data();
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["status"], "expired");
    assert!(list["items"][0]["buyer_id"].is_string());
}

/// Reads server-sent events from a response body until `n` events are seen.
async fn next_events(body: &mut Body, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut buf = String::new();
    while events.len() < n {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .unwrap();
        if let Some(data) = frame.data_ref() {
            buf.push_str(std::str::from_utf8(data).unwrap());
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(line) = block.lines().find(|l| l.starts_with("data:")) {
                events.push(serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap());
            }
        }
    }
    events
}

#[tokio::test]
async fn events_stream_remaining_stock() {
    let app = TestApp::start().await;
    let op = operator(&app).await;
    let (alice, _) = app.customer("alice@example.com", "alice password").await;
    let sale = live_sale(&app, &op, &[4], 4).await;
    // Before anyone subscribes, and before the publisher runs: the first event must see it.
    assert_eq!(
        reserve(&app, &alice, &sale, 1, 1).await.status,
        StatusCode::CREATED
    );
    let res = app
        .router
        .clone()
        .oneshot(
            Request::get(format!("/api/v1/flash-sales/{sale}/events"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = res.into_body();
    let first = next_events(&mut body, 1).await;
    assert_eq!(first[0]["remaining"], 3);
    assert_eq!(first[0]["status"], "live");

    // Two reservations between two pushes make one event, not two.
    for _ in 0..2 {
        assert_eq!(
            reserve(&app, &alice, &sale, 1, 1).await.status,
            StatusCode::CREATED
        );
    }
    app.services.state.flash_sales.publish_all().await;
    let next = next_events(&mut body, 1).await;
    assert_eq!(next[0]["remaining"], 1);

    // The stream ends after the sale has ended.
    app.clock.advance(Duration::hours(2));
    app.services.state.flash_sales.publish_all().await;
    let last = next_events(&mut body, 1).await;
    assert_eq!(last[0]["status"], "ended");
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
        .await
        .unwrap();
    assert!(end.is_none(), "stream closed");
}

#[tokio::test]
async fn a_schedule_makes_the_current_hours_sale() {
    let app = TestApp::start().await;
    let op = operator(&app).await;
    let res = app
        .post("/api/v1/admin/flash-sale-schedules")
        .bearer(&op)
        .json(&json!({
            "name": "hourly deals", "recurrence": "hourly", "item_count": 25,
            "price_cents": 499, "per_user_limit": 2
        }))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let schedule = res.data();
    let live = app
        .get("/api/v1/flash-sales?status=live")
        .send()
        .await
        .data();
    assert_eq!(live["total"], 1);
    let sale = &live["items"][0];
    assert_eq!(sale["schedule_id"], schedule["id"]);
    assert_eq!(sale["item_count"], 25);
    assert_eq!(sale["per_user_limit"], 2);
    let items = app
        .get(&format!(
            "/api/v1/flash-sales/{}/items?per_page=1",
            sale["id"].as_str().unwrap()
        ))
        .send()
        .await
        .data();
    let image = items["items"][0]["image_url"].as_str().unwrap().to_owned();
    let svg = app.get(&image).send().await;
    assert_eq!(svg.status, StatusCode::OK);
    assert_eq!(svg.headers[header::CONTENT_TYPE], "image/svg+xml");
    assert!(svg.text().starts_with("<svg"));

    // The test clock starts at twenty past. Five minutes before the hour turns, the next hour's
    // sale is made, as upcoming; when the hour turns there is nothing left to make.
    let sales = &app.services.state.flash_sales;
    app.clock.advance(Duration::minutes(34));
    assert!(
        sales.run_schedules().await.unwrap().is_empty(),
        "6 minutes to go"
    );
    app.clock.advance(Duration::minutes(2));
    let made = sales.run_schedules().await.unwrap();
    assert_eq!(made.len(), 1, "4 minutes to go");
    let upcoming = app
        .get("/api/v1/flash-sales?status=upcoming")
        .send()
        .await
        .data();
    assert_eq!(upcoming["total"], 1);
    assert!(sales.run_schedules().await.unwrap().is_empty());
    app.clock.advance(Duration::minutes(5));
    assert!(sales.run_schedules().await.unwrap().is_empty());
    let live = app
        .get("/api/v1/flash-sales?status=live")
        .send()
        .await
        .data();
    assert_eq!(live["total"], 1);
    assert_eq!(live["items"][0]["id"], upcoming["items"][0]["id"]);
    let (op, _) = app.login("ops@example.com", "operator password").await;

    app.post("/api/v1/admin/flash-sale-schedules")
        .bearer(&op)
        .json(&json!({
            "name": "hourly deals", "recurrence": "hourly", "item_count": 1,
            "price_cents": 1, "per_user_limit": 1
        }))
        .send()
        .await
        .assert_error(StatusCode::CONFLICT, 409);
    let listed = app
        .get("/api/v1/admin/flash-sale-schedules")
        .bearer(&op)
        .send()
        .await
        .data();
    assert_eq!(listed["total"], 1);
}

#[tokio::test]
async fn load_test_buyers_need_the_setting_and_an_admin() {
    let off = TestApp::start().await;
    let admin = off
        .staff(
            "root@example.com",
            "root password",
            flashmart_domain::Role::Admin,
        )
        .await;
    off.post("/api/v1/admin/loadtest/buyers")
        .bearer(&admin)
        .json(&json!({"count": 2}))
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 404);

    let app = TestApp::with_config(|c| c.loadtest.enabled = true).await;
    let admin = app
        .staff(
            "root@example.com",
            "root password",
            flashmart_domain::Role::Admin,
        )
        .await;
    let (customer, _) = app.customer("c@example.com", "customer password").await;
    app.post("/api/v1/admin/loadtest/buyers")
        .bearer(&customer)
        .json(&json!({"count": 2}))
        .send()
        .await
        .assert_error(StatusCode::FORBIDDEN, 403);
    let minted = app
        .post("/api/v1/admin/loadtest/buyers")
        .bearer(&admin)
        .json(&json!({"count": 3}))
        .send()
        .await
        .data();
    let buyers = minted["buyers"].as_array().unwrap();
    assert_eq!(buyers.len(), 3);
    let token = buyers[0]["access_token"].as_str().unwrap();
    let me = app
        .get("/api/v1/users/me")
        .bearer(token)
        .send()
        .await
        .data();
    assert_eq!(me["id"], buyers[0]["user_id"]);
    assert_eq!(me["role"], "customer");
    app.post("/api/v1/admin/loadtest/buyers")
        .bearer(&admin)
        .json(&json!({"count": 0}))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
}

/// An item sold from a catalogue product takes its stock out of the product, so the product is
/// never sold twice; what the sale does not sell goes back when it ends.
#[tokio::test]
async fn a_sale_item_from_a_product_moves_its_stock() {
    let app = TestApp::start().await;
    let token = operator(&app).await;
    let product = crate::catalog::product_id(
        &app,
        &token,
        json!({"name": "Drop sneaker", "price_cents": 20000, "stock": 10}),
    )
    .await;
    let stock = |app: &TestApp| {
        let path = format!("/api/v1/products/{product}");
        let req = app.get(&path);
        async move { req.send().await.data()["stock"].as_i64().unwrap() }
    };
    let now = flashmart_app::Clock::now(&app.clock);
    let sale = |stock: i64| {
        json!({
            "name": "Product drop",
            "starts_at": at(now - Duration::minutes(1)),
            "ends_at": at(now + Duration::minutes(5)),
            "per_user_limit": 2,
            "reservation_ttl_secs": 600,
            "items": [{"name": "Drop sneaker", "product_id": product, "price_cents": 9900, "stock": stock}],
        })
    };
    let create = |body: Value| {
        app.post("/api/v1/admin/flash-sales")
            .bearer(&token)
            .json(&body)
            .send()
    };
    create(sale(11))
        .await
        .assert_error(StatusCode::CONFLICT, 60010);
    assert_eq!(stock(&app).await, 10, "a refused sale takes nothing");
    let res = create(sale(4)).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let sale_id = res.data()["id"].as_str().unwrap().to_owned();
    assert_eq!(stock(&app).await, 6);

    let (buyer, _) = app.customer("drop@example.com", "drop password").await;
    let res = reserve(&app, &buyer, &sale_id, 1, 1).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());

    // Ended with one unit held: the three unsold go back now, the held one when it is released.
    app.clock.advance(Duration::minutes(6));
    let sales = &app.services.state.flash_sales;
    assert_eq!(sales.return_unsold_stock().await.unwrap(), 3);
    assert_eq!(stock(&app).await, 9);
    assert_eq!(sales.return_unsold_stock().await.unwrap(), 0, "once");
    app.clock.advance(Duration::minutes(5));
    assert_eq!(sales.sweep_expired().await.unwrap(), 1);
    assert_eq!(sales.return_unsold_stock().await.unwrap(), 1);
    assert_eq!(stock(&app).await, 10);
    assert_eq!(sales.return_unsold_stock().await.unwrap(), 0);
}

/// Event streams hold a connection each: capped per client address (429) and in all (503); a
/// closed stream gives its place back.
#[tokio::test]
async fn open_event_streams_are_capped() {
    let app = TestApp::with_config(|c| {
        c.flash_sale.max_event_streams = 3;
        c.flash_sale.max_event_streams_per_ip = 2;
    })
    .await;
    let op = operator(&app).await;
    let sale = live_sale(&app, &op, &[4], 4).await;
    let open = |ip: &str| {
        let addr: std::net::SocketAddr = format!("{ip}:5000").parse().unwrap();
        app.router.clone().oneshot(
            Request::get(format!("/api/v1/flash-sales/{sale}/events"))
                .extension(axum::extract::ConnectInfo(addr))
                .body(Body::empty())
                .unwrap(),
        )
    };
    let a1 = open("203.0.113.1").await.unwrap();
    let a2 = open("203.0.113.1").await.unwrap();
    assert_eq!((a1.status(), a2.status()), (StatusCode::OK, StatusCode::OK));
    let a3 = open("203.0.113.1").await.unwrap();
    assert_eq!(a3.status(), StatusCode::TOO_MANY_REQUESTS);
    let b1 = open("203.0.113.2").await.unwrap();
    assert_eq!(b1.status(), StatusCode::OK);
    let c1 = open("203.0.113.3").await.unwrap();
    assert_eq!(c1.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(a1);
    let c2 = open("203.0.113.3").await.unwrap();
    assert_eq!(
        c2.status(),
        StatusCode::OK,
        "a closed stream's place is free"
    );
    drop((a2, b1, c2));
}
