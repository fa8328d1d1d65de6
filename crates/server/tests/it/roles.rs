//! Role checks on admin routes, and the first admin made by `flashmart admin create-user`.

use std::process::Command;

use axum::http::StatusCode;

use crate::support::TestApp;

#[tokio::test]
async fn a_customer_is_forbidden_on_admin_routes() {
    let app = TestApp::start().await;
    let (access, _) = app.customer("shopper@example.com", "just shopping").await;
    app.get("/api/v1/admin/users")
        .bearer(&access)
        .send()
        .await
        .assert_error(StatusCode::FORBIDDEN, 403);
    // Without a token it is 401, not 403.
    app.get("/api/v1/admin/users")
        .send()
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 10003);
}

#[tokio::test]
async fn an_admin_made_by_the_cli_gets_through() {
    let app = TestApp::start().await;
    let (customer, _) = app.customer("someone@example.com", "some password").await;

    let mut command = Command::new(env!("CARGO_BIN_EXE_flashmart"));
    if let Some(url) = &app.config.database.url {
        command.env("FLASHMART__DATABASE__URL", url.expose());
    }
    let out = command
        .args([
            "admin",
            "create-user",
            "--email",
            "boss@example.com",
            "--password",
            "boss password",
            "--role",
            "admin",
        ])
        .env("FLASHMART__DATA_DIR", &app.config.data_dir)
        .env("FLASHMART__LOG__LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created admin boss@example.com"));

    let (admin, _) = app.login("boss@example.com", "boss password").await;
    // Two accounts, one a page: page 2 holds the one page 1 does not. (Their order depends on
    // two clocks here, the test's and the CLI's, so it is not asserted.)
    let page = |n: u32| {
        app.get(&format!("/api/v1/admin/users?per_page=1&page={n}"))
            .bearer(&admin)
            .send()
    };
    let first = page(1).await.data();
    let second = page(2).await.data();
    assert_eq!(second["total"], 2);
    assert_eq!(second["page"], 2);
    assert_eq!(second["per_page"], 1);
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    let mut emails = vec![
        first["items"][0]["email"].as_str().unwrap().to_owned(),
        second["items"][0]["email"].as_str().unwrap().to_owned(),
    ];
    emails.sort_unstable();
    assert_eq!(emails, ["boss@example.com", "someone@example.com"]);

    let me = app
        .get("/api/v1/users/me")
        .bearer(&customer)
        .send()
        .await
        .data();
    let user = app
        .get(&format!(
            "/api/v1/admin/users/{}",
            me["id"].as_str().unwrap()
        ))
        .bearer(&admin)
        .send()
        .await
        .data();
    assert_eq!(user, me);
    app.get("/api/v1/admin/users/01930000-0000-7000-8000-000000000000")
        .bearer(&admin)
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 404);
}

#[tokio::test]
async fn the_cli_refuses_a_bad_role_or_a_weak_password() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flashmart"))
            .args(args)
            .env("FLASHMART__DATA_DIR", dir.path())
            .env("FLASHMART__LOG__LEVEL", "warn")
            .output()
            .unwrap()
    };
    let out = run(&[
        "admin",
        "create-user",
        "--email",
        "a@example.com",
        "--password",
        "long enough",
        "--role",
        "root",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
    let out = run(&[
        "admin",
        "create-user",
        "--email",
        "a@example.com",
        "--password",
        "short",
        "--role",
        "admin",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password: must be at least 8 characters")
    );
}
