-- One row and its index entries fewer per reservation: a flash-sale order's one line is its
-- reservation's item (its name and price never change once the sale exists), so it is read from
-- there and no longer written to order_items.
DELETE FROM order_items
 WHERE order_id IN (SELECT id FROM orders WHERE reservation_id IS NOT NULL);
