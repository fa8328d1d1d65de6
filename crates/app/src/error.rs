//! Errors shared by every use case: what a storage adapter can report, and the per-field messages
//! a failed validation carries back to the client.

use std::borrow::Cow;

/// What any storage adapter maps its driver errors into.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("record not found")]
    NotFound,
    /// A uniqueness or check constraint refused the write.
    #[error("conflict on {constraint}")]
    Conflict { constraint: Cow<'static, str> },
    /// The store cannot be reached or is overloaded; worth a 503 and a retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn other(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Other(Box::new(err))
    }
}

/// One field that failed validation, as listed in the error envelope's `details`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Cow<'static, str>,
    pub message: String,
}

/// `field: message`, as forms and the command line show it.
impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl FieldError {
    pub fn new(field: impl Into<Cow<'static, str>>, message: impl ToString) -> Self {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
    }
}
