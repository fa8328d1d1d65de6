-- Commerce: the catalog, carts, addresses, coupons, cart orders, payments and refunds.
-- Times are unix microseconds (UTC); ids are UUIDs stored as 16-byte blobs.

-- version goes up with every change (a checkout taking stock included), so an edit applies only
-- to the row it read. The CHECK on stock is the last line against overselling.
CREATE TABLE products (
    id          BLOB PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    currency    TEXT NOT NULL,
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    sold        INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0),
    category    TEXT,
    images      TEXT NOT NULL DEFAULT '[]',
    active      INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    deleted_at  INTEGER,
    version     INTEGER NOT NULL DEFAULT 1
) STRICT, WITHOUT ROWID;

CREATE INDEX products_listing ON products (created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX products_category ON products (category, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

CREATE TABLE cart_items (
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    product_id BLOB NOT NULL REFERENCES products (id),
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, product_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE addresses (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    recipient   TEXT NOT NULL,
    line1       TEXT NOT NULL,
    line2       TEXT,
    city        TEXT NOT NULL,
    region      TEXT,
    postal_code TEXT NOT NULL,
    country     TEXT NOT NULL,
    phone       TEXT,
    is_default  INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX addresses_user ON addresses (user_id, created_at);
-- At most one default address per user.
CREATE UNIQUE INDEX addresses_default ON addresses (user_id) WHERE is_default = 1;

CREATE TABLE coupons (
    id              BLOB PRIMARY KEY NOT NULL,
    code            TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('percent', 'fixed')),
    percent         INTEGER,
    amount_cents    INTEGER,
    currency        TEXT,
    min_spend_cents INTEGER,
    starts_at       INTEGER NOT NULL,
    ends_at         INTEGER NOT NULL,
    max_uses        INTEGER,
    per_user_limit  INTEGER,
    uses            INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),
    active          INTEGER NOT NULL DEFAULT 1,
    created_at      INTEGER NOT NULL,
    CHECK (max_uses IS NULL OR uses <= max_uses)
) STRICT, WITHOUT ROWID;

CREATE TABLE coupon_redemptions (
    coupon_id BLOB NOT NULL REFERENCES coupons (id),
    user_id   BLOB NOT NULL,
    order_id  BLOB NOT NULL,
    at        INTEGER NOT NULL,
    PRIMARY KEY (coupon_id, user_id, order_id)
) STRICT, WITHOUT ROWID;

-- Orders from carts carry a snapshot of where they ship and which coupon took what off.
ALTER TABLE orders ADD COLUMN shipping_address TEXT;
ALTER TABLE orders ADD COLUMN coupon_code TEXT;
ALTER TABLE orders ADD COLUMN refunded_cents INTEGER NOT NULL DEFAULT 0;

CREATE INDEX orders_due ON orders (expires_at) WHERE status = 'pending_payment';
CREATE INDEX orders_created ON orders (created_at DESC, id DESC);

CREATE TABLE payments (
    id             BLOB PRIMARY KEY NOT NULL,
    order_id       BLOB NOT NULL REFERENCES orders (id),
    provider       TEXT NOT NULL,
    provider_ref   TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'closed')),
    amount_cents   INTEGER NOT NULL CHECK (amount_cents >= 0),
    currency       TEXT NOT NULL,
    refunded_cents INTEGER NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0),
    pay_url        TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    UNIQUE (provider, provider_ref),
    CHECK (refunded_cents <= amount_cents)
) STRICT, WITHOUT ROWID;

CREATE INDEX payments_order ON payments (order_id);

-- Every notification applied, by the provider's event id: a duplicate is recognised and ignored.
CREATE TABLE payment_events (
    provider    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    payment_id  BLOB NOT NULL,
    kind        TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (provider, event_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE refunds (
    id           BLOB PRIMARY KEY NOT NULL,
    payment_id   BLOB NOT NULL REFERENCES payments (id),
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    reason       TEXT,
    created_at   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX refunds_payment ON refunds (payment_id);
