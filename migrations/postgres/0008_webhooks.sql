-- Outbound webhooks. An event is written to webhook_events in the transaction of the change it
-- reports, with one webhook_deliveries row per active endpoint subscribed to its type then; the
-- worker delivers them. webhook_once holds the keys of events that must be reported once
-- (a sale's start, sell-out and end).
CREATE TABLE webhook_endpoints (
    id          uuid PRIMARY KEY,
    url         text NOT NULL,
    events      text[] NOT NULL,
    description text NOT NULL DEFAULT '',
    secret      text NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE webhook_events (
    id         uuid PRIMARY KEY,
    type       text NOT NULL,
    created_at timestamptz NOT NULL,
    body       text NOT NULL
);

CREATE TABLE webhook_deliveries (
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        uuid NOT NULL REFERENCES webhook_events (id),
    status          text NOT NULL CONSTRAINT "webhook_deliveries.status"
                        CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    PRIMARY KEY (endpoint_id, event_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';

CREATE TABLE webhook_once (
    key text PRIMARY KEY
);
