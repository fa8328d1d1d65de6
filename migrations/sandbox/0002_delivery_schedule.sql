-- Notifications are retried on a bounded schedule: each attempt records the merchant's answer
-- and when the next is due; after the last, the notification is dead (a dead letter).
ALTER TABLE sandbox_events ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandbox_events ADD COLUMN last_status INTEGER;
ALTER TABLE sandbox_events ADD COLUMN last_error TEXT;
ALTER TABLE sandbox_events ADD COLUMN dead_at INTEGER;
CREATE INDEX sandbox_events_due ON sandbox_events (next_attempt_at)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX sandbox_events_dead ON sandbox_events (dead_at) WHERE dead_at IS NOT NULL;
