//! Shapes shared by several routers' answers and queries.

use flashmart_app::flash_sale::SaleView;
use flashmart_app::flash_sale::model::{
    CODE_LEN, ItemRecord, ReservationRecord, reservation_code_bytes,
};
use flashmart_app::{Page, PageRequest};
use flashmart_domain::User;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// `data` of an answer that has nothing more to say.
#[derive(Debug, Serialize, ToSchema)]
pub struct Empty {}

/// A list's `?status=` filter parsed as `T`; an unknown status is a bad query string (400).
pub fn status_filter<T>(raw: Option<&str>) -> Result<Option<T>, crate::error::ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    raw.map(str::parse::<T>)
        .transpose()
        .map_err(|e| crate::error::ApiError::bad_request(e.to_string()))
}

/// The highest page number a list answers for.
pub const MAX_PAGE: u32 = 10_000_000;

/// `?page=`: from 1 to `MAX_PAGE`; anything else is a bad query string (400).
pub fn page_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    in_range(d, 1, MAX_PAGE, "page")
}

/// `?per_page=`: from 1 to 100; anything else is a bad query string (400).
pub fn per_page<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    in_range(d, 1, PageRequest::MAX_PER_PAGE, "per_page")
}

fn in_range<'de, D: serde::Deserializer<'de>>(
    d: D,
    min: u32,
    max: u32,
    name: &str,
) -> Result<Option<u32>, D::Error> {
    let value = Option::<u32>::deserialize(d)?;
    match value {
        Some(v) if !(min..=max).contains(&v) => Err(serde::de::Error::custom(format!(
            "{name} must be between {min} and {max}"
        ))),
        other => Ok(other),
    }
}

/// `?page=&per_page=`: 1-based, 1 to 100 a page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 10_000_000)]
    #[serde(default, deserialize_with = "page_number")]
    pub page: Option<u32>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "per_page")]
    pub per_page: Option<u32>,
}

impl From<PageParams> for PageRequest {
    fn from(p: PageParams) -> Self {
        PageRequest::new(p.page, p.per_page)
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct PageOf<T> {
    pub items: Vec<T>,
    pub page: u32,
    pub per_page: u32,
    /// Items in the whole list.
    pub total: u64,
}

impl<T> PageOf<T> {
    pub fn from_page<U>(page: Page<U>, f: impl FnMut(U) -> T) -> Self {
        let page = page.map(f);
        Self {
            items: page.items,
            page: page.page,
            per_page: page.per_page,
            total: page.total,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    /// `customer`, `operator` or `admin`.
    #[schema(example = "customer")]
    pub role: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            id: *user.id.as_uuid(),
            email: user.email.into(),
            name: user.name.into(),
            role: user.role.as_str(),
            created_at: user.created_at,
        }
    }
}

/// A flash sale.
#[derive(Debug, Serialize, ToSchema)]
pub struct SaleOut {
    pub id: Uuid,
    pub name: String,
    /// `upcoming`, `live` or `ended`.
    #[schema(example = "live")]
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub ends_at: OffsetDateTime,
    pub per_user_limit: u32,
    /// How long a reservation holds stock unpaid.
    pub reservation_ttl_secs: i64,
    pub currency: String,
    pub item_count: u32,
    /// Units across all items.
    pub stock: u64,
    /// Units not held by any reservation now.
    pub remaining: u64,
    /// The schedule that made this sale, for a recurring one.
    pub schedule_id: Option<Uuid>,
}

impl From<SaleView> for SaleOut {
    fn from(view: SaleView) -> Self {
        let r = view.record;
        Self {
            id: *r.id.as_uuid(),
            name: r.name,
            status: view.phase.as_str(),
            starts_at: r.rules.window().starts_at(),
            ends_at: r.rules.window().ends_at(),
            per_user_limit: r.rules.per_user_limit(),
            reservation_ttl_secs: r.rules.reservation_ttl().whole_seconds(),
            currency: r.currency.as_str().to_owned(),
            item_count: r.item_count,
            stock: r.total_stock,
            remaining: view.remaining,
            schedule_id: r.slot.map(|(s, _)| *s.as_uuid()),
        }
    }
}

/// An item of a sale.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemOut {
    /// The item's number in its sale (1, 2, ...): the `item_id` to reserve.
    pub id: u32,
    pub name: String,
    pub image_url: Option<String>,
    pub product_id: Option<Uuid>,
    pub price_cents: i64,
    pub stock: u32,
    pub remaining: u32,
}

impl ItemOut {
    pub fn new(item: ItemRecord, remaining: u32) -> Self {
        Self {
            id: item.no,
            name: item.name,
            image_url: item.image_url,
            product_id: item.product_id,
            price_cents: item.price_cents,
            stock: item.stock,
            remaining,
        }
    }
}

/// A reservation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationOut {
    pub id: Uuid,
    /// The reservation's id in base 32 (26 characters): what the compatibility API's purchase
    /// takes.
    #[schema(value_type = String)]
    pub code: ReservationCode,
    pub sale_id: Uuid,
    pub item_id: u32,
    pub quantity: u32,
    /// `reserved`, `purchased`, `expired` or `cancelled`.
    #[schema(example = "reserved")]
    pub status: &'static str,
    #[serde(serialize_with = "rfc3339_inline")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When the reservation lapses unless its order is paid.
    #[serde(serialize_with = "rfc3339_inline")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// The `pending_payment` order made with the reservation: its id is the reservation's.
    pub order_id: Option<Uuid>,
}

/// A reservation's code, written out from the stack (an answer to every reservation carries
/// one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationCode([u8; CODE_LEN]);

impl ReservationCode {
    pub fn as_str(&self) -> &str {
        // The code alphabet is ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Serialize for ReservationCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// RFC 3339, as `time::serde::rfc3339` writes it, formatted into a buffer on the stack instead of
/// a `String`.
fn rfc3339_inline<S: serde::Serializer>(
    t: &OffsetDateTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 40];
    let text = rfc3339_bytes(t, &mut buf).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(std::str::from_utf8(text).map_err(serde::ser::Error::custom)?)
}

/// `t` in RFC 3339, written into `buf` ("-999999-12-31T23:59:59.999999999+23:59" is 38 bytes;
/// timestamps here are far shorter).
fn rfc3339_bytes<'b>(
    t: &OffsetDateTime,
    buf: &'b mut [u8; 40],
) -> Result<&'b [u8], time::error::Format> {
    let room = buf.len();
    let mut rest = &mut buf[..];
    t.format_into(&mut rest, &time::format_description::well_known::Rfc3339)?;
    // What is left of the buffer says how much was written: the count `format_into` returns
    // came out short with a fraction of a second (21 of 30 bytes, in the test below).
    let written = room - rest.len();
    Ok(&buf[..written])
}

impl crate::envelope::WriteJson for ReservationOut {
    /// As `Serialize` writes it: every string here is a UUID, a code, a status word or a time,
    /// none with anything to escape.
    fn write_json(&self, out: &mut Vec<u8>) {
        fn uuid(out: &mut Vec<u8>, key: &[u8], id: &Uuid) {
            let mut buf = uuid::Uuid::encode_buffer();
            out.extend_from_slice(key);
            out.push(b'"');
            out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
            out.push(b'"');
        }
        fn number(out: &mut Vec<u8>, key: &[u8], n: u32) {
            out.extend_from_slice(key);
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        }
        fn time(out: &mut Vec<u8>, key: &[u8], t: &OffsetDateTime) {
            out.extend_from_slice(key);
            out.push(b'"');
            let mut buf = [0u8; 40];
            out.extend_from_slice(rfc3339_bytes(t, &mut buf).unwrap_or_default());
            out.push(b'"');
        }
        uuid(out, br#"{"id":"#, &self.id);
        out.extend_from_slice(br#","code":""#);
        out.extend_from_slice(self.code.as_str().as_bytes());
        out.push(b'"');
        uuid(out, br#","sale_id":"#, &self.sale_id);
        number(out, br#","item_id":"#, self.item_id);
        number(out, br#","quantity":"#, self.quantity);
        out.extend_from_slice(br#","status":""#);
        out.extend_from_slice(self.status.as_bytes());
        out.push(b'"');
        time(out, br#","created_at":"#, &self.created_at);
        time(out, br#","expires_at":"#, &self.expires_at);
        match &self.order_id {
            Some(order) => uuid(out, br#","order_id":"#, order),
            None => out.extend_from_slice(br#","order_id":null"#),
        }
        out.push(b'}');
    }
}

impl From<&ReservationRecord> for ReservationOut {
    fn from(r: &ReservationRecord) -> Self {
        Self {
            id: *r.id.as_uuid(),
            code: ReservationCode(reservation_code_bytes(r.id)),
            sale_id: *r.sale_id.as_uuid(),
            item_id: r.item_no,
            quantity: r.quantity,
            status: r.status.as_str(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            order_id: r.order_id.map(|o| *o.as_uuid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use flashmart_app::flash_sale::model::{BuyerId, reservation_code};
    use flashmart_domain::flash_sale::ReservationStatus;
    use flashmart_domain::{OrderId, ReservationId, SaleId, UserId};
    use time::format_description::well_known::Rfc3339;

    use super::*;

    /// The answer's code and times read exactly as the `String`-making forms wrote them.
    #[test]
    fn a_reservation_is_written_as_before() {
        let times = [
            OffsetDateTime::UNIX_EPOCH,
            OffsetDateTime::from_unix_timestamp_nanos(1_796_000_000_123_456_789).unwrap(),
            OffsetDateTime::from_unix_timestamp(4_102_444_800).unwrap(),
            OffsetDateTime::from_unix_timestamp_nanos(1_796_000_000_100_000_000)
                .unwrap()
                .to_offset(time::UtcOffset::from_hms(5, 30, 0).unwrap()),
        ];
        for t in times {
            let record = ReservationRecord {
                id: ReservationId::new(),
                sale_id: SaleId::new(),
                item_no: 3,
                buyer: BuyerId::user(UserId::new()),
                buyer_ref: None,
                quantity: 2,
                status: ReservationStatus::Reserved,
                created_at: t,
                expires_at: t,
                order_id: Some(OrderId::new()),
                purchased_at: None,
            };
            let json = serde_json::to_value(ReservationOut::from(&record)).unwrap();
            let want = t.format(&Rfc3339).unwrap();
            assert_eq!(json["created_at"], want.as_str());
            assert_eq!(json["expires_at"], want.as_str());
            assert_eq!(json["code"], reservation_code(record.id).as_str());
        }
    }

    /// The answer written by hand is byte for byte what serde writes, with and without an order.
    #[test]
    fn a_reservation_written_by_hand_is_what_serde_writes() {
        use crate::envelope::WriteJson as _;
        for (order, status, t) in [
            (
                Some(OrderId::new()),
                ReservationStatus::Reserved,
                OffsetDateTime::from_unix_timestamp_nanos(1_796_000_000_123_456_789).unwrap(),
            ),
            (
                None,
                ReservationStatus::Purchased,
                OffsetDateTime::UNIX_EPOCH,
            ),
            (
                None,
                ReservationStatus::Cancelled,
                OffsetDateTime::from_unix_timestamp(4_102_444_800).unwrap(),
            ),
        ] {
            let record = ReservationRecord {
                id: ReservationId::new(),
                sale_id: SaleId::new(),
                item_no: u32::MAX,
                buyer: BuyerId::user(UserId::new()),
                buyer_ref: None,
                quantity: 10,
                status,
                created_at: t,
                expires_at: t + time::Duration::minutes(15),
                order_id: order,
                purchased_at: None,
            };
            let out = ReservationOut::from(&record);
            let mut written = Vec::new();
            out.write_json(&mut written);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&out).unwrap()
            );
        }
    }
}
