//! The `AccountStore` contract.

use std::sync::Arc;

use flashmart_domain::{DisplayName, Email, Role, SessionId, User, UserId};
use time::{Duration, OffsetDateTime};

use crate::StoreError;
use crate::page::PageRequest;
use crate::ports::{
    AccountStore, NewSession, RefreshTokenRecord, RevokeReason, Rotation, TokenHash,
};

pub(crate) fn t0() -> OffsetDateTime {
    // Whole microseconds: what every adapter can store exactly.
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

pub(crate) fn user(email: &str, at: OffsetDateTime) -> User {
    User {
        id: UserId::new(),
        email: Email::parse(email).unwrap(),
        name: DisplayName::parse("Contract User").unwrap(),
        role: Role::Customer,
        created_at: at,
    }
}

fn token(n: u8, at: OffsetDateTime) -> RefreshTokenRecord {
    RefreshTokenRecord {
        hash: TokenHash([n; 32]),
        issued_at: at,
        expires_at: at + Duration::days(30),
    }
}

async fn session_for(store: &dyn AccountStore, user: &User, first: u8) -> SessionId {
    let id = SessionId::new();
    store
        .start_session(&NewSession {
            id,
            user_id: user.id,
            created_at: t0(),
            refresh: token(first, t0()),
            // Every other one, so the rotation's answer is seen to come from the session.
            second_factor: first % 2 == 1,
        })
        .await
        .unwrap();
    id
}

pub async fn users_round_trip(store: &dyn AccountStore) {
    let u = user("round@example.com", t0());
    store.insert_user(&u, "$argon2id$hash").await.unwrap();
    let by_email = store.credentials_by_email(&u.email).await.unwrap().unwrap();
    assert_eq!(by_email.user, u);
    assert_eq!(by_email.password_hash, "$argon2id$hash");
    assert_eq!(store.user_by_id(u.id).await.unwrap(), Some(u.clone()));
    assert_eq!(
        store.credentials_by_id(u.id).await.unwrap().unwrap().user,
        u
    );
    assert!(store.user_by_id(UserId::new()).await.unwrap().is_none());
    let other = Email::parse("nobody@example.com").unwrap();
    assert!(store.credentials_by_email(&other).await.unwrap().is_none());
}

pub async fn email_is_unique(store: &dyn AccountStore) {
    store
        .insert_user(&user("dup@example.com", t0()), "h")
        .await
        .unwrap();
    let err = store
        .insert_user(&user("dup@example.com", t0()), "h")
        .await
        .unwrap_err();
    // Every adapter names the constraint the same way.
    assert!(
        matches!(&err, StoreError::Conflict { constraint } if constraint == "users.email"),
        "{err:?}"
    );
}

pub async fn users_list_newest_first(store: &dyn AccountStore) {
    for i in 0..5 {
        let u = user(&format!("u{i}@example.com"), t0() + Duration::seconds(i));
        store.insert_user(&u, "h").await.unwrap();
    }
    let page = store
        .list_users(PageRequest::new(Some(2), Some(2)))
        .await
        .unwrap();
    assert_eq!(page.total, 5);
    let emails: Vec<_> = page.items.iter().map(|u| u.email.as_str()).collect();
    assert_eq!(emails, ["u2@example.com", "u1@example.com"]);
    let last = store
        .list_users(PageRequest::new(Some(3), Some(2)))
        .await
        .unwrap();
    assert_eq!(last.items.len(), 1);
    let beyond = store
        .list_users(PageRequest::new(Some(9), Some(2)))
        .await
        .unwrap();
    assert!(beyond.items.is_empty());
    assert_eq!(beyond.total, 5);
}

pub async fn refresh_rotation(store: &dyn AccountStore) {
    let u = user("rotate@example.com", t0());
    store.insert_user(&u, "h").await.unwrap();
    let session = session_for(store, &u, 1).await;
    let now = t0() + Duration::minutes(1);

    match store
        .rotate_refresh_token(&TokenHash([1; 32]), &token(2, now), now)
        .await
        .unwrap()
    {
        Rotation::Rotated {
            session: s,
            user,
            second_factor,
        } => {
            assert_eq!(s, session);
            assert_eq!(user, u);
            assert!(
                second_factor,
                "the session's first token was 1: opened with it"
            );
        }
        other => panic!("expected Rotated, got {other:?}"),
    }
    assert!(matches!(
        store
            .rotate_refresh_token(&TokenHash([9; 32]), &token(3, now), now)
            .await
            .unwrap(),
        Rotation::Unknown
    ));
    // Token 1 again: reuse; the session is revoked, so its newest token (2) fails too.
    assert!(matches!(
        store.rotate_refresh_token(&TokenHash([1; 32]), &token(4, now), now).await.unwrap(),
        Rotation::Reused { session: s } if s == session
    ));
    assert!(matches!(
        store.rotate_refresh_token(&TokenHash([2; 32]), &token(5, now), now).await.unwrap(),
        Rotation::Revoked { session: s } if s == session
    ));
    let revoked = store.sessions_revoked_since(t0()).await.unwrap();
    assert_eq!(revoked, vec![(session, now)]);
}

pub async fn an_expired_refresh_token_changes_nothing(store: &dyn AccountStore) {
    let u = user("expiry@example.com", t0());
    store.insert_user(&u, "h").await.unwrap();
    session_for(store, &u, 1).await;
    let later = t0() + Duration::days(30);
    assert!(matches!(
        store
            .rotate_refresh_token(&TokenHash([1; 32]), &token(2, later), later)
            .await
            .unwrap(),
        Rotation::Expired
    ));
    assert!(store.sessions_revoked_since(t0()).await.unwrap().is_empty());
}

/// Many tasks present the same live token at once: exactly one rotates it.
pub async fn racing_rotations_rotate_once(store: Arc<dyn AccountStore>) {
    let u = user("race@example.com", t0());
    store.insert_user(&u, "h").await.unwrap();
    session_for(store.as_ref(), &u, 1).await;
    let now = t0() + Duration::minutes(1);
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .rotate_refresh_token(&TokenHash([1; 32]), &token(100 + i, now), now)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut rotated = 0;
    for task in tasks {
        match task.await.unwrap() {
            Rotation::Rotated { .. } => rotated += 1,
            Rotation::Reused { .. } | Rotation::Revoked { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rotated, 1);
}

pub async fn password_change_revokes_every_session(store: &dyn AccountStore) {
    let u = user("change@example.com", t0());
    let bystander = user("bystander@example.com", t0());
    store.insert_user(&u, "old").await.unwrap();
    store.insert_user(&bystander, "h").await.unwrap();
    let a = session_for(store, &u, 1).await;
    let b = session_for(store, &u, 2).await;
    let c = session_for(store, &bystander, 3).await;
    let now = t0() + Duration::hours(1);
    store
        .revoke_session(b, RevokeReason::Logout, now)
        .await
        .unwrap();

    let later = now + Duration::minutes(1);
    let revoked = store.change_password(u.id, "new", later).await.unwrap();
    assert_eq!(revoked, vec![a], "only sessions still live");
    assert_eq!(
        store
            .credentials_by_id(u.id)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "new"
    );
    let mut all = store.sessions_revoked_since(t0()).await.unwrap();
    all.sort();
    let mut want = vec![(a, later), (b, now)];
    want.sort();
    assert_eq!(all, want);
    assert!(!all.iter().any(|(s, _)| *s == c));
    assert_eq!(
        store.sessions_revoked_since(later).await.unwrap(),
        vec![(a, later)]
    );
    assert!(matches!(
        store.change_password(UserId::new(), "x", later).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn role_change_revokes_the_users_sessions(store: &dyn AccountStore) {
    let u = user("promoted@example.com", t0());
    let bystander = user("same-as-before@example.com", t0());
    store.insert_user(&u, "h").await.unwrap();
    store.insert_user(&bystander, "h").await.unwrap();
    let a = session_for(store, &u, 1).await;
    let c = session_for(store, &bystander, 2).await;
    let later = t0() + Duration::hours(1);
    let audit = super::audit_entry("user.role_changed");
    assert_eq!(
        store
            .set_role(u.id, Role::Admin, Role::Operator, later, &audit)
            .await
            .unwrap(),
        None,
        "a role changed since it was read is left alone"
    );
    assert_eq!(store.user_by_id(u.id).await.unwrap().unwrap().role, u.role);
    let revoked = store
        .set_role(u.id, u.role, Role::Operator, later, &audit)
        .await
        .unwrap();
    assert_eq!(revoked, Some(vec![a]));
    assert_eq!(
        store.user_by_id(u.id).await.unwrap().unwrap().role,
        Role::Operator
    );
    assert_eq!(
        store.user_by_id(bystander.id).await.unwrap().unwrap().role,
        bystander.role
    );
    assert!(
        !store
            .sessions_revoked_since(t0())
            .await
            .unwrap()
            .iter()
            .any(|(s, _)| *s == c)
    );
    assert!(matches!(
        store
            .set_role(UserId::new(), Role::Customer, Role::Admin, later, &audit)
            .await,
        Err(StoreError::NotFound)
    ));
}

pub async fn revoking_twice_keeps_the_first_time(store: &dyn AccountStore) {
    let u = user("twice@example.com", t0());
    store.insert_user(&u, "h").await.unwrap();
    let s = session_for(store, &u, 1).await;
    let first = t0() + Duration::minutes(1);
    store
        .revoke_session(s, RevokeReason::Logout, first)
        .await
        .unwrap();
    store
        .revoke_session(s, RevokeReason::Logout, first + Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(
        store.sessions_revoked_since(t0()).await.unwrap(),
        vec![(s, first)]
    );
}

pub async fn buyers_are_inserted_with_sessions(store: &dyn AccountStore) {
    let buyers: Vec<(User, SessionId)> = (0..300)
        .map(|i| {
            (
                user(&format!("b{i}@loadtest.invalid"), t0()),
                SessionId::new(),
            )
        })
        .collect();
    store
        .insert_buyers(&buyers, "!", &super::audit_entry("user.buyers_minted"))
        .await
        .unwrap();
    assert_eq!(
        store
            .list_users(PageRequest::default())
            .await
            .unwrap()
            .total,
        300
    );
    let creds = store
        .credentials_by_id(buyers[7].0.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.password_hash, "!");
    // Their sessions exist: revoking one is recorded.
    store
        .revoke_session(buyers[7].1, RevokeReason::Logout, t0())
        .await
        .unwrap();
    assert_eq!(
        store.sessions_revoked_since(t0()).await.unwrap(),
        vec![(buyers[7].1, t0())]
    );
}
