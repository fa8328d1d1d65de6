//! Image uploads for operators, served back under `/uploads/`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashmart_app::uploads::{UploadError, Uploads};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, created};
use crate::error::{ApiError, codes};
use crate::extract::{OperatorAuth, Path};
use crate::state::AppState;

/// Room for the multipart framing around the file itself.
const FRAMING: usize = 64 * 1024;

/// The upload route (with a body limit of its own, the file size plus framing) and the route
/// that serves uploads.
pub fn routes(max_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_image))
        .layer(DefaultBodyLimit::max(max_bytes + FRAMING))
}

pub fn serving() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_upload))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadOut {
    /// Where it is served: `/uploads/<sha256>.<ext>`.
    pub url: String,
    pub content_type: &'static str,
    pub size: usize,
}

/// The multipart form of an upload.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// A JPEG, PNG, GIF or WebP image (the type is read from its bytes).
    #[schema(format = Binary, value_type = String)]
    file: Vec<u8>,
}

/// Uploads an image (multipart field `file`, the form's only field). Its type is taken from its
/// bytes, never its name; it is stored under its content hash. Operators and admins.
#[utoipa::path(post, path = "/api/v1/admin/uploads", tag = "admin",
    security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored", body = Envelope<UploadOut>),
        (status = 413, description = "70001: larger than uploads.max_bytes", body = ErrorEnvelope),
        (status = 415, description = "70002: not a JPEG, PNG, GIF or WebP image", body = ErrorEnvelope),
        (status = 422, description = "70003: no `file` field, an empty one, or another field", body = ErrorEnvelope),
    ))]
pub async fn upload_image(
    State(uploads): State<Arc<Uploads>>,
    _operator: OperatorAuth,
    mut form: Multipart,
) -> Result<Reply<UploadOut>, ApiError> {
    let malformed = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::from(UploadError::TooLarge(uploads.max_bytes()))
        } else {
            ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
        }
    };
    // The whole form is read before anything is stored: it has one field, `file`, given once.
    let mut file: Option<Vec<u8>> = None;
    while let Some(mut field) = form.next_field().await.map_err(malformed)? {
        if field.name() != Some("file") || file.is_some() {
            let name = field.name().unwrap_or("(unnamed)");
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::UPLOAD_MISSING,
                format!("the form has one field, `file`, given once; not `{name}`"),
            ));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(malformed)? {
            if bytes.len() + chunk.len() > uploads.max_bytes() {
                return Err(UploadError::TooLarge(uploads.max_bytes()).into());
            }
            bytes.extend_from_slice(&chunk);
        }
        file = Some(bytes);
    }
    let Some(bytes) = file else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::UPLOAD_MISSING,
            "no file: send it in the multipart field `file`",
        ));
    };
    let stored = uploads.store(&bytes).await?;
    Ok(created(UploadOut {
        url: stored.url(),
        content_type: stored.kind.content_type(),
        size: stored.size,
    }))
}

/// An uploaded image, with its type and `X-Content-Type-Options: nosniff`.
#[utoipa::path(get, path = "/uploads/{name}", tag = "catalog",
    params(("name" = String, Path, description = "`<sha256>.<ext>` as the upload answered")),
    responses(
        (status = 200, description = "The image", content_type = "image/*", body = Vec<u8>),
        (status = 404, description = "No such upload", body = ErrorEnvelope),
    ))]
pub async fn get_upload(
    State(uploads): State<Arc<Uploads>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (path, kind) = uploads.locate(&name).ok_or_else(ApiError::not_found)?;
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::not_found()),
        Err(e) => return Err(ApiError::internal(e)),
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(kind.content_type()),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'"),
            ),
        ],
        bytes,
    )
        .into_response())
}
