//! The primary's catalog: table schemas and each table's round-robin cursor.
//!
//! Persisted (with a data dir) as `catalog.json` in the primary's node directory,
//! rewritten atomically on every change (temp file, fsync, rename, fsync of the
//! directory) before the statement is acknowledged:
//!
//! ```json
//! {"version": 1, "tstores": 4,
//!  "tables": [{"name": "t", "schema": {"columns": [...]}, "cursor": 17}]}
//! ```
//!
//! `cursor` is the number of rows ever routed to the table: the next row goes to
//! Tstore `cursor mod tstores`. `tstores` records the cluster size the data was
//! distributed over; opening the directory with another size is refused.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use smrdb_tstore::{TableSchema, TableStats};

use crate::error::{Error, Result};

const CATALOG_VERSION: u32 = 1;
const CATALOG_FILE: &str = "catalog.json";

/// One table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    /// Table name (lower case unless quoted at creation).
    pub name: String,
    /// Its schema.
    pub schema: TableSchema,
    /// Rows ever routed to the table (the round-robin position).
    pub cursor: u64,
    /// Column statistics merged over the Tstores (fetched when needed, not persisted).
    #[serde(skip)]
    pub stats: Option<TableStats>,
    /// Written since `stats` was fetched.
    #[serde(skip, default = "yes")]
    pub stats_dirty: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    tstores: u32,
    tables: Vec<TableEntry>,
}

/// The catalog, optionally backed by a directory.
#[derive(Debug)]
pub struct Catalog {
    dir: Option<PathBuf>,
    tstores: u32,
    tables: BTreeMap<String, TableEntry>,
}

impl Catalog {
    /// A volatile catalog for a cluster of `tstores` Tstores.
    pub fn in_memory(tstores: u32) -> Catalog {
        Catalog {
            dir: None,
            tstores,
            tables: BTreeMap::new(),
        }
    }

    /// Opens (creating) the catalog in `dir`.
    ///
    /// # Errors
    /// [`Error::Catalog`] for a damaged file or one written for another cluster size.
    pub fn open(dir: &Path, tstores: u32) -> Result<Catalog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(CATALOG_FILE);
        let mut c = Catalog {
            dir: Some(dir.to_path_buf()),
            tstores,
            tables: BTreeMap::new(),
        };
        if path.exists() {
            let f: CatalogFile = serde_json::from_slice(&std::fs::read(&path)?)
                .map_err(|e| Error::Catalog(format!("{}: {e}", path.display())))?;
            if f.version != CATALOG_VERSION {
                return Err(Error::Catalog(format!(
                    "{}: unsupported version {}",
                    path.display(),
                    f.version
                )));
            }
            if f.tstores != tstores {
                return Err(Error::Catalog(format!(
                    "{} was written for a cluster of {} Tstores; this one has {tstores}",
                    path.display(),
                    f.tstores
                )));
            }
            for t in f.tables {
                c.tables.insert(t.name.clone(), t);
            }
        } else {
            c.save()?;
        }
        Ok(c)
    }

    /// Writes the catalog durably (no-op when volatile).
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let f = CatalogFile {
            version: CATALOG_VERSION,
            tstores: self.tstores,
            tables: self.tables.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&f).map_err(|e| Error::Catalog(e.to_string()))?;
        let tmp = dir.join(format!("{CATALOG_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, dir.join(CATALOG_FILE))?;
        File::open(dir)?.sync_all()?;
        Ok(())
    }

    /// A table.
    pub fn get(&self, name: &str) -> Option<&TableEntry> {
        self.tables.get(name)
    }

    /// All tables, by name.
    pub fn tables(&self) -> impl Iterator<Item = &TableEntry> {
        self.tables.values()
    }

    /// Adds a table (not saved).
    pub fn insert(&mut self, name: &str, schema: TableSchema) {
        self.tables.insert(
            name.to_string(),
            TableEntry {
                name: name.to_string(),
                schema,
                cursor: 0,
                stats: None,
                stats_dirty: true,
            },
        );
    }

    /// Removes a table (not saved).
    pub fn remove(&mut self, name: &str) -> Option<TableEntry> {
        self.tables.remove(name)
    }

    /// Notes a write to a table: its statistics are fetched again before the next plan.
    pub fn mark_written(&mut self, name: &str) {
        if let Some(t) = self.tables.get_mut(name) {
            t.stats_dirty = true;
        }
    }

    /// Sets a table's merged statistics.
    pub fn set_stats(&mut self, name: &str, stats: TableStats) {
        if let Some(t) = self.tables.get_mut(name) {
            t.stats = Some(stats);
            t.stats_dirty = false;
        }
    }

    /// Sets a table's cursor (not saved).
    pub fn set_cursor(&mut self, name: &str, cursor: u64) {
        if let Some(t) = self.tables.get_mut(name) {
            t.cursor = cursor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smrdb_tstore::{ColumnDef, SqlType};

    #[test]
    fn persists_and_refuses_other_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(dir.path(), 4).unwrap();
        c.insert(
            "t",
            TableSchema::new(vec![ColumnDef::new("a", SqlType::Integer, true)]),
        );
        c.set_cursor("t", 7);
        c.save().unwrap();
        let c2 = Catalog::open(dir.path(), 4).unwrap();
        assert_eq!(c2.get("t").unwrap().cursor, 7);
        assert!(Catalog::open(dir.path(), 3).is_err());
        std::fs::write(dir.path().join(CATALOG_FILE), b"{garbage").unwrap();
        assert!(Catalog::open(dir.path(), 4).is_err());
    }
}
