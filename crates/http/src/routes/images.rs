//! Pictures of generated sale items, drawn here so that a demo or a load test needs no network
//! and no stored files.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::Path;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(generated_image))
}

/// A placeholder picture for generated item number N (`N.svg`).
#[utoipa::path(get, path = "/images/generated/{file}", tag = "flash-sales",
    params(("file" = String, Path, description = "`N.svg`, N the item's number")),
    responses(
        (status = 200, description = "An SVG image", content_type = "image/svg+xml", body = String),
        (status = 404, description = "Not N.svg", body = crate::envelope::ErrorEnvelope),
    ))]
pub async fn generated_image(Path(file): Path<String>) -> Result<Response, ApiError> {
    let n: u32 = file
        .strip_suffix(".svg")
        .and_then(|n| n.parse().ok())
        .ok_or_else(ApiError::not_found)?;
    let hue = (n.wrapping_mul(137)) % 360;
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"400\" height=\"400\" \
         viewBox=\"0 0 400 400\"><rect width=\"400\" height=\"400\" fill=\"hsl({hue},70%,45%)\"/>\
         <text x=\"200\" y=\"215\" font-family=\"sans-serif\" font-size=\"64\" fill=\"#fff\" \
         text-anchor=\"middle\">#{n}</text></svg>"
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400, immutable"),
            ),
        ],
        svg,
    )
        .into_response())
}
