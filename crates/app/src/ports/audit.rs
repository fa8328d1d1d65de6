//! Reading the audit log. Entries are written by the audited store methods themselves, in the
//! transaction of the change they record.

use async_trait::async_trait;

use crate::audit::{AuditEntry, AuditFilter};
use crate::error::StoreError;
use crate::page::{Page, PageRequest};

#[async_trait]
pub trait AuditStore: Send + Sync + std::fmt::Debug + 'static {
    /// Entries matching every field the filter sets, newest first.
    async fn audit_entries(
        &self,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditEntry>, StoreError>;
}
