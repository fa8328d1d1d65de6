//! Cost of checking an access token the server has not seen lately (a stampede's buyers each
//! press "buy" once, so the verified-token cache never helps them), against the check it
//! replaced: `jsonwebtoken::decode` with the same rules (HS256, issuer, required claims). Both
//! see a different token at every iteration, out of 100,000 issued.
//!
//! `cargo bench -p flashmart-app --bench tokens`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use flashmart_app::auth::AccessTokens;
use flashmart_domain::{DisplayName, Email, Role, SessionId, User, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use time::{Duration, OffsetDateTime};

/// The claims as the check before read them.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Claims {
    iss: String,
    sub: uuid::Uuid,
    sid: uuid::Uuid,
    role: Role,
    #[serde(default)]
    tfa: bool,
    iat: i64,
    exp: i64,
}

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const TOKENS: usize = 100_000;

fn check(c: &mut Criterion) {
    let now = OffsetDateTime::now_utc();
    let issuer = AccessTokens::new(SECRET, Duration::minutes(15));
    let tokens: Vec<String> = (0..TOKENS)
        .map(|_| {
            let user = User {
                id: UserId::new(),
                email: Email::parse("buyer@example.com").unwrap(),
                name: DisplayName::parse("Buyer").unwrap(),
                role: Role::Customer,
                created_at: now,
            };
            issuer.issue(&user, SessionId::new(), now).unwrap()
        })
        .collect();

    let mut group = c.benchmark_group("access_token_first_sight");
    // A fresh checker, so that no token is in its cache at the start; the cache then fills and
    // empties as in a stampede (it holds 16,384 of the 100,000).
    let checker = AccessTokens::new(SECRET, Duration::minutes(15));
    let mut i = 0;
    group.bench_function("AccessTokens::verify", |b| {
        b.iter(|| {
            i = (i + 1) % TOKENS;
            black_box(checker.verify(&tokens[i], now).unwrap());
        });
    });

    let key = DecodingKey::from_secret(SECRET);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["exp", "sub", "iss"]);
    validation.set_issuer(&["flashmart"]);
    let mut i = 0;
    group.bench_function("jsonwebtoken::decode (before)", |b| {
        b.iter(|| {
            i = (i + 1) % TOKENS;
            black_box(jsonwebtoken::decode::<Claims>(&tokens[i], &key, &validation).unwrap());
        });
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
