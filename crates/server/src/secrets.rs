//! Keys the server signs with: the access-token key and the sandbox payment provider's
//! notification key. An explicit setting wins; in embedded mode without one, a random key is
//! generated on first start and kept in the data directory (readable by the owner only), so it
//! survives restarts.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;

use crate::config::{Config, Secret};

const FILE: &str = "jwt_secret";
const SANDBOX_FILE: &str = "sandbox_secret";

pub fn jwt_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    secret(
        config.auth.jwt_secret.as_ref(),
        &config.data_dir.join(FILE),
        "auth.jwt_secret is not set: generated one and stored it in the data directory; \
         set it explicitly when more than one instance must accept the same tokens",
    )
}

pub fn sandbox_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    secret(
        config.payments.sandbox_secret.as_ref(),
        &config.data_dir.join(SANDBOX_FILE),
        "payments.sandbox_secret is not set: generated one and stored it in the data directory",
    )
}

fn secret(explicit: Option<&Secret>, path: &Path, warning: &str) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = explicit {
        return Ok(secret.expose().as_bytes().to_vec());
    }
    if path.exists() {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let key = STANDARD
            .decode(text.trim())
            .with_context(|| format!("{} is not base64", path.display()))?;
        anyhow::ensure!(
            key.len() >= 32,
            "{} holds fewer than 32 bytes",
            path.display()
        );
        return Ok(key);
    }
    let mut key = vec![0u8; 32];
    rand::rng().fill_bytes(&mut key);
    write_private(path, STANDARD.encode(&key).as_bytes())?;
    tracing::warn!(path = %path.display(), "{warning}");
    Ok(key)
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let first = jwt_secret(&config).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(jwt_secret(&config).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn an_explicit_secret_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.auth.jwt_secret = Some(Secret::new("x".repeat(40)));
        assert_eq!(jwt_secret(&config).unwrap(), vec![b'x'; 40]);
        assert!(!dir.path().join(FILE).exists());
    }
}
