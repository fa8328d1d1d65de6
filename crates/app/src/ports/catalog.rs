//! Products.

use async_trait::async_trait;
use flashmart_domain::ProductId;
use time::OffsetDateTime;

use crate::catalog::{Product, ProductFilter};
use crate::error::StoreError;
use crate::page::{Page, PageRequest};

#[async_trait]
pub trait CatalogStore: Send + Sync + std::fmt::Debug + 'static {
    async fn insert_product(&self, product: &Product) -> Result<(), StoreError>;
    /// A product that is not deleted (active or not).
    async fn product(&self, id: ProductId) -> Result<Option<Product>, StoreError>;
    /// Replaces the product's editable fields if it is still at `product.version - 1`: `false`
    /// when someone (a checkout taking stock, another edit) changed it since it was read.
    async fn update_product(&self, product: &Product) -> Result<bool, StoreError>;
    /// Soft delete: the product disappears from the catalog and carts; orders keep their
    /// snapshot. `false` when there was no such product.
    async fn delete_product(&self, id: ProductId, now: OffsetDateTime) -> Result<bool, StoreError>;
    /// Products matching the filter, newest first.
    async fn list_products(
        &self,
        filter: &ProductFilter,
        page: PageRequest,
    ) -> Result<Page<Product>, StoreError>;
}
