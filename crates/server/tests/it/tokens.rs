//! Forged and stale access tokens are refused with 10003.

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use time::Duration;

use crate::support::TestApp;

fn parts(token: &str) -> (String, Value, String) {
    let mut it = token.split('.');
    let header = it.next().unwrap().to_owned();
    let claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    let signature = it.next().unwrap().to_owned();
    (header, claims, signature)
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

async fn refused(app: &TestApp, token: &str) {
    app.get("/api/v1/users/me")
        .bearer(token)
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10003);
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let app = TestApp::start().await;
    let (access, _) = app
        .customer("mallory@example.com", "mallory's password")
        .await;
    let (header, mut claims, signature) = parts(&access);

    // A raised role under the original signature.
    claims["role"] = json!("admin");
    refused(&app, &format!("{header}.{}.{signature}", b64(&claims))).await;

    // Signed with another key.
    let other = flashmart_app::auth::AccessTokens::new(&[7u8; 32], Duration::minutes(15));
    let user = flashmart_domain::User {
        id: flashmart_domain::UserId::from_uuid(claims["sub"].as_str().unwrap().parse().unwrap()),
        email: flashmart_domain::Email::parse("mallory@example.com").unwrap(),
        name: flashmart_domain::DisplayName::parse("M").unwrap(),
        role: flashmart_domain::Role::Admin,
        created_at: time::OffsetDateTime::now_utc(),
    };
    let foreign = other
        .issue(
            &user,
            flashmart_domain::SessionId::new(),
            flashmart_app::Clock::now(&app.clock),
        )
        .unwrap();
    refused(&app, &foreign).await;

    // alg: none, with and without a trailing dot.
    let none = b64(&json!({"alg": "none", "typ": "JWT"}));
    refused(&app, &format!("{none}.{}.", b64(&claims))).await;
    refused(&app, &format!("{none}.{}", b64(&claims))).await;

    // Garbage, an empty token, another scheme, no header at all.
    refused(&app, "not.a.jwt").await;
    refused(&app, "").await;
    app.get("/api/v1/users/me")
        .header("authorization", &format!("Basic {access}"))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10003);
    app.get("/api/v1/users/me")
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10003);

    // The genuine token still works.
    assert_eq!(
        app.get("/api/v1/users/me")
            .bearer(&access)
            .send()
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let app = TestApp::start().await;
    let (access, _) = app
        .customer("late@example.com", "always running late")
        .await;
    app.clock.advance(Duration::minutes(14));
    assert_eq!(
        app.get("/api/v1/users/me")
            .bearer(&access)
            .send()
            .await
            .status,
        StatusCode::OK
    );
    app.clock.advance(Duration::minutes(1));
    refused(&app, &access).await;
}
