//! The payment store's contract: payments (one open per order), notifications applied exactly
//! once, refunds that take turns and settle once, and the sweep of payments whose order ended.

use flashmart_domain::{Money, OrderStatus, PaymentId};
use time::Duration;

use super::accounts::t0;
use super::shop::{ShopAdapter, checkout_of, customer, product};
use crate::page::PageRequest;
use crate::payments::{
    Applied, Notification, NotificationKind, PaymentRecord, PaymentStatus, RefundKind,
    RefundRecord, RefundSettlement, RefundStart, RefundStatus,
};
use crate::ports::PaymentStore;
use crate::shop::model::{CancelOutcome, CheckoutOutcome, OrderRecord};

/// What the payments contract needs of one adapter.
pub trait PaymentAdapter: ShopAdapter + PaymentStore {}
impl<T: ShopAdapter + PaymentStore> PaymentAdapter for T {}

/// A cart order of 2 x 15.00 USD placed by a new customer.
async fn placed<S: PaymentAdapter + ?Sized>(store: &S, email: &str) -> OrderRecord {
    let buyer = customer(store, email).await;
    let thing = product(store, &format!("Thing for {email}"), 1500, 5).await;
    store.set_cart_line(buyer, thing, 2, t0()).await.unwrap();
    match store.checkout(&checkout_of(buyer, None)).await.unwrap() {
        CheckoutOutcome::Placed(order) => *order,
        other => panic!("expected an order, got {other:?}"),
    }
}

pub(super) fn payment_for(order: &OrderRecord, reference: &str) -> PaymentRecord {
    PaymentRecord {
        id: PaymentId::new(),
        order_id: order.id,
        provider: "test".into(),
        provider_ref: reference.into(),
        status: PaymentStatus::Pending,
        amount: order.total,
        refunded: Money::zero(order.total.currency()),
        pay_url: format!("https://pay.example/{reference}"),
        created_at: t0(),
        updated_at: t0(),
        expires_at: order.expires_at,
    }
}

pub(super) fn event(id: &str, payment: &PaymentRecord, kind: NotificationKind) -> Notification {
    Notification {
        event_id: id.into(),
        provider_ref: payment.provider_ref.clone(),
        kind,
        amount: payment.amount,
        occurred_at: t0(),
    }
}

pub(super) fn late_refund(payment: &PaymentRecord) -> RefundRecord {
    RefundRecord::pending(
        payment,
        RefundKind::LatePayment,
        payment.amount,
        "paid after the order ended",
        t0(),
    )
}

/// Applies a notification the way `Payments::notify` does, a minute after `t0`.
async fn apply<S: PaymentAdapter + ?Sized>(
    store: &S,
    n: &Notification,
    payment: &PaymentRecord,
) -> Applied {
    store
        .apply_notification(
            "test",
            n,
            payment,
            &late_refund(payment),
            t0() + Duration::minutes(1),
        )
        .await
        .unwrap()
}

/// A paid order and its payment.
async fn paid<S: PaymentAdapter + ?Sized>(store: &S, email: &str) -> (OrderRecord, PaymentRecord) {
    let order = placed(store, email).await;
    let payment = payment_for(&order, &format!("ref-{email}"));
    assert_eq!(store.insert_payment(&payment).await.unwrap(), None);
    let n = event(
        &format!("paid-{email}"),
        &payment,
        NotificationKind::Succeeded,
    );
    let Applied::Paid(order) = apply(store, &n, &payment).await else {
        panic!("expected the order to be paid");
    };
    (*order, store.payment(payment.id).await.unwrap().unwrap())
}

pub async fn payments_round_trip<S: PaymentAdapter + ?Sized>(store: &S) {
    let order = placed(store, "alice@example.com").await;
    assert_eq!(store.open_payment_for_order(order.id).await.unwrap(), None);
    let payment = payment_for(&order, "ref-1");
    assert_eq!(store.insert_payment(&payment).await.unwrap(), None);
    assert_eq!(
        store.payment(payment.id).await.unwrap(),
        Some(payment.clone())
    );
    assert_eq!(
        store.payment_by_ref("test", "ref-1").await.unwrap(),
        Some(payment.clone())
    );
    assert_eq!(store.payment_by_ref("other", "ref-1").await.unwrap(), None);
    assert_eq!(store.payment_by_ref("test", "ref-2").await.unwrap(), None);
    assert_eq!(
        store.open_payment_for_order(order.id).await.unwrap(),
        Some(payment.clone())
    );
    // A second payment for an order with one open is not written: the open one is returned.
    let mut second = payment_for(&order, "ref-2");
    second.created_at = t0() + Duration::minutes(2);
    second.updated_at = second.created_at;
    assert_eq!(
        store.insert_payment(&second).await.unwrap(),
        Some(payment.clone())
    );
    assert_eq!(store.payment(second.id).await.unwrap(), None);
    assert_eq!(
        store.payments_for_order(order.id).await.unwrap(),
        std::slice::from_ref(&payment)
    );
    // Once it is closed, the order can have a new one.
    store
        .close_payment(payment.id, t0() + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(
        store.payment(payment.id).await.unwrap().unwrap().status,
        PaymentStatus::Closed
    );
    assert_eq!(store.open_payment_for_order(order.id).await.unwrap(), None);
    assert_eq!(store.insert_payment(&second).await.unwrap(), None);
    let all = store.payments_for_order(order.id).await.unwrap();
    assert_eq!(
        all.iter().map(|p| p.id).collect::<Vec<_>>(),
        [payment.id, second.id],
        "oldest first"
    );
}

pub async fn a_notification_is_applied_once<S: PaymentAdapter + ?Sized>(store: &S) {
    let order = placed(store, "alice@example.com").await;
    let payment = payment_for(&order, "ref-1");
    store.insert_payment(&payment).await.unwrap();
    let paid = event("evt-1", &payment, NotificationKind::Succeeded);
    let Applied::Paid(after) = apply(store, &paid, &payment).await else {
        panic!("expected the order to be paid");
    };
    assert_eq!(after.id, order.id);
    assert_eq!(after.status, OrderStatus::Paid);
    assert_eq!(after.paid_at, Some(t0() + Duration::minutes(1)));
    assert_eq!(
        store.order(order.id).await.unwrap().unwrap().status,
        OrderStatus::Paid
    );
    assert_eq!(
        store.payment(payment.id).await.unwrap().unwrap().status,
        PaymentStatus::Succeeded
    );
    // The same event again changes nothing; another event for a settled payment neither.
    assert_eq!(apply(store, &paid, &payment).await, Applied::Duplicate);
    let failed = event("evt-2", &payment, NotificationKind::Failed);
    assert_eq!(
        apply(store, &failed, &payment).await,
        Applied::AlreadySettled
    );
    assert_eq!(
        store.payment(payment.id).await.unwrap().unwrap().status,
        PaymentStatus::Succeeded
    );
    assert_eq!(store.open_payment_for_order(order.id).await.unwrap(), None);
    assert!(
        store
            .refunds(None, PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

pub async fn a_failed_payment_leaves_the_order_awaiting_payment<S: PaymentAdapter + ?Sized>(
    store: &S,
) {
    let order = placed(store, "alice@example.com").await;
    let payment = payment_for(&order, "ref-1");
    store.insert_payment(&payment).await.unwrap();
    let failed = event("evt-1", &payment, NotificationKind::Failed);
    assert_eq!(apply(store, &failed, &payment).await, Applied::Failed);
    assert_eq!(
        store.payment(payment.id).await.unwrap().unwrap().status,
        PaymentStatus::Failed
    );
    assert_eq!(
        store.order(order.id).await.unwrap().unwrap().status,
        OrderStatus::PendingPayment
    );
    // The buyer may try again with a new payment.
    assert_eq!(store.open_payment_for_order(order.id).await.unwrap(), None);
    let again = payment_for(&order, "ref-2");
    assert_eq!(store.insert_payment(&again).await.unwrap(), None);
    let paid = event("evt-2", &again, NotificationKind::Succeeded);
    assert!(matches!(
        apply(store, &paid, &again).await,
        Applied::Paid(_)
    ));
}

pub async fn paid_after_the_order_ended_records_the_refund_owed<S: PaymentAdapter + ?Sized>(
    store: &S,
) {
    let order = placed(store, "alice@example.com").await;
    let payment = payment_for(&order, "ref-1");
    store.insert_payment(&payment).await.unwrap();
    let (CancelOutcome::Cancelled(_), None) = store.cancel_order(order.id, t0()).await.unwrap()
    else {
        panic!("expected the cart order to be cancelled");
    };
    let paid = event("evt-1", &payment, NotificationKind::Succeeded);
    let owed = late_refund(&payment);
    let applied = store
        .apply_notification("test", &paid, &payment, &owed, t0() + Duration::minutes(1))
        .await
        .unwrap();
    let Applied::PaidTooLate {
        payment: late,
        refund,
    } = applied
    else {
        panic!("expected a late payment, got {applied:?}");
    };
    assert_eq!(late.id, payment.id);
    assert_eq!(late.status, PaymentStatus::Succeeded);
    assert_eq!(*refund, owed);
    assert_eq!(store.refund(owed.id).await.unwrap(), Some(owed.clone()));
    assert_eq!(
        store.order(order.id).await.unwrap().unwrap().status,
        OrderStatus::Cancelled,
        "a late payment does not revive the order"
    );
    // The worker finds the refund once its requester's grace has passed.
    assert!(
        store
            .due_refunds(owed.next_attempt_at - Duration::seconds(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.due_refunds(owed.next_attempt_at, 10).await.unwrap(),
        [owed]
    );
    assert_eq!(apply(store, &paid, &payment).await, Applied::Duplicate);
    assert_eq!(
        store
            .refunds(None, PageRequest::default())
            .await
            .unwrap()
            .total,
        1,
        "a repeated event owes nothing more"
    );
}

pub async fn refunds_take_turns_and_settle_once<S: PaymentAdapter + ?Sized>(store: &S) {
    let (order, payment) = paid(store, "alice@example.com").await;
    let as_read = Some((order.refunded, order.status));
    let part = Money::new(1000, order.total.currency()).unwrap();
    let first = RefundRecord::pending(&payment, RefundKind::Order, part, "damaged", t0());
    assert_eq!(
        store.begin_refund(&first, as_read, None).await.unwrap(),
        RefundStart::Started
    );
    // While one is pending, no other refund of the payment starts.
    let second = RefundRecord::pending(&payment, RefundKind::Order, part, "again", t0());
    assert_eq!(
        store.begin_refund(&second, as_read, None).await.unwrap(),
        RefundStart::InProgress
    );
    assert_eq!(store.refund(second.id).await.unwrap(), None);
    let at = t0() + Duration::minutes(2);
    let settled = RefundSettlement::Succeeded {
        order_status: Some(OrderStatus::PartiallyRefunded),
    };
    assert!(store.settle_refund(&first, &settled, at).await.unwrap());
    assert!(
        !store.settle_refund(&first, &settled, at).await.unwrap(),
        "settled once only"
    );
    let refund = store.refund(first.id).await.unwrap().unwrap();
    assert_eq!(refund.status, RefundStatus::Succeeded);
    assert_eq!(refund.completed_at, Some(at));
    let order_now = store.order(order.id).await.unwrap().unwrap();
    assert_eq!(order_now.refunded, part);
    assert_eq!(order_now.status, OrderStatus::PartiallyRefunded);
    assert_eq!(
        store.payment(payment.id).await.unwrap().unwrap().refunded,
        part
    );
    // A refund decided on what the order was before is refused: the order moved on.
    assert_eq!(
        store.begin_refund(&second, as_read, None).await.unwrap(),
        RefundStart::OrderChanged
    );
    assert_eq!(store.refund(second.id).await.unwrap(), None);
    let rest = Money::new(2000, order.total.currency()).unwrap();
    let last = RefundRecord::pending(&payment, RefundKind::Order, rest, "", t0());
    assert_eq!(
        store
            .begin_refund(&last, Some((order_now.refunded, order_now.status)), None)
            .await
            .unwrap(),
        RefundStart::Started
    );
    let refused = RefundSettlement::Failed {
        reason: "card closed".into(),
    };
    assert!(store.settle_refund(&last, &refused, at).await.unwrap());
    let last = store.refund(last.id).await.unwrap().unwrap();
    assert_eq!(last.status, RefundStatus::Failed);
    assert_eq!(last.last_error.as_deref(), Some("card closed"));
    let unchanged = store.order(order.id).await.unwrap().unwrap();
    assert_eq!(
        (unchanged.refunded, unchanged.status),
        (part, OrderStatus::PartiallyRefunded),
        "a refused refund changes no total"
    );
}

pub async fn unanswered_refunds_wait_and_are_listed<S: PaymentAdapter + ?Sized>(store: &S) {
    let (_, alices) = paid(store, "alice@example.com").await;
    let (_, bobs) = paid(store, "bob@example.com").await;
    let amount = Money::new(500, alices.amount.currency()).unwrap();
    let mut a = RefundRecord::pending(&alices, RefundKind::Order, amount, "a", t0());
    let mut b = RefundRecord::pending(&bobs, RefundKind::Order, amount, "b", t0());
    b.created_at = t0() + Duration::seconds(1);
    b.next_attempt_at = a.next_attempt_at + Duration::seconds(1);
    assert_eq!(
        store.begin_refund(&a, None, None).await.unwrap(),
        RefundStart::Started
    );
    assert_eq!(
        store.begin_refund(&b, None, None).await.unwrap(),
        RefundStart::Started
    );
    let later = b.next_attempt_at + Duration::minutes(1);
    assert_eq!(
        store.due_refunds(later, 10).await.unwrap(),
        [a.clone(), b.clone()],
        "the longest waiting first"
    );
    assert_eq!(store.due_refunds(later, 1).await.unwrap(), [a.clone()]);
    // The provider did not answer `a`: it waits, counted.
    let next = later + Duration::minutes(10);
    store
        .retry_refund_later(a.id, 1, next, "timed out")
        .await
        .unwrap();
    a.attempts = 1;
    a.next_attempt_at = next;
    a.last_error = Some("timed out".into());
    assert_eq!(store.refund(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.due_refunds(later, 10).await.unwrap(), [b.clone()]);
    assert_eq!(
        store.due_refunds(next, 10).await.unwrap(),
        [b.clone(), a.clone()]
    );
    // Settled refunds are never due again, and a wait asked for one changes nothing.
    let done = RefundSettlement::Succeeded { order_status: None };
    assert!(store.settle_refund(&b, &done, later).await.unwrap());
    store
        .retry_refund_later(b.id, 5, next, "late answer")
        .await
        .unwrap();
    let b_now = store.refund(b.id).await.unwrap().unwrap();
    assert_eq!(
        (b_now.status, b_now.attempts, b_now.last_error),
        (RefundStatus::Succeeded, 0, None)
    );
    assert_eq!(store.due_refunds(next, 10).await.unwrap(), [a.clone()]);
    // Newest first, by status.
    let all = store.refunds(None, PageRequest::default()).await.unwrap();
    assert_eq!(all.total, 2);
    assert_eq!(
        all.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        [b.id, a.id]
    );
    let pending = store
        .refunds(Some(RefundStatus::Pending), PageRequest::default())
        .await
        .unwrap();
    assert_eq!((pending.total, pending.items), (1, vec![a]));
    let page = store
        .refunds(None, PageRequest::new(Some(2), Some(1)))
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    assert_eq!(page.items.len(), 1);
}

pub async fn open_payments_of_ended_orders_are_swept<S: PaymentAdapter + ?Sized>(store: &S) {
    let mut ended = Vec::new();
    for n in 0..3 {
        let order = placed(store, &format!("gone{n}@example.com")).await;
        let payment = payment_for(&order, &format!("ref-gone-{n}"));
        store.insert_payment(&payment).await.unwrap();
        store.cancel_order(order.id, t0()).await.unwrap();
        ended.push(payment.id);
    }
    ended.sort();
    // Neither an order still awaiting payment nor a settled payment is swept.
    let waiting = placed(store, "waiting@example.com").await;
    store
        .insert_payment(&payment_for(&waiting, "ref-waiting"))
        .await
        .unwrap();
    paid(store, "paid@example.com").await;

    let found = |after: Option<PaymentId>, limit: u32| async move {
        store
            .open_payments_of_ended_orders(after, limit)
            .await
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(found(None, 10).await, ended, "in id order");
    assert_eq!(found(None, 2).await, ended[..2]);
    assert_eq!(found(Some(ended[1]), 2).await, ended[2..]);
    let at = t0() + Duration::minutes(5);
    for id in &ended {
        store.close_payment(*id, at).await.unwrap();
    }
    assert!(found(None, 10).await.is_empty());
    let closed = store.payment(ended[0]).await.unwrap().unwrap();
    assert_eq!(
        (closed.status, closed.updated_at),
        (PaymentStatus::Closed, at)
    );
}
