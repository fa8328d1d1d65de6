//! A lean HTTP/1.1 client: one kept-alive connection per worker, requests built from bytes
//! prepared in advance, so the load generator spends as little of the shared CPU as it can.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpStream;

/// Where the server listens. Only loopback addresses are accepted: a load test must never
/// leave this machine.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    host: HeaderValue,
}

impl Target {
    pub async fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported, got {url:?}");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("{url:?} has no host"))?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("cannot resolve {}", authority.host()))?
            .find(|a| a.ip().is_loopback())
            .with_context(|| {
                format!(
                    "{} does not resolve to a loopback address: stampede only loads this machine",
                    authority.host()
                )
            })?;
        Ok(Self {
            addr,
            host: HeaderValue::from_str(authority.as_str())?,
        })
    }
}

/// One kept-alive connection.
#[derive(Debug)]
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    target: Target,
}

/// An answer: status, body, and how long it took.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    pub latency: Duration,
}

impl Answer {
    pub fn json<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "answer with status {} is not the expected JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The envelope's `code` (the API's error code, 0 on success), or the HTTP status when the
    /// body has none (the compatibility API's bare answers).
    pub fn code(&self) -> i64 {
        #[derive(serde::Deserialize)]
        struct Code {
            code: Option<Value>,
        }
        if let Some(code) = leading_code(&self.body) {
            return code;
        }
        match serde_json::from_slice::<Code>(&self.body) {
            Ok(Code {
                code: Some(Value::Number(n)),
            }) => n.as_i64().unwrap_or(-1),
            _ => i64::from(self.status.as_u16()),
        }
    }

    /// The envelope's `data`, after checking the answer succeeded.
    pub fn data(&self) -> anyhow::Result<Value> {
        let body: Value = self.json()?;
        if !self.status.is_success() || body["code"] != 0 {
            bail!(
                "request failed with {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            );
        }
        Ok(body["data"].clone())
    }
}

/// The code of an envelope laid out as the server writes it, `{"code":N,...`, read without a
/// JSON parser: the load generator shares the machine with the server it measures, and every
/// answer's code is counted. Anything else is left to `serde_json`.
fn leading_code(body: &[u8]) -> Option<i64> {
    let rest = body.strip_prefix(br#"{"code":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // JSON has no leading zeros; 18 digits always fit an i64.
    if digits == 0 || digits > 18 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    if !matches!(rest.get(digits), Some(b',' | b'}')) {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

impl Conn {
    pub async fn open(target: &Target) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("cannot connect to {}", target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the connection closes; errors surface on the next request.
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            target: target.clone(),
        })
    }

    /// Replaces the connection with a new one to the same server (after a request on it failed).
    pub async fn reconnect(&mut self) -> anyhow::Result<()> {
        *self = Self::open(&self.target).await?;
        Ok(())
    }

    /// Sends one request; a closed connection is reopened once.
    pub async fn send(
        &mut self,
        method: &Method,
        path: &str,
        token: Option<&HeaderValue>,
        body: Option<Bytes>,
        extra: Option<(&'static str, &HeaderValue)>,
    ) -> anyhow::Result<Answer> {
        if self.sender.is_closed() {
            self.reconnect().await?;
        }
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, self.target.host.clone());
        if let Some(token) = token {
            builder = builder.header(AUTHORIZATION, token.clone());
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some((name, value)) = extra {
            builder = builder.header(name, value.clone());
        }
        let request = builder.body(Full::new(body.unwrap_or_default()))?;
        let started = Instant::now();
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            body,
            latency: started.elapsed(),
        })
    }

    pub async fn get(&mut self, path: &str, token: Option<&HeaderValue>) -> anyhow::Result<Answer> {
        self.send(&Method::GET, path, token, None, None).await
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        token: Option<&HeaderValue>,
        body: &Value,
    ) -> anyhow::Result<Answer> {
        let bytes = Bytes::from(serde_json::to_vec(body)?);
        self.send(&Method::POST, path, token, Some(bytes), None)
            .await
    }
}

pub fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> Answer {
        Answer {
            status: StatusCode::CONFLICT,
            body: Bytes::copy_from_slice(body.as_bytes()),
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn the_code_is_read_from_any_layout() {
        for (body, code) in [
            (
                r#"{"code":60004,"message":"sold out","trace_id":"t"}"#,
                60004,
            ),
            (r#"{"code":0,"data":{"id":"x"}}"#, 0),
            (r#"{"code":7}"#, 7),
            (r#"{"message":"m","code":60005}"#, 60005),
            (r#"{ "code": 42 }"#, 42),
            (r#"{"code":-3,"message":"m"}"#, -3),
            (r#"{"code":007}"#, 409),
            (r#"{"code":"60004"}"#, 409),
            ("sold out", 409),
            ("", 409),
        ] {
            assert_eq!(answer(body).code(), code, "{body}");
        }
    }
}
