//! [`Store`]: a Tstore's named slices, optionally persisted in a directory.
//!
//! Persistence layout (directory `dir`):
//! * `wal.log`: header `b"SMRDBWAL"`, version `u32` LE, generation `u64` LE; then
//!   records `len: u32 LE | crc32(payload): u32 LE | payload` where the payload is a
//!   postcard-encoded write command. Each write is appended and fsync'd before the
//!   method returns `Ok`. On open, a torn last record (short header, short payload,
//!   bad CRC on the final record, or an all-zero tail) is ignored and truncated away;
//!   any other damage is [`Error::Corrupt`].
//! * `MANIFEST.json` + `t{generation}_{i}.arrow` (Arrow IPC files): the last
//!   checkpoint (with `last_stmt`, see below). A checkpoint writes new table files and a new manifest (temp file,
//!   fsync, rename), then starts a fresh log with the new generation. A log whose
//!   generation is older than the manifest's is already contained in the checkpoint
//!   and is discarded.
//!
//! Writes made for a statement of the primary's statement log ([`Store::write_stmt`])
//! are logged as one record `Stmt { id, op }`: the change and the statement id are
//! durable together. [`Store::last_stmt`] is the highest such id applied (kept in the
//! manifest by a checkpoint); a statement with an id at or below it is skipped, so the
//! primary can re-send a statement after a crash without applying it twice.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use datafusion_physical_expr::PhysicalExpr;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::exec::codec::expr_from_bytes;
use crate::ipc::{decode_batches, encode_batches};
use crate::slice::{Slice, DEFAULT_CHUNK_ROWS};
use crate::stats::TableStats;
use crate::types::TableSchema;

const WAL_MAGIC: &[u8; 8] = b"SMRDBWAL";
/// Version 2: writes are logged by their effect (Arrow IPC rows, row positions).
const WAL_VERSION: u32 = 2;
const WAL_HEADER_LEN: usize = 20;
const MANIFEST_VERSION: u32 = 2;
const WAL_FILE: &str = "wal.log";
const MANIFEST_FILE: &str = "MANIFEST.json";

/// One logged write, by its effect: replaying it evaluates no expression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum WalRecord {
    CreateTable {
        name: String,
        schema: TableSchema,
    },
    DropTable {
        name: String,
    },
    /// Rows appended (an Arrow IPC stream of the table's types).
    Insert {
        table: String,
        ipc: Vec<u8>,
    },
    /// Rows at these positions (ascending) deleted.
    Delete {
        table: String,
        rows: Vec<u64>,
    },
    /// `columns` of the rows at `rows` set to the rows of `ipc`.
    Update {
        table: String,
        rows: Vec<u64>,
        columns: Vec<usize>,
        ipc: Vec<u8>,
    },
    SetMeta {
        table: String,
        key: String,
        value: u64,
    },
    /// `op` on behalf of the primary's statement `id`.
    Stmt {
        id: u64,
        op: Box<WalRecord>,
    },
}

/// One Tstore's share of a write statement of the primary's statement log (see
/// [`Store::write_stmt`]). Expressions travel as `datafusion-proto` bytes
/// ([`crate::exec::codec::expr_to_bytes`]) over the table's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StmtWrite {
    /// Append rows (an Arrow IPC stream, already of the table's types).
    Insert {
        /// Table name.
        table: String,
        /// The rows.
        ipc: Vec<u8>,
    },
    /// Update rows (see [`Store::update`]).
    Update {
        /// Table name.
        table: String,
        /// (column index, new value expression).
        assignments: Vec<(usize, Vec<u8>)>,
        /// Rows where this is TRUE (all when absent).
        filter: Option<Vec<u8>>,
    },
    /// Delete rows (see [`Store::delete`]).
    Delete {
        /// Table name.
        table: String,
        /// Rows where this is TRUE (all when absent).
        filter: Option<Vec<u8>>,
    },
}

/// A decoded [`StmtWrite`]'s expressions.
type Assignments = Vec<(usize, Arc<dyn PhysicalExpr>)>;

#[derive(Debug, Clone)]
struct Table {
    slice: Slice,
    meta: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    generation: u64,
    tables: Vec<ManifestTable>,
    /// [`Store::last_stmt`] at the checkpoint (absent in older manifests).
    #[serde(default)]
    last_stmt: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestTable {
    name: String,
    schema: TableSchema,
    meta: BTreeMap<String, u64>,
    file: String,
}

#[derive(Debug)]
struct Persist {
    dir: PathBuf,
    wal: File,
    wal_len: u64,
    generation: u64,
    poisoned: bool,
}

/// A Tstore's tables. Volatile, or backed by a directory with a write-ahead log.
#[derive(Debug)]
pub struct Store {
    tables: BTreeMap<String, Table>,
    chunk_rows: usize,
    persist: Option<Persist>,
    last_stmt: u64,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn wal_header(generation: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(WAL_HEADER_LEN);
    h.extend_from_slice(WAL_MAGIC);
    h.extend_from_slice(&WAL_VERSION.to_le_bytes());
    h.extend_from_slice(&generation.to_le_bytes());
    h
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename; dir synced by caller).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

fn frame(rec: &WalRecord) -> Result<Vec<u8>> {
    let payload =
        postcard::to_stdvec(rec).map_err(|e| Error::Internal(format!("encode log record: {e}")))?;
    let len = u32::try_from(payload.len())
        .map_err(|_| Error::InvalidValue("write command too large".into()))?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parses log records after the header. Returns the records and the length of the
/// valid prefix (shorter than `buf` when a torn tail was dropped).
fn parse_records(buf: &[u8]) -> Result<(Vec<WalRecord>, usize)> {
    let mut recs = Vec::new();
    let mut off = WAL_HEADER_LEN;
    while off < buf.len() {
        let rest = &buf[off..];
        let torn = rest.iter().all(|&b| b == 0);
        if rest.len() < 8 || torn {
            return Ok((recs, off)); // torn header / zero-filled tail
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
        if rest.len() - 8 < len {
            return Ok((recs, off)); // torn payload
        }
        let payload = &rest[8..8 + len];
        let is_last = rest.len() == 8 + len;
        if crc32fast::hash(payload) != crc {
            if is_last {
                return Ok((recs, off)); // torn last record
            }
            return Err(Error::Corrupt(format!(
                "log record at offset {off} fails its checksum"
            )));
        }
        let rec: WalRecord = postcard::from_bytes(payload).map_err(|e| {
            Error::Corrupt(format!("log record at offset {off} cannot be decoded: {e}"))
        })?;
        recs.push(rec);
        off += 8 + len;
    }
    Ok((recs, off))
}

impl Default for Store {
    fn default() -> Self {
        Store::in_memory()
    }
}

impl Store {
    /// A volatile store.
    pub fn in_memory() -> Self {
        Store {
            tables: BTreeMap::new(),
            chunk_rows: DEFAULT_CHUNK_ROWS,
            persist: None,
            last_stmt: 0,
        }
    }

    /// A volatile store whose slices seal chunks of `chunk_rows` rows.
    pub fn in_memory_with_chunk_rows(chunk_rows: usize) -> Self {
        Store {
            chunk_rows,
            ..Store::in_memory()
        }
    }

    /// Opens (creating if needed) a persistent store in `dir`: loads the checkpoint
    /// and replays the log.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_chunk_rows(dir, DEFAULT_CHUNK_ROWS)
    }

    /// [`Store::open`] with a chunk size.
    pub fn open_with_chunk_rows(dir: impl AsRef<Path>, chunk_rows: usize) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let mut store = Store {
            tables: BTreeMap::new(),
            chunk_rows,
            persist: None,
            last_stmt: 0,
        };
        let mut generation = 0;
        let manifest_path = dir.join(MANIFEST_FILE);
        if manifest_path.exists() {
            let m: Manifest = serde_json::from_slice(&fs::read(&manifest_path)?)
                .map_err(|e| Error::Corrupt(format!("manifest: {e}")))?;
            if m.version != MANIFEST_VERSION {
                return Err(Error::Corrupt(format!(
                    "unsupported manifest version {}",
                    m.version
                )));
            }
            generation = m.generation;
            store.last_stmt = m.last_stmt;
            for t in m.tables {
                let mut slice = Slice::with_chunk_rows(t.schema, chunk_rows)?;
                let f = File::open(dir.join(&t.file))?;
                let reader = arrow_ipc::reader::FileReader::try_new(f, None)
                    .map_err(|e| Error::Corrupt(format!("table file {}: {e}", t.file)))?;
                for b in reader {
                    let b = b.map_err(|e| Error::Corrupt(format!("table file {}: {e}", t.file)))?;
                    slice.append_batch(b)?;
                }
                store.tables.insert(
                    t.name,
                    Table {
                        slice,
                        meta: t.meta,
                    },
                );
            }
        }
        let wal_path = dir.join(WAL_FILE);
        let mut records = Vec::new();
        let mut valid_len = None;
        if wal_path.exists() {
            let mut buf = Vec::new();
            File::open(&wal_path)?.read_to_end(&mut buf)?;
            if buf.len() < WAL_HEADER_LEN || &buf[..8] != WAL_MAGIC {
                return Err(Error::Corrupt("log header is damaged".into()));
            }
            let version = u32::from_le_bytes(buf[8..12].try_into().unwrap_or_default());
            if version != WAL_VERSION {
                return Err(Error::Corrupt(format!("unsupported log version {version}")));
            }
            let wal_gen = u64::from_le_bytes(buf[12..20].try_into().unwrap_or_default());
            if wal_gen > generation {
                return Err(Error::Corrupt(format!(
                    "log generation {wal_gen} is newer than checkpoint generation {generation}"
                )));
            }
            if wal_gen == generation {
                let (recs, len) = parse_records(&buf)?;
                records = recs;
                valid_len = Some(len as u64);
            } // else: stale log, already contained in the checkpoint
        }
        for rec in records {
            store
                .apply(rec)
                .map_err(|e| Error::Corrupt(format!("log replay failed: {e}")))?;
        }
        let wal = match valid_len {
            Some(len) => {
                let f = OpenOptions::new().read(true).write(true).open(&wal_path)?;
                if f.metadata()?.len() != len {
                    f.set_len(len)?; // drop the torn tail so new records follow valid ones
                    f.sync_all()?;
                }
                f
            }
            None => {
                write_atomic(&wal_path, &wal_header(generation))?;
                sync_dir(&dir)?;
                OpenOptions::new().read(true).write(true).open(&wal_path)?
            }
        };
        let wal_len = wal.metadata()?.len();
        store.persist = Some(Persist {
            dir,
            wal,
            wal_len,
            generation,
            poisoned: false,
        });
        Ok(store)
    }

    /// The directory backing this store, if persistent.
    pub fn dir(&self) -> Option<&Path> {
        self.persist.as_ref().map(|p| p.dir.as_path())
    }

    /// Table names, sorted.
    pub fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    /// A table's slice.
    pub fn table(&self, name: &str) -> Option<&Slice> {
        self.tables.get(name).map(|t| &t.slice)
    }

    /// The id of the last statement of the primary's statement log applied here
    /// ([`Store::write_stmt`]); 0 when none.
    pub fn last_stmt(&self) -> u64 {
        self.last_stmt
    }

    /// A table's persisted counter `key` (e.g. the round-robin cursor).
    pub fn meta(&self, table: &str, key: &str) -> Option<u64> {
        self.tables.get(table)?.meta.get(key).copied()
    }

    fn get(&self, name: &str) -> Result<&Table> {
        self.tables
            .get(name)
            .ok_or_else(|| Error::UnknownTable(name.to_string()))
    }

    /// Computes the effect of `rec` without changing anything: the table's new state
    /// (`None` = dropped) and the affected row count.
    fn prepare(&self, rec: &WalRecord) -> Result<(String, Option<Table>, usize)> {
        Ok(match rec {
            WalRecord::CreateTable { name, schema } => {
                if self.tables.contains_key(name) {
                    return Err(Error::TableExists(name.clone()));
                }
                let slice = Slice::with_chunk_rows(schema.clone(), self.chunk_rows)?;
                (
                    name.clone(),
                    Some(Table {
                        slice,
                        meta: BTreeMap::new(),
                    }),
                    0,
                )
            }
            WalRecord::DropTable { name } => {
                self.get(name)?;
                (name.clone(), None, 0)
            }
            WalRecord::Insert { table, ipc } => {
                let mut t = self.get(table)?.clone();
                let mut n = 0;
                for b in decode_batches(ipc)? {
                    n += t.slice.append_batch(b)?;
                }
                (table.clone(), Some(t), n)
            }
            WalRecord::Delete { table, rows } => {
                let mut t = self.get(table)?.clone();
                let n = t.slice.delete_rows(rows)?;
                (table.clone(), Some(t), n)
            }
            WalRecord::Update {
                table,
                rows,
                columns,
                ipc,
            } => {
                let mut t = self.get(table)?.clone();
                let values = decode_batches(ipc)?;
                let values = match values.len() {
                    0 if rows.is_empty() => return Ok((table.clone(), Some(t), 0)),
                    1 => values.into_iter().next().unwrap_or_else(|| unreachable!()),
                    _ => {
                        let schema = values[0].schema();
                        arrow_select::concat::concat_batches(&schema, &values)?
                    }
                };
                let n = t.slice.update_rows(rows, columns, &values)?;
                (table.clone(), Some(t), n)
            }
            WalRecord::SetMeta { table, key, value } => {
                let mut t = self.get(table)?.clone();
                t.meta.insert(key.clone(), *value);
                (table.clone(), Some(t), 0)
            }
            WalRecord::Stmt { op, .. } => {
                if matches!(**op, WalRecord::Stmt { .. }) {
                    return Err(Error::Corrupt("a nested statement record".into()));
                }
                self.prepare(op)?
            }
        })
    }

    fn install(&mut self, rec: &WalRecord, name: String, t: Option<Table>) {
        if let WalRecord::Stmt { id, .. } = rec {
            self.last_stmt = self.last_stmt.max(*id);
        }
        match t {
            Some(t) => {
                self.tables.insert(name, t);
            }
            None => {
                self.tables.remove(&name);
            }
        }
    }

    /// Applies without logging (replay).
    fn apply(&mut self, rec: WalRecord) -> Result<usize> {
        let (name, t, n) = self.prepare(&rec)?;
        self.install(&rec, name, t);
        Ok(n)
    }

    /// Validates and computes `rec`, logs it durably, then makes it visible.
    fn write(&mut self, rec: WalRecord) -> Result<usize> {
        let (name, t, n) = self.prepare(&rec)?;
        if let Some(p) = &mut self.persist {
            if p.poisoned {
                return Err(Error::Io(std::io::Error::other(
                    "log is unusable after a failed write",
                )));
            }
            let bytes = frame(&rec)?;
            let res = (|| -> std::io::Result<()> {
                use std::io::{Seek, SeekFrom};
                p.wal.seek(SeekFrom::Start(p.wal_len))?;
                p.wal.write_all(&bytes)?;
                p.wal.sync_data()
            })();
            if let Err(e) = res {
                // Undo a partial append so later records do not follow garbage.
                if p.wal
                    .set_len(p.wal_len)
                    .and_then(|_| p.wal.sync_data())
                    .is_err()
                {
                    p.poisoned = true;
                }
                return Err(e.into());
            }
            p.wal_len += bytes.len() as u64;
        }
        self.install(&rec, name, t);
        Ok(n)
    }

    /// Creates a table.
    pub fn create_table(&mut self, name: &str, schema: TableSchema) -> Result<()> {
        self.write(WalRecord::CreateTable {
            name: name.to_string(),
            schema,
        })
        .map(|_| ())
    }

    /// Drops a table.
    pub fn drop_table(&mut self, name: &str) -> Result<()> {
        self.write(WalRecord::DropTable {
            name: name.to_string(),
        })
        .map(|_| ())
    }

    /// Appends rows (of the table's types; see [`Slice::append_batch`]); returns the
    /// number inserted.
    ///
    /// # Errors
    /// As [`Slice::append_batch`], I/O errors of the log.
    pub fn insert(&mut self, table: &str, batch: RecordBatch) -> Result<usize> {
        self.get(table)?;
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        let rec = WalRecord::Insert {
            table: table.to_string(),
            ipc: encode_batches(&[batch])?,
        };
        self.write(rec)
    }

    /// The effect of deleting the rows where `filter` is TRUE.
    fn delete_effect(
        &self,
        table: &str,
        filter: Option<&Arc<dyn PhysicalExpr>>,
    ) -> Result<WalRecord> {
        let rows = self.get(table)?.slice.matching(filter)?;
        Ok(WalRecord::Delete {
            table: table.to_string(),
            rows,
        })
    }

    /// The effect of an update: the matching rows' positions and new values.
    fn update_effect(
        &self,
        table: &str,
        assignments: &Assignments,
        filter: Option<&Arc<dyn PhysicalExpr>>,
    ) -> Result<WalRecord> {
        let slice = &self.get(table)?.slice;
        let rows = slice.matching(filter)?;
        let (columns, values) = slice.evaluate_update(&rows, assignments)?;
        Ok(WalRecord::Update {
            table: table.to_string(),
            rows,
            columns,
            ipc: encode_batches(&[values])?,
        })
    }

    /// Sets `column = expression` (over the row's old values, evaluated only for the
    /// rows where `filter` is TRUE; all rows when `None`). Atomic: an evaluation
    /// error, an out-of-range value or NULL into a NOT NULL column changes nothing.
    /// Returns the number of rows updated.
    ///
    /// # Errors
    /// As above; I/O errors of the log.
    pub fn update(
        &mut self,
        table: &str,
        assignments: &Assignments,
        filter: Option<&Arc<dyn PhysicalExpr>>,
    ) -> Result<usize> {
        let rec = self.update_effect(table, assignments, filter)?;
        self.write(rec)
    }

    /// Runs an update's evaluation without changing anything (the primary's dry run
    /// that makes a multi-Tstore UPDATE all or nothing); returns the rows it would
    /// update.
    ///
    /// # Errors
    /// As [`Store::update`].
    pub fn check_update(
        &self,
        table: &str,
        assignments: &Assignments,
        filter: Option<&Arc<dyn PhysicalExpr>>,
    ) -> Result<usize> {
        let rec = self.update_effect(table, assignments, filter)?;
        Ok(self.prepare(&rec)?.2)
    }

    /// Deletes the rows where `filter` is TRUE (all rows when `None`); returns how
    /// many.
    ///
    /// # Errors
    /// The filter's evaluation errors; I/O errors of the log.
    pub fn delete(&mut self, table: &str, filter: Option<&Arc<dyn PhysicalExpr>>) -> Result<usize> {
        let rec = self.delete_effect(table, filter)?;
        self.write(rec)
    }

    /// Sets a table's persisted counter `key` to `value`.
    pub fn set_meta(&mut self, table: &str, key: &str, value: u64) -> Result<()> {
        self.write(WalRecord::SetMeta {
            table: table.to_string(),
            key: key.to_string(),
            value,
        })
        .map(|_| ())
    }

    /// Applies `write`, this Tstore's share of the primary's logged statement `id`,
    /// unless a statement with that id or a later one was already applied here: the
    /// change and `id` are logged in one record, so after a crash either both are
    /// durable or neither. Returns the rows affected, or `None` when skipped (already
    /// applied: the primary re-sends unfinished statements after a restart).
    ///
    /// # Errors
    /// As [`Store::insert`], [`Store::update`], [`Store::delete`]; nothing changes
    /// and `id` is not recorded.
    pub fn write_stmt(&mut self, id: u64, write: StmtWrite) -> Result<Option<usize>> {
        if id <= self.last_stmt {
            return Ok(None);
        }
        let op = match write {
            StmtWrite::Insert { table, ipc } => {
                self.get(&table)?;
                WalRecord::Insert { table, ipc }
            }
            StmtWrite::Update {
                table,
                assignments,
                filter,
            } => {
                let (assignments, filter) =
                    self.decode_exprs(&table, &assignments, filter.as_deref())?;
                self.update_effect(&table, &assignments, filter.as_ref())?
            }
            StmtWrite::Delete { table, filter } => {
                let (_, filter) = self.decode_exprs(&table, &[], filter.as_deref())?;
                self.delete_effect(&table, filter.as_ref())?
            }
        };
        self.write(WalRecord::Stmt {
            id,
            op: Box::new(op),
        })
        .map(Some)
    }

    /// Decodes a statement's expressions over `table`'s columns.
    ///
    /// # Errors
    /// Unknown table, undecodable expressions.
    pub fn decode_exprs(
        &self,
        table: &str,
        assignments: &[(usize, Vec<u8>)],
        filter: Option<&[u8]>,
    ) -> Result<(Assignments, Option<Arc<dyn PhysicalExpr>>)> {
        let schema = self.get(table)?.slice.arrow_schema();
        let a = assignments
            .iter()
            .map(|(c, e)| Ok((*c, expr_from_bytes(e, &schema)?)))
            .collect::<Result<Vec<_>>>()?;
        let f = filter.map(|f| expr_from_bytes(f, &schema)).transpose()?;
        Ok((a, f))
    }

    /// A table's statistics on this Tstore.
    pub fn stats(&self, table: &str) -> Option<&TableStats> {
        self.tables.get(table).map(|t| t.slice.stats())
    }

    /// Writes every table to an Arrow IPC file and starts an empty log. No-op for a
    /// volatile store.
    pub fn checkpoint(&mut self) -> Result<()> {
        let Some(p) = &mut self.persist else {
            return Ok(());
        };
        if p.poisoned {
            return Err(Error::Io(std::io::Error::other(
                "log is unusable after a failed write",
            )));
        }
        let gen = p.generation + 1;
        let mut entries = Vec::new();
        for (i, (name, t)) in self.tables.iter().enumerate() {
            let file = format!("t{gen}_{i}.arrow");
            let tmp = p.dir.join(format!("{file}.tmp"));
            let f = File::create(&tmp)?;
            let mut w = arrow_ipc::writer::FileWriter::try_new(f, &t.slice.arrow_schema())?;
            for b in t.slice.batches() {
                w.write(b)?;
            }
            w.finish()?;
            let f = w.into_inner()?;
            f.sync_all()?;
            fs::rename(&tmp, p.dir.join(&file))?;
            entries.push(ManifestTable {
                name: name.clone(),
                schema: t.slice.schema().clone(),
                meta: t.meta.clone(),
                file,
            });
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            generation: gen,
            tables: entries,
            last_stmt: self.last_stmt,
        };
        let bytes =
            serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
        sync_dir(&p.dir)?;
        write_atomic(&p.dir.join(MANIFEST_FILE), &bytes)?;
        sync_dir(&p.dir)?;
        // The checkpoint is durable; the old log is now stale (older generation).
        write_atomic(&p.dir.join(WAL_FILE), &wal_header(gen))?;
        sync_dir(&p.dir)?;
        p.wal = OpenOptions::new()
            .read(true)
            .write(true)
            .open(p.dir.join(WAL_FILE))?;
        p.wal_len = WAL_HEADER_LEN as u64;
        p.generation = gen;
        // Remove table files of older checkpoints.
        let keep: Vec<&str> = manifest.tables.iter().map(|t| t.file.as_str()).collect();
        for e in fs::read_dir(&p.dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.starts_with('t')
                && (name.ends_with(".arrow") || name.ends_with(".tmp"))
                && !keep.contains(&name.as_str())
            {
                let _ = fs::remove_file(p.dir.join(&name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip_and_torn_detection() {
        let rec = WalRecord::SetMeta {
            table: "t".into(),
            key: "k".into(),
            value: 7,
        };
        let mut buf = wal_header(3);
        buf.extend(frame(&rec).unwrap());
        buf.extend(frame(&rec).unwrap());
        let (recs, len) = parse_records(&buf).unwrap();
        assert_eq!(recs, vec![rec.clone(), rec.clone()]);
        assert_eq!(len, buf.len());
        for cut in 1..12 {
            let (recs, len) = parse_records(&buf[..buf.len() - cut]).unwrap();
            assert_eq!(recs.len(), 1, "cut {cut}");
            assert_eq!(len, WAL_HEADER_LEN + frame(&rec).unwrap().len());
        }
        let mut zeros = buf.clone();
        zeros.extend([0u8; 100]);
        assert_eq!(parse_records(&zeros).unwrap().0.len(), 2);
        let mut bad = buf.clone();
        bad[WAL_HEADER_LEN + 9] ^= 0xff; // first record payload
        assert!(matches!(parse_records(&bad), Err(Error::Corrupt(_))));
    }
}
