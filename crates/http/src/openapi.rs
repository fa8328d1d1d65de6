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

/// Rules between two fields that JSON Schema can state (`if`/`then`, `not`), added to the
/// request schemas they belong to, since the derive cannot say them.
fn cross_field_rules(doc: &mut OpenApi) {
    let rules: [(&str, Vec<(&str, serde_json::Value)>); 2] = [
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
