//! The full auth story, and the rules around it: registration, login limits, refresh rotation
//! with reuse detection, logout, password change.

use axum::http::{Method, StatusCode, header};
use serde_json::json;
use time::Duration;

use crate::support::TestApp;

#[tokio::test]
async fn the_whole_auth_story() {
    let app = TestApp::start().await;

    // register -> login -> me
    let res = app
        .post("/api/v1/auth/register")
        .json(&json!({"email": "Ada@Example.com", "password": "analytical engine", "name": "Ada"}))
        .send()
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    let user = res.data();
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["role"], "customer");
    let user_id = user["id"].as_str().unwrap().to_owned();

    let login = app
        .post("/api/v1/auth/login")
        .json(&json!({"email": "ada@example.com", "password": "analytical engine"}))
        .send()
        .await
        .data();
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["expires_in"], 900);
    let access = login["access_token"].as_str().unwrap().to_owned();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();

    let me = app
        .get("/api/v1/users/me")
        .bearer(&access)
        .send()
        .await
        .data();
    assert_eq!(me["id"], user_id.as_str());
    assert_eq!(me["name"], "Ada");

    // refresh: a new pair; the old refresh token is refused (10004) and revokes the family,
    // so the newest refresh token and the access tokens of the session stop working too.
    let rotated = app
        .post("/api/v1/auth/refresh")
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .data();
    let access2 = rotated["access_token"].as_str().unwrap().to_owned();
    let refresh2 = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh);
    assert_eq!(
        app.get("/api/v1/users/me")
            .bearer(&access2)
            .send()
            .await
            .status,
        StatusCode::OK
    );

    app.post("/api/v1/auth/refresh")
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10004);
    app.post("/api/v1/auth/refresh")
        .json(&json!({"refresh_token": refresh2}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10004);
    for token in [&access, &access2] {
        app.get("/api/v1/users/me")
            .bearer(token)
            .send()
            .await
            .assert_error(StatusCode::UNAUTHORIZED, 10003);
    }

    // logout: a fresh session's access token is refused at once, long before it expires.
    let (access3, refresh3) = app.login("ada@example.com", "analytical engine").await;
    let (access4, _) = app.login("ada@example.com", "analytical engine").await;
    app.post("/api/v1/auth/logout")
        .bearer(&access3)
        .send()
        .await
        .data();
    app.get("/api/v1/users/me")
        .bearer(&access3)
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10003);
    app.post("/api/v1/auth/refresh")
        .json(&json!({"refresh_token": refresh3}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10004);
    // Another session of the same user is untouched by that logout.
    assert_eq!(
        app.get("/api/v1/users/me")
            .bearer(&access4)
            .send()
            .await
            .status,
        StatusCode::OK
    );

    // password change: needs the old password; ends every session; new password works.
    let (access5, refresh5) = app.login("ada@example.com", "analytical engine").await;
    app.req(Method::PUT, "/api/v1/auth/password")
        .bearer(&access5)
        .json(&json!({"old_password": "wrong guess!", "new_password": "difference engine"}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10002);
    app.req(Method::PUT, "/api/v1/auth/password")
        .bearer(&access5)
        .json(&json!({"old_password": "analytical engine", "new_password": "short"}))
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 10005);
    app.req(Method::PUT, "/api/v1/auth/password")
        .bearer(&access5)
        .json(&json!({"old_password": "analytical engine", "new_password": "difference engine"}))
        .send()
        .await
        .data();
    for token in [&access4, &access5] {
        app.get("/api/v1/users/me")
            .bearer(token)
            .send()
            .await
            .assert_error(StatusCode::UNAUTHORIZED, 10003);
    }
    app.post("/api/v1/auth/refresh")
        .json(&json!({"refresh_token": refresh5}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10004);
    app.post("/api/v1/auth/login")
        .json(&json!({"email": "ada@example.com", "password": "analytical engine"}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10002);
    let (access6, _) = app.login("ada@example.com", "difference engine").await;
    assert_eq!(
        app.get("/api/v1/users/me")
            .bearer(&access6)
            .send()
            .await
            .data()["id"],
        user_id.as_str()
    );
}

#[tokio::test]
async fn revocations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = flashmart_server::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let app = TestApp::on(tempfile::tempdir().unwrap(), config.clone()).await;
    let (access, _) = app
        .customer("restart@example.com", "survives restarts")
        .await;
    app.post("/api/v1/auth/logout")
        .bearer(&access)
        .send()
        .await
        .data();
    app.services.records.close().await;
    drop(app);

    // A new process over the same data: the logged-out token is still refused.
    let again = TestApp::on(dir, config).await;
    again
        .get("/api/v1/users/me")
        .bearer(&access)
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10003);
}

#[tokio::test]
async fn registration_rules() {
    let app = TestApp::start().await;
    let register = |body: serde_json::Value| app.post("/api/v1/auth/register").json(&body).send();

    // A role or id in the body is ignored.
    let res = register(json!({
        "email": "eve@example.com", "password": "a long password", "name": "Eve",
        "role": "admin", "id": "00000000-0000-0000-0000-000000000001"
    }))
    .await;
    let user = res.data();
    assert_eq!(user["role"], "customer");
    assert_ne!(user["id"], "00000000-0000-0000-0000-000000000001");

    // Same email in any case: 10001.
    register(json!({"email": "EVE@example.com", "password": "another password", "name": "E"}))
        .await
        .assert_error(StatusCode::CONFLICT, 10001);

    // Password policy: 10005 naming the field.
    for weak in ["short", "bob@example.com", "BOB@EXAMPLE.COM"] {
        let body = register(json!({"email": "bob@example.com", "password": weak, "name": "Bob"}))
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 10005);
        assert_eq!(body["details"][0]["field"], "password");
    }
}

#[tokio::test]
async fn unknown_email_and_wrong_password_look_the_same() {
    let app = TestApp::start().await;
    app.customer("known@example.com", "known password").await;
    let a = app
        .post("/api/v1/auth/login")
        .json(&json!({"email": "known@example.com", "password": "wrong password"}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10002);
    let b = app
        .post("/api/v1/auth/login")
        .json(&json!({"email": "unknown@example.com", "password": "wrong password"}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10002);
    assert_eq!(a["message"], b["message"]);
}

fn login(app: &TestApp, email: &str, password: &str, peer: &str) -> crate::support::Req {
    app.post("/api/v1/auth/login")
        .peer(peer)
        .json(&json!({"email": email, "password": password}))
}

#[tokio::test]
async fn failed_logins_are_limited_per_email_and_address() {
    let app = TestApp::with_config(|c| {
        c.rate_limit.login_per_email_ip_per_minute = 3;
    })
    .await;
    app.customer("target@example.com", "the right one").await;
    // Successes cost nothing.
    for _ in 0..5 {
        app.login("target@example.com", "the right one").await;
    }
    for _ in 0..3 {
        login(&app, "target@example.com", "a wrong one", "203.0.113.9")
            .send()
            .await
            .assert_error(StatusCode::UNAUTHORIZED, 10002);
    }
    // From that address, even the right password waits until the window has passed.
    let res = login(&app, "TARGET@example.com", "the right one", "203.0.113.9")
        .send()
        .await;
    res.assert_error(StatusCode::TOO_MANY_REQUESTS, 429);
    let retry: u64 = res.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another email from the same address is not affected by this one's limit.
    login(&app, "other@example.com", "some password", "203.0.113.9")
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10002);
}

/// Someone else's wrong guesses never lock the owner out from their own network.
#[tokio::test]
async fn a_guesser_cannot_lock_the_owner_out() {
    let app = TestApp::start().await;
    app.customer("victim@example.com", "victim's password")
        .await;
    let mut refused = 0;
    for _ in 0..15 {
        let res = login(&app, "victim@example.com", "a guess", "203.0.113.9")
            .send()
            .await;
        match res.status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("{other}: {}", res.text()),
        }
    }
    assert_eq!(refused, 5, "the guesser gets 10 tries a minute");
    let res = login(
        &app,
        "victim@example.com",
        "victim's password",
        "198.51.100.7",
    )
    .send()
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
}

/// The per-email ceiling is far above one guesser's budget, but it is there for an attack from
/// many networks at once.
#[tokio::test]
async fn failed_logins_from_many_networks_meet_a_per_email_ceiling() {
    let app = TestApp::with_config(|c| c.rate_limit.login_per_email_per_minute = 3).await;
    app.customer("popular@example.com", "popular password")
        .await;
    for i in 1..=3 {
        login(
            &app,
            "popular@example.com",
            "guess",
            &format!("203.0.113.{i}"),
        )
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10002);
    }
    login(
        &app,
        "popular@example.com",
        "popular password",
        "198.51.100.7",
    )
    .send()
    .await
    .assert_error(StatusCode::TOO_MANY_REQUESTS, 429);
}

#[tokio::test]
async fn ipv6_clients_share_a_budget_per_64() {
    let app = TestApp::with_config(|c| c.rate_limit.login_per_email_ip_per_minute = 2).await;
    for peer in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"] {
        login(&app, "v6@example.com", "guess", peer)
            .send()
            .await
            .assert_error(StatusCode::UNAUTHORIZED, 10002);
    }
    login(&app, "v6@example.com", "guess", "2001:db8:1:2::77")
        .send()
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, 429);
    login(&app, "v6@example.com", "guess", "2001:db8:1:3::1")
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10002);
}

#[tokio::test]
async fn wrong_old_passwords_count_as_failed_logins() {
    let app = TestApp::start().await;
    let (token, _) = app
        .customer("changer@example.com", "changer password")
        .await;
    let mut answers = Vec::new();
    for _ in 0..15 {
        let res = app
            .req(Method::PUT, "/api/v1/auth/password")
            .bearer(&token)
            .json(&json!({"old_password": "a guess", "new_password": "a brand new password"}))
            .send()
            .await;
        answers.push(res.status);
    }
    assert_eq!(answers[..10], [StatusCode::UNAUTHORIZED; 10]);
    assert_eq!(answers[10..], [StatusCode::TOO_MANY_REQUESTS; 5]);
    // The login of that account from that address waits too.
    login(&app, "changer@example.com", "changer password", "127.0.0.1")
        .send()
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, 429);
}

#[tokio::test]
async fn an_overlong_email_is_refused_before_anything() {
    let app = TestApp::start().await;
    let email = format!("{}@example.com", "a".repeat(250));
    let body = login(&app, &email, "whatever it is", "203.0.113.9")
        .send()
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, 422);
    assert_eq!(body["details"][0]["field"], "email");
}

#[tokio::test]
async fn login_is_limited_per_address() {
    let app = TestApp::with_config(|c| {
        c.rate_limit.login_per_ip_per_minute = 3;
    })
    .await;
    for i in 0..3 {
        app.post("/api/v1/auth/login")
            .json(&json!({"email": format!("nobody{i}@example.com"), "password": "whatever it is"}))
            .send()
            .await
            .assert_error(StatusCode::UNAUTHORIZED, 10002);
    }
    app.post("/api/v1/auth/login")
        .json(&json!({"email": "nobody9@example.com", "password": "whatever it is"}))
        .send()
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, 429);
}

#[tokio::test]
async fn rate_limits_can_be_switched_off() {
    let app = TestApp::with_config(|c| {
        c.rate_limit.enabled = false;
        c.rate_limit.login_per_email_per_minute = 1;
        c.rate_limit.login_per_email_ip_per_minute = 1;
        c.rate_limit.login_per_ip_per_minute = 1;
    })
    .await;
    for _ in 0..5 {
        app.post("/api/v1/auth/login")
            .json(&json!({"email": "x@example.com", "password": "whatever it is"}))
            .send()
            .await
            .assert_error(StatusCode::UNAUTHORIZED, 10002);
    }
}

#[tokio::test]
async fn an_expired_refresh_token_is_refused() {
    let app = TestApp::start().await;
    let (_, refresh) = app.customer("slow@example.com", "takes their time").await;
    app.clock.advance(Duration::days(31));
    app.post("/api/v1/auth/refresh")
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10003);
    app.post("/api/v1/auth/refresh")
        .json(&json!({"refresh_token": "made-up"}))
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10003);
}
