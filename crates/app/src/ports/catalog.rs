//! Products.

use async_trait::async_trait;
use flashmart_domain::ProductId;
use time::OffsetDateTime;

use crate::audit::AuditEntry;
use crate::catalog::{Product, ProductFilter};
use crate::error::StoreError;
use crate::page::{Page, PageRequest};

#[async_trait]
pub trait CatalogStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a new product and `audit`, in one transaction (so for every audited method below).
    async fn insert_product(&self, product: &Product, audit: &AuditEntry)
    -> Result<(), StoreError>;
    /// A product that is not deleted (active or not).
    async fn product(&self, id: ProductId) -> Result<Option<Product>, StoreError>;
    /// Replaces the product's editable fields if it is still at `product.version - 1`: `false`
    /// when someone (a checkout taking stock, another edit) changed it since it was read.
    async fn update_product(
        &self,
        product: &Product,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Soft delete of the product if it is still at `product.version`: it disappears from the
    /// catalog and carts; orders keep their snapshot. `false` when it changed since it was read
    /// or is gone.
    async fn delete_product(
        &self,
        product: &Product,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Products matching the filter, newest first.
    async fn list_products(
        &self,
        filter: &ProductFilter,
        page: PageRequest,
    ) -> Result<Page<Product>, StoreError>;
}
