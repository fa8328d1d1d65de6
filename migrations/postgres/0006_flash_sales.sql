-- Flash sales, their items and schedules, reservations and the compatibility API's checkout
-- attempts. A reservation made through the API has a `pending_payment` order (orders, with its
-- one line in order_items), written in the same transaction as the reservation.

CREATE TABLE flash_sale_schedules (
    id                   uuid PRIMARY KEY,
    name                 text NOT NULL CONSTRAINT "flash_sale_schedules.name" UNIQUE,
    recurrence           text NOT NULL CHECK (recurrence IN ('hourly', 'daily')),
    item_count           integer NOT NULL CHECK (item_count > 0),
    price_cents          bigint NOT NULL CHECK (price_cents >= 0),
    currency             text NOT NULL,
    per_user_limit       integer NOT NULL CHECK (per_user_limit > 0),
    reservation_ttl_secs bigint NOT NULL CHECK (reservation_ttl_secs > 0),
    duration_secs        bigint NOT NULL CHECK (duration_secs > 0),
    active               boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL
);

CREATE TABLE flash_sales (
    id                   uuid PRIMARY KEY,
    name                 text NOT NULL,
    starts_at            timestamptz NOT NULL,
    ends_at              timestamptz NOT NULL,
    per_user_limit       integer NOT NULL CHECK (per_user_limit > 0),
    reservation_ttl_secs bigint NOT NULL CHECK (reservation_ttl_secs > 0),
    currency             text NOT NULL,
    schedule_id          uuid REFERENCES flash_sale_schedules (id),
    slot                 timestamptz,
    item_count           integer NOT NULL,
    total_stock          bigint NOT NULL,
    created_at           timestamptz NOT NULL,
    CHECK (ends_at > starts_at),
    CHECK ((schedule_id IS NULL) = (slot IS NULL))
);

-- One sale per schedule slot, however many schedulers race to make it.
CREATE UNIQUE INDEX flash_sales_slot ON flash_sales (schedule_id, slot) WHERE schedule_id IS NOT NULL;
CREATE INDEX flash_sales_starts ON flash_sales (starts_at);
CREATE INDEX flash_sales_ends ON flash_sales (ends_at);

-- Items are numbered 1..item_count within their sale. An item with a product took its stock out
-- of the product's when the sale was made; `returned` counts the units given back since the
-- sale ended, and the item is `settled` once nothing of it is held any more.
CREATE TABLE flash_sale_items (
    sale_id     uuid NOT NULL REFERENCES flash_sales (id) ON DELETE CASCADE,
    no          integer NOT NULL CHECK (no > 0),
    name        text NOT NULL,
    image_url   text,
    product_id  uuid,
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    stock       bigint NOT NULL CHECK (stock > 0),
    returned    bigint NOT NULL DEFAULT 0,
    settled     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (sale_id, no)
);

CREATE INDEX flash_sale_items_unsettled ON flash_sale_items (sale_id)
    WHERE product_id IS NOT NULL AND NOT settled;

-- buyer_id is the user's id, or for the compatibility API an id derived from the caller-named
-- user (buyer_ref), which is why it has no foreign key. Ids are UUID v7, so rows append to the
-- primary key. A reservation's code is its id in base 32: no code column.
CREATE TABLE reservations (
    id                      uuid PRIMARY KEY,
    sale_id                 uuid NOT NULL,
    item_no                 integer NOT NULL,
    buyer_id                uuid NOT NULL,
    buyer_ref               text,
    quantity                integer NOT NULL CHECK (quantity > 0),
    status                  text NOT NULL
                            CHECK (status IN ('reserved', 'purchased', 'expired', 'cancelled')),
    created_at              timestamptz NOT NULL,
    expires_at              timestamptz NOT NULL,
    purchased_at            timestamptz,
    released_at             timestamptz,
    order_id                uuid,
    idempotency_key         text,
    idempotency_fingerprint bytea
);

CREATE INDEX reservations_sale ON reservations (sale_id, id);
CREATE INDEX reservations_due ON reservations (expires_at) WHERE status = 'reserved';
CREATE INDEX reservations_keyed ON reservations (created_at) WHERE idempotency_key IS NOT NULL;

CREATE TABLE checkout_attempts (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sale_id   uuid,
    item_no   bigint NOT NULL,
    buyer_ref text NOT NULL,
    at        timestamptz NOT NULL,
    outcome   text NOT NULL,
    code      text
);

CREATE INDEX checkout_attempts_sale ON checkout_attempts (sale_id, at);
