//! The catalog: products with a price, stock, category and pictures; created and edited by
//! operators, browsed by everyone. Fields a client must not set (id, timestamps, sold counts,
//! version) are never taken from a request.

use std::sync::Arc;

use flashmart_domain::{Currency, Money, ProductId};
use time::OffsetDateTime;

use crate::audit::{Actor, AuditEntry};
use crate::clock::Clock;
use crate::error::{FieldError, StoreError};
use crate::page::{Page, PageRequest};
use crate::ports::CatalogStore;

pub const MAX_STOCK: i64 = 10_000_000;
const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 5_000;
const MAX_IMAGES: usize = 10;
const MAX_URL: usize = 500;
const MAX_CATEGORY: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub description: String,
    pub price: Money,
    pub stock: u32,
    /// Units sold through cart checkouts (never set by a client).
    pub sold: u64,
    pub category: Option<String>,
    pub images: Vec<String>,
    pub active: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Bumped by every change (checkouts included): edits are applied only to the version read.
    pub version: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductFilter {
    /// Words that must all appear in the name or description (case-insensitive).
    pub q: Option<String>,
    pub category: Option<String>,
    /// Operators see inactive products too.
    pub include_inactive: bool,
}

/// Most search words used; the rest are ignored.
pub const MAX_SEARCH_WORDS: usize = 8;

impl ProductFilter {
    /// The search words every adapter matches, each as a SQL `LIKE` pattern that finds it
    /// anywhere, literally: its `%`, `_` and `\` escaped for `ESCAPE '\'`.
    pub fn like_patterns(&self) -> impl Iterator<Item = String> + '_ {
        self.q
            .iter()
            .flat_map(|q| q.split_whitespace())
            .take(MAX_SEARCH_WORDS)
            .map(|word| {
                let escaped = word
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                format!("%{escaped}%")
            })
    }
}

/// A new product as an operator describes it.
#[derive(Debug, Clone)]
pub struct ProductDraft {
    pub name: String,
    pub description: Option<String>,
    pub price_cents: i64,
    pub currency: Option<String>,
    pub stock: i64,
    pub category: Option<String>,
    pub images: Vec<String>,
    pub active: Option<bool>,
}

/// Changes to a product; absent fields stay as they are (`Some(None)` clears an optional one).
#[derive(Debug, Clone, Default)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price_cents: Option<i64>,
    pub currency: Option<String>,
    pub stock: Option<i64>,
    pub category: Option<Option<String>>,
    pub images: Option<Vec<String>>,
    pub active: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("product not found")]
    NotFound,
    #[error("invalid product")]
    Invalid(Vec<FieldError>),
    #[error("the product kept changing; try again")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn check_text(field: &'static str, v: &str, max: usize, errors: &mut Vec<FieldError>) -> String {
    let t = v.trim();
    if t.is_empty() || t.chars().count() > max {
        errors.push(FieldError::new(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    t.to_owned()
}

/// A category slug: lower-case letters, digits and `-`.
pub fn normalize_category(raw: &str) -> Option<String> {
    let c = raw.trim().to_ascii_lowercase();
    let ok = !c.is_empty()
        && c.len() <= MAX_CATEGORY
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(c)
}

fn check_images(images: &[String], errors: &mut Vec<FieldError>) {
    if images.len() > MAX_IMAGES {
        errors.push(FieldError::new(
            "images",
            format!("at most {MAX_IMAGES} images"),
        ));
    }
    for (i, url) in images.iter().enumerate() {
        let ok = url.len() <= MAX_URL
            && (url.starts_with("/uploads/")
                || url.starts_with("/images/")
                || url.starts_with("https://")
                || url.starts_with("http://"))
            && !url.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            errors.push(FieldError::new(
                format!("images[{i}]"),
                "must be an /uploads/ path or an http(s) URL",
            ));
        }
    }
}

fn check_product(p: &Product, errors: &mut Vec<FieldError>) {
    if p.description.chars().count() > MAX_DESCRIPTION {
        errors.push(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        ));
    }
    check_images(&p.images, errors);
}

fn money(cents: i64, currency: Option<&str>, errors: &mut Vec<FieldError>) -> Option<Money> {
    let currency = match currency.map(Currency::parse) {
        None => Currency::USD,
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            errors.push(FieldError::new("currency", e));
            return None;
        }
    };
    Money::price(cents, currency)
        .map_err(|e| errors.push(FieldError::new("price_cents", e)))
        .ok()
}

fn stock(n: i64, errors: &mut Vec<FieldError>) -> u32 {
    match u32::try_from(n) {
        Ok(s) if n <= MAX_STOCK => s,
        _ => {
            errors.push(FieldError::new(
                "stock",
                format!("must be between 0 and {MAX_STOCK}"),
            ));
            0
        }
    }
}

fn category(raw: Option<&str>, errors: &mut Vec<FieldError>) -> Option<String> {
    let raw = raw?;
    let c = normalize_category(raw);
    if c.is_none() {
        errors.push(FieldError::new(
            "category",
            format!("must be 1 to {MAX_CATEGORY} lower-case letters, digits or -"),
        ));
    }
    c
}

/// What the audit log keeps of a product: the fields an operator sets.
fn audit_fields(p: &Product) -> serde_json::Value {
    serde_json::json!({
        "name": p.name,
        "description": p.description,
        "price_cents": p.price.cents(),
        "currency": p.price.currency().as_str(),
        "stock": p.stock,
        "category": p.category,
        "images": p.images,
        "active": p.active,
    })
}

#[derive(Debug)]
pub struct Catalog {
    store: Arc<dyn CatalogStore>,
    clock: Arc<dyn Clock>,
}

impl Catalog {
    pub fn new(store: Arc<dyn CatalogStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    pub async fn create(&self, by: Actor, draft: ProductDraft) -> Result<Product, CatalogError> {
        let mut errors = Vec::new();
        let now = self.clock.now();
        let name = check_text("name", &draft.name, MAX_NAME, &mut errors);
        let price = money(draft.price_cents, draft.currency.as_deref(), &mut errors);
        let product = Product {
            id: ProductId::new(),
            name,
            description: draft.description.unwrap_or_default().trim().to_owned(),
            price: price.unwrap_or(Money::zero(Currency::USD)),
            stock: stock(draft.stock, &mut errors),
            sold: 0,
            category: category(draft.category.as_deref(), &mut errors),
            images: draft.images,
            active: draft.active.unwrap_or(true),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        check_product(&product, &mut errors);
        if !errors.is_empty() {
            return Err(CatalogError::Invalid(errors));
        }
        let audit = AuditEntry::new(
            by,
            now,
            "product.created",
            product.id,
            None,
            Some(audit_fields(&product)),
        );
        self.store.insert_product(&product, &audit).await?;
        Ok(product)
    }

    /// Applies `patch` to the product as it is now; retried if a checkout or another edit
    /// changed it in between, so no concurrent change is lost.
    pub async fn update(
        &self,
        by: Actor,
        id: ProductId,
        patch: ProductPatch,
    ) -> Result<Product, CatalogError> {
        for _ in 0..5 {
            let current = self
                .store
                .product(id)
                .await?
                .ok_or(CatalogError::NotFound)?;
            let mut errors = Vec::new();
            let mut next = current.clone();
            if let Some(name) = &patch.name {
                next.name = check_text("name", name, MAX_NAME, &mut errors);
            }
            if let Some(d) = &patch.description {
                next.description = d.trim().to_owned();
            }
            if patch.price_cents.is_some() || patch.currency.is_some() {
                let cents = patch.price_cents.unwrap_or(current.price.cents());
                let cur = patch
                    .currency
                    .clone()
                    .unwrap_or_else(|| current.price.currency().as_str().to_owned());
                if let Some(m) = money(cents, Some(&cur), &mut errors) {
                    next.price = m;
                }
            }
            if let Some(s) = patch.stock {
                next.stock = stock(s, &mut errors);
            }
            if let Some(c) = &patch.category {
                next.category = category(c.as_deref(), &mut errors);
            }
            if let Some(images) = &patch.images {
                next.images = images.clone();
            }
            if let Some(active) = patch.active {
                next.active = active;
            }
            check_product(&next, &mut errors);
            if !errors.is_empty() {
                return Err(CatalogError::Invalid(errors));
            }
            next.updated_at = self.clock.now();
            next.version = current.version + 1;
            let audit = AuditEntry::new(
                by,
                next.updated_at,
                "product.updated",
                id,
                Some(audit_fields(&current)),
                Some(audit_fields(&next)),
            );
            if self.store.update_product(&next, &audit).await? {
                return Ok(next);
            }
        }
        Err(CatalogError::Busy)
    }

    /// Deletes the product as it is now; retried like [`Catalog::update`], so that the audit log
    /// records the fields it had when it went.
    pub async fn delete(&self, by: Actor, id: ProductId) -> Result<(), CatalogError> {
        for _ in 0..5 {
            let current = self
                .store
                .product(id)
                .await?
                .ok_or(CatalogError::NotFound)?;
            let now = self.clock.now();
            let audit = AuditEntry::new(
                by,
                now,
                "product.deleted",
                id,
                Some(audit_fields(&current)),
                None,
            );
            if self.store.delete_product(&current, now, &audit).await? {
                return Ok(());
            }
        }
        Err(CatalogError::Busy)
    }

    /// A product as the public sees it: inactive ones do not exist.
    pub async fn get(
        &self,
        id: ProductId,
        include_inactive: bool,
    ) -> Result<Product, CatalogError> {
        match self.store.product(id).await? {
            Some(p) if p.active || include_inactive => Ok(p),
            _ => Err(CatalogError::NotFound),
        }
    }

    #[tracing::instrument(level = "debug", name = "catalog.list", skip_all)]
    pub async fn list(
        &self,
        mut filter: ProductFilter,
        page: PageRequest,
    ) -> Result<Page<Product>, CatalogError> {
        filter.q = filter
            .q
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty());
        if let Some(c) = &filter.category {
            match normalize_category(c) {
                Some(c) => filter.category = Some(c),
                // No product can be in a category that cannot exist.
                None => return Ok(Page::new(page, Vec::new(), 0)),
            }
        }
        Ok(self.store.list_products(&filter, page).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(q: &str) -> Vec<String> {
        ProductFilter {
            q: Some(q.to_owned()),
            ..ProductFilter::default()
        }
        .like_patterns()
        .collect()
    }

    #[test]
    fn search_words_cannot_smuggle_wildcards() {
        assert_eq!(patterns("50% a_b c\\d"), ["%50\\%%", "%a\\_b%", "%c\\\\d%"]);
    }

    #[test]
    fn at_most_eight_words_are_searched() {
        assert_eq!(patterns("  red   shoe ").len(), 2);
        assert_eq!(patterns(&"w ".repeat(20)).len(), MAX_SEARCH_WORDS);
        assert!(ProductFilter::default().like_patterns().next().is_none());
    }
}
