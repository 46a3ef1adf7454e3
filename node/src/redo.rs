//! The primary's statement log: makes a write that spans several Tstores all or
//! nothing across a crash.
//!
//! Every Tstore has its own write-ahead log, so a crash while a statement's requests
//! are being applied could leave some Tstores with its change and others without. The
//! primary therefore records such a statement (its exact per-Tstore work) durably
//! before it sends anything, and completes it at the next start:
//!
//! 1. `begin`: append `Begin { id, work }` to `D/node-K/stmt.log` and fsync. `id`
//!    increases with every logged statement; writes are serialised by the engine's
//!    write lock, so ids reach every Tstore in increasing order.
//! 2. Send each Tstore its share as [`Request::Stmt`] `{ id, write }`. A Tstore logs
//!    the change and `id` in one WAL record and fsyncs before it answers
//!    ([`smrdb_tstore::Store::write_stmt`]); a Tstore whose last applied id is `>= id`
//!    skips it.
//! 3. When every Tstore has answered: append `Done { id }` (not synced: a lost `Done`
//!    only costs a re-send that the Tstores skip), then acknowledge the client.
//! 4. At start, before serving clients, the primary asks every Tstore for its last id
//!    ([`Request::LastStmt`]: later ids are above them all), re-sends every `Begin`
//!    without a `Done`, in order, and empties the log.
//!
//! A statement the client saw acknowledged is on every Tstore's WAL; one cut by a
//! crash after step 1 is completed at the restart (as if it had finished before the
//! crash); one cut before step 1 was sent nowhere. A Tstore applies its requests in
//! the order they were sent, so "last id `>= id`" means it applied (or, for a
//! deterministic error such as a division by zero, rejected) statement `id`.
//!
//! Writes that reach one Tstore (a one-row INSERT, any write on a 1-Tstore cluster)
//! are atomic in that Tstore's WAL and are not logged here. DDL is not logged either:
//! CREATE TABLE takes effect when the catalog is saved, after every Tstore created its
//! slice (a leftover slice is replaced by the next CREATE), and DROP TABLE can be
//! repeated until it is done.
//!
//! File layout: header `b"SMRDBSTL"` + version `u32` LE, then records
//! `len: u32 LE | crc32(payload): u32 LE | payload` (postcard [`LogRecord`]). A torn last
//! record (a crash while appending) is dropped on open: its statement was never sent.
//! The log is emptied at start and, while running, whenever it exceeds
//! [`RESET_BYTES`] with no statement unfinished.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use smrdb_tstore::StmtWrite;

use crate::dispatch::Target;
use crate::error::{Error, Result};
use crate::proto::Request;

/// File name of the statement log in the primary's node directory.
pub const LOG_FILE: &str = "stmt.log";
const MAGIC: &[u8; 8] = b"SMRDBSTL";
/// Version 2: inserts carry Arrow IPC rows, UPDATE and DELETE `datafusion-proto` expressions.
const VERSION: u32 = 2;
const HEADER_LEN: usize = 12;
/// The log is emptied when it grows past this and no statement is unfinished.
pub const RESET_BYTES: u64 = 64 << 20;

/// What one statement asks of the Tstores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Work {
    /// The same write on every Tstore (UPDATE, DELETE).
    All(StmtWrite),
    /// A write for each listed Tstore (the rows of an INSERT or COPY).
    Each(Vec<(u32, StmtWrite)>),
}

impl Work {
    /// The requests that carry this work as statement `id`.
    pub fn requests(self, id: u64) -> Vec<(Target, Request)> {
        match self {
            Work::All(write) => vec![(Target::All, Request::Stmt { id, write })],
            Work::Each(v) => v
                .into_iter()
                .map(|(t, write)| (Target::One(t), Request::Stmt { id, write }))
                .collect(),
        }
    }
}

/// One record of the statement log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogRecord {
    /// Statement `id` is about to be sent.
    Begin {
        /// Statement id.
        id: u64,
        /// Its per-Tstore work.
        work: Work,
    },
    /// Every Tstore answered statement `id`.
    Done {
        /// Statement id.
        id: u64,
    },
}

/// [`LogRecord`] borrowing its work, for writing (the same bytes: serde encodes `&T`
/// as `T`), so a large COPY is not copied to be logged.
#[derive(Serialize)]
enum LogRecordRef<'a> {
    Begin { id: u64, work: &'a Work },
    Done { id: u64 },
}

/// The primary's statement log (see the module documentation).
#[derive(Debug)]
pub struct StmtLog {
    path: PathBuf,
    file: File,
    len: u64,
    next_id: u64,
    /// Begun and not done (in this run).
    unfinished: BTreeSet<u64>,
    /// Found unfinished when the log was opened, in id order; taken by the recovery.
    recovered: Vec<(u64, Work)>,
    /// A failed append could not be undone: no more statements are logged.
    poisoned: bool,
}

fn frame(rec: &LogRecordRef<'_>) -> Result<Vec<u8>> {
    let payload = postcard::to_stdvec(rec)
        .map_err(|e| Error::Protocol(format!("encode a statement log record: {e}")))?;
    let len = u32::try_from(payload.len())
        .map_err(|_| Error::sql("54000", "statement too large for the statement log"))?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Parses the records after the header; returns them and the length of the valid
/// prefix (shorter than `buf` when a torn last record was dropped).
fn parse(buf: &[u8], path: &Path) -> Result<(Vec<LogRecord>, usize)> {
    let corrupt = |off: usize, what: &str| {
        Error::Catalog(format!("{}: record at offset {off} {what}", path.display()))
    };
    let mut recs = Vec::new();
    let mut off = HEADER_LEN;
    while off < buf.len() {
        let rest = &buf[off..];
        if rest.len() < 8 || rest.iter().all(|&b| b == 0) {
            break; // torn header or zero-filled tail
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if rest.len() - 8 < len {
            break; // torn payload
        }
        let payload = &rest[8..8 + len];
        if crc32(payload) != crc {
            if rest.len() == 8 + len {
                break; // torn last record
            }
            return Err(corrupt(off, "fails its checksum"));
        }
        let rec: LogRecord = postcard::from_bytes(payload)
            .map_err(|e| corrupt(off, &format!("cannot be decoded: {e}")))?;
        recs.push(rec);
        off += 8 + len;
    }
    Ok((recs, off))
}

fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&VERSION.to_le_bytes());
    h
}

impl StmtLog {
    /// Opens (creating) the log in `dir`. Statements begun and not done are kept for
    /// [`StmtLog::take_recovered`].
    ///
    /// # Errors
    /// I/O errors; [`Error::Catalog`] for a damaged log (other than a torn last
    /// record).
    pub fn open(dir: &Path) -> Result<StmtLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let mut recovered = Vec::new();
        let mut next_id = 1;
        let file = if path.exists() {
            let mut buf = Vec::new();
            File::open(&path)?.read_to_end(&mut buf)?;
            if buf.len() < HEADER_LEN || buf[..HEADER_LEN] != header()[..] {
                return Err(Error::Catalog(format!(
                    "{}: not a statement log of version {VERSION}",
                    path.display()
                )));
            }
            let (recs, valid) = parse(&buf, &path)?;
            let mut begun: Vec<(u64, Work)> = Vec::new();
            let mut done = BTreeSet::new();
            for r in recs {
                match r {
                    LogRecord::Begin { id, work } => {
                        next_id = next_id.max(id.saturating_add(1));
                        begun.push((id, work));
                    }
                    LogRecord::Done { id } => {
                        done.insert(id);
                    }
                }
            }
            begun.retain(|(id, _)| !done.contains(id));
            begun.sort_by_key(|(id, _)| *id);
            recovered = begun;
            let f = OpenOptions::new().read(true).write(true).open(&path)?;
            if valid < buf.len() {
                f.set_len(valid as u64)?; // drop the torn tail
                f.sync_all()?;
            }
            f
        } else {
            let tmp = path.with_extension("tmp");
            let mut f = File::create(&tmp)?;
            f.write_all(&header())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)?;
            File::open(dir)?.sync_all()?;
            OpenOptions::new().read(true).write(true).open(&path)?
        };
        let len = file.metadata()?.len();
        Ok(StmtLog {
            path,
            file,
            len,
            next_id,
            unfinished: BTreeSet::new(),
            recovered,
            poisoned: false,
        })
    }

    /// The statements found unfinished at open, in id order (once).
    pub fn take_recovered(&mut self) -> Vec<(u64, Work)> {
        std::mem::take(&mut self.recovered)
    }

    /// The statements begun in this run and not done (cut by a lost node), with their
    /// work, read back from the log file, in id order.
    ///
    /// # Errors
    /// I/O errors; [`Error::Catalog`] for a damaged log.
    pub fn pending(&mut self) -> Result<Vec<(u64, Work)>> {
        if self.unfinished.is_empty() {
            return Ok(Vec::new());
        }
        let mut buf = Vec::with_capacity(self.len as usize);
        self.file.seek(SeekFrom::Start(0))?;
        (&mut self.file).take(self.len).read_to_end(&mut buf)?;
        let (recs, _) = parse(&buf, &self.path)?;
        let mut out: Vec<(u64, Work)> = recs
            .into_iter()
            .filter_map(|r| match r {
                LogRecord::Begin { id, work } if self.unfinished.contains(&id) => Some((id, work)),
                _ => None,
            })
            .collect();
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// Makes every later statement id larger than `id` (the Tstores' last applied
    /// ids: a smaller id would be skipped by them).
    pub fn advance_past(&mut self, id: u64) {
        self.next_id = self.next_id.max(id.saturating_add(1));
    }

    /// The id the next statement gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    fn append(&mut self, rec: &LogRecordRef<'_>, sync: bool) -> Result<()> {
        if self.poisoned {
            return Err(Error::Io(std::io::Error::other(format!(
                "{} is unusable after a failed write",
                self.path.display()
            ))));
        }
        let bytes = frame(rec)?;
        let res = (|| -> std::io::Result<()> {
            self.file.seek(SeekFrom::Start(self.len))?;
            self.file.write_all(&bytes)?;
            if sync {
                self.file.sync_data()?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            // Undo a partial append so later records do not follow garbage.
            if self
                .file
                .set_len(self.len)
                .and_then(|_| self.file.sync_data())
                .is_err()
            {
                self.poisoned = true;
            }
            return Err(e.into());
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Durably records `work` as the next statement (appended and fsynced); returns
    /// its id. Nothing may be sent to a Tstore before this returns.
    ///
    /// # Errors
    /// I/O errors (nothing is logged then).
    pub fn begin(&mut self, work: &Work) -> Result<u64> {
        let id = self.next_id;
        self.append(&LogRecordRef::Begin { id, work }, true)?;
        self.next_id += 1;
        self.unfinished.insert(id);
        Ok(id)
    }

    /// Records that every Tstore answered statement `id`. Not synced: after a crash
    /// a lost `Done` makes the next start re-send the statement, which every Tstore
    /// skips. Empties the log when it is large and nothing is unfinished.
    pub fn done(&mut self, id: u64) {
        self.unfinished.remove(&id);
        if let Err(e) = self.append(&LogRecordRef::Done { id }, false) {
            tracing::warn!("statement log: cannot record statement {id} as done: {e}");
            return;
        }
        if self.len > RESET_BYTES && self.unfinished.is_empty() {
            if let Err(e) = self.reset() {
                tracing::warn!("statement log: cannot empty it: {e}");
            }
        }
    }

    /// Empties the log (only the header stays). Call only when no logged statement is
    /// unfinished.
    ///
    /// # Errors
    /// I/O errors.
    pub fn reset(&mut self) -> Result<()> {
        self.file.set_len(HEADER_LEN as u64)?;
        self.file.sync_all()?;
        self.len = HEADER_LEN as u64;
        self.unfinished.clear();
        self.poisoned = false;
        Ok(())
    }

    /// Bytes in the log file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len <= HEADER_LEN as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn ins(t: u32, k: i64) -> (u32, StmtWrite) {
        (
            t,
            StmtWrite::Insert {
                table: "t".into(),
                ipc: k.to_le_bytes().to_vec(),
            },
        )
    }

    #[test]
    fn unfinished_statements_are_recovered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = StmtLog::open(dir.path()).unwrap();
            assert!(log.take_recovered().is_empty());
            let a = log.begin(&Work::Each(vec![ins(0, 1), ins(1, 2)])).unwrap();
            let b = log
                .begin(&Work::All(StmtWrite::Delete {
                    table: "t".into(),
                    filter: Some(vec![1, 2, 3]),
                }))
                .unwrap();
            let c = log.begin(&Work::Each(vec![ins(2, 3), ins(3, 4)])).unwrap();
            assert_eq!((a, b, c), (1, 2, 3));
            log.done(b);
        }
        let mut log = StmtLog::open(dir.path()).unwrap();
        let r = log.take_recovered();
        assert_eq!(r.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(r[1].1, Work::Each(vec![ins(2, 3), ins(3, 4)]));
        assert_eq!(log.next_id(), 4);
        log.advance_past(10);
        log.reset().unwrap();
        assert!(log.is_empty());
        assert_eq!(log.begin(&Work::Each(vec![ins(0, 5)])).unwrap(), 11);
    }

    #[test]
    fn torn_tail_is_dropped_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = StmtLog::open(dir.path()).unwrap();
            log.begin(&Work::Each(vec![ins(0, 1)])).unwrap();
            log.begin(&Work::Each(vec![ins(1, 2)])).unwrap();
        }
        let path = dir.path().join(LOG_FILE);
        let full = std::fs::read(&path).unwrap();
        let first = HEADER_LEN
            + frame(&LogRecordRef::Begin {
                id: 1,
                work: &Work::Each(vec![ins(0, 1)]),
            })
            .unwrap()
            .len();
        // A crash while appending the second record: only the first is recovered, and
        // the tail is cut so that later records follow the first.
        for at in [first + 1, first + 5, first + 9, full.len() - 1] {
            std::fs::write(&path, &full[..at]).unwrap();
            let mut log = StmtLog::open(dir.path()).unwrap();
            let ids: Vec<u64> = log.take_recovered().iter().map(|r| r.0).collect();
            assert_eq!(ids, [1], "cut at {at}");
            assert_eq!(log.len(), first as u64);
        }
        // A damaged first record followed by a good one is corruption, not a tear.
        let mut bad = full.clone();
        bad[HEADER_LEN + 9] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(StmtLog::open(dir.path()), Err(Error::Catalog(_))));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(StmtLog::open(dir.path()).is_err());
    }

    #[test]
    fn crc_matches_the_ieee_polynomial() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
