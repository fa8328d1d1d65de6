-- Payments, the provider's events (each applied once) and refunds (recorded before the provider
-- is asked, settled by its answer).

CREATE TABLE payments (
    id             uuid PRIMARY KEY,
    order_id       uuid NOT NULL REFERENCES orders (id),
    provider       text NOT NULL,
    provider_ref   text NOT NULL,
    status         text NOT NULL CONSTRAINT "payments.status"
                   CHECK (status IN ('pending', 'succeeded', 'failed', 'closed')),
    amount_cents   bigint NOT NULL CHECK (amount_cents >= 0),
    currency       text NOT NULL,
    refunded_cents bigint NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0),
    pay_url        text NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    CONSTRAINT "payments.provider_ref" UNIQUE (provider, provider_ref),
    CONSTRAINT "payments.refunded_cents" CHECK (refunded_cents <= amount_cents)
);

CREATE INDEX payments_order ON payments (order_id);
-- The sweep of payments whose order ended looks only at pending ones.
CREATE INDEX payments_pending ON payments (id) WHERE status = 'pending';

CREATE TABLE payment_events (
    provider    text NOT NULL,
    event_id    text NOT NULL,
    payment_id  uuid NOT NULL,
    kind        text NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (provider, event_id)
);

CREATE TABLE refunds (
    id              uuid PRIMARY KEY,
    payment_id      uuid NOT NULL REFERENCES payments (id),
    order_id        uuid NOT NULL REFERENCES orders (id),
    kind            text NOT NULL CONSTRAINT "refunds.kind" CHECK (kind IN ('order', 'late_payment')),
    amount_cents    bigint NOT NULL CHECK (amount_cents > 0),
    reason          text,
    status          text NOT NULL CONSTRAINT "refunds.status"
                    CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    created_at      timestamptz NOT NULL,
    completed_at    timestamptz
);

CREATE INDEX refunds_payment ON refunds (payment_id);
-- At most one refund of a payment waits for the provider at a time.
CREATE UNIQUE INDEX refunds_one_pending ON refunds (payment_id) WHERE status = 'pending';
CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE status = 'pending';
CREATE INDEX refunds_created ON refunds (created_at DESC, id DESC);
