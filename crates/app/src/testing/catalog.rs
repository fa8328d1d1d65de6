//! The `CatalogStore` contract.

use flashmart_domain::{Currency, Money, ProductId};
use time::Duration;

use super::accounts::t0;
use super::audit_entry;
use crate::catalog::{Product, ProductFilter};
use crate::page::PageRequest;
use crate::ports::CatalogStore;

fn product(name: &str, category: Option<&str>, age_secs: i64) -> Product {
    let at = t0() + Duration::seconds(age_secs);
    Product {
        id: ProductId::new(),
        name: name.to_owned(),
        description: format!("All about the {name}"),
        price: Money::new(1999, Currency::USD).unwrap(),
        stock: 10,
        sold: 0,
        category: category.map(str::to_owned),
        images: vec!["/uploads/x.png".into()],
        active: true,
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

pub async fn products_round_trip(store: &dyn CatalogStore) {
    let p = product("Red Sneaker", Some("shoes"), 0);
    store
        .insert_product(&p, &audit_entry("product.created"))
        .await
        .unwrap();
    assert_eq!(store.product(p.id).await.unwrap(), Some(p.clone()));
    assert!(store.product(ProductId::new()).await.unwrap().is_none());

    // An edit applies only to the version it read.
    let mut edit = p.clone();
    edit.name = "Blue Sneaker".into();
    edit.version = 2;
    assert!(
        store
            .update_product(&edit, &audit_entry("product.updated"))
            .await
            .unwrap()
    );
    let mut stale = p.clone();
    stale.name = "Stale".into();
    stale.version = 2;
    assert!(
        !store
            .update_product(&stale, &audit_entry("product.updated"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.product(p.id).await.unwrap().unwrap().name,
        "Blue Sneaker"
    );

    let deleted = audit_entry("product.deleted");
    assert!(
        !store.delete_product(&p, t0(), &deleted).await.unwrap(),
        "a delete applies only to the version it read"
    );
    assert!(store.delete_product(&edit, t0(), &deleted).await.unwrap());
    assert!(store.product(p.id).await.unwrap().is_none());
    assert!(!store.delete_product(&edit, t0(), &deleted).await.unwrap());
    let mut late = edit.clone();
    late.version = 3;
    assert!(
        !store
            .update_product(&late, &audit_entry("product.updated"))
            .await
            .unwrap(),
        "deleted products stay deleted"
    );
}

pub async fn products_search_filter_and_page(store: &dyn CatalogStore) {
    let names = [
        ("Red Sneaker", Some("shoes")),
        ("Blue Sneaker", Some("shoes")),
        ("Red Hat", Some("hats")),
        ("100% Wool Scarf", None),
    ];
    for (i, (name, cat)) in names.iter().enumerate() {
        store
            .insert_product(
                &product(name, *cat, i64::try_from(i).unwrap()),
                &audit_entry("product.created"),
            )
            .await
            .unwrap();
    }
    let mut hidden = product("Red Secret", Some("shoes"), 10);
    hidden.active = false;
    store
        .insert_product(&hidden, &audit_entry("product.created"))
        .await
        .unwrap();

    let names_of =
        |p: crate::Page<Product>| p.items.into_iter().map(|p| p.name).collect::<Vec<_>>();
    let all = store
        .list_products(&ProductFilter::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(all.total, 4);
    assert_eq!(
        names_of(all),
        ["100% Wool Scarf", "Red Hat", "Blue Sneaker", "Red Sneaker"],
        "newest first"
    );
    let filter = |q: Option<&str>, c: Option<&str>, inactive: bool| ProductFilter {
        q: q.map(str::to_owned),
        category: c.map(str::to_owned),
        include_inactive: inactive,
    };
    let red = store
        .list_products(&filter(Some("red"), None, false), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(names_of(red), ["Red Hat", "Red Sneaker"]);
    let red_shoes = store
        .list_products(
            &filter(Some("RED sneak"), Some("shoes"), false),
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(names_of(red_shoes), ["Red Sneaker"]);
    // A percent sign is a character, not a wildcard.
    let wool = store
        .list_products(&filter(Some("100%"), None, false), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(names_of(wool), ["100% Wool Scarf"]);
    let nothing = store
        .list_products(
            &filter(Some("%"), Some("hats"), false),
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(nothing.total, 0);
    let with_inactive = store
        .list_products(&filter(None, Some("shoes"), true), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        names_of(with_inactive),
        ["Red Secret", "Blue Sneaker", "Red Sneaker"]
    );
    let page2 = store
        .list_products(
            &ProductFilter::default(),
            PageRequest::new(Some(2), Some(3)),
        )
        .await
        .unwrap();
    assert_eq!(
        (page2.total, names_of(page2)),
        (4, vec!["Red Sneaker".to_owned()])
    );
}
