-- Addresses, coupons and orders (cart orders; flash-sale orders arrive with the engine). Money is
-- integer cents with its currency; every CHECK is the last line behind the application's rules.

CREATE TABLE addresses (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    recipient   text NOT NULL,
    line1       text NOT NULL,
    line2       text,
    city        text NOT NULL,
    region      text,
    postal_code text NOT NULL,
    country     text NOT NULL,
    phone       text,
    is_default  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE INDEX addresses_user ON addresses (user_id, created_at);
-- At most one default address per user.
CREATE UNIQUE INDEX addresses_default ON addresses (user_id) WHERE is_default;

CREATE TABLE coupons (
    id              uuid PRIMARY KEY,
    code            text NOT NULL CONSTRAINT "coupons.code" UNIQUE,
    kind            text NOT NULL CONSTRAINT "coupons.kind" CHECK (kind IN ('percent', 'fixed')),
    percent         integer,
    amount_cents    bigint,
    currency        text,
    min_spend_cents bigint,
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL,
    max_uses        bigint,
    per_user_limit  bigint,
    uses            bigint NOT NULL DEFAULT 0 CONSTRAINT "coupons.uses" CHECK (uses >= 0),
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL,
    CONSTRAINT "coupons.max_uses" CHECK (max_uses IS NULL OR uses <= max_uses)
);

CREATE INDEX coupons_created ON coupons (created_at DESC, id DESC);

CREATE TABLE orders (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id),
    status           text NOT NULL CONSTRAINT "orders.status"
                     CHECK (status IN ('pending_payment', 'paid', 'cancelled', 'expired',
                                       'refunded', 'partially_refunded')),
    currency         text NOT NULL,
    subtotal_cents   bigint NOT NULL CHECK (subtotal_cents >= 0),
    discount_cents   bigint NOT NULL DEFAULT 0 CHECK (discount_cents >= 0),
    total_cents      bigint NOT NULL CHECK (total_cents >= 0),
    refunded_cents   bigint NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0),
    reservation_id   uuid,
    shipping_address text,
    coupon_code      text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    paid_at          timestamptz
);

-- A user's orders, newest first (ids are UUID v7, so their order is their creation's).
CREATE INDEX orders_user ON orders (user_id, id DESC);
CREATE INDEX orders_status ON orders (status, id DESC);
-- Unpaid cart orders, by when they expire.
CREATE INDEX orders_due ON orders (expires_at)
    WHERE status = 'pending_payment' AND reservation_id IS NULL;

CREATE TABLE order_items (
    order_id         uuid NOT NULL REFERENCES orders (id),
    line             integer NOT NULL,
    product_id       uuid,
    sale_id          uuid,
    item_no          integer,
    name             text NOT NULL,
    unit_price_cents bigint NOT NULL CHECK (unit_price_cents >= 0),
    quantity         integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, line)
);

CREATE TABLE coupon_redemptions (
    coupon_id uuid NOT NULL REFERENCES coupons (id),
    user_id   uuid NOT NULL,
    order_id  uuid NOT NULL,
    at        timestamptz NOT NULL,
    PRIMARY KEY (coupon_id, user_id, order_id)
);

-- A cancelled or expired unpaid order gives its coupon use back, found by the order.
CREATE INDEX coupon_redemptions_order ON coupon_redemptions (order_id);
