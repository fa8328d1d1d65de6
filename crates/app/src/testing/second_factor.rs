//! The second factor's contract: a secret waits for its first code, then is on; no step and no
//! recovery code works twice.

use time::Duration;

use super::accounts::{t0, user};
use crate::ports::{AccountStore, SecondFactorStore, TokenHash};

/// What the second-factor contract needs of one adapter.
pub trait SecondFactorAdapter: AccountStore + SecondFactorStore {}
impl<T: AccountStore + SecondFactorStore> SecondFactorAdapter for T {}

pub async fn a_secret_waits_for_its_first_code<S: SecondFactorAdapter + ?Sized>(store: &S) {
    let u = user("totp@example.com", t0());
    store.insert_user(&u, "h").await.unwrap();
    assert_eq!(store.totp(u.id).await.unwrap(), None);
    assert!(store.begin_totp(u.id, b"first", t0()).await.unwrap());
    // Another start replaces a secret that still waits.
    assert!(store.begin_totp(u.id, b"second", t0()).await.unwrap());
    let waiting = store.totp(u.id).await.unwrap().unwrap();
    assert_eq!(
        (
            waiting.secret.as_slice(),
            waiting.enabled_at,
            waiting.last_step
        ),
        (&b"second"[..], None, None)
    );
    // No code can be used while it waits.
    assert!(!store.use_totp_step(u.id, 100).await.unwrap());
    let on = t0() + Duration::minutes(1);
    let codes = [TokenHash([1; 32]), TokenHash([2; 32])];
    assert!(store.enable_totp(u.id, 100, &codes, on).await.unwrap());
    let enabled = store.totp(u.id).await.unwrap().unwrap();
    assert_eq!(
        (
            enabled.secret.as_slice(),
            enabled.enabled_at,
            enabled.last_step
        ),
        (&b"second"[..], Some(on), Some(100))
    );
    // Once on, it is neither replaced nor enabled again.
    assert!(!store.begin_totp(u.id, b"third", on).await.unwrap());
    assert!(!store.enable_totp(u.id, 101, &codes, on).await.unwrap());
    assert_eq!(store.totp(u.id).await.unwrap().unwrap(), enabled);
}

pub async fn no_step_or_recovery_code_works_twice<S: SecondFactorAdapter + ?Sized>(store: &S) {
    let u = user("steps@example.com", t0());
    let other = user("other@example.com", t0());
    store.insert_user(&u, "h").await.unwrap();
    store.insert_user(&other, "h").await.unwrap();
    store.begin_totp(u.id, b"secret", t0()).await.unwrap();
    let codes = [TokenHash([1; 32]), TokenHash([2; 32])];
    assert!(store.enable_totp(u.id, 100, &codes, t0()).await.unwrap());
    // The step used to enable, and any earlier one, are spent; a later one works once.
    assert!(!store.use_totp_step(u.id, 100).await.unwrap());
    assert!(!store.use_totp_step(u.id, 99).await.unwrap());
    assert!(store.use_totp_step(u.id, 102).await.unwrap());
    assert!(!store.use_totp_step(u.id, 102).await.unwrap());
    assert!(!store.use_totp_step(u.id, 101).await.unwrap());
    assert_eq!(
        store.totp(u.id).await.unwrap().unwrap().last_step,
        Some(102)
    );
    // A user without a second factor has no steps to use.
    assert!(!store.use_totp_step(other.id, 200).await.unwrap());
    // Recovery codes: each once, and only the owner's.
    assert!(
        !store
            .use_recovery_code(other.id, &codes[0], t0())
            .await
            .unwrap()
    );
    assert!(
        store
            .use_recovery_code(u.id, &codes[0], t0())
            .await
            .unwrap()
    );
    assert!(
        !store
            .use_recovery_code(u.id, &codes[0], t0())
            .await
            .unwrap()
    );
    assert!(
        !store
            .use_recovery_code(u.id, &TokenHash([9; 32]), t0())
            .await
            .unwrap()
    );
    assert!(
        store
            .use_recovery_code(u.id, &codes[1], t0())
            .await
            .unwrap()
    );
}
