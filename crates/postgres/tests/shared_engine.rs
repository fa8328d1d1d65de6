//! What the PostgreSQL store does for the shared engine beyond the port contracts (which the
//! SQLite store, serving only the in-process engine, does not take): a reservation the engine
//! decided is stored once however often it is written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use flashmart_app::flash_sale::model::{
    BuyerId, IdempotencyRecord, JournalOp, NewItem, NewReservation, ReservationRecord, SaleRecord,
};
use flashmart_app::page::PageRequest;
use flashmart_app::ports::{AccountStore, FlashSaleStore, OrderStore, ReservationJournal};
use flashmart_domain::flash_sale::{ReservationStatus, SaleRules, SaleWindow};
use flashmart_domain::{
    Currency, DisplayName, Email, OrderId, ReservationId, Role, SaleId, User, UserId,
};
use flashmart_postgres::PgStore;
use flashmart_postgres::testing::TestSchema;
use time::{Duration, OffsetDateTime};

#[tokio::test]
async fn a_decided_reservation_is_stored_once_however_often_it_is_written() {
    let schema = TestSchema::create().await;
    let store = PgStore::connect(schema.options(), 4).await.unwrap();
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let sale = SaleRecord {
        id: SaleId::new(),
        name: "Shared".into(),
        rules: SaleRules::new(
            SaleWindow::new(t0, t0 + Duration::hours(1)).unwrap(),
            2,
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
    let id = ReservationId::new();
    let record = ReservationRecord {
        id,
        sale_id: sale.id,
        item_no: 1,
        buyer: BuyerId::user(user.id),
        buyer_ref: None,
        quantity: 2,
        status: ReservationStatus::Reserved,
        created_at: t0,
        expires_at: t0 + Duration::minutes(10),
        order_id: Some(OrderId::from_uuid(*id.as_uuid())),
        purchased_at: None,
    };
    let op = || {
        JournalOp::Record(Box::new(NewReservation {
            record: Arc::new(record.clone()),
            user_id: Some(user.id),
            unit_price_cents: 300,
            item_name: "Item".into(),
            currency: Currency::EUR,
            idempotency: Some(IdempotencyRecord {
                key: "k".into(),
                fingerprint: [1; 16],
            }),
        }))
    };
    // Twice in one batch, then in a later batch (a retry with the key, or a worker).
    store.commit(&[op(), op()]).await.unwrap();
    store.commit(&[op()]).await.unwrap();
    assert_eq!(store.reservation(id).await.unwrap(), Some(record));
    let listed = store
        .reservations(sale.id, PageRequest::default(), None)
        .await
        .unwrap();
    assert_eq!(listed.total, 1);
    let orders = store
        .orders_of(user.id, None, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(orders.total, 1);
    assert_eq!(orders.items[0].lines.len(), 1);
    assert_eq!(orders.items[0].total.cents(), 600);
    let stats = store.stats(sale.id).await.unwrap();
    assert_eq!(stats.reserved, 2);
}
