//! A shipping address, validated once; orders keep a snapshot of it.

use serde::{Deserialize, Serialize};

/// The fields of an address as a client sends them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressFields {
    pub recipient: String,
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    #[serde(default)]
    pub region: Option<String>,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, e.g. `DE`.
    pub country: String,
    #[serde(default)]
    pub phone: Option<String>,
}

/// A valid address: trimmed, bounded, country in upper case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address(AddressFields);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct AddressError {
    pub field: &'static str,
    pub message: &'static str,
}

fn text(field: &'static str, raw: &str, max: usize) -> Result<String, AddressError> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(AddressError {
            field,
            message: "must not be empty",
        });
    }
    // The length as sent, spaces included, is what the API document limits.
    if raw.chars().count() > max || t.chars().any(char::is_control) {
        return Err(AddressError {
            field,
            message: "too long, or contains control characters",
        });
    }
    Ok(t.to_owned())
}

fn optional(
    field: &'static str,
    raw: Option<&String>,
    max: usize,
) -> Result<Option<String>, AddressError> {
    match raw.map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => text(field, s, max).map(Some),
    }
}

impl Address {
    /// Checks every field; returns every problem found.
    pub fn parse(fields: AddressFields) -> Result<Self, Vec<AddressError>> {
        let mut errors = Vec::new();
        let mut keep = |r: Result<String, AddressError>| r.map_err(|e| errors.push(e)).ok();
        let recipient = keep(text("recipient", &fields.recipient, 100));
        let line1 = keep(text("line1", &fields.line1, 200));
        let city = keep(text("city", &fields.city, 100));
        let postal_code = keep(text("postal_code", &fields.postal_code, 20));
        let mut keep_opt =
            |r: Result<Option<String>, AddressError>| r.map_err(|e| errors.push(e)).ok().flatten();
        let line2 = keep_opt(optional("line2", fields.line2.as_ref(), 200));
        let region = keep_opt(optional("region", fields.region.as_ref(), 100));
        let phone = keep_opt(optional("phone", fields.phone.as_ref(), 30));
        let country = fields.country.trim().to_ascii_uppercase();
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            errors.push(AddressError {
                field: "country",
                message: "must be a two-letter country code",
            });
        }
        match (recipient, line1, city, postal_code) {
            (Some(recipient), Some(line1), Some(city), Some(postal_code)) if errors.is_empty() => {
                Ok(Self(AddressFields {
                    recipient,
                    line1,
                    line2,
                    city,
                    region,
                    postal_code,
                    country,
                    phone,
                }))
            }
            _ => Err(errors),
        }
    }

    pub fn fields(&self) -> &AddressFields {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> AddressFields {
        AddressFields {
            recipient: " Ada Lovelace ".into(),
            line1: "12 St James's Square".into(),
            line2: Some("  ".into()),
            city: "London".into(),
            region: None,
            postal_code: "SW1Y 4JH".into(),
            country: "gb".into(),
            phone: None,
        }
    }

    #[test]
    fn a_good_address_is_normalized() {
        let a = Address::parse(fields()).unwrap();
        assert_eq!(a.fields().recipient, "Ada Lovelace");
        assert_eq!(a.fields().country, "GB");
        assert_eq!(a.fields().line2, None, "blank optional fields are absent");
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut f = fields();
        f.recipient = " ".into();
        f.country = "GBR".into();
        f.postal_code = "x".repeat(21);
        let errors = Address::parse(f).unwrap_err();
        let names: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(names, ["recipient", "postal_code", "country"]);
    }
}
