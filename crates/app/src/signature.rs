//! The signature scheme of every signed body flashmart sends or receives (the payment provider's
//! notifications, outbound webhooks): `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`,
//! checked in constant time and within a tolerance, so a captured body cannot be replayed later
//! and a forged one cannot be made without the secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::payments::NotifyError;

/// How far a signed body's timestamp may be from now.
pub const TOLERANCE_SECS: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

/// The MAC of `<t>.<body>`. HMAC takes keys of any length, so `None` never happens in practice.
fn mac(secret: &[u8], t: i64, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).ok()?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string; `None` for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The header value for `body` signed at `t`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let digest = mac(secret, t, body).map(|m| hex(&m.finalize().into_bytes()));
    format!("t={t},v1={}", digest.unwrap_or_default())
}

/// Checks `header` against `body`: a valid signature, made within the tolerance of `now`.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(), NotifyError> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = unhex(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(NotifyError::BadSignature);
    };
    mac(secret, t, body)
        .ok_or(NotifyError::BadSignature)?
        .verify_slice(&v1)
        .map_err(|_| NotifyError::BadSignature)?;
    if (now.unix_timestamp() - t).abs() > TOLERANCE_SECS {
        return Err(NotifyError::Stale);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_time_dot_body() {
        // Python: hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            sign(b"key", 1_700_000_000, b"{}"),
            "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }

    #[test]
    fn signatures_verify_and_forgeries_do_not() {
        let now = OffsetDateTime::now_utc();
        let t = now.unix_timestamp();
        let body = br#"{"id":"evt_1"}"#;
        let good = sign(b"secret", t, body);
        assert_eq!(verify(b"secret", &good, body, now), Ok(()));
        assert_eq!(
            verify(b"other", &good, body, now),
            Err(NotifyError::BadSignature)
        );
        assert_eq!(
            verify(b"secret", &good, br#"{"id":"evt_2"}"#, now),
            Err(NotifyError::BadSignature)
        );
        let stale = sign(b"secret", t - TOLERANCE_SECS - 1, body);
        assert_eq!(
            verify(b"secret", &stale, body, now),
            Err(NotifyError::Stale)
        );
        for garbage in ["", "t=1", "v1=00", "t=x,v1=zz", "t=1,v1=abc"] {
            assert_eq!(
                verify(b"secret", garbage, body, now),
                Err(NotifyError::BadSignature),
                "{garbage}"
            );
        }
        // The timestamp is signed too: moving it breaks the signature.
        let moved = good.replacen(&format!("t={t}"), &format!("t={}", t + 1), 1);
        assert_eq!(
            verify(b"secret", &moved, body, now),
            Err(NotifyError::BadSignature)
        );
    }
}
