//! The shop: addresses, the cart, coupons, checkout and orders. Prices always come from the
//! catalog, never from the client; stock is taken by a conditional update inside one transaction.

pub mod model;
pub mod pricing;

use std::sync::Arc;

use flashmart_domain::address::{Address, AddressFields};
use flashmart_domain::coupon::{CouponError, CouponRules, Discount, normalize_code};
use flashmart_domain::{
    AddressId, CouponId, Currency, Money, OrderId, OrderStatus, ProductId, UserId,
};
use time::{Duration, OffsetDateTime};

use crate::audit::{Actor, AuditEntry, time_field};
use crate::clock::Clock;
use crate::error::{FieldError, StoreError};
use crate::flash_sale::FlashSales;
use crate::page::{Page, PageRequest};
use crate::ports::{AddressStore, CartStore, CatalogStore, CouponStore, OrderStore};
use model::{
    AddressRecord, CancelOutcome, CartLine, CheckoutOutcome, CheckoutRequest, Coupon, OrderRecord,
};

/// Most units of one product in a cart, whatever `orders.max_units_per_product` says.
pub const MAX_CART_QUANTITY: i64 = 99;
/// Most addresses one user keeps.
pub const MAX_ADDRESSES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error("address not found")]
    AddressNotFound,
    #[error("product not found")]
    ProductNotFound,
    #[error("that product is not in the cart")]
    CartLineNotFound,
    #[error("the cart is empty")]
    EmptyCart,
    #[error("{name} is no longer available")]
    Unavailable { product_id: ProductId, name: String },
    #[error("only {available} of {name} left")]
    OutOfStock {
        product_id: ProductId,
        name: String,
        available: u32,
    },
    #[error("the cart holds products priced in different currencies")]
    MixedCurrencies,
    #[error("no such coupon")]
    CouponNotFound,
    #[error("{0}")]
    Coupon(CouponError),
    #[error("order not found")]
    OrderNotFound,
    #[error("an order that is {0} cannot be cancelled")]
    NotCancellable(OrderStatus),
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("{0} unpaid orders are open already: pay or cancel one first")]
    TooManyOpenOrders(u32),
    #[error("at most {limit} of one product per order ({name})")]
    TooManyUnits { name: String, limit: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A cart line as shown: the product now, what the line costs, and what would stop a checkout.
#[derive(Debug, Clone)]
pub struct CartLineView {
    pub line: CartLine,
    pub line_total: Option<Money>,
    pub problem: Option<CartProblem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartProblem {
    /// Deleted or deactivated.
    Unavailable,
    /// Fewer in stock than the line asks for.
    OnlyLeft(u32),
}

#[derive(Debug, Clone)]
pub struct CartView {
    pub lines: Vec<CartLineView>,
    /// The sum of the lines, when they share one currency.
    pub subtotal: Option<Money>,
    /// Whether a checkout would go through as the cart is now (coupon aside).
    pub ready: bool,
}

/// A coupon as an operator describes it.
#[derive(Debug, Clone)]
pub struct CouponDraft {
    pub code: String,
    /// `percent` or `fixed`.
    pub kind: String,
    pub percent: Option<i64>,
    pub amount_cents: Option<i64>,
    pub currency: Option<String>,
    pub min_spend_cents: Option<i64>,
    pub starts_at: Option<OffsetDateTime>,
    pub ends_at: OffsetDateTime,
    pub max_uses: Option<i64>,
    pub per_user_limit: Option<i64>,
}

/// Where a checkout ships: a saved address, or one given with the order.
#[derive(Debug, Clone)]
pub enum ShipTo {
    Saved(AddressId),
    Given(AddressFields),
}

#[derive(Debug)]
pub struct Shop {
    addresses: Arc<dyn AddressStore>,
    carts: Arc<dyn CartStore>,
    coupons: Arc<dyn CouponStore>,
    orders: Arc<dyn OrderStore>,
    catalog: Arc<dyn CatalogStore>,
    flash_sales: Arc<FlashSales>,
    clock: Arc<dyn Clock>,
    settings: ShopSettings,
}

/// The shop's limits.
#[derive(Debug, Clone, Copy)]
pub struct ShopSettings {
    /// How long a cart order waits for payment.
    pub payment_window: Duration,
    /// Unpaid cart orders a user may have open at once: stock held for payment is capped.
    pub max_open_orders_per_user: u32,
    /// Units of one product a cart line (and so an order) may hold.
    pub max_units_per_product: u32,
}

/// The stores the shop needs, all one adapter in practice.
#[derive(Debug, Clone)]
pub struct ShopStores {
    pub addresses: Arc<dyn AddressStore>,
    pub carts: Arc<dyn CartStore>,
    pub coupons: Arc<dyn CouponStore>,
    pub orders: Arc<dyn OrderStore>,
    pub catalog: Arc<dyn CatalogStore>,
}

fn invalid(field: impl Into<std::borrow::Cow<'static, str>>, message: impl ToString) -> ShopError {
    ShopError::Invalid(vec![FieldError::new(field, message)])
}

fn parse_address(fields: AddressFields) -> Result<Address, ShopError> {
    Address::parse(fields).map_err(|errors| {
        ShopError::Invalid(
            errors
                .into_iter()
                .map(|e| FieldError::new(e.field, e.message))
                .collect(),
        )
    })
}

impl Shop {
    pub fn new(
        stores: ShopStores,
        flash_sales: Arc<FlashSales>,
        clock: Arc<dyn Clock>,
        settings: ShopSettings,
    ) -> Self {
        Self {
            addresses: stores.addresses,
            carts: stores.carts,
            coupons: stores.coupons,
            orders: stores.orders,
            catalog: stores.catalog,
            flash_sales,
            clock,
            settings,
        }
    }

    // ---- addresses -------------------------------------------------------------------------

    pub async fn addresses(&self, user: UserId) -> Result<Vec<AddressRecord>, ShopError> {
        Ok(self.addresses.addresses(user).await?)
    }

    pub async fn address(&self, user: UserId, id: AddressId) -> Result<AddressRecord, ShopError> {
        self.addresses
            .addresses(user)
            .await?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or(ShopError::AddressNotFound)
    }

    /// Adds an address; the first one, or one asked to be, becomes the default.
    pub async fn add_address(
        &self,
        user: UserId,
        fields: AddressFields,
        make_default: bool,
    ) -> Result<AddressRecord, ShopError> {
        let address = parse_address(fields)?;
        let now = self.clock.now();
        let record = AddressRecord {
            id: AddressId::new(),
            user_id: user,
            address,
            is_default: make_default,
            created_at: now,
            updated_at: now,
        };
        self.addresses
            .add_address(&record, MAX_ADDRESSES)
            .await?
            .ok_or(ShopError::Conflict("too many addresses: delete one first"))
    }

    pub async fn update_address(
        &self,
        user: UserId,
        id: AddressId,
        fields: AddressFields,
        make_default: bool,
    ) -> Result<AddressRecord, ShopError> {
        let mut record = self.address(user, id).await?;
        record.address = parse_address(fields)?;
        record.is_default |= make_default;
        record.updated_at = self.clock.now();
        self.addresses.save_address(&record).await?;
        Ok(record)
    }

    pub async fn make_default_address(
        &self,
        user: UserId,
        id: AddressId,
    ) -> Result<AddressRecord, ShopError> {
        let mut record = self.address(user, id).await?;
        record.is_default = true;
        record.updated_at = self.clock.now();
        self.addresses.save_address(&record).await?;
        Ok(record)
    }

    pub async fn delete_address(&self, user: UserId, id: AddressId) -> Result<(), ShopError> {
        if self.addresses.delete_address(user, id).await? {
            Ok(())
        } else {
            Err(ShopError::AddressNotFound)
        }
    }

    // ---- cart ------------------------------------------------------------------------------

    /// The cart with today's prices and stock, and what would stop a checkout: priced by the
    /// rules checkout applies (`pricing`).
    pub async fn cart(&self, user: UserId) -> Result<CartView, ShopError> {
        let lines = self.carts.cart(user).await?;
        let priced = pricing::price_for_order(&lines, self.settings.max_units_per_product);
        let in_stock = lines
            .iter()
            .all(|l| l.product.as_ref().is_some_and(|p| p.stock >= l.quantity));
        let ready = priced.is_ok() && in_stock;
        let subtotal = pricing::subtotal(&lines);
        let views = lines
            .into_iter()
            .map(|line| {
                let (line_total, problem) = match &line.product {
                    Some(p) if p.active => (
                        pricing::line_total(p.price, line.quantity),
                        (p.stock < line.quantity).then_some(CartProblem::OnlyLeft(p.stock)),
                    ),
                    _ => (None, Some(CartProblem::Unavailable)),
                };
                CartLineView {
                    line,
                    line_total,
                    problem,
                }
            })
            .collect();
        Ok(CartView {
            lines: views,
            subtotal,
            ready,
        })
    }

    /// Puts `quantity` of a product in the cart (replacing what was there).
    pub async fn set_cart_line(
        &self,
        user: UserId,
        product: ProductId,
        quantity: i64,
    ) -> Result<CartView, ShopError> {
        let quantity = u32::try_from(quantity)
            .ok()
            .filter(|q| (1..=MAX_CART_QUANTITY).contains(&i64::from(*q)))
            .ok_or_else(|| {
                invalid(
                    "quantity",
                    format!("must be between 1 and {MAX_CART_QUANTITY}"),
                )
            })?;
        let name = match self.catalog.product(product).await? {
            Some(p) if p.active => p.name,
            _ => return Err(ShopError::ProductNotFound),
        };
        let limit = self.settings.max_units_per_product;
        if quantity > limit {
            return Err(ShopError::TooManyUnits { name, limit });
        }
        self.carts
            .set_cart_line(user, product, quantity, self.clock.now())
            .await?;
        self.cart(user).await
    }

    pub async fn remove_cart_line(
        &self,
        user: UserId,
        product: ProductId,
    ) -> Result<CartView, ShopError> {
        if !self.carts.remove_cart_line(user, product).await? {
            return Err(ShopError::CartLineNotFound);
        }
        self.cart(user).await
    }

    pub async fn clear_cart(&self, user: UserId) -> Result<(), ShopError> {
        Ok(self.carts.clear_cart(user).await?)
    }

    // ---- checkout and orders ----------------------------------------------------------------

    /// Places an order from the cart: stock taken, coupon counted, cart emptied, all or nothing.
    /// The order waits `orders.payment_window_secs` for payment.
    #[tracing::instrument(level = "debug", name = "shop.checkout", skip_all)]
    pub async fn checkout(
        &self,
        user: UserId,
        ship_to: ShipTo,
        coupon: Option<&str>,
    ) -> Result<OrderRecord, ShopError> {
        let shipping = match ship_to {
            ShipTo::Saved(id) => self.address(user, id).await?.address,
            ShipTo::Given(fields) => parse_address(fields)?,
        };
        let coupon_code = match coupon {
            None => None,
            Some(raw) => Some(normalize_code(raw).ok_or(ShopError::CouponNotFound)?),
        };
        let now = self.clock.now();
        let request = CheckoutRequest {
            order_id: OrderId::new(),
            user_id: user,
            shipping,
            coupon_code,
            now,
            expires_at: now + self.settings.payment_window,
            max_open_orders: self.settings.max_open_orders_per_user,
            max_units_per_product: self.settings.max_units_per_product,
        };
        match self.orders.checkout(&request).await? {
            CheckoutOutcome::Placed(order) => Ok(*order),
            CheckoutOutcome::EmptyCart => Err(ShopError::EmptyCart),
            CheckoutOutcome::Unavailable { product_id, name } => Err(ShopError::Unavailable {
                product_id,
                name: name.unwrap_or_else(|| "a product in the cart".to_owned()),
            }),
            CheckoutOutcome::OutOfStock {
                product_id,
                name,
                available,
            } => Err(ShopError::OutOfStock {
                product_id,
                name,
                available,
            }),
            CheckoutOutcome::MixedCurrencies => Err(ShopError::MixedCurrencies),
            CheckoutOutcome::TooLarge { field } => Err(invalid(field, "the amount is too large")),
            CheckoutOutcome::CouponNotFound => Err(ShopError::CouponNotFound),
            CheckoutOutcome::Coupon(e) => Err(ShopError::Coupon(e)),
            CheckoutOutcome::TooManyOpenOrders => Err(ShopError::TooManyOpenOrders(
                self.settings.max_open_orders_per_user,
            )),
            CheckoutOutcome::TooManyUnits { name, .. } => Err(ShopError::TooManyUnits {
                name,
                limit: self.settings.max_units_per_product,
            }),
        }
    }

    /// One of the user's orders; anyone else's is "not found".
    pub async fn order_of(&self, user: UserId, id: OrderId) -> Result<OrderRecord, ShopError> {
        match self.find_order(id).await? {
            Some(o) if o.user_id == user => Ok(o),
            _ => Err(ShopError::OrderNotFound),
        }
    }

    /// Any order (admins).
    pub async fn order(&self, id: OrderId) -> Result<OrderRecord, ShopError> {
        self.find_order(id).await?.ok_or(ShopError::OrderNotFound)
    }

    /// An order by its id; one not found is looked for again once the flash-sale engine has
    /// stored what it answered (a flash-sale order can be answered before it is stored).
    async fn find_order(&self, id: OrderId) -> Result<Option<OrderRecord>, StoreError> {
        self.flash_sales
            .read_through(|| self.orders.order(id))
            .await
    }

    /// The user's orders, optionally in one status, newest first.
    pub async fn orders_of(
        &self,
        user: UserId,
        status: Option<OrderStatus>,
        page: PageRequest,
    ) -> Result<Page<OrderRecord>, ShopError> {
        self.flash_sales.try_catch_up().await;
        Ok(self.orders.orders_of(user, status, page).await?)
    }

    pub async fn all_orders(
        &self,
        status: Option<OrderStatus>,
        page: PageRequest,
    ) -> Result<Page<OrderRecord>, ShopError> {
        self.flash_sales.try_catch_up().await;
        Ok(self.orders.all_orders(status, page).await?)
    }

    /// The owner cancels an order awaiting payment; its stock goes back on sale.
    pub async fn cancel(&self, user: UserId, id: OrderId) -> Result<OrderRecord, ShopError> {
        self.order_of(user, id).await?;
        let (outcome, released) = self.orders.cancel_order(id, self.clock.now()).await?;
        if let Some(released) = released
            && let Err(err) = self.flash_sales.release(&released).await
        {
            // The order is cancelled; only its units are not back on sale until the engine
            // is reconciled with the records.
            tracing::error!(%err, reservation = %released.reservation, "a cancelled reservation's units could not be given back to the engine");
        }
        match outcome {
            CancelOutcome::Cancelled(order) => Ok(*order),
            CancelOutcome::NotFound => Err(ShopError::OrderNotFound),
            CancelOutcome::NotPending(status) => Err(ShopError::NotCancellable(status)),
        }
    }

    /// Expires cart orders whose payment window passed and returns their stock. Returns them.
    pub async fn sweep_expired(&self) -> Result<Vec<OrderId>, StoreError> {
        const BATCH: u32 = 500;
        let mut all = Vec::new();
        loop {
            let expired = self.orders.expire_orders(self.clock.now(), BATCH).await?;
            let n = expired.len();
            all.extend(expired);
            if n < BATCH as usize {
                break;
            }
        }
        if !all.is_empty() {
            metrics::counter!("orders_expired_total").increment(all.len() as u64);
            tracing::info!(expired = all.len(), "unpaid orders expired; stock returned");
        }
        Ok(all)
    }

    // ---- coupons ---------------------------------------------------------------------------

    pub async fn create_coupon(&self, by: Actor, draft: CouponDraft) -> Result<Coupon, ShopError> {
        let mut errors = Vec::new();
        let code = normalize_code(&draft.code);
        if code.is_none() {
            errors.push(FieldError::new(
                "code",
                "must be 3 to 32 letters, digits, - or _",
            ));
        }
        let currency = match draft.currency.as_deref().map(Currency::parse) {
            None => Currency::USD,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                errors.push(FieldError::new("currency", e));
                Currency::USD
            }
        };
        let money = |field: &'static str, cents: Option<i64>, errors: &mut Vec<FieldError>| {
            // Capped like a price: the document's maximum, and no total near overflow.
            cents.and_then(|c| {
                Money::price(c, currency)
                    .map_err(|e| errors.push(FieldError::new(field, e)))
                    .ok()
            })
        };
        let discount = match draft.kind.as_str() {
            "percent" => match draft.percent.and_then(|p| u8::try_from(p).ok()) {
                Some(percent) => Some(Discount::Percent { percent }),
                None => {
                    errors.push(FieldError::new("percent", "must be 1 to 100"));
                    None
                }
            },
            "fixed" => match money("amount_cents", draft.amount_cents, &mut errors) {
                Some(amount) => Some(Discount::Fixed { amount }),
                None => {
                    errors.push(FieldError::new(
                        "amount_cents",
                        "required for a fixed coupon",
                    ));
                    None
                }
            },
            _ => {
                errors.push(FieldError::new("kind", "must be percent or fixed"));
                None
            }
        };
        let min_spend = money("min_spend_cents", draft.min_spend_cents, &mut errors);
        let limit = |field: &'static str, v: Option<i64>, errors: &mut Vec<FieldError>| {
            v.and_then(|n| {
                u32::try_from(n)
                    .map_err(|_| errors.push(FieldError::new(field, "must be at least 1")))
                    .ok()
            })
        };
        let max_uses = limit("max_uses", draft.max_uses, &mut errors);
        let per_user_limit = limit("per_user_limit", draft.per_user_limit, &mut errors);
        let now = self.clock.now();
        let (Some(code), Some(discount), true) = (code, discount, errors.is_empty()) else {
            return Err(ShopError::Invalid(errors));
        };
        let rules = CouponRules::new(
            discount,
            min_spend,
            draft.starts_at.unwrap_or(now),
            draft.ends_at,
            max_uses,
            per_user_limit,
        )
        .map_err(|e| invalid("coupon", e))?;
        let coupon = Coupon {
            id: CouponId::new(),
            code,
            rules,
            uses: 0,
            active: true,
            created_at: now,
        };
        let audit = AuditEntry::new(
            by,
            now,
            "coupon.created",
            coupon.id,
            None,
            Some(coupon_fields(&coupon)),
        );
        match self.coupons.insert_coupon(&coupon, &audit).await {
            Ok(()) => Ok(coupon),
            Err(StoreError::Conflict { .. }) => {
                Err(ShopError::Conflict("a coupon with this code exists"))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn coupons(&self, page: PageRequest) -> Result<Page<Coupon>, ShopError> {
        Ok(self.coupons.coupons(page).await?)
    }
}

/// What the audit log keeps of a coupon: its code and rules.
fn coupon_fields(c: &Coupon) -> serde_json::Value {
    let r = &c.rules;
    serde_json::json!({
        "code": c.code,
        "discount": r.discount,
        "min_spend_cents": r.min_spend.map(|m| m.cents()),
        "starts_at": time_field(r.starts_at),
        "ends_at": time_field(r.ends_at),
        "max_uses": r.max_uses,
        "per_user_limit": r.per_user_limit,
        "active": c.active,
    })
}
