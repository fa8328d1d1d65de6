//! SIGHUP re-reads the configuration: live keys (log level, rate limits, webhook settings) are
//! applied and logged by name, keys that need a restart are named, and a broken file changes
//! nothing.

use std::process::Command;

use serde_json::Value;

use crate::support::Server;

fn hangup(server: &Server) {
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

const START: &str = r#"
data_dir = "data"
[log]
level = "info"
[rate_limit]
enabled = true
[rate_limit.public]
per_ip_per_minute = 1000
"#;

const LIVE_AND_RESTART: &str = r#"
data_dir = "data"
[log]
level = "debug"
[http]
request_timeout_secs = 31
[rate_limit]
enabled = true
[rate_limit.public]
per_ip_per_minute = 2
[webhooks]
allow_private = true
timeout_secs = 5
"#;

async fn status(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn sighup_applies_live_keys_names_the_rest_and_survives_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flashmart.toml");
    std::fs::write(&file, START).unwrap();
    let mut server = Server::start(dir.path(), &["--config", "flashmart.toml", "serve"], &[]);
    let client = reqwest::Client::new();
    let products = format!("{}/api/v1/products", server.base);
    for _ in 0..3 {
        assert_eq!(status(&client, &products).await, 200);
    }

    std::fs::write(&file, LIVE_AND_RESTART).unwrap();
    hangup(&server);
    server.wait_for(|v| message(v) == "log.level: info -> debug");
    server.wait_for(|v| message(v) == "rate_limit.public.per_ip_per_minute: 1000 -> 2");
    server.wait_for(|v| message(v) == "webhooks.allow_private: false -> true");
    server.wait_for(|v| message(v) == "webhooks.timeout_secs: 10 -> 5");
    let pending = server.wait_for(|v| message(v).starts_with("changed in the configuration"));
    assert_eq!(pending["level"], "WARN");
    assert_eq!(pending["keys"], "http.request_timeout_secs");
    let done = server.wait_for(|v| message(v) == "configuration reloaded");
    assert_eq!(done["applied"], 4);
    // The new limit is in force: 2 a minute from this address.
    assert_eq!(status(&client, &products).await, 200);
    assert_eq!(status(&client, &products).await, 200);
    assert_eq!(status(&client, &products).await, 429);
    // And the new level: each request is now logged at debug.
    server.wait_for(|v| v["level"] == "DEBUG" && message(v) == "request served");

    // A file that no longer parses changes nothing, and the server goes on.
    std::fs::write(&file, "this is [not toml").unwrap();
    hangup(&server);
    let refused = server.wait_for(|v| message(v).starts_with("configuration not reloaded"));
    assert_eq!(refused["level"], "ERROR");
    assert!(!refused["error"].as_str().unwrap().is_empty());
    assert_eq!(
        status(&client, &format!("{}/healthz", server.base)).await,
        200
    );
    assert_eq!(status(&client, &products).await, 429, "the limits stay");

    // Nor does one that parses but is invalid, naming the key.
    std::fs::write(
        &file,
        "data_dir = \"data\"\n[http]\nrequest_timeout_secs = 0\n",
    )
    .unwrap();
    hangup(&server);
    let refused = server.wait_for(|v| message(v).starts_with("configuration not reloaded"));
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("http.request_timeout_secs"),
        "{refused}"
    );
    server.terminate();
}
