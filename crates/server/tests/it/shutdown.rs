//! Stopping: SIGTERM ends open event streams and the process exits; a request still running
//! after `http.shutdown_grace_secs` is closed rather than waited for.

use std::io::{Read as _, Write as _};

use serde_json::Value;

use crate::support::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_event_streams_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["demo"], &[]);
    let client = reqwest::Client::new();
    let live: Value = client
        .get(format!("{}/api/v1/flash-sales?status=live", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sale = live["data"]["items"][0]["id"].as_str().unwrap().to_owned();
    let mut stream = client
        .get(format!("{}/api/v1/flash-sales/{sale}/events", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("snapshot"));

    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    // The stream was ended by the server, not cut by the test.
    while let Ok(Some(_)) = stream.chunk().await {}
}

#[test]
fn a_request_still_running_after_the_grace_period_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &["serve"],
        &[
            ("FLASHMART__HTTP__SHUTDOWN_GRACE_SECS", "1"),
            ("FLASHMART__LOG__LEVEL", "info,flashmart_http=trace"),
        ],
    );
    // A request whose body never finishes arriving: its handler waits for it.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(
        b"POST /api/v1/auth/login HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
          content-length: 1000\r\n\r\n{\"email\":",
    )
    .unwrap();
    server.wait_for(|v| {
        v["message"] == "request started" && v["span"]["route"] == "/api/v1/auth/login"
    });
    let pid = server.pid();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let warned = server.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("still in flight"))
    });
    assert_eq!(warned["grace_secs"], 1);
    server.wait_for(|v| v["message"] == "flashmart stopped");
    assert!(server.wait().success());
    // The connection was closed under the client.
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
}
