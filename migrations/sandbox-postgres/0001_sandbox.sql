-- The sandbox payment provider's own books in the shop's PostgreSQL database (scaled mode), as
-- a remote provider would keep them; the same tables as its SQLite file in embedded mode. Times
-- are unix seconds. Its migrations are recorded in _sandbox_migrations, apart from the shop's.

CREATE TABLE sandbox_payments (
    ref            text PRIMARY KEY,
    merchant_ref   text NOT NULL,
    amount_cents   bigint NOT NULL CHECK (amount_cents >= 0),
    currency       text NOT NULL,
    description    text NOT NULL,
    status         text NOT NULL CHECK (status IN ('open', 'paid', 'failed', 'closed')),
    refunded_cents bigint NOT NULL DEFAULT 0,
    created_at     bigint NOT NULL,
    expires_at     bigint NOT NULL,
    completed_at   bigint,
    CHECK (refunded_cents <= amount_cents)
);

CREATE TABLE sandbox_refunds (
    refund_id    text PRIMARY KEY,
    ref          text NOT NULL REFERENCES sandbox_payments (ref),
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    at           bigint NOT NULL
);

-- Notifications are retried on a bounded schedule: each attempt records the merchant's answer
-- and when the next is due; after the last, the notification is dead (a dead letter).
CREATE TABLE sandbox_events (
    event_id        text PRIMARY KEY,
    ref             text NOT NULL,
    body            text NOT NULL,
    attempts        bigint NOT NULL DEFAULT 0,
    delivered_at    bigint,
    created_at      bigint NOT NULL,
    next_attempt_at bigint NOT NULL DEFAULT 0,
    last_status     bigint,
    last_error      text,
    dead_at         bigint
);

CREATE INDEX sandbox_events_due ON sandbox_events (next_attempt_at)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX sandbox_events_dead ON sandbox_events (dead_at) WHERE dead_at IS NOT NULL;
