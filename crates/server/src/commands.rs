//! The subcommands other than `serve`: migrate, admin create-user, demo seeding.

use std::sync::Arc;

use anyhow::Context as _;
use flashmart_app::audit::Actor;
use flashmart_app::auth::{AuthError, Registration};
use flashmart_app::catalog::{ProductDraft, ProductFilter};
use flashmart_app::flash_sale::ScheduleDraft;
use flashmart_app::page::PageRequest;
use flashmart_app::shop::CouponDraft;
use flashmart_app::{Clock as _, SystemClock};
use flashmart_domain::{Role, User};

use crate::config::Config;
use crate::wiring;

/// Brings the database schema up to date and exits.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let records = crate::records::Records::open(config).await?;
    // In PostgreSQL the sandbox provider's tables are in the same database: brought up to date
    // too. (Its SQLite file is migrated when the server opens it.)
    if config.payments.provider == crate::config::ProviderChoice::Sandbox
        && let Some(options) = crate::records::pg_options(config)?
    {
        flashmart_sandbox::Sandbox::migrate_postgres(options)
            .await
            .context("migrating the sandbox provider's tables")?;
    }
    tracing::info!(records = %records.describe(), "database schema is up to date");
    records.close().await;
    Ok(())
}

/// Scaled mode: stores what the sales' logs hold, then compares every sale not ended between
/// Redis and the records, marking a sale Redis lost for rebuilding. Prints one line per sale;
/// fails when any differs.
pub async fn reconcile(config: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.redis.is_set(),
        "reconcile compares Redis with the records: set redis.url (or redis.cluster_nodes) and \
         database.url"
    );
    let services = wiring::build(config, Arc::new(SystemClock)).await?;
    let report = services.state.flash_sales.reconcile().await;
    services.state.flash_sales.flush().await;
    services.records.close().await;
    let mut differ = 0;
    for (sale, outcome) in report.context("reconciling Redis with the records")? {
        let line = match outcome {
            flashmart_app::flash_sale::Reconciled::Agrees { remaining } => {
                format!("agrees: {remaining} left")
            }
            flashmart_app::flash_sale::Reconciled::Lost { rebuild_at } => format!(
                "not in Redis: marked lost, rebuilt from the records at the first reservation \
                 after {rebuild_at}"
            ),
            flashmart_app::flash_sale::Reconciled::Differs {
                item_no,
                engine,
                records,
            } => {
                differ += 1;
                format!(
                    "DIFFERS: item {item_no} has {engine} left in Redis, {records} by the records"
                )
            }
        };
        println!("{} {:?}: {line}", sale.id, sale.name);
    }
    anyhow::ensure!(
        differ == 0,
        "{differ} sale(s) differ between Redis and the records (a reservation in flight shows \
         as one: run again)"
    );
    Ok(())
}

/// Creates an account with any role; how the first admin comes to exist.
pub async fn create_user(
    config: &Config,
    email: &str,
    password: String,
    name: Option<&str>,
    role: Role,
) -> anyhow::Result<User> {
    let services = wiring::build(config, Arc::new(SystemClock)).await?;
    let name = name.map_or_else(
        || email.split('@').next().unwrap_or(email).to_owned(),
        str::to_owned,
    );
    let result = async {
        let registration = Registration::parse(email, password, &name).map_err(describe)?;
        services
            .state
            .auth
            .register(registration, role)
            .await
            .map_err(describe)
    }
    .await;
    services.records.close().await;
    result
}

/// The demo accounts `flashmart demo` creates; documented in the README.
pub const DEMO_ACCOUNTS: &[(&str, &str, &str, Role)] = &[
    (
        "admin@demo.flashmart.dev",
        "demo-admin-pass",
        "Demo Admin",
        Role::Admin,
    ),
    (
        "operator@demo.flashmart.dev",
        "demo-operator-pass",
        "Demo Operator",
        Role::Operator,
    ),
    (
        "shopper@demo.flashmart.dev",
        "demo-shopper-pass",
        "Demo Shopper",
        Role::Customer,
    ),
];

/// Who the audit log says made the demo data.
const SEEDER: Actor = Actor::Command("seed");

/// Seeds demo data; what already exists is left alone, so seeding twice is harmless.
pub async fn seed_demo(config: &Config) -> anyhow::Result<()> {
    let services = wiring::build(config, Arc::new(SystemClock)).await?;
    for (email, password, name, role) in DEMO_ACCOUNTS {
        let registration = Registration::parse(email, (*password).to_owned(), name)
            .map_err(describe)
            .context("demo account")?;
        match services.state.auth.register(registration, *role).await {
            Ok(_) => tracing::info!(email, role = %role, password, "demo account created"),
            Err(AuthError::EmailTaken) => tracing::info!(email, "demo account already there"),
            Err(e) => return Err(describe(e)),
        }
    }
    // A recurring sale, so that a sale is live whenever the demo runs: the scheduler makes each
    // hour's at the top of the hour (and this hour's at start).
    let sales = &services.state.flash_sales;
    if sales.schedule_named(DEMO_SCHEDULE).await?.is_none() {
        sales
            .create_schedule(
                SEEDER,
                ScheduleDraft {
                    name: DEMO_SCHEDULE.to_owned(),
                    recurrence: "hourly".to_owned(),
                    item_count: 100,
                    price_cents: 999,
                    currency: None,
                    per_user_limit: 2,
                    reservation_ttl_secs: 900,
                    duration_secs: None,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("demo schedule: {e:?}"))?;
        tracing::info!(
            schedule = DEMO_SCHEDULE,
            "demo schedule created: 100 items every hour"
        );
    }
    seed_catalog(&services).await?;
    services.state.flash_sales.flush().await;
    services.records.close().await;
    Ok(())
}

/// The demo shop's products: (name, category, price in cents, stock).
const DEMO_PRODUCTS: &[(&str, &str, i64, i64)] = &[
    ("Runner One", "shoes", 8_900, 40),
    ("Trail Runner", "shoes", 11_900, 25),
    ("Court Classic", "shoes", 7_400, 60),
    ("Limited High-Top", "shoes", 19_900, 3),
    ("Heavyweight Hoodie", "apparel", 5_900, 80),
    ("Pocket Tee", "apparel", 2_400, 150),
    ("Rain Shell", "apparel", 12_900, 20),
    ("Wool Beanie", "accessories", 1_900, 100),
    ("Canvas Tote", "accessories", 1_500, 120),
    ("Daypack 20L", "accessories", 6_900, 30),
    ("Steel Bottle", "accessories", 2_900, 0),
    ("Gift Card", "gifts", 5_000, 500),
];

/// The demo coupon: 10% off orders of $30 or more.
pub const DEMO_COUPON: &str = "WELCOME10";

/// Products and a coupon, when the shop has none yet (a shop someone has filled is left alone).
async fn seed_catalog(services: &wiring::Services) -> anyhow::Result<()> {
    let catalog = &services.state.catalog;
    let existing = catalog
        .list(
            ProductFilter {
                include_inactive: true,
                ..ProductFilter::default()
            },
            PageRequest::new(None, Some(1)),
        )
        .await
        .map_err(|e| anyhow::anyhow!("listing products: {e}"))?;
    if existing.total == 0 {
        for (name, category, price_cents, stock) in DEMO_PRODUCTS {
            catalog
                .create(
                    SEEDER,
                    ProductDraft {
                        name: (*name).to_owned(),
                        description: Some(format!("Demo {category}: {name}.")),
                        price_cents: *price_cents,
                        currency: None,
                        stock: *stock,
                        category: Some((*category).to_owned()),
                        images: Vec::new(),
                        active: None,
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!("demo product {name}: {e:?}"))?;
        }
        tracing::info!(products = DEMO_PRODUCTS.len(), "demo catalog created");
    }
    let shop = &services.state.shop;
    let coupons = shop
        .coupons(PageRequest::new(None, Some(1)))
        .await
        .map_err(|e| anyhow::anyhow!("listing coupons: {e}"))?;
    if coupons.total == 0 {
        shop.create_coupon(
            SEEDER,
            CouponDraft {
                code: DEMO_COUPON.to_owned(),
                kind: "percent".to_owned(),
                percent: Some(10),
                amount_cents: None,
                currency: None,
                min_spend_cents: Some(3_000),
                starts_at: None,
                ends_at: SystemClock.now() + time::Duration::days(365),
                max_uses: None,
                per_user_limit: Some(1),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("demo coupon: {e:?}"))?;
        tracing::info!(
            code = DEMO_COUPON,
            "demo coupon created: 10% off $30 or more"
        );
    }
    Ok(())
}

/// The recurring sale `flashmart demo` creates.
pub const DEMO_SCHEDULE: &str = "Demo hourly deals";

fn describe(err: AuthError) -> anyhow::Error {
    match err {
        AuthError::Invalid(fields) | AuthError::WeakPassword(fields) => anyhow::anyhow!(
            "{}",
            fields
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        AuthError::EmailTaken => anyhow::anyhow!("that email is already registered"),
        other => anyhow::Error::new(other),
    }
}
