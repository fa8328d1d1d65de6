-- The last batch of the reservation outbox (the flashmart.outbox directory beside this file)
-- applied to this database, written in the same transaction as that batch's rows: at start,
-- batches up to it are dropped from the outbox, later ones applied.
CREATE TABLE outbox_applied (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL CHECK (seq >= 0)
) STRICT;

INSERT INTO outbox_applied (id, seq) VALUES (1, 0);
