//! The shop stores' contract: addresses, carts, coupons and cart orders.

use std::sync::Arc;

use flashmart_domain::address::{Address, AddressFields};
use flashmart_domain::coupon::{CouponError, CouponRules, Discount};
use flashmart_domain::{
    AddressId, CouponId, Currency, Money, OrderId, OrderStatus, ProductId, UserId,
};
use time::Duration;

use super::accounts::{t0, user};
use crate::catalog::Product;
use crate::page::PageRequest;
use crate::ports::{AccountStore, AddressStore, CartStore, CatalogStore, CouponStore, OrderStore};
use crate::shop::model::{AddressRecord, CancelOutcome, CheckoutOutcome, CheckoutRequest, Coupon};

/// What the shop contract needs of one adapter.
pub trait ShopAdapter:
    AccountStore + CatalogStore + AddressStore + CartStore + CouponStore + OrderStore
{
}
impl<T: AccountStore + CatalogStore + AddressStore + CartStore + CouponStore + OrderStore>
    ShopAdapter for T
{
}

fn usd(c: i64) -> Money {
    Money::new(c, Currency::USD).unwrap()
}

fn address() -> Address {
    Address::parse(AddressFields {
        recipient: "Grace Hopper".into(),
        line1: "1 Navy Way".into(),
        line2: None,
        city: "Arlington".into(),
        region: Some("VA".into()),
        postal_code: "22202".into(),
        country: "US".into(),
        phone: None,
    })
    .unwrap()
}

pub(super) async fn customer<S: ShopAdapter + ?Sized>(store: &S, email: &str) -> UserId {
    let u = user(email, t0());
    store.insert_user(&u, "h").await.unwrap();
    u.id
}

pub(super) async fn product<S: ShopAdapter + ?Sized>(
    store: &S,
    name: &str,
    price: i64,
    stock: u32,
) -> ProductId {
    let p = Product {
        id: ProductId::new(),
        name: name.into(),
        description: String::new(),
        price: usd(price),
        stock,
        sold: 0,
        category: None,
        images: Vec::new(),
        active: true,
        created_at: t0(),
        updated_at: t0(),
        version: 1,
    };
    store
        .insert_product(&p, &super::audit_entry("product.created"))
        .await
        .unwrap();
    p.id
}

pub(super) fn checkout_of(user: UserId, coupon: Option<&str>) -> CheckoutRequest {
    CheckoutRequest {
        order_id: OrderId::new(),
        user_id: user,
        shipping: address(),
        coupon_code: coupon.map(str::to_owned),
        now: t0(),
        expires_at: t0() + Duration::minutes(15),
        max_open_orders: 100,
        max_units_per_product: 99,
    }
}

async fn stock_of<S: ShopAdapter + ?Sized>(store: &S, id: ProductId) -> (u32, u64) {
    let p = store.product(id).await.unwrap().unwrap();
    (p.stock, p.sold)
}

pub async fn addresses_keep_one_default<S: ShopAdapter + ?Sized>(store: &S) {
    let alice = customer(store, "alice@example.com").await;
    let record = |default: bool, secs: i64| AddressRecord {
        id: AddressId::new(),
        user_id: alice,
        address: address(),
        is_default: default,
        created_at: t0() + Duration::seconds(secs),
        updated_at: t0(),
    };
    let a = record(true, 0);
    let b = record(true, 1);
    store.save_address(&a).await.unwrap();
    store.save_address(&b).await.unwrap();
    let all = store.addresses(alice).await.unwrap();
    let defaults: Vec<_> = all.iter().filter(|r| r.is_default).map(|r| r.id).collect();
    assert_eq!(defaults, [b.id], "the newest default wins, alone");
    assert!(store.delete_address(alice, b.id).await.unwrap());
    let all = store.addresses(alice).await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(
        all[0].is_default,
        "the remaining address becomes the default"
    );
    // Another user cannot delete or overwrite it.
    let bob = customer(store, "bob@example.com").await;
    assert!(!store.delete_address(bob, a.id).await.unwrap());
    let mut stolen = a.clone();
    stolen.user_id = bob;
    store.save_address(&stolen).await.unwrap();
    assert!(store.addresses(bob).await.unwrap().is_empty());
    assert_eq!(store.addresses(alice).await.unwrap().len(), 1);
}

pub async fn checkout_takes_all_or_nothing<S: ShopAdapter + ?Sized>(store: &S) {
    let alice = customer(store, "alice@example.com").await;
    let plenty = product(store, "Plenty", 500, 10).await;
    let scarce = product(store, "Scarce", 300, 1).await;
    store.set_cart_line(alice, plenty, 3, t0()).await.unwrap();
    store.set_cart_line(alice, scarce, 2, t0()).await.unwrap();

    let outcome = store.checkout(&checkout_of(alice, None)).await.unwrap();
    assert_eq!(
        outcome,
        CheckoutOutcome::OutOfStock {
            product_id: scarce,
            name: "Scarce".into(),
            available: 1
        }
    );
    assert_eq!(stock_of(store, plenty).await, (10, 0), "nothing taken");
    assert_eq!(store.cart(alice).await.unwrap().len(), 2, "cart kept");

    store.set_cart_line(alice, scarce, 1, t0()).await.unwrap();
    let CheckoutOutcome::Placed(order) = store.checkout(&checkout_of(alice, None)).await.unwrap()
    else {
        panic!("expected an order");
    };
    assert_eq!(order.status, OrderStatus::PendingPayment);
    assert_eq!(order.subtotal, usd(1_800));
    assert_eq!(order.total, usd(1_800));
    assert_eq!(order.lines.len(), 2);
    assert_eq!(order.lines[0].name, "Plenty");
    assert_eq!(order.shipping, Some(address()));
    assert_eq!(stock_of(store, plenty).await, (7, 3));
    assert_eq!(stock_of(store, scarce).await, (0, 1));
    assert!(store.cart(alice).await.unwrap().is_empty(), "cart emptied");
    assert_eq!(store.order(order.id).await.unwrap().unwrap(), *order);
    assert_eq!(
        store.checkout(&checkout_of(alice, None)).await.unwrap(),
        CheckoutOutcome::EmptyCart
    );

    // Cancelling returns the stock; cancelling twice is refused.
    let (outcome, released) = store.cancel_order(order.id, t0()).await.unwrap();
    assert!(matches!(outcome, CancelOutcome::Cancelled(o) if o.status == OrderStatus::Cancelled));
    assert!(released.is_none());
    assert_eq!(stock_of(store, plenty).await, (10, 0));
    assert_eq!(stock_of(store, scarce).await, (1, 0));
    let (again, _) = store.cancel_order(order.id, t0()).await.unwrap();
    assert_eq!(again, CancelOutcome::NotPending(OrderStatus::Cancelled));
    assert_eq!(
        store.cancel_order(OrderId::new(), t0()).await.unwrap().0,
        CancelOutcome::NotFound
    );

    let mine = store
        .orders_of(alice, None, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(mine.total, 1);
    let cancelled = store
        .all_orders(Some(OrderStatus::Cancelled), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(cancelled.total, 1);
    let pending = store
        .all_orders(Some(OrderStatus::PendingPayment), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(pending.total, 0);
}

pub async fn unpaid_orders_expire_and_restock<S: ShopAdapter + ?Sized>(store: &S) {
    let alice = customer(store, "alice@example.com").await;
    let p = product(store, "Thing", 100, 5).await;
    store.set_cart_line(alice, p, 2, t0()).await.unwrap();
    let CheckoutOutcome::Placed(order) = store.checkout(&checkout_of(alice, None)).await.unwrap()
    else {
        panic!("expected an order");
    };
    assert_eq!(stock_of(store, p).await, (3, 2));
    assert!(
        store
            .expire_orders(order.expires_at - Duration::seconds(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.expire_orders(order.expires_at, 10).await.unwrap(),
        [order.id]
    );
    assert_eq!(stock_of(store, p).await, (5, 0));
    assert_eq!(
        store.order(order.id).await.unwrap().unwrap().status,
        OrderStatus::Expired
    );
    assert!(
        store
            .expire_orders(order.expires_at, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn checkout_caps_open_orders_and_units<S: ShopAdapter + ?Sized>(store: &S) {
    let alice = customer(store, "alice@example.com").await;
    let p = product(store, "Thing", 100, 50).await;
    let capped = |units| CheckoutRequest {
        max_open_orders: 2,
        max_units_per_product: units,
        ..checkout_of(alice, None)
    };
    store.set_cart_line(alice, p, 5, t0()).await.unwrap();
    assert!(matches!(
        store.checkout(&capped(4)).await.unwrap(),
        CheckoutOutcome::TooManyUnits { product_id, .. } if product_id == p
    ));
    for _ in 0..2 {
        store.set_cart_line(alice, p, 5, t0()).await.unwrap();
        assert!(matches!(
            store.checkout(&capped(5)).await.unwrap(),
            CheckoutOutcome::Placed(_)
        ));
    }
    store.set_cart_line(alice, p, 5, t0()).await.unwrap();
    assert_eq!(
        store.checkout(&capped(5)).await.unwrap(),
        CheckoutOutcome::TooManyOpenOrders
    );
    assert_eq!(
        stock_of(store, p).await,
        (40, 10),
        "nothing taken when refused"
    );
}

/// Amounts that do not fit are refused by name, never taken for another error (stored prices
/// from before the price cap can be that large).
pub async fn checkout_refuses_totals_that_do_not_fit<S: ShopAdapter + ?Sized>(store: &S) {
    let alice = customer(store, "alice@example.com").await;
    let huge = product(store, "Huge", i64::MAX / 2, 10).await;
    store.set_cart_line(alice, huge, 3, t0()).await.unwrap();
    assert_eq!(
        store.checkout(&checkout_of(alice, None)).await.unwrap(),
        CheckoutOutcome::TooLarge { field: "quantity" }
    );
    // Each line fits (one unit, and two units of a price just under half the maximum); their sum
    // does not.
    let other = product(store, "Also huge", i64::MAX / 2, 10).await;
    store.set_cart_line(alice, huge, 1, t0()).await.unwrap();
    store.set_cart_line(alice, other, 2, t0()).await.unwrap();
    assert_eq!(
        store.checkout(&checkout_of(alice, None)).await.unwrap(),
        CheckoutOutcome::TooLarge { field: "total" }
    );
    assert_eq!(stock_of(store, huge).await, (10, 0), "nothing taken");
}

pub async fn coupons_are_counted_once_per_use<S: ShopAdapter + ?Sized>(store: &S) {
    let coupon = Coupon {
        id: CouponId::new(),
        code: "ONCE".into(),
        rules: CouponRules::new(
            Discount::Fixed { amount: usd(250) },
            Some(usd(1_000)),
            t0() - Duration::days(1),
            t0() + Duration::days(1),
            Some(1),
            Some(1),
        )
        .unwrap(),
        uses: 0,
        active: true,
        created_at: t0(),
    };
    store
        .insert_coupon(&coupon, &super::audit_entry("coupon.created"))
        .await
        .unwrap();
    let mut dup = coupon.clone();
    dup.id = CouponId::new();
    assert!(matches!(
        store
            .insert_coupon(&dup, &super::audit_entry("coupon.created"))
            .await,
        Err(crate::StoreError::Conflict { .. })
    ));

    let p = product(store, "Thing", 600, 10).await;
    let alice = customer(store, "alice@example.com").await;
    let bob = customer(store, "bob@example.com").await;
    store.set_cart_line(alice, p, 1, t0()).await.unwrap();
    assert_eq!(
        store
            .checkout(&checkout_of(alice, Some("ONCE")))
            .await
            .unwrap(),
        CheckoutOutcome::Coupon(CouponError::MinSpendNotMet)
    );
    assert_eq!(
        stock_of(store, p).await,
        (10, 0),
        "a refused coupon takes nothing"
    );
    store.set_cart_line(alice, p, 2, t0()).await.unwrap();
    assert_eq!(
        store
            .checkout(&checkout_of(alice, Some("NOPE")))
            .await
            .unwrap(),
        CheckoutOutcome::CouponNotFound
    );
    let CheckoutOutcome::Placed(order) = store
        .checkout(&checkout_of(alice, Some("ONCE")))
        .await
        .unwrap()
    else {
        panic!("expected an order");
    };
    assert_eq!(
        (order.subtotal, order.discount, order.total),
        (usd(1_200), usd(250), usd(950))
    );
    assert_eq!(order.coupon_code.as_deref(), Some("ONCE"));
    store.set_cart_line(bob, p, 2, t0()).await.unwrap();
    assert_eq!(
        store
            .checkout(&checkout_of(bob, Some("ONCE")))
            .await
            .unwrap(),
        CheckoutOutcome::Coupon(CouponError::UsedUp)
    );
    let listed = store.coupons(PageRequest::default()).await.unwrap();
    assert_eq!(listed.items[0].uses, 1);

    // Cancelled unpaid, the order gives its use back: bob may have it now.
    let (outcome, _) = store.cancel_order(order.id, t0()).await.unwrap();
    assert!(matches!(
        outcome,
        crate::shop::model::CancelOutcome::Cancelled(_)
    ));
    let listed = store.coupons(PageRequest::default()).await.unwrap();
    assert_eq!(listed.items[0].uses, 0);
    assert!(matches!(
        store
            .checkout(&checkout_of(bob, Some("ONCE")))
            .await
            .unwrap(),
        CheckoutOutcome::Placed(_)
    ));
}

/// Many customers race for the last unit: exactly one order gets it.
pub async fn racing_for_the_last_unit<S: ShopAdapter>(store: Arc<S>) {
    let p = product(store.as_ref(), "Last One", 100, 1).await;
    let mut users = Vec::new();
    for i in 0..12 {
        let u = customer(store.as_ref(), &format!("racer{i}@example.com")).await;
        store.set_cart_line(u, p, 1, t0()).await.unwrap();
        users.push(u);
    }
    let tasks: Vec<_> = users
        .into_iter()
        .map(|u| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.checkout(&checkout_of(u, None)).await.unwrap() })
        })
        .collect();
    let mut placed = 0;
    for t in tasks {
        match t.await.unwrap() {
            CheckoutOutcome::Placed(_) => placed += 1,
            CheckoutOutcome::OutOfStock { available: 0, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(placed, 1);
    assert_eq!(stock_of(store.as_ref(), p).await, (0, 1));
}

/// Many customers race for a coupon's last use, each buying something else: exactly one order
/// has it, and it is counted once.
pub async fn racing_for_a_coupons_last_use<S: ShopAdapter>(store: Arc<S>) {
    let coupon = Coupon {
        id: CouponId::new(),
        code: "LAST".into(),
        rules: CouponRules::new(
            Discount::Fixed { amount: usd(100) },
            None,
            t0() - Duration::days(1),
            t0() + Duration::days(1),
            Some(1),
            None,
        )
        .unwrap(),
        uses: 0,
        active: true,
        created_at: t0(),
    };
    store
        .insert_coupon(&coupon, &super::audit_entry("coupon.created"))
        .await
        .unwrap();
    // A product each, so that nothing but the coupon makes the checkouts wait for each other.
    let mut users = Vec::new();
    let mut products = Vec::new();
    for i in 0..12 {
        let u = customer(store.as_ref(), &format!("racer{i}@example.com")).await;
        let p = product(store.as_ref(), &format!("Thing {i}"), 500, 1).await;
        store.set_cart_line(u, p, 1, t0()).await.unwrap();
        users.push(u);
        products.push(p);
    }
    let tasks: Vec<_> = users
        .into_iter()
        .map(|u| {
            let store = Arc::clone(&store);
            tokio::spawn(
                async move { store.checkout(&checkout_of(u, Some("LAST"))).await.unwrap() },
            )
        })
        .collect();
    let mut placed = 0;
    for t in tasks {
        match t.await.unwrap() {
            CheckoutOutcome::Placed(order) => {
                assert_eq!(order.discount, usd(100));
                placed += 1;
            }
            CheckoutOutcome::Coupon(CouponError::UsedUp) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(placed, 1);
    let listed = store.coupons(PageRequest::default()).await.unwrap();
    assert_eq!(listed.items[0].uses, 1);
    let mut sold = 0;
    for p in products {
        sold += stock_of(store.as_ref(), p).await.1;
    }
    assert_eq!(sold, 1, "a refused coupon takes no stock");
}

/// One customer checks out from many tabs at once: the cap on unpaid orders holds, and the
/// cart becomes one order.
pub async fn one_buyers_parallel_checkouts_make_one_order<S: ShopAdapter>(store: Arc<S>) {
    let p = product(store.as_ref(), "Plenty", 500, 100).await;
    let alice = customer(store.as_ref(), "alice@example.com").await;
    store.set_cart_line(alice, p, 2, t0()).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut request = checkout_of(alice, None);
                request.max_open_orders = 1;
                store.checkout(&request).await.unwrap()
            })
        })
        .collect();
    let mut placed = 0;
    for t in tasks {
        match t.await.unwrap() {
            CheckoutOutcome::Placed(_) => placed += 1,
            CheckoutOutcome::EmptyCart | CheckoutOutcome::TooManyOpenOrders => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(placed, 1);
    assert_eq!(stock_of(store.as_ref(), p).await, (98, 2));
}

/// Customers whose carts hold the same products in different orders check out at once: every
/// checkout goes through (no two wait for each other in a circle), and stock adds up.
pub async fn checkouts_sharing_products_all_go_through<S: ShopAdapter>(store: Arc<S>) {
    let mut products = Vec::new();
    for i in 0..4 {
        products.push(product(store.as_ref(), &format!("Shared {i}"), 100, 1_000).await);
    }
    let mut users = Vec::new();
    for i in 0..12usize {
        let u = customer(store.as_ref(), &format!("sharer{i}@example.com")).await;
        // Each cart adds the products starting from another one, a second apart.
        for k in 0..products.len() {
            let p = products[(i + k) % products.len()];
            let at = t0() + Duration::seconds(i64::try_from(k).unwrap());
            store.set_cart_line(u, p, 1, at).await.unwrap();
        }
        users.push(u);
    }
    let tasks: Vec<_> = users
        .into_iter()
        .map(|u| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.checkout(&checkout_of(u, None)).await })
        })
        .collect();
    for t in tasks {
        let outcome = t.await.unwrap();
        assert!(
            matches!(outcome, Ok(CheckoutOutcome::Placed(_))),
            "{outcome:?}"
        );
    }
    for p in products {
        assert_eq!(stock_of(store.as_ref(), p).await, (988, 12));
    }
}
