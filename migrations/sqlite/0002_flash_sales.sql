-- Flash sales, their items and schedules, reservations, the orders reservations make, and the
-- compatibility API's checkout attempts. Times are unix microseconds (UTC).

CREATE TABLE flash_sale_schedules (
    id                   BLOB PRIMARY KEY NOT NULL,
    name                 TEXT NOT NULL UNIQUE,
    recurrence           TEXT NOT NULL CHECK (recurrence IN ('hourly', 'daily')),
    item_count           INTEGER NOT NULL CHECK (item_count > 0),
    price_cents          INTEGER NOT NULL CHECK (price_cents >= 0),
    currency             TEXT NOT NULL,
    per_user_limit       INTEGER NOT NULL CHECK (per_user_limit > 0),
    reservation_ttl_secs INTEGER NOT NULL CHECK (reservation_ttl_secs > 0),
    duration_secs        INTEGER NOT NULL CHECK (duration_secs > 0),
    active               INTEGER NOT NULL DEFAULT 1,
    created_at           INTEGER NOT NULL
) STRICT;

CREATE TABLE flash_sales (
    id                   BLOB PRIMARY KEY NOT NULL,
    name                 TEXT NOT NULL,
    starts_at            INTEGER NOT NULL,
    ends_at              INTEGER NOT NULL,
    per_user_limit       INTEGER NOT NULL CHECK (per_user_limit > 0),
    reservation_ttl_secs INTEGER NOT NULL CHECK (reservation_ttl_secs > 0),
    currency             TEXT NOT NULL,
    schedule_id          BLOB REFERENCES flash_sale_schedules (id),
    slot                 INTEGER,
    item_count           INTEGER NOT NULL,
    total_stock          INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    CHECK (ends_at > starts_at),
    CHECK ((schedule_id IS NULL) = (slot IS NULL))
) STRICT;

-- One sale per schedule slot, however many schedulers race to make it.
CREATE UNIQUE INDEX flash_sales_slot ON flash_sales (schedule_id, slot) WHERE schedule_id IS NOT NULL;
CREATE INDEX flash_sales_starts ON flash_sales (starts_at);
CREATE INDEX flash_sales_ends ON flash_sales (ends_at);

-- Items are numbered 1..item_count within their sale.
CREATE TABLE flash_sale_items (
    sale_id     BLOB NOT NULL REFERENCES flash_sales (id) ON DELETE CASCADE,
    no          INTEGER NOT NULL CHECK (no > 0),
    name        TEXT NOT NULL,
    image_url   TEXT,
    product_id  BLOB,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    stock       INTEGER NOT NULL CHECK (stock > 0),
    PRIMARY KEY (sale_id, no)
) STRICT, WITHOUT ROWID;

-- buyer_id is the user's id, or for the compatibility API an id derived from the caller-named
-- user (buyer_ref), which is why it has no foreign key.
--
-- Written for the hot path: ids are UUID v7, so rows append to the primary key; the other
-- indexes grow at the end of one sale's range or of time. There is no code column: a
-- reservation's code is its id in base 32, so a code finds its row by primary key. sale_id has
-- no foreign key: only the engine writes here, and only for sales it holds in memory; a lookup
-- per reservation would buy nothing.
CREATE TABLE reservations (
    id                      BLOB PRIMARY KEY NOT NULL,
    sale_id                 BLOB NOT NULL,
    item_no                 INTEGER NOT NULL,
    buyer_id                BLOB NOT NULL,
    buyer_ref               TEXT,
    quantity                INTEGER NOT NULL CHECK (quantity > 0),
    status                  TEXT NOT NULL
                            CHECK (status IN ('reserved', 'purchased', 'expired', 'cancelled')),
    created_at              INTEGER NOT NULL,
    expires_at              INTEGER NOT NULL,
    purchased_at            INTEGER,
    released_at             INTEGER,
    order_id                BLOB,
    idempotency_key         TEXT,
    idempotency_fingerprint BLOB
) STRICT, WITHOUT ROWID;

CREATE INDEX reservations_sale ON reservations (sale_id, id);
CREATE INDEX reservations_due ON reservations (expires_at) WHERE status = 'reserved';
CREATE INDEX reservations_keyed ON reservations (created_at) WHERE idempotency_key IS NOT NULL;

-- reservation_id points back to the reservation an order was made from; it is reached from the
-- reservation (order_id), so it needs no index.
CREATE TABLE orders (
    id             BLOB PRIMARY KEY NOT NULL,
    user_id        BLOB NOT NULL REFERENCES users (id),
    status         TEXT NOT NULL CHECK (status IN ('pending_payment', 'paid', 'cancelled',
                                                   'expired', 'refunded', 'partially_refunded')),
    currency       TEXT NOT NULL,
    subtotal_cents INTEGER NOT NULL CHECK (subtotal_cents >= 0),
    discount_cents INTEGER NOT NULL DEFAULT 0 CHECK (discount_cents >= 0),
    total_cents    INTEGER NOT NULL CHECK (total_cents >= 0),
    reservation_id BLOB,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    paid_at        INTEGER
) STRICT, WITHOUT ROWID;

CREATE INDEX orders_user ON orders (user_id, created_at);

-- Lines are written in the transaction that writes their order; no foreign key lookup per line.
CREATE TABLE order_items (
    order_id         BLOB NOT NULL,
    line             INTEGER NOT NULL,
    product_id       BLOB,
    sale_id          BLOB,
    item_no          INTEGER,
    name             TEXT NOT NULL,
    unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, line)
) STRICT, WITHOUT ROWID;

CREATE TABLE checkout_attempts (
    id        INTEGER PRIMARY KEY,
    sale_id   BLOB,
    item_no   INTEGER NOT NULL,
    buyer_ref TEXT NOT NULL,
    at        INTEGER NOT NULL,
    outcome   TEXT NOT NULL,
    code      TEXT
) STRICT;

CREATE INDEX checkout_attempts_sale ON checkout_attempts (sale_id, at);
