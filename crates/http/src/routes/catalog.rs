//! The catalog: public browsing and search, operators' product management.

use std::sync::Arc;

use axum::extract::State;
use flashmart_app::catalog::{Catalog, Product, ProductDraft, ProductFilter, ProductPatch};
use flashmart_domain::ProductId;
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, created, ok};
use crate::error::ApiError;
use crate::extract::{Json, OperatorAuth, Path, Query};
use crate::state::AppState;
use crate::views::{Empty, PageOf};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_products))
        .routes(routes!(get_product))
        .routes(routes!(create_product, admin_list_products))
        .routes(routes!(update_product, delete_product, admin_get_product))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductOut {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub currency: String,
    pub stock: u32,
    /// Units sold through cart checkouts.
    pub sold: u64,
    pub category: Option<String>,
    pub images: Vec<String>,
    pub active: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<Product> for ProductOut {
    fn from(p: Product) -> Self {
        Self {
            id: *p.id.as_uuid(),
            name: p.name,
            description: p.description,
            price_cents: p.price.cents(),
            currency: p.price.currency().as_str().to_owned(),
            stock: p.stock,
            sold: p.sold,
            category: p.category,
            images: p.images,
            active: p.active,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductQuery {
    /// Words that must all appear in the name or description.
    pub q: Option<String>,
    pub category: Option<String>,
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 10_000_000)]
    #[serde(default, deserialize_with = "crate::views::page_number")]
    pub page: Option<u32>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::views::per_page")]
    pub per_page: Option<u32>,
}

async fn list(
    catalog: &Catalog,
    query: ProductQuery,
    include_inactive: bool,
) -> Result<Reply<PageOf<ProductOut>>, ApiError> {
    let filter = ProductFilter {
        q: query.q,
        category: query.category,
        include_inactive,
    };
    let page = flashmart_app::PageRequest::new(query.page, query.per_page);
    let products = catalog.list(filter, page).await?;
    Ok(ok(PageOf::from_page(products, ProductOut::from)))
}

/// Active products, newest first; `q` searches names and descriptions, `category` filters.
#[utoipa::path(get, path = "/api/v1/products", tag = "catalog",
    params(ProductQuery),
    responses((status = 200, description = "A page of products", body = Envelope<PageOf<ProductOut>>)))]
pub async fn list_products(
    State(catalog): State<Arc<Catalog>>,
    Query(query): Query<ProductQuery>,
) -> Result<Reply<PageOf<ProductOut>>, ApiError> {
    list(&catalog, query, false).await
}

/// One active product.
#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "catalog",
    params(("id" = Uuid, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = Envelope<ProductOut>),
        (status = 404, description = "20001: product not found", body = ErrorEnvelope),
    ))]
pub async fn get_product(
    State(catalog): State<Arc<Catalog>>,
    Path(id): Path<Uuid>,
) -> Result<Reply<ProductOut>, ApiError> {
    Ok(ok(catalog
        .get(ProductId::from_uuid(id), false)
        .await?
        .into()))
}

/// An image: an `/uploads/` path or an http(s) URL, at most 500 characters, no spaces.
#[derive(Debug, ToSchema)]
#[schema(
    pattern = "^(/uploads/|https?://)[^\\s\\x00-\\x1f\\x7f-\\x9f]*$",
    max_length = 500
)]
pub struct ImageUrl(#[allow(dead_code)] String);

/// Fields other than these (an id, timestamps, `sold`) are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProductIn {
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    #[schema(max_length = 5000)]
    pub description: Option<String>,
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    pub price_cents: i64,
    /// ISO 4217; USD when absent.
    #[schema(pattern = "^[A-Za-z]{3}$")]
    pub currency: Option<String>,
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub stock: i64,
    /// Lower-case letters, digits and `-`.
    #[schema(pattern = "^[a-z0-9-]{1,50}$")]
    pub category: Option<String>,
    #[serde(default)]
    #[schema(max_items = 10, value_type = Vec<ImageUrl>)]
    pub images: Vec<String>,
    /// Defaults to true.
    pub active: Option<bool>,
}

/// Creates a product. Operators and admins.
#[utoipa::path(post, path = "/api/v1/admin/products", tag = "admin",
    security(("bearer" = [])),
    request_body = ProductIn,
    responses(
        (status = 201, description = "Created", body = Envelope<ProductOut>),
        (status = 403, description = "Not an operator", body = ErrorEnvelope),
        (status = 422, description = "Invalid product", body = ErrorEnvelope),
    ))]
pub async fn create_product(
    State(catalog): State<Arc<Catalog>>,
    OperatorAuth(staff): OperatorAuth,
    Json(body): Json<ProductIn>,
) -> Result<Reply<ProductOut>, ApiError> {
    let product = catalog
        .create(
            staff.actor(),
            ProductDraft {
                name: body.name,
                description: body.description,
                price_cents: body.price_cents,
                currency: body.currency,
                stock: body.stock,
                category: body.category,
                images: body.images,
                active: body.active,
            },
        )
        .await?;
    Ok(created(product.into()))
}

/// Every product, inactive ones too. Operators and admins.
#[utoipa::path(get, path = "/api/v1/admin/products", tag = "admin",
    security(("bearer" = [])),
    params(ProductQuery),
    responses((status = 200, description = "A page of products", body = Envelope<PageOf<ProductOut>>)))]
pub async fn admin_list_products(
    State(catalog): State<Arc<Catalog>>,
    _operator: OperatorAuth,
    Query(query): Query<ProductQuery>,
) -> Result<Reply<PageOf<ProductOut>>, ApiError> {
    list(&catalog, query, true).await
}

/// One product, active or not. Operators and admins.
#[utoipa::path(get, path = "/api/v1/admin/products/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = Envelope<ProductOut>),
        (status = 404, description = "20001: product not found", body = ErrorEnvelope),
    ))]
pub async fn admin_get_product(
    State(catalog): State<Arc<Catalog>>,
    _operator: OperatorAuth,
    Path(id): Path<Uuid>,
) -> Result<Reply<ProductOut>, ApiError> {
    Ok(ok(catalog
        .get(ProductId::from_uuid(id), true)
        .await?
        .into()))
}

/// `null` and absent differ: `Some(None)` clears, `None` leaves as is.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Absent fields stay as they are; `category: null` clears the category.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProductPatchIn {
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: Option<String>,
    #[schema(max_length = 5000)]
    pub description: Option<String>,
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    pub price_cents: Option<i64>,
    #[schema(pattern = "^[A-Za-z]{3}$")]
    pub currency: Option<String>,
    /// Sets the stock (an absolute number, not a change).
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub stock: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[a-z0-9-]{1,50}$")]
    pub category: Option<Option<String>>,
    #[schema(max_items = 10, value_type = Option<Vec<ImageUrl>>)]
    pub images: Option<Vec<String>>,
    pub active: Option<bool>,
}

/// Changes a product. Operators and admins.
#[utoipa::path(patch, path = "/api/v1/admin/products/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Product id")),
    request_body = ProductPatchIn,
    responses(
        (status = 200, description = "Changed", body = Envelope<ProductOut>),
        (status = 404, description = "20001: product not found", body = ErrorEnvelope),
        (status = 422, description = "Invalid change", body = ErrorEnvelope),
    ))]
pub async fn update_product(
    State(catalog): State<Arc<Catalog>>,
    OperatorAuth(staff): OperatorAuth,
    Path(id): Path<Uuid>,
    Json(body): Json<ProductPatchIn>,
) -> Result<Reply<ProductOut>, ApiError> {
    let product = catalog
        .update(
            staff.actor(),
            ProductId::from_uuid(id),
            ProductPatch {
                name: body.name,
                description: body.description,
                price_cents: body.price_cents,
                currency: body.currency,
                stock: body.stock,
                category: body.category,
                images: body.images,
                active: body.active,
            },
        )
        .await?;
    Ok(ok(product.into()))
}

/// Deletes a product (softly: orders keep their copy of it). Operators and admins.
#[utoipa::path(delete, path = "/api/v1/admin/products/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Product id")),
    responses(
        (status = 200, description = "Deleted", body = Envelope<Empty>),
        (status = 404, description = "20001: product not found", body = ErrorEnvelope),
    ))]
pub async fn delete_product(
    State(catalog): State<Arc<Catalog>>,
    OperatorAuth(staff): OperatorAuth,
    Path(id): Path<Uuid>,
) -> Result<Reply<Empty>, ApiError> {
    catalog
        .delete(staff.actor(), ProductId::from_uuid(id))
        .await?;
    Ok(ok(Empty {}))
}
