//! `flashmart backup --to FILE` and `flashmart restore --from FILE` for embedded mode.
//!
//! A backup is a tar archive of what `data_dir` holds, taken while the server runs, in the one
//! order that loses nothing: the reservation outbox first (reservations answered and not yet
//! applied), then a snapshot of the database (`VACUUM INTO`); a batch applied between the two is
//! in both, and is applied once at the next start (the database records which batches it
//! holds), where the other order could miss it. Then the sandbox provider's database, the
//! generated signing keys, and the uploads. `BACKUP.json` says what it is.
//!
//! A restore unpacks one into an empty data directory (or, with `--force`, one whose contents it
//! replaces), never into one a server is using.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::lock::DataDirLock;

/// What `BACKUP.json` says.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    flashmart: String,
    /// RFC 3339.
    created_at: String,
    outbox_segments: usize,
    uploads: usize,
}

const MANIFEST: &str = "BACKUP.json";
const FORMAT: u32 = 1;
/// The files of `data_dir` a backup carries besides the databases and the outbox.
const KEY_FILES: [&str; 2] = ["jwt_secret", "sandbox_secret"];
const LOCK_FILE: &str = "flashmart.lock";

fn embedded_only(config: &Config, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.database.url.is_none(),
        "flashmart {what} is for embedded mode: in scaled mode the records are in PostgreSQL \
         (scripts/pg-backup dumps and restores them with pg_dump/pg_restore) and Redis is \
         rebuilt from them (flashmart reconcile)"
    );
    Ok(())
}

/// Copies every file of `from` into `to` (made), skipping files that vanish meanwhile (an
/// outbox segment deleted once applied); returns how many it copied.
fn copy_files(from: &Path, to: &Path) -> anyhow::Result<usize> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let entries = match fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", from.display())),
    };
    let mut copied = 0;
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        match fs::copy(entry.path(), to.join(entry.file_name())) {
            Ok(_) => copied += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("copying {}", entry.path().display()));
            }
        }
    }
    Ok(copied)
}

fn say(line: &str) {
    eprintln!("flashmart: {line}");
}

/// Writes a backup of the (possibly running) embedded server's data to `to`.
pub async fn backup(config: &Config, to: &Path) -> anyhow::Result<()> {
    embedded_only(config, "backup")?;
    let db = config.database_file();
    anyhow::ensure!(
        db.is_file(),
        "no database at {}: nothing to back up (is data_dir right?)",
        db.display()
    );
    anyhow::ensure!(!to.exists(), "{} exists already", to.display());
    let parent = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".flashmart-backup-")
        .tempdir_in(parent)
        .with_context(|| format!("making a working directory in {}", parent.display()))?;
    let root = staging.path();

    // The outbox first, then the database: see the module's comment.
    let outbox = flashmart_embedded::outbox_dir(&db);
    let segments = copy_files(&outbox, &root.join(outbox.file_name().unwrap_or_default()))?;
    say(&format!("outbox: {segments} segment(s) copied"));
    flashmart_embedded::snapshot(&db, &root.join("flashmart.db")).await?;
    say(&format!(
        "database: snapshot of {} taken ({} bytes)",
        db.display(),
        fs::metadata(root.join("flashmart.db"))?.len()
    ));
    let sandbox = config.data_dir.join("sandbox.db");
    if sandbox.is_file() {
        flashmart_embedded::snapshot(&sandbox, &root.join("sandbox.db")).await?;
        say("sandbox provider's database: snapshot taken");
    }
    for key in KEY_FILES {
        let path = config.data_dir.join(key);
        if path.is_file() {
            fs::copy(&path, root.join(key)).with_context(|| format!("copying {key}"))?;
        }
    }
    let uploads = copy_files(&config.uploads_dir(), &root.join("uploads"))?;
    say(&format!("uploads: {uploads} file(s) copied"));
    let manifest = Manifest {
        format: FORMAT,
        flashmart: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        outbox_segments: segments,
        uploads,
    };
    fs::write(root.join(MANIFEST), serde_json::to_vec_pretty(&manifest)?)?;

    // Written beside its name, synced, then renamed: a backup file is whole or absent.
    let partial = PathBuf::from(format!("{}.partial", to.display()));
    let file =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut tar = tar::Builder::new(file);
    tar.append_dir_all(".", root)
        .with_context(|| format!("writing {}", partial.display()))?;
    let mut file = tar.into_inner()?;
    file.flush()?;
    file.sync_all()?;
    fs::rename(&partial, to).with_context(|| format!("renaming to {}", to.display()))?;
    say(&format!(
        "backup written to {} ({} bytes)",
        to.display(),
        fs::metadata(to)?.len()
    ));
    Ok(())
}

/// What is in `dir` besides the lock file.
fn contents(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != LOCK_FILE)
            .map(|e| e.path())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

fn remove(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .with_context(|| format!("removing {}", path.display()))
}

/// Unpacks the backup `from` into the configured data directory (and uploads directory).
pub fn restore(config: &Config, from: &Path, force: bool) -> anyhow::Result<()> {
    embedded_only(config, "restore")?;
    anyhow::ensure!(from.is_file(), "no backup at {}", from.display());
    // Held for the whole restore: no server starts on a half-restored directory, and none that
    // runs is restored under.
    let _lock = DataDirLock::acquire(&config.data_dir).context("restoring")?;
    let uploads_dir = config.uploads_dir();
    let mut there = contents(&config.data_dir)?;
    if !uploads_dir.starts_with(&config.data_dir) {
        there.extend(contents(&uploads_dir)?);
    }
    if !there.is_empty() {
        anyhow::ensure!(
            force,
            "data_dir {} is not empty ({} entries): restore into an empty one, or pass --force to \
             replace what is there",
            config.data_dir.display(),
            there.len()
        );
        for path in &there {
            remove(path)?;
        }
        say(&format!("--force: removed {} entries", there.len()));
    }

    let staging = tempfile::Builder::new()
        .prefix(".flashmart-restore-")
        .tempdir_in(&config.data_dir)?;
    let root = staging.path();
    let file = fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    tar::Archive::new(file)
        .unpack(root)
        .with_context(|| format!("unpacking {}", from.display()))?;
    let manifest: Manifest = serde_json::from_slice(
        &fs::read(root.join(MANIFEST))
            .with_context(|| format!("{} is not a flashmart backup", from.display()))?,
    )
    .with_context(|| format!("reading {MANIFEST}"))?;
    anyhow::ensure!(
        manifest.format == FORMAT,
        "{} is a backup of format {}; this flashmart reads format {FORMAT}",
        from.display(),
        manifest.format
    );
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == MANIFEST || name == "uploads" {
            continue;
        }
        fs::rename(entry.path(), config.data_dir.join(&name))
            .with_context(|| format!("placing {}", name.to_string_lossy()))?;
    }
    let uploads = copy_files(&root.join("uploads"), &uploads_dir)?;
    say(&format!(
        "restored the backup of {} into {} ({} outbox segment(s), {uploads} upload(s)); start \
         the server: it applies what the outbox holds first",
        manifest.created_at,
        config.data_dir.display(),
        manifest.outbox_segments
    ));
    Ok(())
}
