-- A flash-sale order made through the API has its reservation's id, and is no longer written with
-- its reservation: until something changes the order itself, it is what its reservation says
-- (its status follows the reservation's, its currency and price are the sale's and the item's,
-- which never change once the sale exists). Reads go through `order_view`, the stored orders
-- and these derived ones together. Starting a payment for such an order, or cancelling it,
-- first writes its row into `orders` from the same facts (with the reservation locked), and from
-- then on the row is the order. The row was a heap tuple and three index entries per
-- reservation, about half of PostgreSQL's work per reservation (docs/BENCHMARKS.md); what
-- stays is one entry in the index below, for a buyer's list of orders.
--
-- Orders written before this migration keep their rows (their ids are not their reservations').

CREATE INDEX reservations_buyer_orders ON reservations (buyer_id, id DESC)
    WHERE order_id IS NOT NULL;

CREATE VIEW derived_orders AS
SELECT r.id,
       r.buyer_id AS user_id,
       CASE r.status WHEN 'reserved' THEN 'pending_payment' WHEN 'purchased' THEN 'paid'
                     ELSE r.status END AS status,
       s.currency,
       i.price_cents * r.quantity AS subtotal_cents,
       0::bigint AS discount_cents,
       i.price_cents * r.quantity AS total_cents,
       0::bigint AS refunded_cents,
       r.id AS reservation_id,
       NULL::text AS shipping_address,
       NULL::text AS coupon_code,
       r.created_at,
       coalesce(r.released_at, r.purchased_at, r.created_at) AS updated_at,
       r.expires_at,
       r.purchased_at AS paid_at
  FROM reservations r
  JOIN flash_sales s ON s.id = r.sale_id
  JOIN flash_sale_items i ON i.sale_id = r.sale_id AND i.no = r.item_no
 WHERE r.order_id IS NOT NULL
   AND r.order_id = r.id
   AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = r.id);

CREATE VIEW order_view AS
SELECT id, user_id, status, currency, subtotal_cents, discount_cents, total_cents, refunded_cents,
       reservation_id, shipping_address, coupon_code, created_at, updated_at, expires_at, paid_at
  FROM orders
UNION ALL
SELECT id, user_id, status, currency, subtotal_cents, discount_cents, total_cents, refunded_cents,
       reservation_id, shipping_address, coupon_code, created_at, updated_at, expires_at, paid_at
  FROM derived_orders;
