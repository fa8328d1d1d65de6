//! What the OpenAPI document must say about every operation beyond what its handler declares:
//! the answers the layers around every handler give (a malformed body, one too large, the wrong
//! content type, a missing or refused token, rate limits, a timeout, a panic). They are added
//! here from what each operation is (a body, a query, path parameters, security, its route
//! group), so the document lists every status a route can answer without each handler restating
//! them.

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

use crate::limits::Group;

fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                    .build(),
            )
            .build(),
    )
}

fn operations(item: &mut PathItem) -> Vec<(axum::http::Method, &mut Operation)> {
    use axum::http::Method;
    [
        (Method::GET, item.get.as_mut()),
        (Method::PUT, item.put.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
        (Method::HEAD, item.head.as_mut()),
        (Method::OPTIONS, item.options.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}

/// Everything the derived document cannot say by itself.
pub fn finish(doc: &mut OpenApi) {
    complete_responses(doc);
    cross_field_rules(doc);
    uuid_patterns(doc);
    upload_types(doc);
}

/// The image types an upload accepts, as the multipart encoding of its `file` field (the server
/// reads the type from the bytes, and the document says which types those may be), and the form
/// closed to other fields.
fn upload_types(doc: &mut OpenApi) {
    use utoipa::openapi::encoding::EncodingBuilder;
    use utoipa::openapi::schema::{AdditionalProperties, Schema};
    if let Some(RefOr::T(Schema::Object(form))) = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("UploadForm"))
    {
        form.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.ends_with("/admin/uploads") {
            continue;
        }
        let Some(RefOr::T(body)) = item.post.as_mut().and_then(|op| op.request_body.as_mut())
        else {
            continue;
        };
        if let Some(RefOr::T(form)) = body.content.get_mut("multipart/form-data") {
            // The form has that one field (any other is refused with 422).
            form.encoding.insert(
                "file".to_owned(),
                EncodingBuilder::new()
                    .content_type(Some(
                        flashmart_domain::image::ImageKind::ALL
                            .map(flashmart_domain::image::ImageKind::content_type)
                            .join(", "),
                    ))
                    .build(),
            );
        }
    }
}

/// Every spelling of a UUID the server parses (hyphenated, 32 digits, braced, URN). JSON Schema
/// treats `format` as a note, so without a pattern an empty string would be a valid id.
const UUID_PATTERN: &str = "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-\
    [0-9a-fA-F]{4}-[0-9a-fA-F]{12}|\\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-\
    [0-9a-fA-F]{12}\\}|urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-\
    [0-9a-fA-F]{12})$";

/// Gives every UUID-formatted property of a component schema the pattern of what parses.
fn uuid_patterns(doc: &mut OpenApi) {
    use utoipa::openapi::schema::{KnownFormat, Schema, SchemaFormat};
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for schema in components.schemas.values_mut() {
        let RefOr::T(Schema::Object(object)) = schema else {
            continue;
        };
        for property in object.properties.values_mut() {
            if let RefOr::T(Schema::Object(field)) = property
                && matches!(
                    field.format,
                    Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))
                )
                && field.pattern.is_none()
            {
                field.pattern = Some(UUID_PATTERN.to_owned());
            }
        }
    }
}

/// Adds to every operation the statuses the layers around it can answer.
fn complete_responses(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations(item) {
            let group = Group::of(&method, path);
            let mut add = |status: &str, description: &str| {
                op.responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description));
            };
            let params = op.parameters.as_deref().unwrap_or_default();
            let has = |place: utoipa::openapi::path::ParameterIn| {
                params
                    .iter()
                    .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == place))
            };
            if has(utoipa::openapi::path::ParameterIn::Path) {
                add("404", "No such record (an id that does not parse is one)");
            }
            if has(utoipa::openapi::path::ParameterIn::Query) {
                add("400", "Bad query string");
            }
            if op.request_body.is_some() {
                add("400", "Malformed body");
                add("413", "Body larger than http.body_limit_bytes");
                add("415", "Body not of the declared content type");
                add("422", "Validation failed; `details` names the fields");
            }
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            if secured {
                add("401", "10003: access token missing, invalid or expired");
                if matches!(group, Group::Admin) {
                    add("403", "The caller's role does not allow this");
                }
            }
            if !matches!(group, Group::Unlimited) {
                add("429", "Rate limited; Retry-After says when to retry");
            }
            add("500", "Internal error (the cause is in the server log)");
            add("503", "A dependency is down, or the request timed out");
        }
    }
}

/// Rules between two fields that JSON Schema can state (`if`/`then`, `oneOf`, `not`), added to
/// the request schemas they belong to, since the derive cannot say them. (Rules that compare two
/// times, or a time with the present, are beyond JSON Schema: the field descriptions say them.)
fn cross_field_rules(doc: &mut OpenApi) {
    let rules: [(&str, Vec<(&str, serde_json::Value)>); 4] = [
        // An hourly schedule's sales last at most the hour.
        (
            "CreateScheduleRequest",
            vec![
                (
                    "if",
                    serde_json::json!({"properties": {"recurrence": {"const": "hourly"}}}),
                ),
                (
                    "then",
                    serde_json::json!({"properties": {"duration_secs": {"maximum": 3600}}}),
                ),
            ],
        ),
        // Listed items or generated ones, exactly one of the two.
        (
            "CreateSaleRequest",
            vec![(
                "oneOf",
                serde_json::json!([
                    {"required": ["items"], "properties": {"items": {"type": "array"}}},
                    {"required": ["generate_items"],
                     "properties": {"generate_items": {"type": "object"}}},
                ]),
            )],
        ),
        // A percent coupon names its percent, a fixed one its amount (more than zero).
        (
            "CouponIn",
            vec![(
                "allOf",
                serde_json::json!([
                    {
                        "if": {"properties": {"kind": {"const": "percent"}}},
                        "then": {"required": ["percent"],
                                 "properties": {"percent": {"type": "integer"}}},
                    },
                    {
                        "if": {"properties": {"kind": {"const": "fixed"}}},
                        "then": {"required": ["amount_cents"],
                                 "properties": {"amount_cents": {"type": "integer", "minimum": 1}}},
                    },
                ]),
            )],
        ),
        // A saved address or one given with the order, not both.
        (
            "CheckoutIn",
            vec![(
                "not",
                serde_json::json!({
                    "required": ["address_id", "shipping_address"],
                    "properties": {
                        "address_id": {"type": "string"},
                        "shipping_address": {"type": "object"},
                    },
                }),
            )],
        ),
    ];
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for (name, keywords) in rules {
        if let Some(RefOr::T(utoipa::openapi::Schema::Object(object))) =
            components.schemas.get_mut(name)
        {
            let extensions = object.extensions.get_or_insert_with(Default::default);
            for (key, value) in keywords {
                extensions.insert(key.to_owned(), value);
            }
        }
    }
}
