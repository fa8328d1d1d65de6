-- A user's flash-sale orders are indexed by user lazily, off the reservation hot path. Buyers
-- reserve in random order, so an index on orders (user_id) made every group commit dirty one
-- page of it per reservation: most of what a commit wrote to the WAL, and about half of the
-- writer's time. Now:
-- - orders_user covers only orders made at checkout (which write it at once, as before);
-- - flash_order_owners lists each flash-sale order under its user, filled in batches by the
--   order indexer when the writer has time (or when too many wait);
-- - flash_order_index.pending_from is the smallest flash-sale order id that may not be in
--   flash_order_owners yet (NULL: every one is). Each group commit lowers it to its own first
--   order id in the same transaction, and the indexer raises it past what it indexed, so a
--   user's orders are always the ones orders_user and flash_order_owners name plus the flash-sale
--   orders from pending_from on, found by a range of the primary key.
DROP INDEX orders_user;
CREATE INDEX orders_user ON orders (user_id) WHERE reservation_id IS NULL;

CREATE TABLE flash_order_owners (
    user_id  BLOB NOT NULL,
    order_id BLOB NOT NULL,
    PRIMARY KEY (user_id, order_id)
) STRICT, WITHOUT ROWID;

INSERT INTO flash_order_owners (user_id, order_id)
    SELECT user_id, id FROM orders WHERE reservation_id IS NOT NULL;

CREATE TABLE flash_order_index (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    pending_from BLOB
) STRICT;

INSERT INTO flash_order_index (id, pending_from) VALUES (1, NULL);
