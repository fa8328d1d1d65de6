//! A second factor for staff (and anyone who wants one): TOTP enrolment and confirmation,
//! login with a code or a recovery code, no code working twice, and `auth.require_staff_totp`.

use axum::http::{Method, StatusCode};
use flashmart_app::auth::totp;
use serde_json::{Value, json};
use time::Duration;

use crate::support::TestApp;

fn now_unix(app: &TestApp) -> i64 {
    flashmart_app::Clock::now(&app.clock).unix_timestamp()
}

pub(crate) fn current_code(app: &TestApp, secret: &[u8]) -> String {
    format!(
        "{:06}",
        totp::code(secret, totp::step_at(now_unix(app)), totp::DIGITS)
    )
}

async fn login(
    app: &TestApp,
    email: &str,
    password: &str,
    code: Option<&str>,
) -> crate::support::TestResponse {
    let mut body = json!({"email": email, "password": password});
    if let Some(code) = code {
        body["totp_code"] = json!(code);
    }
    app.post("/api/v1/auth/login").json(&body).send().await
}

/// Enrols and confirms a second factor; returns the secret and the recovery codes.
pub(crate) async fn switch_on(app: &TestApp, token: &str) -> (Vec<u8>, Vec<String>) {
    let enrolled = app
        .post("/api/v1/auth/totp/enroll")
        .bearer(token)
        .send()
        .await
        .data();
    let uri = enrolled["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/flashmart:"), "{uri}");
    assert!(uri.contains("algorithm=SHA1&digits=6&period=30"), "{uri}");
    let secret = totp::from_base32(enrolled["secret"].as_str().unwrap()).unwrap();
    assert_eq!(secret.len(), 20);
    assert!(uri.contains(enrolled["secret"].as_str().unwrap()));

    app.post("/api/v1/auth/totp/confirm")
        .bearer(token)
        .json(&json!({"code": "000000"}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10007);
    let confirmed = app
        .post("/api/v1/auth/totp/confirm")
        .bearer(token)
        .json(&json!({"code": current_code(app, &secret)}))
        .send()
        .await
        .data();
    let codes: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

#[tokio::test]
async fn login_needs_the_second_factor_once_it_is_on() {
    let app = TestApp::start().await;
    let (token, _) = app
        .customer("careful@example.com", "careful password")
        .await;
    let (secret, recovery) = switch_on(&app, &token).await;
    let (email, password) = ("careful@example.com", "careful password");

    login(&app, email, password, None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10006);
    login(&app, email, password, Some("123456"))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10007);
    // The code confirm used does not work again; the next step's does, once.
    login(&app, email, password, Some(&current_code(&app, &secret)))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10007);
    app.clock.advance(Duration::seconds(30));
    let code = current_code(&app, &secret);
    assert_eq!(
        login(&app, email, password, Some(&code)).await.status,
        StatusCode::OK
    );
    login(&app, email, password, Some(&code))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10007);
    // A wrong password with a good code is still a wrong password.
    app.clock.advance(Duration::seconds(30));
    login(
        &app,
        email,
        "not the password",
        Some(&current_code(&app, &secret)),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, 10002);

    // A recovery code works once, however it is typed.
    let typed = recovery[0].to_uppercase();
    assert_eq!(
        login(&app, email, password, Some(&typed)).await.status,
        StatusCode::OK
    );
    login(&app, email, password, Some(&recovery[0]))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10007);
    assert_eq!(
        login(&app, email, password, Some(&recovery[1]))
            .await
            .status,
        StatusCode::OK
    );

    // On already: enrolling again is refused, so nobody can swap the secret with a token alone.
    app.post("/api/v1/auth/totp/enroll")
        .bearer(&token)
        .send()
        .await
        .assert_error(StatusCode::CONFLICT, 10008);
}

#[tokio::test]
async fn confirming_without_enrolling_is_refused() {
    let app = TestApp::start().await;
    let (token, _) = app.customer("eager@example.com", "eager password").await;
    app.post("/api/v1/auth/totp/confirm")
        .bearer(&token)
        .json(&json!({"code": "123456"}))
        .send()
        .await
        .assert_error(StatusCode::CONFLICT, 10009);
}

#[tokio::test]
async fn staff_routes_can_require_a_second_factor() {
    let app = TestApp::with_config(|c| c.auth.require_staff_totp = true).await;
    let ops = app
        .staff(
            "ops@example.com",
            "operator password",
            flashmart_domain::Role::Operator,
        )
        .await;
    let create = |token: String| {
        let req = app
            .post("/api/v1/admin/products")
            .bearer(&token)
            .json(&json!({"name": "Lamp", "price_cents": 100, "stock": 1}));
        async move { req.send().await }
    };
    let refused = create(ops.clone()).await;
    refused.assert_error(StatusCode::FORBIDDEN, 403);
    assert!(refused.json()["message"].as_str().unwrap().contains("totp"));

    let (secret, _) = switch_on(&app, &ops).await;
    // The old session was not opened with it: still refused.
    create(ops.clone())
        .await
        .assert_error(StatusCode::FORBIDDEN, 403);
    app.clock.advance(Duration::seconds(30));
    let res = login(
        &app,
        "ops@example.com",
        "operator password",
        Some(&current_code(&app, &secret)),
    )
    .await;
    let data: Value = res.data();
    let token = data["access_token"].as_str().unwrap().to_owned();
    assert_eq!(create(token.clone()).await.status, StatusCode::CREATED);
    // A refreshed token of that session keeps the second factor.
    let refreshed = app
        .post("/api/v1/auth/refresh")
        .json(&json!({"refresh_token": data["refresh_token"]}))
        .send()
        .await
        .data();
    let token = refreshed["access_token"].as_str().unwrap().to_owned();
    assert_eq!(create(token).await.status, StatusCode::CREATED);

    // Customers are not staff: nothing changes for them.
    let (shopper, _) = app
        .customer("shopper@example.com", "shopper password")
        .await;
    assert_eq!(
        app.req(Method::GET, "/api/v1/cart")
            .bearer(&shopper)
            .send()
            .await
            .status,
        StatusCode::OK
    );
}
