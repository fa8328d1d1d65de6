-- The audit log: every change an operator or admin made, written in the change's transaction.
-- actor is a user id (as text) or command:<name>; before and after are JSON objects or NULL.
CREATE TABLE audit_log (
    id        uuid PRIMARY KEY,
    at        timestamptz NOT NULL,
    actor     text NOT NULL,
    action    text NOT NULL,
    entity    text NOT NULL,
    entity_id text NOT NULL,
    before    jsonb,
    after     jsonb
);

-- Ids are UUIDv7, so the primary key is also the time order; these serve the two filters.
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_entity ON audit_log (entity, entity_id, id);
