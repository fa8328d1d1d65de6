//! Smaller promises of the shop: order lists filter by status, amounts that do not fit are
//! refused naming the field, and an uploaded image is on disk for good before it is answered.

use axum::http::StatusCode;
use serde_json::json;

use crate::catalog::{operator, product, product_id};
use crate::commerce::{address, app, put_in_cart};
use crate::support::{Server, TestApp};

#[tokio::test]
async fn a_shoppers_orders_filter_by_status() {
    let app = app().await;
    let op = operator(&app).await;
    let item = product_id(
        &app,
        &op,
        json!({"name": "Pen", "price_cents": 300, "stock": 10}),
    )
    .await;
    let (buyer, _) = app.customer("pen@example.com", "pen password").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        put_in_cart(&app, &buyer, &item, 1).await;
        let order = app
            .post("/api/v1/cart/checkout")
            .bearer(&buyer)
            .json(&json!({"shipping_address": address()}))
            .send()
            .await
            .data();
        ids.push(order["id"].as_str().unwrap().to_owned());
    }
    app.post(&format!("/api/v1/orders/{}/cancel", ids[0]))
        .bearer(&buyer)
        .send()
        .await;
    let list = |query: &'static str| {
        let req = app.get(&format!("/api/v1/orders{query}")).bearer(&buyer);
        async move { req.send().await }
    };
    let cancelled = list("?status=cancelled").await.data();
    assert_eq!(cancelled["total"], 1, "{cancelled}");
    assert_eq!(cancelled["items"][0]["id"], ids[0].as_str());
    let pending = list("?status=pending_payment").await.data();
    assert_eq!(pending["total"], 1);
    assert_eq!(pending["items"][0]["id"], ids[1].as_str());
    assert_eq!(list("").await.data()["total"], 2);
    list("?status=lost")
        .await
        .assert_error(StatusCode::BAD_REQUEST, 400);
}

#[tokio::test]
async fn amounts_that_do_not_fit_are_refused_naming_the_field() {
    let app = TestApp::start().await;
    let op = operator(&app).await;
    let res = app
        .post("/api/v1/admin/products")
        .bearer(&op)
        .json(&json!({"name": "Yacht", "price_cents": 4_611_686_018_427_387_904_i64, "stock": 3}))
        .send()
        .await;
    let body = res.assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    assert_eq!(body["details"][0]["field"], "price_cents", "{body}");

    let now = flashmart_app::Clock::now(&app.clock);
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let res = app
        .post("/api/v1/admin/flash-sales")
        .bearer(&op)
        .json(&json!({
            "name": "Too dear", "starts_at": fmt(now), "ends_at": fmt(now + time::Duration::hours(1)),
            "per_user_limit": 10, "reservation_ttl_secs": 600,
            "items": [{"name": "Gold", "price_cents": 4_611_686_018_427_387_904_i64, "stock": 5}],
        }))
        .send()
        .await;
    let body = res.assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    assert_eq!(
        body["details"][0]["field"], "items[0].price_cents",
        "{body}"
    );
}

/// The image is written to a temporary name, fsynced, renamed into place, and the directory is
/// fsynced after the rename, all before the upload is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_durable_before_it_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let created = std::process::Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args([
            "admin",
            "create-user",
            "--email",
            "ops@example.com",
            "--password",
            "operator password",
            "--role",
            "operator",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let trace = dir.path().join("strace.out");
    let trace_arg = trace.to_str().unwrap().to_owned();
    let server = Server::start_under(
        &[
            "strace",
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
            "-o",
            &trace_arg,
            "--",
        ],
        dir.path(),
        &["serve"],
        &[],
    );
    let client = reqwest::Client::new();
    let login = server
        .login(&client, "ops@example.com", "operator password")
        .await;
    let token = login["data"]["access_token"].as_str().unwrap().to_owned();
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
    let boundary = "b0undary";
    let mut body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\
         content-type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(png);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let res = client
        .post(format!("{}/api/v1/admin/uploads", server.base))
        .bearer_auth(&token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let stored: serde_json::Value = res.json().await.unwrap();
    let name = stored["data"]["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("/uploads/")
        .to_owned();
    // Everything the server did for it happened before the answer; stop it so the trace is
    // complete.
    // Under strace the child is strace: the server's own pid is in its data dir's lock file.
    let pid: u32 = std::fs::read_to_string(dir.path().join("data/flashmart.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        tokio::task::spawn_blocking(move || server.terminate_pid(pid))
            .await
            .unwrap()
            .success()
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let find = |pred: &dyn Fn(&str) -> bool| lines.iter().position(|l| pred(l));
    let tmp_synced = find(&|l| l.contains("fsync(") && l.contains(&format!(".{name}.")))
        .unwrap_or_else(|| panic!("no fsync of the temporary file in:\n{text}"));
    let renamed = find(&|l| l.contains("rename") && l.contains(&name) && l.contains(".tmp"))
        .unwrap_or_else(|| panic!("no rename in:\n{text}"));
    assert!(
        tmp_synced < renamed,
        "the file is synced before its rename:\n{text}"
    );
    assert!(
        lines[renamed..]
            .iter()
            .any(|l| l.contains("fsync(") && l.trim_end().ends_with("uploads>) = 0")),
        "the directory is synced after the rename:\n{text}"
    );
}

/// JSON has one number type: a whole number written `2.0` is the integer 2, as the OpenAPI
/// document's `integer` allows; a fraction is still refused naming the field.
#[tokio::test]
async fn whole_numbers_written_as_floats_are_integers() {
    let app = app().await;
    let op = operator(&app).await;
    let item = product(
        &app,
        &op,
        json!({"name": "Cup", "price_cents": 400.0, "stock": 5}),
    )
    .await;
    assert_eq!(item["price_cents"], 400);
    let (buyer, _) = app.customer("cup@example.com", "cup password").await;
    let put = |quantity: serde_json::Value| {
        app.req(
            axum::http::Method::PUT,
            &format!("/api/v1/cart/items/{}", item["id"].as_str().unwrap()),
        )
        .bearer(&buyer)
        .json(&json!({ "quantity": quantity }))
        .send()
    };
    assert_eq!(put(json!(2.0)).await.data()["items"][0]["quantity"], 2);
    let body = put(json!(2.5))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    assert_eq!(body["details"][0]["field"], "quantity");
}
