//! The provider of a shop that takes no payments through flashmart (`payments.provider =
//! "none"`): every call is refused, every notification rejected, so nothing can be paid, and no
//! pay page is served.

use async_trait::async_trait;
use flashmart_domain::Money;
use time::OffsetDateTime;

use super::{
    CreatePayment, Notification, NotifyError, PaymentProvider, ProviderError, ProviderPayment,
    ProviderState,
};

#[derive(Debug, Default)]
pub struct NoProvider;

const WHY: &str = "no payment provider is configured (payments.provider = \"none\")";

#[async_trait]
impl PaymentProvider for NoProvider {
    fn name(&self) -> &'static str {
        "none"
    }

    fn signature_header(&self) -> &'static str {
        "x-no-provider-signature"
    }

    async fn create(&self, _: &CreatePayment) -> Result<ProviderPayment, ProviderError> {
        Err(ProviderError::Refused(WHY.into()))
    }

    async fn query(&self, _: &str) -> Result<ProviderState, ProviderError> {
        Err(ProviderError::Refused(WHY.into()))
    }

    async fn close(&self, _: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Refused(WHY.into()))
    }

    async fn refund(&self, _: &str, _: Money, _: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Refused(WHY.into()))
    }

    fn verify(&self, _: &str, _: &[u8], _: OffsetDateTime) -> Result<Notification, NotifyError> {
        Err(NotifyError::BadSignature)
    }
}
