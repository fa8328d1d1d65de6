-- The sandbox payment provider's own books, in its own database file, as a remote provider
-- would keep them.

CREATE TABLE sandbox_payments (
    ref            TEXT PRIMARY KEY NOT NULL,
    merchant_ref   TEXT NOT NULL,
    amount_cents   INTEGER NOT NULL CHECK (amount_cents >= 0),
    currency       TEXT NOT NULL,
    description    TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('open', 'paid', 'failed', 'closed')),
    refunded_cents INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    completed_at   INTEGER,
    CHECK (refunded_cents <= amount_cents)
) STRICT;

CREATE TABLE sandbox_refunds (
    refund_id    TEXT PRIMARY KEY NOT NULL,
    ref          TEXT NOT NULL REFERENCES sandbox_payments (ref),
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    at           INTEGER NOT NULL
) STRICT;

CREATE TABLE sandbox_events (
    event_id     TEXT PRIMARY KEY NOT NULL,
    ref          TEXT NOT NULL,
    body         TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    delivered_at INTEGER,
    created_at   INTEGER NOT NULL
) STRICT;
