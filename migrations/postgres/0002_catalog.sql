-- The catalog, and the carts that point into it. version goes up with every change (a checkout
-- taking stock included), so an edit applies only to the row it read. The CHECK on stock is the
-- last line against overselling.

CREATE TABLE products (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    price_cents bigint NOT NULL CONSTRAINT "products.price_cents" CHECK (price_cents >= 0),
    currency    text NOT NULL,
    stock       bigint NOT NULL CONSTRAINT "products.stock" CHECK (stock >= 0),
    sold        bigint NOT NULL DEFAULT 0 CONSTRAINT "products.sold" CHECK (sold >= 0),
    category    text,
    images      text[] NOT NULL DEFAULT '{}',
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted_at  timestamptz,
    version     bigint NOT NULL DEFAULT 1
);

CREATE INDEX products_listing ON products (created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX products_category ON products (category, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

CREATE TABLE cart_items (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    product_id uuid NOT NULL REFERENCES products (id),
    quantity   integer NOT NULL CONSTRAINT "cart_items.quantity" CHECK (quantity > 0),
    added_at   timestamptz NOT NULL,
    PRIMARY KEY (user_id, product_id)
);

CREATE INDEX cart_items_product ON cart_items (product_id);
