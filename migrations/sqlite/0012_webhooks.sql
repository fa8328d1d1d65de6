-- Outbound webhooks. An event is written to webhook_events in the transaction of the change it
-- reports, with one webhook_deliveries row per active endpoint subscribed to its type then; the
-- worker delivers them. webhook_once holds the keys of events that must be reported once
-- (a sale's start, sell-out and end).
CREATE TABLE webhook_endpoints (
    id          BLOB PRIMARY KEY NOT NULL,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,  -- a JSON array of event type names
    description TEXT NOT NULL DEFAULT '',
    secret      TEXT NOT NULL,
    active      INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE webhook_events (
    id         BLOB PRIMARY KEY NOT NULL,
    type       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    body       TEXT NOT NULL
);

CREATE TABLE webhook_deliveries (
    endpoint_id     BLOB NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        BLOB NOT NULL REFERENCES webhook_events (id),
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    PRIMARY KEY (endpoint_id, event_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';

CREATE TABLE webhook_once (
    key TEXT PRIMARY KEY NOT NULL
);
