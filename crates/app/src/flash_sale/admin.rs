//! Creating and inspecting sales, and the recurring schedules that make them.

use std::sync::Arc;

use flashmart_domain::flash_sale::{Recurrence, SalePhase, SaleRules, SaleWindow};
use flashmart_domain::money::MAX_PRICE_CENTS;
use flashmart_domain::{Currency, ReservationId, SaleId, ScheduleId};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::engine::Engine;
use super::{FlashSales, SaleError};
use crate::audit::{Actor, AuditEntry, time_field};
use crate::error::FieldError;
use crate::flash_sale::model::{
    ItemRecord, LiveSaleState, NewItem, ReservationRecord, SaleInsert, SaleRecord, Schedule,
};
use crate::page::{Page, PageRequest};

/// How long before its slot starts a scheduled sale is made.
pub const SCHEDULE_LEAD: Duration = Duration::minutes(5);

/// Most items one sale may have.
pub const MAX_ITEMS: i64 = 100_000;
/// Most units of one item.
pub const MAX_ITEM_STOCK: i64 = 10_000_000;
const MAX_NAME_CHARS: usize = 200;

/// A new sale as an operator describes it.
#[derive(Debug, Clone)]
pub struct SaleDraft {
    pub name: String,
    pub starts_at: OffsetDateTime,
    pub ends_at: OffsetDateTime,
    pub per_user_limit: i64,
    pub reservation_ttl_secs: i64,
    pub currency: Option<String>,
    pub items: ItemsDraft,
}

#[derive(Debug, Clone)]
pub enum ItemsDraft {
    Listed(Vec<ItemDraft>),
    /// `count` items named and pictured automatically, each with `stock` units.
    Generated {
        count: i64,
        price_cents: i64,
        stock: i64,
    },
}

#[derive(Debug, Clone)]
pub struct ItemDraft {
    pub name: String,
    pub product_id: Option<Uuid>,
    pub image_url: Option<String>,
    pub price_cents: i64,
    pub stock: i64,
}

/// A sale with its live numbers.
#[derive(Debug, Clone)]
pub struct SaleView {
    pub record: SaleRecord,
    pub phase: SalePhase,
    pub remaining: u64,
}

/// `GET /admin/flash-sales/{id}/stats`: storage's counts beside the ledger's remaining stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleStats {
    pub stock: u64,
    /// Held by reservations not yet paid.
    pub reserved: u64,
    /// Held by paid reservations.
    pub sold: u64,
    pub remaining: u64,
    /// Given back by expired or cancelled reservations.
    pub released: u64,
    /// Buyers holding something.
    pub buyers: u64,
    /// Checkout attempts recorded through the compatibility API.
    pub attempts: u64,
}

/// A new recurring sale.
#[derive(Debug, Clone)]
pub struct ScheduleDraft {
    pub name: String,
    pub recurrence: String,
    pub item_count: i64,
    pub price_cents: i64,
    pub currency: Option<String>,
    pub per_user_limit: i64,
    pub reservation_ttl_secs: i64,
    /// Defaults to the whole period.
    pub duration_secs: Option<i64>,
}

fn check_name(name: &str, errors: &mut Vec<FieldError>) -> String {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > MAX_NAME_CHARS {
        errors.push(FieldError::new(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    trimmed.to_owned()
}

fn check_currency(raw: Option<&str>, errors: &mut Vec<FieldError>) -> Currency {
    match raw.map(Currency::parse) {
        None => Currency::USD,
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            errors.push(FieldError::new("currency", e));
            Currency::USD
        }
    }
}

fn check_price(field: String, cents: i64, errors: &mut Vec<FieldError>) {
    if !(0..=MAX_PRICE_CENTS).contains(&cents) {
        errors.push(FieldError::new(
            field,
            format!("must be between 0 and {MAX_PRICE_CENTS}"),
        ));
    }
}

fn check_stock(field: String, stock: i64, errors: &mut Vec<FieldError>) -> u32 {
    match u32::try_from(stock) {
        Ok(s) if (1..=MAX_ITEM_STOCK).contains(&stock) => s,
        _ => {
            errors.push(FieldError::new(
                field,
                format!("must be between 1 and {MAX_ITEM_STOCK}"),
            ));
            0
        }
    }
}

/// The picture of a generated item: served by flashmart itself, so it needs no network.
pub fn generated_image_url(no: u32) -> String {
    format!("/images/generated/{no}.svg")
}

fn generated_items(count: u32, price_cents: i64, stock: u32) -> Vec<NewItem> {
    (1..=count)
        .map(|no| NewItem {
            name: format!("Flash deal #{no:05}"),
            image_url: Some(generated_image_url(no)),
            product_id: None,
            price_cents,
            stock,
        })
        .collect()
}

fn items_from_draft(draft: ItemsDraft, errors: &mut Vec<FieldError>) -> Vec<NewItem> {
    match draft {
        ItemsDraft::Generated {
            count,
            price_cents,
            stock,
        } => {
            let count = match u32::try_from(count) {
                Ok(c) if (1..=MAX_ITEMS).contains(&count) => c,
                _ => {
                    errors.push(FieldError::new(
                        "generate_items.count",
                        format!("must be between 1 and {MAX_ITEMS}"),
                    ));
                    0
                }
            };
            check_price("generate_items.price_cents".into(), price_cents, errors);
            let stock = check_stock("generate_items.stock".into(), stock, errors);
            generated_items(count, price_cents, stock)
        }
        ItemsDraft::Listed(items) => {
            if items.is_empty() || items.len() > MAX_ITEMS as usize {
                errors.push(FieldError::new(
                    "items",
                    format!("must list 1 to {MAX_ITEMS} items"),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let name = item.name.trim().to_owned();
                    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
                        errors.push(FieldError::new(
                            format!("items[{i}].name"),
                            format!("must be 1 to {MAX_NAME_CHARS} characters"),
                        ));
                    }
                    check_price(format!("items[{i}].price_cents"), item.price_cents, errors);
                    let stock = check_stock(format!("items[{i}].stock"), item.stock, errors);
                    NewItem {
                        name,
                        image_url: item.image_url,
                        product_id: item.product_id,
                        price_cents: item.price_cents,
                        stock,
                    }
                })
                .collect()
        }
    }
}

impl FlashSales {
    pub async fn create_sale(&self, by: Actor, draft: SaleDraft) -> Result<SaleView, SaleError> {
        let now = self.core.clock.now();
        let mut errors = Vec::new();
        let name = check_name(&draft.name, &mut errors);
        let currency = check_currency(draft.currency.as_deref(), &mut errors);
        if draft.ends_at <= now {
            errors.push(FieldError::new("ends_at", "must be in the future"));
        }
        let rules = SaleWindow::new(draft.starts_at, draft.ends_at)
            .and_then(|w| SaleRules::new(w, draft.per_user_limit, draft.reservation_ttl_secs))
            .map_err(|v| errors.push(FieldError::new(v.field, v.message)))
            .ok();
        let items = items_from_draft(draft.items, &mut errors);
        let Some(rules) = rules.filter(|_| errors.is_empty()) else {
            return Err(SaleError::Invalid(errors));
        };
        let record = SaleRecord {
            id: SaleId::new(),
            name,
            rules,
            currency,
            slot: None,
            item_count: u32::try_from(items.len()).unwrap_or(u32::MAX),
            total_stock: items.iter().map(|i| u64::from(i.stock)).sum(),
            created_at: now,
        };
        let audit = AuditEntry::new(
            by,
            now,
            "flash_sale.created",
            record.id,
            None,
            Some(sale_fields(&record, &items)),
        );
        let inserted = self
            .stored_after_loading(&record, &items, Some(&audit))
            .await?;
        match inserted {
            SaleInsert::Stored => Ok(self.install(self.stored_state(record.id).await?)),
            SaleInsert::ProductShort {
                product_id,
                available,
            } => Err(SaleError::ProductShort {
                product_id,
                available,
            }),
            SaleInsert::SlotTaken => Err(SaleError::Unavailable(
                "a sale without a schedule met a slot conflict".into(),
            )),
        }
    }

    /// Stores a new sale, made known to the engine first. Another instance learns of a sale
    /// from the records (its log writer's look at live sales, a buyer's request, a live-events
    /// subscriber) and then asks a shared engine for it: were it in the records but not yet in
    /// the engine, it would be taken for a sale the engine lost and kept off sale until the
    /// rebuild grace had passed. Not stored (or not known to be: the store failed), it is
    /// dropped from the engine again; one stored all the same is then found missing there and
    /// rebuilt from the records after that grace.
    async fn stored_after_loading(
        &self,
        record: &SaleRecord,
        items: &[NewItem],
        audit: Option<&AuditEntry>,
    ) -> Result<SaleInsert, SaleError> {
        self.engine
            .load(&LiveSaleState::unsold(record, items))
            .await?;
        let inserted = self.core.store.insert_sale(record, items, audit).await;
        if !matches!(inserted, Ok(SaleInsert::Stored)) {
            self.engine.unload(record.id).await;
        }
        Ok(inserted?)
    }

    /// A stored sale as the ledger takes it.
    async fn stored_state(&self, id: SaleId) -> Result<LiveSaleState, SaleError> {
        self.core
            .store
            .live_sale(id)
            .await?
            .ok_or(SaleError::SaleNotFound)
    }

    /// Puts a sale into the ledger and answers its view.
    fn install(&self, state: LiveSaleState) -> SaleView {
        let sale = self.core.ledger.install(state, self.core.clock.now());
        self.view(sale.record.clone())
    }

    /// With a shared engine, brings the ledger's copy of a sale's stock up to date first
    /// (mirroring it here first when another instance made it: `mirrored`).
    async fn fresh(&self, sale: SaleId) -> Result<(), SaleError> {
        if let Some(live) = self.mirrored(sale).await? {
            self.engine.refresh(&live).await?;
        }
        Ok(())
    }

    /// The ledger's copy of a sale, adopted at first sight when another instance made it
    /// (`Engine::adopt`: this instance may run no log writer, which would adopt it otherwise).
    pub(super) async fn mirrored(
        &self,
        sale: SaleId,
    ) -> Result<Option<Arc<crate::flash_sale::ledger::LiveSale>>, crate::StoreError> {
        match self.core.ledger.get(&sale) {
            Some(live) => Ok(Some(live)),
            None => self.engine.adopt(sale).await,
        }
    }

    fn view(&self, record: SaleRecord) -> SaleView {
        let now = self.core.clock.now();
        let remaining = match self.core.ledger.get(&record.id) {
            Some(live) => live.remaining(),
            // Not in memory: long ended; what is left no longer changes.
            None => 0,
        };
        SaleView {
            phase: record.rules.window().phase(now),
            remaining,
            record,
        }
    }

    pub async fn sale(&self, id: SaleId) -> Result<SaleView, SaleError> {
        let record = self
            .core
            .store
            .sale(id)
            .await?
            .ok_or(SaleError::SaleNotFound)?;
        self.fresh(id).await?;
        Ok(self.view(record))
    }

    /// `view` with its remaining units as the engine has them now (from a shared engine, where
    /// another instance may hold the stock's truth), without reading the sale again.
    pub async fn refreshed(&self, view: SaleView) -> Result<SaleView, SaleError> {
        self.fresh(view.record.id).await?;
        Ok(self.view(view.record))
    }

    pub async fn list_sales(
        &self,
        phase: Option<SalePhase>,
        page: PageRequest,
    ) -> Result<Page<SaleView>, SaleError> {
        let sales = self
            .core
            .store
            .list_sales(phase, self.core.clock.now(), page)
            .await?;
        // Sales not ended that another instance made, adopted (an ended one out of memory
        // is not looked up again on every page).
        let now = self.core.clock.now();
        for sale in &sales.items {
            if sale.rules.window().phase(now) != SalePhase::Ended {
                self.mirrored(sale.id).await?;
            }
        }
        Ok(sales.map(|r| self.view(r)))
    }

    /// A page of a sale's items, each with what remains of it.
    pub async fn items(
        &self,
        sale: SaleId,
        page: PageRequest,
    ) -> Result<Page<(ItemRecord, u32)>, SaleError> {
        self.core
            .store
            .sale(sale)
            .await?
            .ok_or(SaleError::SaleNotFound)?;
        self.fresh(sale).await?;
        let live = self.core.ledger.get(&sale);
        let items = self.core.store.items(sale, page).await?;
        Ok(items.map(|item| {
            let remaining = live
                .as_ref()
                .and_then(|l| l.item_remaining(item.no))
                .unwrap_or(0);
            (item, remaining)
        }))
    }

    /// Storage's counts and the ledger's remaining stock. At rest (no reservation in flight)
    /// `reserved + sold + remaining == stock`; the stampede checker relies on it.
    pub async fn stats(&self, sale: SaleId) -> Result<SaleStats, SaleError> {
        self.core
            .store
            .sale(sale)
            .await?
            .ok_or(SaleError::SaleNotFound)?;
        self.try_catch_up().await;
        let stored = self.core.store.stats(sale).await?;
        self.fresh(sale).await?;
        let remaining = match self.core.ledger.get(&sale) {
            Some(live) => live.remaining(),
            None => stored.stock.saturating_sub(stored.reserved + stored.sold),
        };
        Ok(SaleStats {
            stock: stored.stock,
            reserved: stored.reserved,
            sold: stored.sold,
            remaining,
            released: stored.released,
            buyers: stored.buyers,
            attempts: stored.attempts,
        })
    }

    pub async fn reservations(
        &self,
        sale: SaleId,
        page: PageRequest,
        after: Option<ReservationId>,
    ) -> Result<Page<ReservationRecord>, SaleError> {
        self.core
            .store
            .sale(sale)
            .await?
            .ok_or(SaleError::SaleNotFound)?;
        self.try_catch_up().await;
        Ok(self.core.store.reservations(sale, page, after).await?)
    }

    pub async fn create_schedule(
        &self,
        by: Actor,
        draft: ScheduleDraft,
    ) -> Result<Schedule, SaleError> {
        let mut errors = Vec::new();
        let name = check_name(&draft.name, &mut errors);
        let currency = check_currency(draft.currency.as_deref(), &mut errors);
        let recurrence = draft
            .recurrence
            .parse::<Recurrence>()
            .map_err(|e| errors.push(FieldError::new("recurrence", e)))
            .ok();
        let item_count = u32::try_from(draft.item_count)
            .ok()
            .filter(|c| (1..=MAX_ITEMS).contains(&i64::from(*c)));
        if item_count.is_none() {
            errors.push(FieldError::new(
                "item_count",
                format!("must be between 1 and {MAX_ITEMS}"),
            ));
        }
        check_price("price_cents".into(), draft.price_cents, &mut errors);
        let period = recurrence.map_or(Duration::HOUR, Recurrence::period);
        let duration = draft.duration_secs.unwrap_or(period.whole_seconds());
        if duration < 60 || duration > period.whole_seconds() {
            errors.push(FieldError::new(
                "duration_secs",
                format!("must be between 60 and {}", period.whole_seconds()),
            ));
        }
        // The rules a sale of this schedule will have, checked now rather than at each slot.
        let probe = OffsetDateTime::UNIX_EPOCH;
        // Clamped so that an out-of-range duration (reported above) cannot overflow the probe.
        let probe_len = Duration::seconds(duration.clamp(1, period.whole_seconds()));
        if let Err(v) = SaleWindow::new(probe, probe + probe_len)
            .and_then(|w| SaleRules::new(w, draft.per_user_limit, draft.reservation_ttl_secs))
        {
            errors.push(FieldError::new(v.field, v.message));
        }
        let (Some(recurrence), Some(item_count), true) =
            (recurrence, item_count, errors.is_empty())
        else {
            return Err(SaleError::Invalid(errors));
        };
        let schedule = Schedule {
            id: ScheduleId::new(),
            name,
            recurrence,
            item_count,
            price_cents: draft.price_cents,
            currency,
            per_user_limit: u32::try_from(draft.per_user_limit).unwrap_or(1),
            reservation_ttl_secs: draft.reservation_ttl_secs,
            duration_secs: duration,
            active: true,
            created_at: self.core.clock.now(),
        };
        let audit = AuditEntry::new(
            by,
            schedule.created_at,
            "schedule.created",
            schedule.id,
            None,
            Some(schedule_fields(&schedule)),
        );
        match self
            .core
            .store
            .insert_schedule(&schedule, Some(&audit))
            .await
        {
            Ok(()) => {}
            Err(crate::StoreError::Conflict { .. }) => return Err(SaleError::ScheduleNameTaken),
            Err(e) => return Err(e.into()),
        }
        self.run_schedules().await?;
        Ok(schedule)
    }

    pub async fn schedule_named(&self, name: &str) -> Result<Option<Schedule>, SaleError> {
        Ok(self.core.store.schedule_by_name(name).await?)
    }

    pub async fn schedules(&self, page: PageRequest) -> Result<Page<Schedule>, SaleError> {
        Ok(self.core.store.schedules(page).await?)
    }

    /// Makes sure every active schedule has its sale for the current slot (and, in the last
    /// `SCHEDULE_LEAD` before the next slot, for that one too), creating what is missing. Safe to
    /// run from several schedulers at once: storage keeps one sale per slot. Returns the sales
    /// this call created.
    pub async fn run_schedules(&self) -> Result<Vec<SaleRecord>, SaleError> {
        let now = self.core.clock.now();
        let mut created = Vec::new();
        let mut page = PageRequest::new(Some(1), Some(PageRequest::MAX_PER_PAGE));
        loop {
            let schedules = self.core.store.schedules(page).await?;
            for schedule in schedules.items.iter().filter(|s| s.active) {
                let current = schedule.recurrence.slot_start(now);
                let next = current + schedule.recurrence.period();
                if let Some(record) = self.ensure_slot(schedule, current, now).await? {
                    created.push(record);
                }
                // The next slot's sale appears (as upcoming) a little before it starts, so
                // that when one hour's sale ends the next one is already there.
                if next - now <= SCHEDULE_LEAD
                    && let Some(record) = self.ensure_slot(schedule, next, now).await?
                {
                    created.push(record);
                }
            }
            if u64::from(page.page()) * u64::from(page.per_page()) >= schedules.total {
                break;
            }
            page = PageRequest::new(Some(page.page() + 1), Some(page.per_page()));
        }
        Ok(created)
    }

    async fn ensure_slot(
        &self,
        schedule: &Schedule,
        slot: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<SaleRecord>, SaleError> {
        if self.core.ledger.for_slot(schedule.id, slot).is_some() {
            return Ok(None);
        }
        let ends_at = slot + Duration::seconds(schedule.duration_secs);
        if ends_at <= now {
            return Ok(None); // this slot's sale is already over
        }
        let window = SaleWindow::new(slot, ends_at).map_err(|v| invalid(&v))?;
        let rules = SaleRules::new(
            window,
            i64::from(schedule.per_user_limit),
            schedule.reservation_ttl_secs,
        )
        .map_err(|v| invalid(&v))?;
        let items = generated_items(schedule.item_count, schedule.price_cents, 1);
        let record = SaleRecord {
            id: SaleId::new(),
            name: format!(
                "{} {}",
                schedule.name,
                slot.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            ),
            rules,
            currency: schedule.currency,
            slot: Some((schedule.id, slot)),
            item_count: schedule.item_count,
            total_stock: u64::from(schedule.item_count),
            created_at: now,
        };
        let inserted =
            self.stored_after_loading(&record, &items, None).await? == SaleInsert::Stored;
        let stored = self
            .core
            .store
            .sale_for_slot(schedule.id, slot)
            .await?
            .ok_or(SaleError::SaleNotFound)?;
        let state = self.stored_state(stored.id).await?;
        if !inserted {
            // Another scheduler's, loaded by it before it was stored: this changes nothing
            // unless the engine has lost it since (or a server older than that stored it).
            self.engine.load(&state).await?;
        }
        self.install(state);
        if inserted {
            tracing::info!(schedule = %schedule.name, sale = %stored.id, %slot, "scheduled sale created");
            Ok(Some(stored))
        } else {
            Ok(None)
        }
    }
}

fn invalid(v: &flashmart_domain::flash_sale::RuleViolation) -> SaleError {
    SaleError::Invalid(vec![FieldError::new(v.field, v.message.clone())])
}

/// What the audit log keeps of a new sale: its rules and items.
fn sale_fields(record: &SaleRecord, items: &[NewItem]) -> serde_json::Value {
    let rules = &record.rules;
    serde_json::json!({
        "name": record.name,
        "currency": record.currency.as_str(),
        "starts_at": time_field(rules.window().starts_at()),
        "ends_at": time_field(rules.window().ends_at()),
        "per_user_limit": rules.per_user_limit(),
        "reservation_ttl_secs": rules.reservation_ttl().whole_seconds(),
        "items": items.iter().map(|i| serde_json::json!({
            "name": i.name,
            "product_id": i.product_id,
            "price_cents": i.price_cents,
            "stock": i.stock,
        })).collect::<Vec<_>>(),
    })
}

/// What the audit log keeps of a schedule: every field an operator set.
fn schedule_fields(s: &Schedule) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "recurrence": s.recurrence.as_str(),
        "item_count": s.item_count,
        "price_cents": s.price_cents,
        "currency": s.currency.as_str(),
        "per_user_limit": s.per_user_limit,
        "reservation_ttl_secs": s.reservation_ttl_secs,
        "duration_secs": s.duration_secs,
        "active": s.active,
    })
}
