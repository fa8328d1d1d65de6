//! Webhook deliveries over HTTP(S) with reqwest: no redirects followed, a timeout per attempt,
//! and (unless `webhooks.allow_private`) a resolver that drops every private, loopback or
//! otherwise non-public address a name resolves to, so that DNS cannot point a delivery at the
//! shop's own network.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use flashmart_app::webhooks::{
    SIGNATURE_HEADER, Target, WebhookSender, WebhookSettings, check_address,
};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

#[derive(Debug)]
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| check_address(a.ip(), allow_private).is_ok())
                .collect();
            if allowed.is_empty() {
                let refused = found
                    .first()
                    .map(|a| check_address(a.ip(), allow_private))
                    .and_then(Result::err)
                    .map_or_else(
                        || format!("{host} resolves to nothing"),
                        |e| format!("{host}: {e}"),
                    );
                return Err(refused.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

fn client(allow_private: bool) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .user_agent(concat!("flashmart-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The production sender: one client for each `allow_private` setting, so a reload applies to
/// the next attempt.
#[derive(Debug, Clone)]
pub struct HttpWebhookSender {
    strict: reqwest::Client,
    open: reqwest::Client,
}

impl HttpWebhookSender {
    /// Fails only when the TLS backend cannot start: then no sender without these guards is
    /// put in its place.
    pub fn new() -> reqwest::Result<Self> {
        Ok(Self {
            strict: client(false)?,
            open: client(true)?,
        })
    }
}

#[async_trait]
impl WebhookSender for HttpWebhookSender {
    async fn post(
        &self,
        target: &Target,
        signature: &str,
        body: &[u8],
        settings: WebhookSettings,
    ) -> Result<u16, String> {
        let client = if settings.allow_private {
            &self.open
        } else {
            &self.strict
        };
        let mut request = client
            .post(&target.url)
            .timeout(settings.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body.to_vec());
        if let Some(traceparent) = flashmart_sandbox::traceparent() {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.map_err(|e| describe(&e))?;
        Ok(response.status().as_u16())
    }
}

/// The error with its causes, since reqwest's own message is often only "error sending request".
fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out".to_owned()
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
