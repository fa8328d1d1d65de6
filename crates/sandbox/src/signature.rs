//! The pay page's form tokens. Notification signatures are the scheme every signed body uses,
//! `flashmart_app::signature`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use flashmart_app::signature::{hex, unhex};

type HmacSha256 = Hmac<Sha256>;

/// The token a pay page's forms carry: the MAC of the browser's own random nonce (kept in a
/// same-site cookie) and the payment, so a form posted from another site, which cannot send
/// that cookie, is refused.
pub fn form_token(secret: &[u8], nonce: &str, reference: &str) -> String {
    form_mac(secret, nonce, reference)
        .map(|m| hex(&m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Checks a form's token in constant time.
pub fn check_form_token(secret: &[u8], nonce: &str, reference: &str, token: &str) -> bool {
    match (unhex(token), form_mac(secret, nonce, reference)) {
        (Some(given), Some(m)) => !nonce.is_empty() && m.verify_slice(&given).is_ok(),
        _ => false,
    }
}

/// The MAC of a form's nonce and payment (kept apart from notifications by its prefix).
fn form_mac(secret: &[u8], nonce: &str, reference: &str) -> Option<HmacSha256> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret).ok()?;
    m.update(b"pay-form.");
    m.update(nonce.as_bytes());
    m.update(b".");
    m.update(reference.as_bytes());
    Some(m)
}
