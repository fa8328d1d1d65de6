//! The `WebhookStore` contract: endpoints round trip, an event reaches exactly the active
//! endpoints subscribed to it, a claimed delivery is not claimed again until its claim runs out,
//! attempts are recorded, and a redelivery starts the schedule again.

use flashmart_domain::{EventId, WebhookId};
use time::Duration;

use super::accounts::t0;
use super::audit_entry;
use crate::page::PageRequest;
use crate::ports::WebhookStore;
use crate::webhooks::{
    AttemptOutcome, AttemptRecord, DeliveryStatus, Endpoint, EventType, WebhookEvent,
};

fn endpoint(url: &str, events: &[EventType]) -> Endpoint {
    Endpoint {
        id: WebhookId::new(),
        url: url.to_owned(),
        events: events.to_vec(),
        description: String::new(),
        secret: format!("whsec_{url}"),
        active: true,
        created_at: t0(),
        updated_at: t0(),
    }
}

pub async fn webhook_deliveries_follow_their_schedule<S: WebhookStore + ?Sized>(store: &S) {
    let paid = endpoint("https://a.example/hook", &[EventType::OrderPaid]);
    let both = endpoint(
        "https://b.example/hook",
        &[EventType::OrderPaid, EventType::FlashSaleEnded],
    );
    let mut paused = endpoint("https://c.example/hook", &[EventType::OrderPaid]);
    assert!(
        store
            .insert_endpoint(&paid, 3, &audit_entry("webhook.changed"))
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_endpoint(&both, 3, &audit_entry("webhook.changed"))
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_endpoint(&paused, 3, &audit_entry("webhook.changed"))
            .await
            .unwrap()
    );
    let extra = endpoint("https://d.example/hook", &[EventType::OrderPaid]);
    assert!(
        !store
            .insert_endpoint(&extra, 3, &audit_entry("webhook.changed"))
            .await
            .unwrap(),
        "no more than the maximum"
    );
    assert_eq!(store.endpoint(both.id).await.unwrap(), Some(both.clone()));
    let page = store.endpoints(PageRequest::default()).await.unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(page.items[0], paused, "newest first");

    // A pause applies only to the version read.
    let mut pausing = paused.clone();
    pausing.active = false;
    pausing.updated_at = t0() + Duration::seconds(1);
    assert!(
        store
            .update_endpoint(&pausing, &paused, &audit_entry("webhook.changed"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .update_endpoint(&pausing, &paused, &audit_entry("webhook.changed"))
            .await
            .unwrap()
    );
    paused = pausing;

    // An event reaches the active endpoints subscribed to it, once per key.
    let now = t0() + Duration::seconds(2);
    let event = WebhookEvent::new(EventType::OrderPaid, now, serde_json::json!({"n": 1}));
    assert!(store.emit_once("paid:1", &event).await.unwrap());
    let again = WebhookEvent::new(EventType::OrderPaid, now, serde_json::json!({"n": 1}));
    assert!(!store.emit_once("paid:1", &again).await.unwrap());
    for (e, n) in [(&paid, 1), (&both, 1), (&paused, 0)] {
        let log = store
            .deliveries(e.id, PageRequest::default())
            .await
            .unwrap();
        assert_eq!(log.total, n, "{}", e.url);
    }

    // Paused endpoints' deliveries wait; the others are claimed once until the claim runs out.
    let claimed = store
        .claim_due(now, now + Duration::minutes(1), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(
        claimed
            .iter()
            .all(|d| d.event_id == event.id && d.attempts == 0)
    );
    assert!(claimed.iter().all(|d| d.body == event.body()));
    let to_both = claimed.iter().find(|d| d.endpoint_id == both.id).unwrap();
    assert_eq!(to_both.secret, both.secret);
    assert!(
        store
            .claim_due(now, now + Duration::minutes(1), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let delivered = AttemptRecord {
        endpoint_id: paid.id,
        event_id: event.id,
        attempts: 1,
        at: now,
        status: Some(204),
        error: None,
        outcome: AttemptOutcome::Delivered,
    };
    store.record_attempt(&delivered).await.unwrap();
    let retry_at = now + Duration::seconds(5);
    store
        .record_attempt(&AttemptRecord {
            endpoint_id: both.id,
            event_id: event.id,
            status: Some(500),
            error: Some("answered 500".into()),
            outcome: AttemptOutcome::RetryAt(retry_at),
            ..delivered.clone()
        })
        .await
        .unwrap();
    let log = store
        .deliveries(both.id, PageRequest::default())
        .await
        .unwrap();
    let d = &log.items[0];
    assert_eq!(
        (d.status, d.attempts, d.last_status, d.next_attempt_at),
        (DeliveryStatus::Pending, 1, Some(500), Some(retry_at))
    );
    assert_eq!(d.event_type, "order.paid");
    let log = store
        .deliveries(paid.id, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(log.items[0].status, DeliveryStatus::Delivered);
    assert_eq!(log.items[0].delivered_at, Some(now));
    let due = store.claim_due(retry_at, retry_at, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].endpoint_id, due[0].attempts), (both.id, 1));

    // A redelivery makes even a delivered one pending again, with no attempts counted.
    let d = store
        .redeliver(
            paid.id,
            event.id,
            retry_at,
            &audit_entry("webhook.redelivery_requested"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Pending, 0));
    assert_eq!(
        store
            .redeliver(
                paid.id,
                EventId::new(),
                retry_at,
                &audit_entry("webhook.redelivery_requested")
            )
            .await
            .unwrap(),
        None
    );

    // Deleting an endpoint takes its deliveries with it.
    assert!(
        store
            .delete_endpoint(paid.id, &audit_entry("webhook.changed"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_endpoint(paid.id, &audit_entry("webhook.changed"))
            .await
            .unwrap()
    );
    assert_eq!(store.endpoint(paid.id).await.unwrap(), None);
    assert_eq!(
        store
            .deliveries(paid.id, PageRequest::default())
            .await
            .unwrap()
            .total,
        0
    );
}
