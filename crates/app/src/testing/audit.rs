//! The `AuditStore` contract: an audited write stores its entry in its own transaction, so a
//! write refused leaves none, and the log reads back filtered and newest first.

use flashmart_domain::{Currency, Money, ProductId, UserId};
use time::Duration;

use super::accounts::t0;
use crate::audit::{Actor, AuditEntry, AuditFilter};
use crate::catalog::Product;
use crate::page::PageRequest;
use crate::ports::{AuditStore, CatalogStore};

pub async fn audit_entries_are_written_with_their_change<S>(store: &S)
where
    S: AuditStore + CatalogStore + ?Sized,
{
    let alice = Actor::User(UserId::new());
    let bob = Actor::User(UserId::new());
    let mut p = Product {
        id: ProductId::new(),
        name: "Lamp".into(),
        description: String::new(),
        price: Money::new(1_000, Currency::EUR).unwrap(),
        stock: 3,
        sold: 0,
        category: None,
        images: vec![],
        active: true,
        created_at: t0(),
        updated_at: t0(),
        version: 1,
    };
    let created = AuditEntry::new(
        alice,
        t0(),
        "product.created",
        p.id,
        None,
        Some(serde_json::json!({"name": "Lamp", "price_cents": 1_000, "images": []})),
    );
    store.insert_product(&p, &created).await.unwrap();

    let mut next = p.clone();
    next.name = "Desk lamp".into();
    next.version = 2;
    let updated = AuditEntry::new(
        bob,
        t0() + Duration::seconds(1),
        "product.updated",
        p.id,
        Some(serde_json::json!({"name": "Lamp"})),
        Some(serde_json::json!({"name": "Desk lamp"})),
    );
    assert!(store.update_product(&next, &updated).await.unwrap());

    // A write that does not happen leaves no entry: an edit of a version gone, a delete of one.
    let stale = AuditEntry::new(
        alice,
        t0() + Duration::seconds(2),
        "product.updated",
        p.id,
        None,
        None,
    );
    assert!(!store.update_product(&next, &stale).await.unwrap());
    let stale_delete = AuditEntry {
        action: "product.deleted".into(),
        ..stale.clone()
    };
    assert!(!store.delete_product(&p, t0(), &stale_delete).await.unwrap());
    // And one whose entry cannot be written is not made: the entry's id is taken.
    p = next.clone();
    p.name = "Lost edit".into();
    p.version = 3;
    assert!(
        store.update_product(&p, &updated).await.is_err(),
        "an entry written twice is refused"
    );
    assert_eq!(
        store.product(p.id).await.unwrap().unwrap().name,
        "Desk lamp",
        "and the change goes with it"
    );

    let all = store
        .audit_entries(&AuditFilter::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(all.total, 2);
    assert_eq!(
        all.items,
        vec![updated.clone(), created.clone()],
        "newest first"
    );

    let by_alice = AuditFilter {
        actor: Some(alice.to_string()),
        ..AuditFilter::default()
    };
    let page = store
        .audit_entries(&by_alice, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items, vec![created.clone()]);

    let of_product = AuditFilter {
        entity: Some("product".into()),
        entity_id: Some(p.id.to_string()),
        ..AuditFilter::default()
    };
    let first = store
        .audit_entries(&of_product, PageRequest::new(Some(2), Some(1)))
        .await
        .unwrap();
    assert_eq!((first.total, first.items), (2, vec![created]));
    let none = AuditFilter {
        entity: Some("coupon".into()),
        ..AuditFilter::default()
    };
    let page = store
        .audit_entries(&none, PageRequest::default())
        .await
        .unwrap();
    assert_eq!((page.total, page.items.len()), (0, 0));
}
