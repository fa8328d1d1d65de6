//! Password hashing with argon2id. Hashing is slow on purpose, so it runs on the blocking pool,
//! and a semaphore caps how many run at once: a burst of logins must not claim a thread and tens
//! of MiB of memory each.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// argon2id cost. The default is OWASP's recommendation (19 MiB, 2 passes, 1 lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("argon2: {0}")]
    Argon(String),
    #[error("hashing task failed: {0}")]
    Task(String),
}

#[derive(Clone)]
pub struct PasswordHasher {
    argon: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// Verified against when the email is unknown, so that the answer takes as long as for a
    /// known one and does not reveal which emails have accounts.
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// Builds the hasher and computes the dummy hash (one full hash, on the calling thread).
    pub fn new(cost: HashCost, max_parallel: usize) -> Result<Self, HashError> {
        let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
            .map_err(|e| HashError::Argon(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = hash_now(&argon, "flashmart-dummy-password")?;
        Ok(Self {
            argon,
            permits: Arc::new(Semaphore::new(max_parallel.max(1))),
            dummy_hash: dummy_hash.into(),
        })
    }

    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let argon = self.argon.clone();
        let password = password.to_owned();
        self.run(move || hash_now(&argon, &password)).await?
    }

    /// Whether `password` matches `hash`. A malformed stored hash counts as no match.
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, HashError> {
        let argon = self.argon.clone();
        let password = password.to_owned();
        let hash = hash.to_owned();
        self.run(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
    }

    /// Spends the time of one verification and returns false.
    pub async fn verify_dummy(&self, password: &str) -> Result<bool, HashError> {
        let dummy = Arc::clone(&self.dummy_hash);
        self.verify(password, &dummy).await.map(|_| false)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashError::Task(e.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| HashError::Task(e.to_string()))
    }
}

fn hash_now(argon: &Argon2<'static>, password: &str) -> Result<String, HashError> {
    argon
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| HashError::Argon(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasher {
        PasswordHasher::new(
            HashCost {
                memory_kib: 64,
                iterations: 1,
            },
            2,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_and_are_salted() {
        let h = cheap();
        let a = h.hash("correct horse").await.unwrap();
        let b = h.hash("correct horse").await.unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "each hash has its own salt");
        assert!(h.verify("correct horse", &a).await.unwrap());
        assert!(!h.verify("wrong horse", &a).await.unwrap());
        assert!(!h.verify("correct horse", "not a phc string").await.unwrap());
        assert!(!h.verify_dummy("anything").await.unwrap());
    }
}
