//! The admin calls a run needs besides its load: logging in, minting buyers, creating sales,
//! reading stats, reservations and the server's memory.

use std::collections::HashMap;

use anyhow::{Context as _, bail};
use hyper::header::HeaderValue;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{Conn, Target, bearer};

#[derive(Debug)]
pub struct Admin {
    pub conn: Conn,
    pub token: HeaderValue,
}

/// A buyer with a real access token.
#[derive(Debug, Clone)]
pub struct Buyer {
    pub user_id: String,
    pub token: HeaderValue,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub stock: u64,
    pub reserved: u64,
    pub sold: u64,
    pub remaining: u64,
    pub released: u64,
    pub buyers: u64,
    pub attempts: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StoredReservation {
    pub id: String,
    pub item_id: u32,
    pub quantity: u32,
    pub status: String,
    pub buyer_id: String,
    pub buyer_ref: Option<String>,
}

impl Admin {
    pub async fn login(target: &Target, email: &str, password: &str) -> anyhow::Result<Self> {
        let mut conn = Conn::open(target).await?;
        let answer = conn
            .post_json(
                "/api/v1/auth/login",
                None,
                &json!({"email": email, "password": password}),
            )
            .await?;
        let data = answer
            .data()
            .with_context(|| format!("logging in as {email} (see --admin-email)"))?;
        let token = data["access_token"]
            .as_str()
            .context("login answered no access token")?;
        Ok(Self {
            conn,
            token: bearer(token)?,
        })
    }

    /// `n` buyers with access tokens, made by the server (`loadtest.enabled = true`).
    pub async fn mint_buyers(&mut self, n: usize) -> anyhow::Result<Vec<Buyer>> {
        const PER_CALL: usize = 10_000;
        let mut buyers = Vec::with_capacity(n);
        while buyers.len() < n {
            let count = (n - buyers.len()).min(PER_CALL);
            let answer = self
                .conn
                .post_json(
                    "/api/v1/admin/loadtest/buyers",
                    Some(&self.token),
                    &json!({"count": count}),
                )
                .await?;
            if answer.status == hyper::StatusCode::NOT_FOUND {
                bail!(
                    "the server does not mint load-test buyers: start it with \
                     FLASHMART__LOADTEST__ENABLED=true"
                );
            }
            let data = answer.data()?;
            for b in data["buyers"].as_array().context("no buyers in answer")? {
                buyers.push(Buyer {
                    user_id: b["user_id"]
                        .as_str()
                        .context("buyer without id")?
                        .to_owned(),
                    token: bearer(b["access_token"].as_str().context("buyer without token")?)?,
                });
            }
        }
        Ok(buyers)
    }

    pub async fn create_sale(&mut self, body: &Value) -> anyhow::Result<Value> {
        self.conn
            .post_json("/api/v1/admin/flash-sales", Some(&self.token), body)
            .await?
            .data()
            .context("creating the sale")
    }

    pub async fn stats(&mut self, sale: &str) -> anyhow::Result<Stats> {
        let data = self
            .conn
            .get(
                &format!("/api/v1/admin/flash-sales/{sale}/stats"),
                Some(&self.token),
            )
            .await?
            .data()?;
        Ok(serde_json::from_value(data)?)
    }

    pub async fn live_sales(&mut self) -> anyhow::Result<Vec<Value>> {
        let data = self
            .conn
            .get(
                "/api/v1/admin/flash-sales?status=live&per_page=100",
                Some(&self.token),
            )
            .await?
            .data()?;
        Ok(data["items"].as_array().cloned().unwrap_or_default())
    }

    /// Every reservation of a sale, as the server stores them (keyset paging).
    pub async fn reservations(&mut self, sale: &str) -> anyhow::Result<Vec<StoredReservation>> {
        let mut all: Vec<StoredReservation> = Vec::new();
        loop {
            let after = all
                .last()
                .map(|r| format!("&after={}", r.id))
                .unwrap_or_default();
            let data = self
                .conn
                .get(
                    &format!("/api/v1/admin/flash-sales/{sale}/reservations?per_page=100{after}"),
                    Some(&self.token),
                )
                .await?
                .data()?;
            let items: Vec<StoredReservation> = serde_json::from_value(data["items"].clone())?;
            if items.is_empty() {
                return Ok(all);
            }
            all.extend(items);
        }
    }

    /// The server's resident memory, from its own `/metrics`.
    pub async fn resident_memory(&mut self) -> anyhow::Result<Option<u64>> {
        Ok(self
            .metric("process_resident_memory_bytes")
            .await?
            .map(|v| v as u64))
    }

    /// The CPU time the server has used so far and the requests it has served, from one read
    /// of its own `/metrics` (`None` when it does not say: on another listener, or on a system
    /// without the counter).
    pub async fn usage(&mut self) -> anyhow::Result<Option<Usage>> {
        let text = self.scrape().await?;
        let Some(cpu_seconds) = series(&text, "process_cpu_seconds_total").next() else {
            return Ok(None);
        };
        Ok(Some(Usage {
            cpu_seconds,
            requests: series(&text, "http_requests_total").sum(),
        }))
    }

    /// The value of an unlabelled series on the server's `/metrics`.
    async fn metric(&mut self, name: &str) -> anyhow::Result<Option<f64>> {
        Ok(series(&self.scrape().await?, name).next())
    }

    /// The server's `/metrics`, as text.
    async fn scrape(&mut self) -> anyhow::Result<String> {
        let answer = self.conn.get("/metrics", None).await?;
        Ok(String::from_utf8_lossy(&answer.body).into_owned())
    }
}

/// What a server has spent and served so far.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub requests: f64,
}

/// The values of every series of the family `name` in a Prometheus text exposition.
fn series<'t>(text: &'t str, name: &'t str) -> impl Iterator<Item = f64> + 't {
    text.lines().filter_map(move |l| {
        let rest = l.strip_prefix(name)?;
        let value = match rest.strip_prefix('{') {
            Some(labelled) => labelled.rsplit_once('}')?.1,
            None => rest.strip_prefix(' ')?,
        };
        value.trim().parse().ok()
    })
}

/// Sums quantities per key.
pub fn totals<K: std::hash::Hash + Eq>(
    pairs: impl IntoIterator<Item = (K, u32)>,
) -> HashMap<K, u64> {
    let mut map = HashMap::new();
    for (k, q) in pairs {
        *map.entry(k).or_default() += u64::from(q);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_is_read_with_and_without_labels() {
        let text = "# HELP http_requests_total x\n\
                    # TYPE http_requests_total counter\n\
                    http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 100\n\
                    http_requests_total{method=\"POST\",route=\"/a{b}\",status=\"409\"} 23\n\
                    http_requests_total_other 5\n\
                    process_cpu_seconds_total 1.25\n";
        assert_eq!(series(text, "http_requests_total").sum::<f64>(), 123.0);
        assert_eq!(
            series(text, "process_cpu_seconds_total").collect::<Vec<_>>(),
            [1.25]
        );
        assert_eq!(series(text, "process_resident_memory_bytes").count(), 0);
    }
}
