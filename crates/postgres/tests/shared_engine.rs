//! What the PostgreSQL store does beyond the port contracts: a reservation the shared engine
//! decided is stored once however often it is written (the SQLite store, serving only the
//! in-process engine, does not take such writes), and a flash-sale order is derived from its
//! reservation, with no row of its own, until a payment or a cancellation writes one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use flashmart_app::flash_sale::model::{
    BuyerId, IdempotencyRecord, JournalOp, NewItem, NewReservation, ReservationRecord, SaleRecord,
};
use flashmart_app::page::PageRequest;
use flashmart_app::payments::{PaymentRecord, PaymentStatus};
use flashmart_app::ports::{
    AccountStore, FlashSaleStore, OrderStore, PaymentStore, ReservationJournal,
};
use flashmart_app::shop::model::CancelOutcome;
use flashmart_domain::flash_sale::{ReservationStatus, SaleRules, SaleWindow};
use flashmart_domain::{
    Currency, DisplayName, Email, Money, OrderId, OrderStatus, PaymentId, ReservationId, Role,
    SaleId, User, UserId,
};
use flashmart_postgres::PgStore;
use flashmart_postgres::testing::TestSchema;
use time::{Duration, OffsetDateTime};

/// Written with `replayed` or without (a batch of new decisions is inserted without `ON
/// CONFLICT`, and written again keeping what is there when some were there after all), twice in
/// one batch and again in later batches beside a new one, each reservation is stored once.
#[tokio::test]
async fn a_decided_reservation_is_stored_once_however_often_it_is_written() {
    let w = World::new().await;
    let (store, t0, sale, user) = (&w.store, w.t0, &w.sale, &w.user);
    let record = reservation(sale, user, 2, t0);
    let later = reservation(sale, user, 1, t0 + Duration::seconds(1));
    let last = reservation(sale, user, 1, t0 + Duration::seconds(2));
    let id = record.id;
    let op = |r: &ReservationRecord, replayed| JournalOp::Record {
        reservation: Box::new(written(
            r,
            user,
            Some(IdempotencyRecord {
                key: format!("k{}", r.id),
                fingerprint: [1; 16],
            }),
        )),
        replayed,
    };
    // Twice in one batch, as new decisions both (a worker and the instance at once).
    store
        .commit(&[op(&record, false), op(&record, false)])
        .await
        .unwrap();
    // A retry with the key, replayed by the engine.
    store.commit(&[op(&record, true)]).await.unwrap();
    // A new decision beside one already stored (a worker was quicker), and the other way
    // round with the stored one marked replayed.
    store
        .commit(&[op(&later, false), op(&record, false)])
        .await
        .unwrap();
    store
        .commit(&[op(&record, true), op(&last, false)])
        .await
        .unwrap();
    for r in [&record, &later, &last] {
        assert_eq!(store.reservation(r.id).await.unwrap().as_ref(), Some(r));
    }
    let listed = store
        .reservations(sale.id, PageRequest::default(), None)
        .await
        .unwrap();
    assert_eq!(listed.total, 3);
    let orders = store
        .orders_of(user.id, None, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(orders.total, 3);
    let first = orders
        .items
        .iter()
        .find(|o| *o.id.as_uuid() == *id.as_uuid())
        .unwrap();
    assert_eq!(first.lines.len(), 1);
    assert_eq!(first.total.cents(), 600);
    let stats = store.stats(sale.id).await.unwrap();
    assert_eq!(stats.reserved, 4);
}

/// A schema of its own, the store on it and a pool for looking behind the store's back, with
/// the sale and buyer of `sale_and_buyer`.
struct World {
    _schema: TestSchema,
    store: PgStore,
    pool: sqlx::PgPool,
    t0: OffsetDateTime,
    sale: SaleRecord,
    user: User,
}

impl World {
    async fn new() -> Self {
        let schema = TestSchema::create().await;
        let store = PgStore::connect(schema.options(), 4).await.unwrap();
        let pool = sqlx::PgPool::connect_with(schema.options()).await.unwrap();
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let (sale, user) = sale_and_buyer(&store, t0).await;
        Self {
            _schema: schema,
            store,
            pool,
            t0,
            sale,
            user,
        }
    }
}

/// A sale of one item (5 units at 3.00 EUR, 5 a buyer) from `t0`, and a customer.
async fn sale_and_buyer(store: &PgStore, t0: OffsetDateTime) -> (SaleRecord, User) {
    let sale = SaleRecord {
        id: SaleId::new(),
        name: "Shared".into(),
        rules: SaleRules::new(
            SaleWindow::new(t0, t0 + Duration::hours(1)).unwrap(),
            5,
            600,
        )
        .unwrap(),
        currency: Currency::EUR,
        slot: None,
        item_count: 1,
        total_stock: 5,
        created_at: t0,
    };
    let item = NewItem {
        name: "Item".into(),
        image_url: None,
        product_id: None,
        price_cents: 300,
        stock: 5,
    };
    store.insert_sale(&sale, &[item], None).await.unwrap();
    let user = User {
        id: UserId::new(),
        email: Email::parse("buyer@example.com").unwrap(),
        name: DisplayName::parse("Buyer").unwrap(),
        role: Role::Customer,
        created_at: t0,
    };
    store.insert_user(&user, "hash").await.unwrap();
    (sale, user)
}

/// `quantity` of the sale's one item reserved by `user` at `at`, with its order.
fn reservation(
    sale: &SaleRecord,
    user: &User,
    quantity: u32,
    at: OffsetDateTime,
) -> ReservationRecord {
    let id = ReservationId::new();
    ReservationRecord {
        id,
        sale_id: sale.id,
        item_no: 1,
        buyer: BuyerId::user(user.id),
        buyer_ref: None,
        quantity,
        status: ReservationStatus::Reserved,
        created_at: at,
        expires_at: at + Duration::minutes(10),
        order_id: Some(OrderId::from_uuid(*id.as_uuid())),
        purchased_at: None,
    }
}

/// `record` as the journal is given it.
fn written(
    record: &ReservationRecord,
    user: &User,
    idempotency: Option<IdempotencyRecord>,
) -> NewReservation {
    NewReservation {
        record: Arc::new(record.clone()),
        user_id: Some(user.id),
        unit_price_cents: 300,
        item_name: "Item".into(),
        currency: Currency::EUR,
        idempotency,
    }
}

/// One unit reserved by `user` at `at`, through the in-process engine's journal operation.
async fn reserved(
    store: &PgStore,
    sale: &SaleRecord,
    user: &User,
    at: OffsetDateTime,
) -> ReservationRecord {
    let record = reservation(sale, user, 1, at);
    store
        .commit(&[JournalOp::Reserve(Box::new(written(&record, user, None)))])
        .await
        .unwrap();
    record
}

/// The rows of `from` (a table, and a condition if any).
async fn count(pool: &sqlx::PgPool, from: &'static str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {from}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn order_rows(pool: &sqlx::PgPool) -> i64 {
    count(pool, "orders").await
}

#[tokio::test]
async fn a_flash_sale_order_is_derived_until_it_changes() {
    let w = World::new().await;
    let (store, pool, t0, sale, user) = (&w.store, &w.pool, w.t0, &w.sale, &w.user);
    let to_pay = reserved(store, sale, user, t0).await;
    let to_cancel = reserved(store, sale, user, t0 + Duration::seconds(1)).await;
    let to_expire = reserved(store, sale, user, t0 + Duration::seconds(2)).await;

    // Three orders, none of them a row: read, listed and counted from their reservations.
    assert_eq!(order_rows(pool).await, 0);
    let order = store
        .order(to_pay.order_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(order.id.as_uuid(), to_pay.id.as_uuid());
    assert_eq!(order.user_id, user.id);
    assert_eq!(order.status, OrderStatus::PendingPayment);
    assert_eq!(order.total.cents(), 300);
    assert_eq!(order.total.currency(), Currency::EUR);
    assert_eq!(order.reservation_id, Some(to_pay.id));
    assert_eq!(order.expires_at, to_pay.expires_at);
    assert_eq!(order.lines.len(), 1);
    assert_eq!(order.lines[0].name, "Item");
    let mine = store
        .orders_of(user.id, None, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(mine.total, 3);
    let newest_first: Vec<_> = mine.items.iter().map(|o| *o.id.as_uuid()).collect();
    assert_eq!(
        newest_first,
        [to_expire.id, to_cancel.id, to_pay.id].map(|r| *r.as_uuid())
    );
    let pending = store
        .all_orders(Some(OrderStatus::PendingPayment), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(pending.total, 3);

    // Starting a payment writes the order's row; the order reads the same.
    let payment = PaymentRecord {
        id: PaymentId::new(),
        order_id: order.id,
        provider: "test".into(),
        provider_ref: "derived-1".into(),
        status: PaymentStatus::Pending,
        amount: order.total,
        refunded: Money::zero(Currency::EUR),
        pay_url: "https://pay.example/derived-1".into(),
        created_at: t0,
        updated_at: t0,
        expires_at: order.expires_at,
    };
    assert_eq!(store.insert_payment(&payment).await.unwrap(), None);
    assert_eq!(order_rows(pool).await, 1);
    assert_eq!(store.order(order.id).await.unwrap().unwrap(), order);

    // Cancelling writes the row too, and cancels the reservation with it.
    let cancelled = match store
        .cancel_order(to_cancel.order_id.unwrap(), t0 + Duration::seconds(5))
        .await
        .unwrap()
    {
        (CancelOutcome::Cancelled(order), Some(released)) => {
            assert_eq!(released.reservation, to_cancel.id);
            order
        }
        other => panic!("expected a cancellation, got {other:?}"),
    };
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(order_rows(pool).await, 2);
    assert_eq!(
        store
            .reservation(to_cancel.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        ReservationStatus::Cancelled
    );

    // Expiry changes only the reservation: the derived order follows it. The paid-for order's
    // reservation (its payment still open) expires too, and its row with it.
    let released = store
        .expire_due(t0 + Duration::minutes(11), 100)
        .await
        .unwrap();
    let mut expired: Vec<_> = released.iter().map(|r| r.reservation).collect();
    expired.sort_unstable();
    let mut want = vec![to_pay.id, to_expire.id];
    want.sort_unstable();
    assert_eq!(expired, want);
    assert_eq!(order_rows(pool).await, 2);
    let derived = store
        .order(to_expire.order_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(derived.status, OrderStatus::Expired);
    assert_eq!(derived.updated_at, t0 + Duration::minutes(11));
    assert_eq!(
        store.order(order.id).await.unwrap().unwrap().status,
        OrderStatus::Expired
    );
    let by_status = |status| {
        let store = &store;
        async move {
            store
                .all_orders(Some(status), PageRequest::default())
                .await
                .unwrap()
                .total
        }
    };
    assert_eq!(by_status(OrderStatus::Expired).await, 2);
    assert_eq!(by_status(OrderStatus::Cancelled).await, 1);
    assert_eq!(by_status(OrderStatus::PendingPayment).await, 0);
    // A cancellation after expiry finds the derived order expired, and writes nothing.
    assert!(matches!(
        store
            .cancel_order(to_expire.order_id.unwrap(), t0 + Duration::minutes(12))
            .await
            .unwrap(),
        (CancelOutcome::NotPending(OrderStatus::Expired), None)
    ));
}

/// `order.created` events and their deliveries written so far.
async fn order_events(pool: &sqlx::PgPool) -> (i64, i64) {
    (
        count(pool, "webhook_events WHERE type = 'order.created'").await,
        count(pool, "webhook_deliveries").await,
    )
}

/// A batch of reservations is one statement without a transaction while no webhook endpoint
/// wants `order.created`; one that appears after the last batch looked is still found by the
/// next one, which then writes every order's event in a transaction.
#[tokio::test]
async fn order_events_are_written_once_an_endpoint_wants_them() {
    let w = World::new().await;
    let (store, pool, t0, sale, user) = (&w.store, &w.pool, w.t0, &w.sale, &w.user);
    let record = |n: i64| reservation(sale, user, 1, t0 + Duration::seconds(n));
    // As the in-process engine and as a shared engine queue them.
    let reserve = |r: &ReservationRecord| JournalOp::Reserve(Box::new(written(r, user, None)));
    let decided = |r: &ReservationRecord| JournalOp::Record {
        reservation: Box::new(written(r, user, None)),
        replayed: false,
    };

    // No endpoint: the first batch (in a transaction) finds none, the second is one statement.
    let first = record(0);
    let second = record(1);
    store.commit(&[decided(&first)]).await.unwrap();
    store.commit(&[reserve(&second)]).await.unwrap();
    assert_eq!(order_events(pool).await, (0, 0));

    // An endpoint appears (made elsewhere, as another instance would).
    let endpoint = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, url, events, secret, created_at, updated_at) \
         VALUES ($1, 'https://hooks.example/orders', '{order.created}', 's', now(), now())",
    )
    .bind(endpoint)
    .execute(pool)
    .await
    .unwrap();
    // Both kinds of batch write their reservations and their orders' events.
    let third = record(2);
    let fourth = record(3);
    store.commit(&[reserve(&third)]).await.unwrap();
    assert_eq!(order_events(pool).await, (1, 1));
    store.commit(&[decided(&fourth)]).await.unwrap();
    assert_eq!(order_events(pool).await, (2, 2));
    for r in [&first, &second, &third, &fourth] {
        assert_eq!(store.reservation(r.id).await.unwrap().as_ref(), Some(r));
    }
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM webhook_events ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    for (body, r) in bodies.iter().zip([&third, &fourth]) {
        let event: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["type"], "order.created");
        assert_eq!(event["data"]["order_id"], r.id.as_uuid().to_string());
    }

    // Switched off: no more events, and a reservation written again changes nothing.
    sqlx::query("UPDATE webhook_endpoints SET active = false")
        .execute(pool)
        .await
        .unwrap();
    let fifth = record(4);
    store.commit(&[decided(&fifth)]).await.unwrap();
    store
        .commit(&[decided(&fourth), decided(&fifth)])
        .await
        .unwrap();
    assert_eq!(order_events(pool).await, (2, 2));
    assert_eq!(store.reservation(fifth.id).await.unwrap(), Some(fifth));
    let stats = store.stats(sale.id).await.unwrap();
    assert_eq!(stats.reserved, 5);
}
