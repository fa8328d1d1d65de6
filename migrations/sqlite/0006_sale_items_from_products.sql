-- A flash-sale item with a product takes its stock out of the product's when the sale is made;
-- what it does not sell goes back once the sale has ended. `returned` counts the units given
-- back so far; an item is `settled` once nothing of it is held any more. Items made before this
-- migration never took stock from their product, so they have nothing to give back.
ALTER TABLE flash_sale_items ADD COLUMN returned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flash_sale_items ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
UPDATE flash_sale_items SET settled = 1;
CREATE INDEX flash_sale_items_unsettled ON flash_sale_items (sale_id)
    WHERE product_id IS NOT NULL AND settled = 0;
