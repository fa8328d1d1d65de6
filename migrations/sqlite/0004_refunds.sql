-- Refunds are recorded before the provider is asked (their id is its idempotency key) and only
-- a confirmed one moves the refunded totals; one refund at a time is pending per payment. A
-- refund owed for a payment that came after its order ended is recorded with that payment.
CREATE TABLE refunds_new (
    id              BLOB PRIMARY KEY NOT NULL,
    payment_id      BLOB NOT NULL REFERENCES payments (id),
    order_id        BLOB NOT NULL REFERENCES orders (id),
    kind            TEXT NOT NULL CHECK (kind IN ('order', 'late_payment')),
    amount_cents    INTEGER NOT NULL CHECK (amount_cents > 0),
    reason          TEXT,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    completed_at    INTEGER
) STRICT, WITHOUT ROWID;

-- Refunds made before this migration were recorded only once the provider had made them.
INSERT INTO refunds_new (id, payment_id, order_id, kind, amount_cents, reason, status,
                         next_attempt_at, created_at, completed_at)
SELECT r.id, r.payment_id, p.order_id,
       CASE WHEN o.status IN ('refunded', 'partially_refunded') THEN 'order' ELSE 'late_payment' END,
       r.amount_cents, r.reason, 'succeeded', r.created_at, r.created_at, r.created_at
FROM refunds r JOIN payments p ON p.id = r.payment_id JOIN orders o ON o.id = p.order_id;

DROP TABLE refunds;
ALTER TABLE refunds_new RENAME TO refunds;

CREATE INDEX refunds_payment ON refunds (payment_id);
CREATE UNIQUE INDEX refunds_one_pending ON refunds (payment_id) WHERE status = 'pending';
CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE status = 'pending';
CREATE INDEX refunds_created ON refunds (created_at DESC, id DESC);
