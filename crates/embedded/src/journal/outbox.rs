//! The outbox on disk, and what is in it but not yet applied.
//!
//! On disk it is a log: a directory beside the main database (`flashmart.outbox/` beside
//! `flashmart.db`) of segment files, each named after the first batch number it may hold, each
//! a magic header and then records appended one after another:
//!
//! ```text
//! segment := "FMOUTBX1" record*
//! record  := len:u32 crc:u32 seq:u64 body:[len]     (little-endian; crc is CRC-32 of seq and body)
//! ```
//!
//! Appending a batch is one `write` of one record, so it costs a system call, not a database
//! transaction on another thread; under `database.synchronous = full` the file is also synced
//! before the batch counts as written. A record is whole when its length and checksum say so: at
//! start, the log is read in order and a record cut short or not matching its checksum ends it
//! (a process killed in the middle of a write, whose batch was never answered); what follows it
//! in the last segment is cut off. A damaged record anywhere else, or a whole record whose batch
//! cannot be read, stops the start instead (nothing is skipped silently). A failed write is cut
//! back off the file before the error is returned, so no later record ever follows a torn one.
//!
//! Segments are closed at `SEGMENT_BYTES` and deleted once every batch in them is applied; the
//! open segment is emptied whenever everything in it is applied. In memory, a queue keeps the
//! batches appended and not yet applied, in order, for the applier.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flashmart_app::StoreError;

use super::codec::Decoded;
use crate::db::corrupt;

/// What every segment starts with (the format's name and version).
const MAGIC: &[u8; 8] = b"FMOUTBX1";

const RECORD_HEADER: usize = 16;

/// A segment is closed, and a new one started, once it is this long.
const SEGMENT_BYTES: u64 = 64 << 20;

/// Failed applies in a row after which the store reports itself not ready.
const FAILING_AFTER: u32 = 3;

/// A batch appended and not yet applied.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub seq: u64,
    pub body: Arc<Vec<u8>>,
    pub reservations: u32,
}

#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<Entry>,
    reservations: u64,
}

/// The segment being appended to.
#[derive(Debug)]
struct Segment {
    file: File,
    path: PathBuf,
    len: u64,
    /// The last batch written to it (0: none).
    last: u64,
}

#[derive(Debug)]
struct Log {
    open: Option<Segment>,
    /// Closed segments, oldest first, with the last batch each holds.
    closed: VecDeque<(PathBuf, u64)>,
    /// Set when a failed write could not be cut back off: nothing more is appended (a record
    /// after a torn one would be lost at the next start), until a restart reads the log again.
    broken: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    dir: PathBuf,
    sync: bool,
    log: Mutex<Log>,
    queue: Mutex<Queue>,
    /// The last batch appended.
    committed: AtomicU64,
    /// The last batch applied to the main database.
    applied: AtomicU64,
    /// Appends one at a time, the applier's catching up before one included.
    pub(crate) append: tokio::sync::Mutex<()>,
    /// Applies one at a time.
    pub(crate) apply: tokio::sync::Mutex<()>,
    failures: AtomicU32,
    last_error: Mutex<Option<String>>,
}

/// The outbox of the database at `main`: beside it, named after it (`flashmart.db` ->
/// `flashmart.outbox/`).
pub(crate) fn path_for(main: &Path) -> PathBuf {
    let stem = main
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "flashmart".to_owned());
    main.with_file_name(format!("{stem}.outbox"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io(what: &str, path: &Path, err: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("outbox: {what} {}: {err}", path.display()))
}

fn checksum(seq: u64, body: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(body);
    crc.finalize()
}

/// Makes a directory's entries (a file created or removed in it) durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}

impl Outbox {
    /// Opens (creating if needed) the outbox at `dir`, drops what the main database has already
    /// applied (up to `applied`, read from it), and queues the rest in order. `sync`: every
    /// append is synced to disk (`database.synchronous = full`).
    pub(crate) fn open(dir: &Path, sync: bool, applied: u64) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io("reading", dir, e))? {
            let path = entry.map_err(|e| io("reading", dir, e))?.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                names.push((first, path));
            }
        }
        names.sort();
        let outbox = Self {
            dir: dir.to_owned(),
            sync,
            log: Mutex::new(Log {
                open: None,
                closed: VecDeque::new(),
                broken: None,
            }),
            queue: Mutex::default(),
            committed: AtomicU64::new(applied),
            applied: AtomicU64::new(applied),
            append: tokio::sync::Mutex::new(()),
            apply: tokio::sync::Mutex::new(()),
            failures: AtomicU32::new(0),
            last_error: Mutex::new(None),
        };
        let count = names.len();
        let mut last_seq = applied;
        for (n, (_, path)) in names.into_iter().enumerate() {
            let is_last = n + 1 == count;
            let (whole, last) = outbox.read_segment(&path, applied, &mut last_seq, is_last)?;
            if is_last {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|e| io("opening", &path, e))?;
                lock(&outbox.log).open = Some(Segment {
                    file,
                    path,
                    len: whole,
                    last,
                });
            } else {
                lock(&outbox.log).closed.push_back((path, last));
            }
        }
        outbox.forget_through(applied)?;
        Ok(outbox)
    }

    /// Reads one segment: queues its batches after `applied`, checks that batch numbers only
    /// grow (`last_seq`), and returns how many bytes of it are whole records and the last batch
    /// in it. A torn end is cut off the last segment; anywhere else it is an error.
    fn read_segment(
        &self,
        path: &Path,
        applied: u64,
        last_seq: &mut u64,
        is_last: bool,
    ) -> Result<(u64, u64), StoreError> {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| io("reading", path, e))?;
        let damaged = |what: &str| {
            corrupt(
                "outbox",
                format!("{} is damaged ({what}) before its end", path.display()),
            )
        };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            if !is_last || bytes.len() >= MAGIC.len() {
                return Err(damaged("not an outbox segment"));
            }
            // Made, and killed before its header was written: start it again.
            self.rewrite_header(path)?;
            return Ok((MAGIC.len() as u64, 0));
        }
        let mut pos = MAGIC.len();
        let mut last = 0;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            let Some(record) = whole_record(rest) else {
                if !is_last {
                    return Err(damaged("a record cut short or not matching its checksum"));
                }
                // The write a kill interrupted: its batch was never answered.
                tracing::warn!(
                    segment = %path.display(),
                    bytes = rest.len(),
                    "the outbox ends in a torn record; cutting it off"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io("opening", path, e))?;
                file.set_len(pos as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io("cutting off", path, e))?;
                break;
            };
            let (seq, body) = record;
            if seq <= *last_seq && seq > applied {
                return Err(damaged("batch numbers out of order"));
            }
            *last_seq = (*last_seq).max(seq);
            last = seq;
            if seq > applied {
                let mut decoded = Decoded::default();
                decoded.read(body)?;
                let reservations = u32::try_from(decoded.reservations.len()).unwrap_or(u32::MAX);
                self.queued(Entry {
                    seq,
                    body: Arc::new(body.to_vec()),
                    reservations,
                });
            }
            pos += RECORD_HEADER + body.len();
        }
        Ok((pos as u64, last))
    }

    fn rewrite_header(&self, path: &Path) -> Result<(), StoreError> {
        let mut file = File::create(path).map_err(|e| io("creating", path, e))?;
        file.write_all(MAGIC)
            .and_then(|()| file.sync_all())
            .map_err(|e| io("writing", path, e))
    }

    fn with_queue<T>(&self, f: impl FnOnce(&mut Queue) -> T) -> T {
        f(&mut lock(&self.queue))
    }

    /// Writes a batch to the log and queues it for the applier; the caller holds `append`. Once
    /// this returns the batch is as durable as `database.synchronous` makes a commit: written
    /// (survives a killed process), and with `full` synced (survives power loss). Blocking
    /// file work: a write to the page cache under `normal`, and a sync under `full` (the caller
    /// runs it off the async workers then).
    pub(crate) fn append(&self, body: Vec<u8>, reservations: u32) -> Result<(), StoreError> {
        let mut guard = lock(&self.log);
        let log = &mut *guard;
        if let Some(why) = &log.broken {
            return Err(StoreError::Unavailable(format!(
                "outbox: a failed write could not be undone ({why}); restart to recover"
            )));
        }
        let seq = self.committed.load(Ordering::Acquire) + 1;
        let len =
            u32::try_from(body.len()).map_err(|_| corrupt("outbox batch", "larger than 4 GiB"))?;
        if log.open.as_ref().is_none_or(|s| s.len >= SEGMENT_BYTES) {
            self.start_segment(log, seq)?;
        }
        let Some(segment) = log.open.as_mut() else {
            return Err(StoreError::Unavailable("outbox: no open segment".into()));
        };
        let mut record = Vec::with_capacity(RECORD_HEADER + body.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&checksum(seq, &body).to_le_bytes());
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(&body);
        if let Err(err) = segment.file.write_all(&record) {
            // Cut back whatever part of the record reached the file, so that the next record
            // does not follow a torn one.
            if segment.file.set_len(segment.len).is_err() {
                log.broken = Some(err.to_string());
            }
            return Err(io("writing", &segment.path, err));
        }
        if self.sync
            && let Err(err) = segment.file.sync_data()
        {
            // What reached the disk is unknown after a failed sync, and a retry may report
            // success for pages that were dropped: nothing more is written until a restart.
            log.broken = Some(err.to_string());
            return Err(io("syncing", &segment.path, err));
        }
        segment.len += record.len() as u64;
        segment.last = seq;
        self.queued(Entry {
            seq,
            body: Arc::new(body),
            reservations,
        });
        Ok(())
    }

    /// Closes the open segment, if any, and starts a new one named after `first`.
    fn start_segment(&self, log: &mut Log, first: u64) -> Result<(), StoreError> {
        if let Some(old) = log.open.take() {
            log.closed.push_back((old.path, old.last));
        }
        let path = self.dir.join(format!("{first:020}.log"));
        self.rewrite_header(&path)?;
        if self.sync {
            sync_dir(&self.dir)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io("opening", &path, e))?;
        log.open = Some(Segment {
            file,
            path,
            len: MAGIC.len() as u64,
            last: 0,
        });
        Ok(())
    }

    /// Queues an entry, then counts it committed: whoever sees it committed finds it queued.
    fn queued(&self, entry: Entry) {
        let seq = entry.seq;
        self.with_queue(|q| {
            q.reservations += u64::from(entry.reservations);
            q.entries.push_back(entry);
        });
        self.committed.fetch_max(seq, Ordering::AcqRel);
    }

    /// The oldest queued batches, whole, up to about `max` reservations (at least one batch).
    pub(crate) fn oldest(&self, max: u64) -> Vec<Entry> {
        self.with_queue(|q| {
            let mut taken = 0;
            let mut out = Vec::new();
            for entry in &q.entries {
                if !out.is_empty() && taken + u64::from(entry.reservations) > max {
                    break;
                }
                taken += u64::from(entry.reservations);
                out.push(entry.clone());
            }
            out
        })
    }

    /// Batches up to `seq` are in the main database.
    pub(crate) fn applied_through(&self, seq: u64) {
        self.with_queue(|q| {
            while q.entries.front().is_some_and(|e| e.seq <= seq) {
                if let Some(e) = q.entries.pop_front() {
                    q.reservations -= u64::from(e.reservations);
                }
            }
        });
        self.applied.fetch_max(seq, Ordering::AcqRel);
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Drops from disk what holds only batches up to `seq` (applied, so no longer needed):
    /// closed segments are deleted, the open one emptied when all of it is applied.
    pub(crate) fn forget_through(&self, seq: u64) -> Result<(), StoreError> {
        let mut gone = Vec::new();
        {
            let mut log = lock(&self.log);
            while log.closed.front().is_some_and(|(_, last)| *last <= seq) {
                if let Some((path, _)) = log.closed.pop_front() {
                    gone.push(path);
                }
            }
            if let Some(open) = log.open.as_mut()
                && open.last <= seq
                && open.len > MAGIC.len() as u64
            {
                open.file
                    .set_len(MAGIC.len() as u64)
                    .map_err(|e| io("emptying", &open.path, e))?;
                open.len = MAGIC.len() as u64;
            }
        }
        // Deleting a large file takes a while: not while appends wait for the log.
        for path in &gone {
            fs::remove_file(path).map_err(|e| io("deleting", path, e))?;
        }
        Ok(())
    }

    pub(crate) fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Reservations appended and not yet applied.
    pub(crate) fn backlog(&self) -> u64 {
        self.with_queue(|q| q.reservations)
    }

    pub(crate) fn syncs(&self) -> bool {
        self.sync
    }

    pub(crate) fn failed(&self, err: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(err.to_string());
    }

    /// An error while applies keep failing, or while appends cannot go on: the store is not
    /// ready.
    pub(crate) fn health(&self) -> Result<(), StoreError> {
        if let Some(why) = &lock(&self.log).broken {
            return Err(StoreError::Unavailable(format!(
                "the outbox cannot be written: {why}"
            )));
        }
        let failures = self.failures.load(Ordering::Relaxed);
        if failures < FAILING_AFTER {
            return Ok(());
        }
        let last = lock(&self.last_error).clone().unwrap_or_default();
        Err(StoreError::Unavailable(format!(
            "the outbox could not be applied {failures} times in a row: {last}"
        )))
    }
}

/// The record at the start of `bytes` if it is whole (its length fits and its checksum
/// matches): its batch number and body.
fn whole_record(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let header = bytes.get(..RECORD_HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let body = bytes.get(RECORD_HEADER..RECORD_HEADER.checked_add(len)?)?;
    (checksum(seq, body) == crc).then_some((seq, body))
}
