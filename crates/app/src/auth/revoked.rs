//! The in-memory list of revoked sessions that access-token checks consult instead of the
//! database. An entry is kept only as long as an access token of that session could still be
//! unexpired; after that the token's own expiry refuses it.

use dashmap::DashMap;
use flashmart_domain::SessionId;
use time::OffsetDateTime;

#[derive(Debug, Default)]
pub struct RevokedSessions {
    /// Session -> unix time after which the entry may be forgotten.
    until: DashMap<SessionId, i64>,
}

impl RevokedSessions {
    pub fn revoke(&self, session: SessionId, forget_after: OffsetDateTime) {
        self.until.insert(session, forget_after.unix_timestamp());
    }

    pub fn is_revoked(&self, session: &SessionId) -> bool {
        self.until.contains_key(session)
    }

    /// Drops entries whose access tokens have all expired.
    pub fn prune(&self, now: OffsetDateTime) {
        let now = now.unix_timestamp();
        self.until.retain(|_, until| *until > now);
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    #[test]
    fn remembers_until_told_to_forget() {
        let list = RevokedSessions::default();
        let now = OffsetDateTime::now_utc();
        let (a, b) = (SessionId::new(), SessionId::new());
        list.revoke(a, now + Duration::minutes(15));
        list.revoke(b, now + Duration::minutes(1));
        assert!(list.is_revoked(&a) && list.is_revoked(&b));
        list.prune(now + Duration::minutes(5));
        assert!(list.is_revoked(&a));
        assert!(!list.is_revoked(&b));
        assert_eq!(list.len(), 1);
    }
}
