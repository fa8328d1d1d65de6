//! What the adapter's test files share.

use flashmart_app::ports::AccountStore;
use flashmart_domain::{DisplayName, Email, Role, User, UserId};
use flashmart_embedded::SqliteStore;
use time::OffsetDateTime;

/// `n` customer accounts made at `at`: buyer0@example.com, buyer1@example.com, ...
pub async fn customers(store: &SqliteStore, at: OffsetDateTime, n: usize) -> Vec<UserId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let user = User {
            id: UserId::new(),
            email: Email::parse(&format!("buyer{i}@example.com")).expect("a valid email"),
            name: DisplayName::parse("Buyer").expect("a valid name"),
            role: Role::Customer,
            created_at: at,
        };
        store
            .insert_user(&user, "h")
            .await
            .expect("the user is stored");
        ids.push(user.id);
    }
    ids
}
