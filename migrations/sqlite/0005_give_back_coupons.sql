-- A cancelled or expired unpaid order gives its coupon use back, found by the order.
CREATE INDEX coupon_redemptions_order ON coupon_redemptions (order_id);
