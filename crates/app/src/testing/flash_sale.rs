//! The `FlashSaleStore` and `ReservationJournal` contract.

use std::sync::Arc;

use flashmart_domain::flash_sale::{
    Recurrence, ReservationStatus, SalePhase, SaleRules, SaleWindow,
};
use flashmart_domain::order::OrderStatus;
use flashmart_domain::{Currency, OrderId, ReservationId, SaleId, ScheduleId, UserId};
use time::{Duration, OffsetDateTime};

use super::accounts::{t0, user};
use super::payments::{event, late_refund, payment_for};
use crate::StoreError;
use crate::flash_sale::model::{
    BuyerId, CheckoutAttempt, IdempotencyRecord, JournalOp, JournalOutcome, NewItem,
    NewReservation, PurchaseOutcome, Released, ReservationRecord, SaleInsert, SaleRecord, Schedule,
};
use crate::page::PageRequest;
use crate::payments::{Applied, Notification, NotificationKind, PaymentRecord};
use crate::ports::{AccountStore, FlashSaleStore, OrderStore, PaymentStore, ReservationJournal};
use crate::shop::model::CancelOutcome;

/// What the flash-sale contract needs of one adapter.
pub trait FlashSaleAdapter: FlashSaleStore + ReservationJournal + AccountStore {}
impl<T: FlashSaleStore + ReservationJournal + AccountStore> FlashSaleAdapter for T {}

fn sale(starts: OffsetDateTime, ends: OffsetDateTime, items: &[u32]) -> SaleRecord {
    SaleRecord {
        id: SaleId::new(),
        name: "Contract sale".into(),
        rules: SaleRules::new(SaleWindow::new(starts, ends).unwrap(), 5, 600).unwrap(),
        currency: Currency::EUR,
        slot: None,
        item_count: u32::try_from(items.len()).unwrap(),
        total_stock: items.iter().map(|s| u64::from(*s)).sum(),
        created_at: t0(),
    }
}

fn items(stock: &[u32]) -> Vec<NewItem> {
    stock
        .iter()
        .enumerate()
        .map(|(i, s)| NewItem {
            name: format!("Item {}", i + 1),
            image_url: Some(format!("/img/{}.svg", i + 1)),
            product_id: None,
            price_cents: 250 * (i64::try_from(i).unwrap() + 1),
            stock: *s,
        })
        .collect()
}

fn reservation(
    sale: &SaleRecord,
    item_no: u32,
    buyer: BuyerId,
    quantity: u32,
    at: OffsetDateTime,
    with_order: bool,
) -> ReservationRecord {
    let id = ReservationId::new();
    ReservationRecord {
        id,
        sale_id: sale.id,
        item_no,
        buyer,
        buyer_ref: (!with_order).then(|| "ext-user".to_owned()),
        quantity,
        status: ReservationStatus::Reserved,
        created_at: at,
        expires_at: sale.rules.expires_at(at),
        order_id: with_order.then(|| OrderId::from_uuid(*id.as_uuid())),
        purchased_at: None,
    }
}

fn reserve_op(record: &ReservationRecord, user: Option<UserId>, key: Option<&str>) -> JournalOp {
    JournalOp::Reserve(Box::new(NewReservation {
        record: Arc::new(record.clone()),
        user_id: user,
        unit_price_cents: 250,
        item_name: "Item 1".into(),
        currency: Currency::EUR,
        idempotency: key.map(|k| IdempotencyRecord {
            key: k.to_owned(),
            fingerprint: [7; 16],
        }),
    }))
}

async fn customer<S: FlashSaleAdapter + ?Sized>(store: &S, email: &str) -> UserId {
    let u = user(email, t0());
    store.insert_user(&u, "h").await.unwrap();
    u.id
}

pub async fn sales_round_trip<S: FlashSaleAdapter + ?Sized>(store: &S) {
    let s = sale(t0(), t0() + Duration::hours(1), &[3, 1, 2]);
    assert_eq!(
        store
            .insert_sale(&s, &items(&[3, 1, 2]), None)
            .await
            .unwrap(),
        SaleInsert::Stored
    );
    assert_eq!(store.sale(s.id).await.unwrap(), Some(s.clone()));
    assert!(store.sale(SaleId::new()).await.unwrap().is_none());

    let page = store
        .items(s.id, PageRequest::new(Some(1), Some(2)))
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].no, 1);
    assert_eq!(page.items[1].name, "Item 2");
    assert_eq!(page.items[1].price_cents, 500);
    assert_eq!(page.items[0].image_url.as_deref(), Some("/img/1.svg"));

    let live = store.live_sale(s.id).await.unwrap().unwrap();
    assert_eq!(live.sale, s);
    let stock: Vec<(u32, u32, u32)> = live.items.iter().map(|i| (i.no, i.stock, i.held)).collect();
    assert_eq!(&*live.items[1].name, "Item 2");
    assert_eq!(stock, [(1, 3, 0), (2, 1, 0), (3, 2, 0)]);
    assert!(live.buyers.is_empty());
}

pub async fn one_sale_per_schedule_slot<S: FlashSaleAdapter + ?Sized>(store: &S) {
    let schedule = Schedule {
        id: ScheduleId::new(),
        name: "hourly drop".into(),
        recurrence: Recurrence::Hourly,
        item_count: 2,
        price_cents: 100,
        currency: Currency::USD,
        per_user_limit: 1,
        reservation_ttl_secs: 60,
        duration_secs: 3600,
        active: true,
        created_at: t0(),
    };
    store.insert_schedule(&schedule, None).await.unwrap();
    let dup = Schedule {
        id: ScheduleId::new(),
        ..schedule.clone()
    };
    assert!(matches!(
        store.insert_schedule(&dup, None).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        store.schedule_by_name("hourly drop").await.unwrap(),
        Some(schedule.clone())
    );
    assert_eq!(
        store.schedules(PageRequest::default()).await.unwrap().total,
        1
    );

    let slot = Recurrence::Hourly.slot_start(t0());
    let mut first = sale(slot, slot + Duration::hours(1), &[1, 1]);
    first.slot = Some((schedule.id, slot));
    let mut second = sale(slot, slot + Duration::hours(1), &[1, 1]);
    second.slot = Some((schedule.id, slot));
    assert_eq!(
        store
            .insert_sale(&first, &items(&[1, 1]), None)
            .await
            .unwrap(),
        SaleInsert::Stored
    );
    assert_eq!(
        store
            .insert_sale(&second, &items(&[1, 1]), None)
            .await
            .unwrap(),
        SaleInsert::SlotTaken
    );
    assert_eq!(
        store.sale_for_slot(schedule.id, slot).await.unwrap(),
        Some(first.clone())
    );
    assert!(store.sale(second.id).await.unwrap().is_none());
    // The next slot is another sale.
    let next = slot + Duration::hours(1);
    let mut third = sale(next, next + Duration::hours(1), &[1]);
    third.slot = Some((schedule.id, next));
    assert_eq!(
        store.insert_sale(&third, &items(&[1]), None).await.unwrap(),
        SaleInsert::Stored
    );
}

pub async fn sales_list_by_phase<S: FlashSaleAdapter + ?Sized>(store: &S) {
    let now = t0();
    let ended = sale(now - Duration::hours(2), now - Duration::hours(1), &[1]);
    let live = sale(now - Duration::minutes(5), now + Duration::hours(1), &[1]);
    let soon = sale(now + Duration::hours(1), now + Duration::hours(2), &[1]);
    let later = sale(now + Duration::hours(3), now + Duration::hours(4), &[1]);
    for s in [&ended, &live, &soon, &later] {
        store.insert_sale(s, &items(&[1]), None).await.unwrap();
    }
    let ids = |p: crate::Page<SaleRecord>| p.items.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let page = PageRequest::default();
    assert_eq!(
        ids(store
            .list_sales(Some(SalePhase::Upcoming), now, page)
            .await
            .unwrap()),
        [soon.id, later.id]
    );
    assert_eq!(
        ids(store
            .list_sales(Some(SalePhase::Live), now, page)
            .await
            .unwrap()),
        [live.id]
    );
    assert_eq!(
        ids(store
            .list_sales(Some(SalePhase::Ended), now, page)
            .await
            .unwrap()),
        [ended.id]
    );
    let all = store.list_sales(None, now, page).await.unwrap();
    assert_eq!(all.total, 4);
    assert_eq!(ids(all), [later.id, soon.id, live.id, ended.id]);
}

pub async fn journal_makes_reservations_durable<S: FlashSaleAdapter + ?Sized>(store: &S) {
    let s = sale(t0(), t0() + Duration::hours(1), &[5, 5]);
    store.insert_sale(&s, &items(&[5, 5]), None).await.unwrap();
    let alice = customer(store, "alice@example.com").await;
    let bob = customer(store, "bob@example.com").await;
    let at = t0() + Duration::minutes(1);
    let r1 = reservation(&s, 1, BuyerId::user(alice), 2, at, true);
    let r2 = reservation(&s, 2, BuyerId::user(alice), 1, at, true);
    let r3 = reservation(&s, 1, BuyerId::user(bob), 1, at, true);
    let ext = reservation(&s, 2, BuyerId::external("ext-user"), 1, at, false);
    let attempt = JournalOp::Attempt(Box::new(CheckoutAttempt {
        sale_id: Some(s.id),
        item_no: 2,
        buyer_ref: "ext-user".into(),
        at,
        outcome: "reserved",
        code: Some(ext.code()),
    }));
    let ops = vec![
        reserve_op(&r1, Some(alice), Some("key-1")),
        reserve_op(&r2, Some(alice), None),
        attempt,
        reserve_op(&r3, Some(bob), None),
        reserve_op(&ext, None, None),
    ];
    let outcomes = store.commit(&ops).await.unwrap();
    assert_eq!(outcomes.len(), ops.len());
    assert!(outcomes.iter().all(|o| matches!(o, JournalOutcome::Done)));

    assert_eq!(store.reservation(r1.id).await.unwrap(), Some(r1.clone()));
    assert_eq!(store.reservation(ext.id).await.unwrap(), Some(ext.clone()));
    let mut stored = store
        .stored_reservations(&[r1.id, ReservationId::new(), ext.id])
        .await
        .unwrap();
    stored.sort();
    let mut want = vec![r1.id, ext.id];
    want.sort();
    assert_eq!(stored, want);
    assert!(store.stored_reservations(&[]).await.unwrap().is_empty());
    let listed = store
        .reservations(s.id, PageRequest::default(), None)
        .await
        .unwrap();
    assert_eq!(listed.total, 4);
    // Keyset paging walks the same list in the same order.
    let first = store
        .reservations(s.id, PageRequest::new(Some(1), Some(3)), None)
        .await
        .unwrap();
    let rest = store
        .reservations(
            s.id,
            PageRequest::new(Some(1), Some(3)),
            Some(first.items[2].id),
        )
        .await
        .unwrap();
    let walked: Vec<_> = first
        .items
        .iter()
        .chain(&rest.items)
        .map(|r| r.id)
        .collect();
    let listed_ids: Vec<_> = listed.items.iter().map(|r| r.id).collect();
    assert_eq!(walked, listed_ids);

    let live = store.live_sale(s.id).await.unwrap().unwrap();
    let held: Vec<u32> = live.items.iter().map(|i| i.held).collect();
    assert_eq!(held, [3, 2]);
    let mut buyers = live.buyers.clone();
    buyers.sort();
    let mut want = vec![
        (BuyerId::user(alice), 3),
        (BuyerId::user(bob), 1),
        (BuyerId::external("ext-user"), 1),
    ];
    want.sort();
    assert_eq!(buyers, want);

    let stats = store.stats(s.id).await.unwrap();
    assert_eq!(
        (
            stats.stock,
            stats.reserved,
            stats.sold,
            stats.released,
            stats.buyers
        ),
        (10, 5, 0, 0, 3)
    );

    let keys = store.idempotency_since(t0()).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].record.key, "key-1");
    assert_eq!(keys[0].record.fingerprint, [7; 16]);
    assert_eq!(keys[0].reservation, r1);
    assert!(
        store
            .idempotency_since(at + Duration::seconds(1))
            .await
            .unwrap()
            .is_empty()
    );

    let all_live = store.live_sales(t0()).await.unwrap();
    assert_eq!(all_live.len(), 1);
}

pub async fn a_failed_batch_leaves_nothing<S: FlashSaleAdapter + ?Sized>(store: &S) {
    let s = sale(t0(), t0() + Duration::hours(1), &[5]);
    store.insert_sale(&s, &items(&[5]), None).await.unwrap();
    let alice = customer(store, "alice@example.com").await;
    let at = t0() + Duration::minutes(1);
    let good = reservation(&s, 1, BuyerId::user(alice), 1, at, true);
    let mut clash = reservation(&s, 1, BuyerId::user(alice), 1, at, true);
    clash.id = good.id; // ids are unique: the whole batch must fail
    let err = store
        .commit(&[
            reserve_op(&good, Some(alice), None),
            reserve_op(&clash, Some(alice), None),
        ])
        .await;
    assert!(err.is_err());
    assert!(store.reservation(good.id).await.unwrap().is_none());
    assert_eq!(store.stats(s.id).await.unwrap().reserved, 0);
    // Nothing of the failed batch lingers to spoil the next one.
    store
        .commit(&[reserve_op(&good, Some(alice), None)])
        .await
        .unwrap();
    assert_eq!(store.reservation(good.id).await.unwrap(), Some(good));
    assert_eq!(store.stats(s.id).await.unwrap().reserved, 1);
}

pub async fn purchases_by_code<S: FlashSaleAdapter + ?Sized>(store: &S) {
    let s = sale(t0(), t0() + Duration::hours(1), &[3]);
    store.insert_sale(&s, &items(&[3]), None).await.unwrap();
    let at = t0() + Duration::minutes(1);
    let live = reservation(&s, 1, BuyerId::external("a"), 1, at, false);
    let stale = reservation(&s, 1, BuyerId::external("b"), 1, at, false);
    let alice = customer(store, "alice@example.com").await;
    let ordinary = reservation(&s, 1, BuyerId::user(alice), 1, at, true);
    store
        .commit(&[
            reserve_op(&live, None, None),
            reserve_op(&stale, None, None),
        ])
        .await
        .unwrap();

    let purchase = |id: ReservationId, at| JournalOp::Purchase { id, at };
    let paid_at = at + Duration::minutes(1);
    let late = stale.expires_at;
    let outcomes = store
        .commit(&[
            purchase(live.id, paid_at),
            purchase(ReservationId::new(), paid_at),
            purchase(stale.id, late),
            purchase(live.id, paid_at),
        ])
        .await
        .unwrap();
    assert_eq!(
        format!("{:?}", outcomes[0]),
        format!("{:?}", outcomes[3]),
        "one code twice in a batch: the same answer"
    );
    let JournalOutcome::Purchase(PurchaseOutcome::Purchased {
        reservation,
        item_name,
        unit_price_cents,
        currency,
    }) = &outcomes[0]
    else {
        panic!("expected a purchase, got {:?}", outcomes[0]);
    };
    assert_eq!(reservation.status, ReservationStatus::Purchased);
    assert_eq!(reservation.purchased_at, Some(paid_at));
    assert_eq!(item_name, "Item 1");
    assert_eq!(*unit_price_cents, 250);
    assert_eq!(*currency, Currency::EUR);
    assert!(matches!(
        outcomes[1],
        JournalOutcome::Purchase(PurchaseOutcome::NotFound)
    ));
    assert!(matches!(
        outcomes[2],
        JournalOutcome::Purchase(PurchaseOutcome::Expired)
    ));

    // Repeated, later: the same answer (first purchase time kept).
    let again = store
        .commit(&[purchase(live.id, paid_at + Duration::minutes(5))])
        .await
        .unwrap();
    let JournalOutcome::Purchase(PurchaseOutcome::Purchased {
        reservation: r2, ..
    }) = &again[0]
    else {
        panic!("expected a purchase");
    };
    assert_eq!(r2, reservation);
    let stats = store.stats(s.id).await.unwrap();
    assert_eq!((stats.reserved, stats.sold), (1, 1));

    // A shopper's reservation (it has an order) is paid through its order, never by code.
    store
        .commit(&[reserve_op(&ordinary, Some(alice), None)])
        .await
        .unwrap();
    let outcome = store
        .commit(&[purchase(ordinary.id, paid_at)])
        .await
        .unwrap();
    assert!(
        matches!(
            outcome[0],
            JournalOutcome::Purchase(PurchaseOutcome::NotFound)
        ),
        "{:?}",
        outcome[0]
    );
    let unchanged = store.reservation(ordinary.id).await.unwrap().unwrap();
    assert_eq!(unchanged.status, ReservationStatus::Reserved);
    assert_eq!(unchanged.purchased_at, None);
}

/// A purchase the engine decided is recorded as it is, in the same batch as its reservation or
/// a later one; it never buys a reservation that is past its time, already bought, or a
/// shopper's (which has an order).
pub async fn decided_purchases_are_recorded<S: FlashSaleAdapter + ?Sized>(store: &S) {
    let s = sale(t0(), t0() + Duration::hours(1), &[5]);
    store.insert_sale(&s, &items(&[5]), None).await.unwrap();
    let at = t0() + Duration::minutes(1);
    let early = reservation(&s, 1, BuyerId::external("a"), 1, at, false);
    let same_batch = reservation(&s, 1, BuyerId::external("b"), 1, at, false);
    let stale = reservation(&s, 1, BuyerId::external("c"), 1, at, false);
    let alice = customer(store, "alice@example.com").await;
    let ordinary = reservation(&s, 1, BuyerId::user(alice), 1, at, true);
    let mark = |id: ReservationId, at| JournalOp::MarkPurchased { id, at };
    let paid_at = at + Duration::minutes(1);
    store
        .commit(&[
            reserve_op(&early, None, None),
            reserve_op(&stale, None, None),
            reserve_op(&ordinary, Some(alice), None),
        ])
        .await
        .unwrap();
    let outcomes = store
        .commit(&[
            reserve_op(&same_batch, None, None),
            mark(same_batch.id, paid_at),
            mark(early.id, paid_at),
            mark(stale.id, stale.expires_at),
            mark(ordinary.id, paid_at),
            // A repeat with another time changes nothing.
            mark(early.id, paid_at + Duration::minutes(1)),
        ])
        .await
        .unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, JournalOutcome::Done)));
    for id in [early.id, same_batch.id] {
        let r = store.reservation(id).await.unwrap().unwrap();
        assert_eq!(r.status, ReservationStatus::Purchased);
        assert_eq!(r.purchased_at, Some(paid_at));
    }
    for id in [stale.id, ordinary.id] {
        let r = store.reservation(id).await.unwrap().unwrap();
        assert_eq!(r.status, ReservationStatus::Reserved, "{id:?}");
        assert_eq!(r.purchased_at, None);
    }
    let stats = store.stats(s.id).await.unwrap();
    assert_eq!((stats.reserved, stats.sold), (2, 2));
}

pub async fn expiry_releases_stock<S: FlashSaleAdapter + ?Sized>(store: &S) {
    let s = sale(t0(), t0() + Duration::hours(1), &[4]);
    store.insert_sale(&s, &items(&[4]), None).await.unwrap();
    let alice = customer(store, "alice@example.com").await;
    let early = reservation(&s, 1, BuyerId::user(alice), 2, t0(), true);
    let late = reservation(
        &s,
        1,
        BuyerId::user(alice),
        1,
        t0() + Duration::minutes(5),
        true,
    );
    store
        .commit(&[
            reserve_op(&early, Some(alice), None),
            reserve_op(&late, Some(alice), None),
        ])
        .await
        .unwrap();

    assert!(
        store
            .expire_due(early.expires_at - Duration::seconds(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let released = store.expire_due(early.expires_at, 10).await.unwrap();
    assert_eq!(
        released,
        vec![Released {
            reservation: early.id,
            sale_id: s.id,
            item_no: 1,
            buyer: BuyerId::user(alice),
            quantity: 2
        }]
    );
    assert_eq!(
        store.reservation(early.id).await.unwrap().unwrap().status,
        ReservationStatus::Expired
    );
    // Expiring again changes nothing.
    assert!(
        store
            .expire_due(early.expires_at, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let stats = store.stats(s.id).await.unwrap();
    assert_eq!((stats.reserved, stats.released, stats.buyers), (1, 2, 1));
    let live = store.live_sale(s.id).await.unwrap().unwrap();
    assert_eq!(live.items[0].held, 1);
    assert_eq!(live.buyers, vec![(BuyerId::user(alice), 1)]);

    // The limit bounds one call.
    let released = store
        .expire_due(late.expires_at + Duration::hours(1), 0)
        .await
        .unwrap();
    assert!(released.is_empty());
}

/// A buyer's flash-sale orders are in their order list from the moment the journal commits them,
/// newest first, whatever upkeep an adapter does behind the scenes: `settle` runs one step of it
/// and says whether more is left (an adapter with none passes a step that does nothing), and the
/// list is the same before, between and after the steps. An order whose id is older than orders
/// already settled, committed late, is listed too.
pub async fn flash_sale_orders_are_listed_for_their_buyer<S, F, Fut>(store: &S, mut settle: F)
where
    S: FlashSaleAdapter + OrderStore + ?Sized,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let s = sale(t0(), t0() + Duration::hours(1), &[50]);
    store.insert_sale(&s, &items(&[50]), None).await.unwrap();
    let alice = customer(store, "alice@example.com").await;
    let bob = customer(store, "bob@example.com").await;
    let at = t0() + Duration::minutes(1);
    // Made first, committed last: its order id is older than every other one.
    let late = reservation(&s, 1, BuyerId::user(alice), 1, at, true);
    let mut alices = Vec::new();
    let mut ops = Vec::new();
    for n in 0..5 {
        let r = reservation(&s, 1, BuyerId::user(alice), 1, at, true);
        ops.push(reserve_op(&r, Some(alice), None));
        alices.push(r.order_id.unwrap());
        if n % 2 == 0 {
            let r = reservation(&s, 1, BuyerId::user(bob), 1, at, true);
            ops.push(reserve_op(&r, Some(bob), None));
        }
    }
    store.commit(&ops).await.unwrap();

    let listed = |user: UserId, status: Option<OrderStatus>| async move {
        let page = store
            .orders_of(user, status, PageRequest::new(Some(1), Some(100)))
            .await
            .unwrap();
        assert_eq!(page.total, page.items.len() as u64);
        page.items.iter().map(|o| o.id).collect::<Vec<_>>()
    };
    let newest_first = |ids: &[OrderId]| ids.iter().rev().copied().collect::<Vec<_>>();
    let expect_alice = newest_first(&alices);
    // Checked after every single step of upkeep.
    for _ in 0..100 {
        assert_eq!(listed(alice, None).await, expect_alice);
        assert_eq!(listed(bob, None).await.len(), 3);
        if !settle().await {
            break;
        }
    }

    store
        .commit(&[reserve_op(&late, Some(alice), None)])
        .await
        .unwrap();
    let mut expect_alice = expect_alice;
    expect_alice.push(late.order_id.unwrap());
    assert_eq!(
        listed(alice, None).await,
        expect_alice,
        "the late order is listed"
    );
    for _ in 0..100 {
        assert_eq!(listed(alice, None).await, expect_alice, "and stays listed");
        if !settle().await {
            break;
        }
    }
    assert_eq!(
        listed(alice, Some(OrderStatus::PendingPayment)).await,
        expect_alice
    );
    assert!(listed(alice, Some(OrderStatus::Paid)).await.is_empty());
    assert_eq!(listed(bob, None).await.len(), 3);
    let page = store
        .orders_of(alice, None, PageRequest::new(Some(2), Some(4)))
        .await
        .unwrap();
    assert_eq!(page.total, 6);
    assert_eq!(
        page.items.iter().map(|o| o.id).collect::<Vec<_>>(),
        expect_alice[4..]
    );
}

/// A batch of any size is written whole: more rows than one statement takes, of every kind.
pub async fn large_batches_are_written_whole<S: FlashSaleAdapter + ?Sized>(store: &S) {
    let s = sale(t0(), t0() + Duration::hours(1), &[5000]);
    store.insert_sale(&s, &items(&[5000]), None).await.unwrap();
    let alice = customer(store, "alice@example.com").await;
    let at = t0() + Duration::minutes(1);
    let mut ops = Vec::new();
    let mut last = None;
    for n in 0..1500 {
        let r = reservation(&s, 1, BuyerId::user(alice), 1, at, true);
        ops.push(reserve_op(&r, Some(alice), Some(&format!("key-{n}"))));
        last = Some(r);
    }
    for _ in 0..300 {
        let r = reservation(&s, 1, BuyerId::external("ext-user"), 1, at, false);
        ops.push(reserve_op(&r, None, None));
    }
    for n in 0..1100 {
        ops.push(JournalOp::Attempt(Box::new(CheckoutAttempt {
            sale_id: (n % 2 == 0).then_some(s.id),
            item_no: 1,
            buyer_ref: "ext-user".into(),
            at,
            outcome: "sold_out",
            code: None,
        })));
    }
    let outcomes = store.commit(&ops).await.unwrap();
    assert_eq!(outcomes.len(), ops.len());
    let stats = store.stats(s.id).await.unwrap();
    assert_eq!(stats.reserved, 1800);
    assert_eq!(stats.attempts, 550, "the attempts that name the sale");
    let last = last.unwrap();
    assert_eq!(store.reservation(last.id).await.unwrap(), Some(last));
    let listed = store
        .reservations(s.id, PageRequest::default(), None)
        .await
        .unwrap();
    assert_eq!(listed.total, 1800);
}

/// What the flash-sale order contracts need of one adapter: the journal writes the orders, the
/// order and payment stores move them.
pub trait FlashOrderAdapter: FlashSaleAdapter + OrderStore + PaymentStore {}
impl<T: FlashSaleAdapter + OrderStore + PaymentStore> FlashOrderAdapter for T {}

/// `n` reservations of one unit of item 1, each by its own new customer with its order.
async fn reserved_with_orders<S: FlashOrderAdapter + ?Sized>(
    store: &S,
    sale: &SaleRecord,
    n: usize,
) -> Vec<ReservationRecord> {
    let at = t0() + Duration::minutes(1);
    let mut ops = Vec::new();
    let mut made = Vec::new();
    for _ in 0..n {
        let buyer = customer(store, &format!("{}@example.com", uuid::Uuid::new_v4())).await;
        let r = reservation(sale, 1, BuyerId::user(buyer), 1, at, true);
        ops.push(reserve_op(&r, Some(buyer), None));
        made.push(r);
    }
    store.commit(&ops).await.unwrap();
    made
}

/// A payment of a flash-sale order, stored, and its success notification.
async fn flash_payment<S: FlashOrderAdapter + ?Sized>(
    store: &S,
    order: &crate::shop::model::OrderRecord,
) -> (PaymentRecord, Notification) {
    let reference = format!("ref-{}", order.id.as_uuid());
    let payment = payment_for(order, &reference);
    assert_eq!(store.insert_payment(&payment).await.unwrap(), None);
    let n = event(
        &format!("paid-{reference}"),
        &payment,
        NotificationKind::Succeeded,
    );
    (payment, n)
}

/// A flash-sale order is its reservation's item at its price, and moves with its reservation:
/// paid buys it, cancelled gives its unit back (once), expired expires both; whatever is done
/// first, the other never happens to the same order.
pub async fn flash_sale_orders_follow_their_reservation<S: FlashOrderAdapter + ?Sized>(store: &S) {
    let s = sale(t0(), t0() + Duration::hours(1), &[10]);
    store.insert_sale(&s, &items(&[10]), None).await.unwrap();
    let made = reserved_with_orders(store, &s, 3).await;
    let (paid, cancelled, expired) = (&made[0], &made[1], &made[2]);

    let order = store.order(paid.order_id.unwrap()).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::PendingPayment);
    assert_eq!(order.reservation_id, Some(paid.id));
    assert_eq!(order.total.cents(), 250);
    assert_eq!(order.total.currency(), Currency::EUR);
    assert_eq!(order.lines.len(), 1);
    let line = &order.lines[0];
    assert_eq!(
        (line.sale_id, line.item_no, line.name.as_str()),
        (Some(s.id), Some(1), "Item 1")
    );
    assert_eq!((line.unit_price_cents, line.quantity), (250, 1));

    let (payment, n) = flash_payment(store, &order).await;
    let now = t0() + Duration::minutes(2);
    let applied = store
        .apply_notification("test", &n, &payment, &late_refund(&payment), now)
        .await
        .unwrap();
    assert!(matches!(applied, Applied::Paid(_)), "{applied:?}");
    let bought = store.reservation(paid.id).await.unwrap().unwrap();
    assert_eq!(bought.status, ReservationStatus::Purchased);
    assert_eq!(bought.purchased_at, Some(now));

    let (outcome, released) = store
        .cancel_order(cancelled.order_id.unwrap(), now)
        .await
        .unwrap();
    assert!(
        matches!(outcome, CancelOutcome::Cancelled(_)),
        "{outcome:?}"
    );
    assert_eq!(
        released,
        Some(Released {
            reservation: cancelled.id,
            sale_id: s.id,
            item_no: 1,
            buyer: cancelled.buyer,
            quantity: 1
        })
    );
    let (again, released) = store
        .cancel_order(cancelled.order_id.unwrap(), now)
        .await
        .unwrap();
    assert!(matches!(again, CancelOutcome::NotPending(_)), "{again:?}");
    assert_eq!(released, None, "a unit comes back once");
    assert_eq!(
        store
            .reservation(cancelled.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        ReservationStatus::Cancelled
    );
    let (paid_outcome, _) = store
        .cancel_order(paid.order_id.unwrap(), now)
        .await
        .unwrap();
    assert!(matches!(
        paid_outcome,
        CancelOutcome::NotPending(OrderStatus::Paid)
    ));

    let swept = store.expire_due(expired.expires_at, 10).await.unwrap();
    assert_eq!(swept.len(), 1, "only the reservation still held expires");
    assert_eq!(
        store
            .order(expired.order_id.unwrap())
            .await
            .unwrap()
            .unwrap()
            .status,
        OrderStatus::Expired
    );
    assert_eq!(
        store.reservation(paid.id).await.unwrap().unwrap().status,
        ReservationStatus::Purchased
    );
    let stats = store.stats(s.id).await.unwrap();
    assert_eq!((stats.reserved, stats.sold, stats.released), (0, 1, 2));
}

/// Payments and the expiry sweep racing over the same flash-sale orders: each order ends either
/// paid with its reservation purchased, or expired with its reservation expired and the payment
/// owed back; never a mix, never an error (no deadlock between the two).
pub async fn payments_racing_expiry_settle_each_order_once<S: FlashOrderAdapter>(store: Arc<S>) {
    let s = sale(t0(), t0() + Duration::hours(1), &[40]);
    store.insert_sale(&s, &items(&[40]), None).await.unwrap();
    let made = reserved_with_orders(store.as_ref(), &s, 40).await;
    let mut payments = Vec::new();
    for r in &made {
        let order = store.order(r.order_id.unwrap()).await.unwrap().unwrap();
        payments.push(flash_payment(store.as_ref(), &order).await);
    }
    let due = made[0].expires_at;
    let mut tasks = Vec::new();
    for (payment, n) in payments {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .apply_notification("test", &n, &payment, &late_refund(&payment), due)
                .await
                .map(|_| 0)
        }));
    }
    for _ in 0..4 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut swept = 0;
            loop {
                let released = store.expire_due(due, 5).await?;
                if released.is_empty() {
                    return Ok(swept);
                }
                swept += released.len();
            }
        }));
    }
    let mut swept = 0;
    for task in tasks {
        swept += task
            .await
            .unwrap()
            .expect("no error: no deadlock, no conflict");
    }
    // A reservation skipped while its order was being paid is swept now, if it was not paid.
    swept += store.expire_due(due, 100).await.unwrap().len();
    let mut expired = 0;
    for r in &made {
        let order = store.order(r.order_id.unwrap()).await.unwrap().unwrap();
        let reservation = store.reservation(r.id).await.unwrap().unwrap();
        match (order.status, reservation.status) {
            (OrderStatus::Paid, ReservationStatus::Purchased) => {}
            (OrderStatus::Expired, ReservationStatus::Expired) => expired += 1,
            other => panic!("order and reservation disagree: {other:?}"),
        }
    }
    assert_eq!(swept, expired, "each expired reservation released once");
    let stats = store.stats(s.id).await.unwrap();
    assert_eq!(stats.sold + stats.released, 40);
    assert_eq!(stats.reserved, 0);
}
