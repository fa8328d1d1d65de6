//! Image uploads: checked by their bytes, stored under their content hash (the same image
//! uploaded twice is stored once), written atomically so a reader never sees half a file.

use std::path::{Path, PathBuf};

use flashmart_domain::image::ImageKind;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the file is larger than {0} bytes")]
    TooLarge(usize),
    #[error("not a JPEG, PNG, GIF or WebP image")]
    UnsupportedType,
    #[error("the file is empty")]
    Empty,
    #[error("storing the upload failed: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpload {
    /// `<sha256>.<ext>`
    pub name: String,
    pub kind: ImageKind,
    pub size: usize,
}

impl StoredUpload {
    pub fn url(&self) -> String {
        format!("/uploads/{}", self.name)
    }
}

#[derive(Debug, Clone)]
pub struct Uploads {
    dir: PathBuf,
    max_bytes: usize,
}

impl Uploads {
    pub fn new(dir: PathBuf, max_bytes: usize) -> Self {
        Self { dir, max_bytes }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub async fn store(&self, bytes: &[u8]) -> Result<StoredUpload, UploadError> {
        if bytes.is_empty() {
            return Err(UploadError::Empty);
        }
        if bytes.len() > self.max_bytes {
            return Err(UploadError::TooLarge(self.max_bytes));
        }
        let kind = ImageKind::sniff(bytes).ok_or(UploadError::UnsupportedType)?;
        let digest = Sha256::digest(bytes);
        let mut name = String::with_capacity(70);
        for b in digest {
            name.push_str(&format!("{b:02x}"));
        }
        name.push('.');
        name.push_str(kind.extension());
        let path = self.dir.join(&name);
        if !tokio::fs::try_exists(&path).await? {
            tokio::fs::create_dir_all(&self.dir).await?;
            let tmp = self
                .dir
                .join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
            write_durably(&self.dir, &tmp, &path, bytes).await?;
        }
        Ok(StoredUpload {
            name,
            kind,
            size: bytes.len(),
        })
    }

    /// The stored file for a name as `/uploads/` serves it, or `None` for any name this store
    /// could not have made (which rules out paths outside the directory).
    pub fn locate(&self, name: &str) -> Option<(PathBuf, ImageKind)> {
        let (hash, ext) = name.split_once('.')?;
        let valid_hash = hash.len() == 64
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let kind = ImageKind::from_extension(ext)?;
        valid_hash.then(|| (self.dir.join(Path::new(name)), kind))
    }
}

/// Writes `bytes` under a temporary name, makes them durable, renames the file into place and
/// makes the rename durable too: after a crash the name either does not exist or holds the
/// whole file, never a torn one.
async fn write_durably(dir: &Path, tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (dir, tmp, path, bytes) = (
        dir.to_owned(),
        tmp.to_owned(),
        path.to_owned(),
        bytes.to_vec(),
    );
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        if let Err(err) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
        // The directory entry itself: without this the rename may be lost on power failure.
        #[cfg(unix)]
        std::fs::File::open(&dir)?.sync_all()?;
        #[cfg(not(unix))]
        let _ = dir;
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] =
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

    #[tokio::test]
    async fn stores_by_content_hash_once() {
        let dir = tempfile_dir();
        let uploads = Uploads::new(dir.clone(), 1024);
        let a = uploads.store(PNG).await.unwrap();
        let b = uploads.store(PNG).await.unwrap();
        assert_eq!(a, b);
        assert!(a.name.ends_with(".png"));
        assert_eq!(std::fs::read(dir.join(&a.name)).unwrap(), PNG);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp files left"
        );
        let (path, kind) = uploads.locate(&a.name).unwrap();
        assert_eq!((path, kind), (dir.join(&a.name), ImageKind::Png));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn refuses_what_is_not_an_accepted_image() {
        let uploads = Uploads::new(tempfile_dir(), 64);
        assert!(matches!(
            uploads.store(b"#!/bin/sh\nrm -rf /").await,
            Err(UploadError::UnsupportedType)
        ));
        assert!(matches!(
            uploads.store(&[0xFF; 65]).await,
            Err(UploadError::TooLarge(64))
        ));
        assert!(matches!(uploads.store(b"").await, Err(UploadError::Empty)));
        for bad in [
            "../etc/passwd",
            "x.png",
            &format!("{}.exe", "a".repeat(64)),
            &format!("{}/.png", "a".repeat(63)),
        ] {
            assert!(uploads.locate(bad).is_none(), "{bad}");
        }
    }

    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!(
            "flashmart-uploads-{}",
            uuid::Uuid::new_v4().simple()
        ))
    }
}
