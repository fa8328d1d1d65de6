//! The audit log: every change staff make is recorded with who, when, what and the fields before
//! and after, and a change refused records nothing.

use axum::http::StatusCode;
use flashmart_domain::Role;
use serde_json::{Value, json};

use crate::catalog::{product, product_id};
use crate::commerce::app;
use crate::refunds::{paid_order, refund};
use crate::support::TestApp;

async fn audit(app: &TestApp, admin: &str, query: &str) -> Value {
    app.get(&format!("/api/v1/admin/audit{query}"))
        .bearer(admin)
        .send()
        .await
        .data()
}

fn actions(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn staff_changes_are_recorded_with_their_fields_before_and_after() {
    let app = app().await;
    // The paid order's product is the operator's first change, its refund the admin's.
    let order = paid_order(&app).await;
    let admin = order.admin.clone();
    let (op, _) = app
        .login("catalog-ops@example.com", "operator password")
        .await;
    let op_id = app.user_id(&op).await.to_string();
    let admin_id = app.user_id(&admin).await.to_string();

    let lamp = product_id(
        &app,
        &op,
        json!({"name": "Lamp", "price_cents": 1500, "stock": 4}),
    )
    .await;
    let res = app
        .req(
            axum::http::Method::PATCH,
            &format!("/api/v1/admin/products/{lamp}"),
        )
        .bearer(&op)
        .json(&json!({"price_cents": 1200}))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    // Refused changes leave nothing behind.
    app.req(
        axum::http::Method::PATCH,
        &format!("/api/v1/admin/products/{lamp}"),
    )
    .bearer(&op)
    .json(&json!({"price_cents": -5}))
    .send()
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    let res = app
        .req(
            axum::http::Method::DELETE,
            &format!("/api/v1/admin/products/{lamp}"),
        )
        .bearer(&op)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());

    let res = app
        .post("/api/v1/admin/coupons")
        .bearer(&admin)
        .json(&json!({"code": "TENOFF", "kind": "percent", "percent": 10, "ends_at": "2999-01-01T00:00:00Z"}))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());

    let (customer, _) = app
        .customer("promoted@example.com", "a long password")
        .await;
    let customer_id = app.user_id(&customer).await;
    let res = app
        .req(
            axum::http::Method::PUT,
            &format!("/api/v1/admin/users/{}/role", customer_id.as_uuid()),
        )
        .bearer(&admin)
        .json(&json!({"role": "operator"}))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());

    let res = refund(&app, &order, json!(700)).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());

    let all = audit(&app, &admin, "?per_page=100").await;
    assert_eq!(
        actions(&all),
        [
            "order.refund_requested",
            "user.role_changed",
            "coupon.created",
            "product.deleted",
            "product.updated",
            "product.created",
            "product.created",
        ],
        "newest first: {all}"
    );
    assert_eq!(all["total"], 7);
    let items = all["items"].as_array().unwrap();
    for e in items {
        assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
    }

    let refund_entry = &items[0];
    assert_eq!(refund_entry["actor"], admin_id);
    assert_eq!(refund_entry["entity"], "order");
    assert_eq!(refund_entry["entity_id"], order.id);
    assert_eq!(refund_entry["before"]["status"], "paid");
    assert_eq!(refund_entry["after"]["amount_cents"], 700);

    let role = &items[1];
    assert_eq!(role["entity_id"], customer_id.to_string());
    assert_eq!(role["before"], json!({"role": "customer"}));
    assert_eq!(role["after"], json!({"role": "operator"}));

    let updated = &items[4];
    assert_eq!(updated["actor"], op_id);
    assert_eq!(updated["entity_id"], lamp);
    assert_eq!(updated["before"]["price_cents"], 1500);
    assert_eq!(updated["after"]["price_cents"], 1200);
    assert_eq!(updated["after"]["name"], "Lamp");
    assert_eq!(items[3]["before"]["price_cents"], 1200, "deleted as it was");
    assert_eq!(items[3]["after"], Value::Null);
    assert_eq!(items[5]["before"], Value::Null);

    // Filters: by actor, by kind of record, by one record.
    let by_op = audit(&app, &admin, &format!("?actor={op_id}")).await;
    assert_eq!(
        actions(&by_op),
        [
            "product.deleted",
            "product.updated",
            "product.created",
            "product.created"
        ]
    );
    let lamp_only = audit(&app, &admin, &format!("?entity=product&entity_id={lamp}")).await;
    assert_eq!(lamp_only["total"], 3);
    let users = audit(&app, &admin, "?entity=user").await;
    assert_eq!(actions(&users), ["user.role_changed"]);
    let second = audit(&app, &admin, "?per_page=2&page=2").await;
    assert_eq!(actions(&second), ["coupon.created", "product.deleted"]);

    // Admins only.
    app.get("/api/v1/admin/audit")
        .bearer(&op)
        .send()
        .await
        .assert_error(StatusCode::FORBIDDEN, 403);
    app.get("/api/v1/admin/audit")
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10003);
}

#[tokio::test]
async fn sales_and_schedules_are_audited_and_the_demo_seed_is_named() {
    let app = TestApp::start().await;
    let admin = app
        .staff("audit-admin@example.com", "admin password", Role::Admin)
        .await;
    let stock = product(
        &app,
        &admin,
        json!({"name": "Drop shoe", "price_cents": 9000, "stock": 10}),
    )
    .await;
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let res = app
        .post("/api/v1/admin/flash-sales")
        .bearer(&admin)
        .json(&json!({
            "name": "Midnight drop",
            "starts_at": fmt(now + time::Duration::hours(1)),
            "ends_at": fmt(now + time::Duration::hours(2)),
            "per_user_limit": 1,
            "items": [{"name": "Drop shoe", "product_id": stock["id"], "stock": 3, "price_cents": 4500}],
        }))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let sale = res.data()["id"].as_str().unwrap().to_owned();
    let res = app
        .post("/api/v1/admin/flash-sale-schedules")
        .bearer(&admin)
        .json(&json!({
            "name": "Hourly deals",
            "recurrence": "hourly",
            "item_count": 5,
            "price_cents": 999,
            "per_user_limit": 1,
            "reservation_ttl_secs": 300,
        }))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());

    let sales = audit(&app, &admin, "?entity=flash_sale").await;
    assert_eq!(actions(&sales), ["flash_sale.created"], "{sales}");
    let entry = &sales["items"][0];
    assert_eq!(entry["entity_id"], sale);
    assert_eq!(entry["after"]["name"], "Midnight drop");
    assert_eq!(entry["after"]["items"][0]["stock"], 3);
    assert_eq!(entry["after"]["items"][0]["product_id"], stock["id"]);
    let schedules = audit(&app, &admin, "?entity=schedule").await;
    assert_eq!(actions(&schedules), ["schedule.created"]);
    assert_eq!(schedules["items"][0]["after"]["recurrence"], "hourly");
    // The sales the schedule makes are the server's own doing, not an operator's.
    let sales = audit(&app, &admin, "?entity=flash_sale").await;
    assert_eq!(sales["total"], 1);

    flashmart_server::commands::seed_demo(&app.config)
        .await
        .unwrap();
    let seeded = audit(&app, &admin, "?actor=command:seed&entity=coupon").await;
    assert_eq!(actions(&seeded), ["coupon.created"], "{seeded}");
}
