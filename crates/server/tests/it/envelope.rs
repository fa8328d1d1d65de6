//! Every error class, including the ones the framework produces on its own, answers in the
//! envelope with the right status and code.

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode, header};
use axum::routing::get;
use flashmart_app::ManualClock;
use flashmart_server::{Config, build};
use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn success_answers_carry_the_envelope() {
    let app = TestApp::start().await;
    let res = app.get("/healthz").send().await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.data(), json!({"status": "ok"}));
}

#[tokio::test]
async fn unknown_route_is_404() {
    let app = TestApp::start().await;
    for path in ["/nope", "/api/v1/nope", "/api/v2/users/me"] {
        app.get(path)
            .send()
            .await
            .assert_error(StatusCode::NOT_FOUND, 404);
    }
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let app = TestApp::start().await;
    let res = app.req(Method::DELETE, "/api/v1/auth/login").send().await;
    res.assert_error(StatusCode::METHOD_NOT_ALLOWED, 405);
    assert_eq!(res.headers[header::ALLOW], "POST");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::start().await;
    for body in ["{\"email\": ", "not json", "", "{} trailing"] {
        app.post("/api/v1/auth/login")
            .raw("application/json", body)
            .send()
            .await
            .assert_error(StatusCode::BAD_REQUEST, 400);
    }
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = TestApp::start().await;
    app.post("/api/v1/auth/login")
        .raw("text/plain", "{}")
        .send()
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, 415);
}

#[tokio::test]
async fn failed_validation_is_422_with_details() {
    let app = TestApp::start().await;
    // Well-formed JSON of the wrong shape: the missing field is named.
    let body = app
        .post("/api/v1/auth/register")
        .json(&json!({"email": "a@example.com", "password": "long enough"}))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    assert_eq!(body["details"][0]["field"], "name");

    let body = app
        .post("/api/v1/auth/register")
        .json(&json!({"email": 42, "password": "long enough", "name": "A"}))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    assert_eq!(body["details"][0]["field"], "email");

    // Field rules: every failing field is listed.
    let body = app
        .post("/api/v1/auth/register")
        .json(&json!({"email": "not-an-email", "password": "long enough", "name": "  "}))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    let fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "name"]);
    assert!(body["details"][0]["message"].as_str().unwrap().len() > 3);
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let app = TestApp::with_config(|c| c.http.body_limit_bytes = 4096).await;
    let big = format!(
        "{{\"email\": \"a@example.com\", \"password\": \"{}\"}}",
        "x".repeat(5000)
    );
    app.post("/api/v1/auth/login")
        .raw("application/json", big)
        .send()
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, 413);
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_and_the_server_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let clock = ManualClock::starting_mid_hour();
    let services = build(&config, Arc::new(clock.clone())).await.unwrap();
    let boom = Router::new().route(
        "/boom/{n}",
        get(
            |axum::extract::Path(n): axum::extract::Path<u8>| async move {
                assert!(n == 0, "deliberate panic with a secret message");
                "fine"
            },
        ),
    );
    let app = TestApp::from_services(dir, config, clock, services, boom);
    assert_eq!(app.get("/boom/0").send().await.status, StatusCode::OK);
    let res = app.get("/boom/1").send().await;
    let body = res.assert_error(StatusCode::INTERNAL_SERVER_ERROR, 500);
    assert_eq!(
        body["message"], "internal error",
        "the cause stays in the log"
    );
    assert_eq!(app.get("/healthz").send().await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_incoming_request_id_is_kept_when_plain() {
    let app = TestApp::start().await;
    let res = app
        .get("/healthz")
        .header("x-request-id", "0123456789abcdef0123456789abcdef")
        .send()
        .await;
    assert_eq!(res.data()["status"], "ok");
    assert_eq!(
        res.headers["x-request-id"],
        "0123456789abcdef0123456789abcdef"
    );
    let res = app
        .get("/healthz")
        .header("x-request-id", "evil\"id with spaces")
        .send()
        .await;
    assert_ne!(res.headers["x-request-id"], "evil\"id with spaces");
    res.data();
}

/// A request made inside a caller's W3C trace is answered (and logged) under that trace's id,
/// ahead of any `x-request-id`; a malformed `traceparent` is ignored.
#[tokio::test]
async fn a_callers_traceparent_gives_the_trace_id() {
    let app = TestApp::start().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = app
        .get("/api/v1/products/not-a-uuid")
        .header("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-request-id", "other-id")
        .send()
        .await;
    assert_eq!(res.json()["trace_id"], trace);
    assert_eq!(res.headers["x-request-id"], trace);
    for bad in [
        format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
        format!("00-{trace}-0000000000000000-01"),
        format!("ff-{trace}-00f067aa0ba902b7-01"),
        format!("00-{}-00f067aa0ba902b7-01", trace.to_uppercase()),
        format!("00-{trace}-00f067aa0ba902b7-01-extra"),
        "garbage".to_owned(),
    ] {
        let res = app
            .get("/healthz")
            .header("traceparent", &bad)
            .header("x-request-id", "kept-request-id")
            .send()
            .await;
        assert_eq!(res.headers["x-request-id"], "kept-request-id", "{bad}");
    }
}

#[tokio::test]
async fn a_bad_path_parameter_is_404() {
    let app = TestApp::start().await;
    let token = app
        .staff(
            "root@example.com",
            "root password",
            flashmart_domain::Role::Admin,
        )
        .await;
    app.get("/api/v1/admin/users/not-a-uuid")
        .bearer(&token)
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 404);
}
