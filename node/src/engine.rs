//! The statement engine on the primary: plans SQL with [`smrdb_planner`] against the
//! catalog and executes each plan through the [`Dispatcher`].
//!
//! * a query is planned by DataFusion, cut into stages ([`smrdb_planner::distribute`])
//!   and run by [`Engine::run_dist`]: one fragment per node, the primary's own stages
//!   on the statement's thread; its uncorrelated scalar subqueries run first, as
//!   queries of their own, and their values travel inside the plan;
//! * writes (DDL, INSERT, UPDATE, DELETE, COPY) are serialised by one lock;
//! * new rows go round-robin over all N·T Tstores from the table's persisted cursor,
//!   batched into one message per target Tstore; rows are coerced to the table's
//!   types and checked on the primary first, so a bad value rejects the statement
//!   before any Tstore changes;
//! * UPDATE / DELETE / CREATE / DROP are broadcast to every Tstore; an UPDATE runs a
//!   dry run everywhere first, so an error on any row changes nothing;
//! * the system tables [`SYSTEM_TABLE`] and [`ROUTER_TABLE`] are answered from
//!   statistics every Tstore reports; the catalog's column statistics (for the
//!   planner's estimates) are refreshed from the Tstores after writes.
//!
//! Statements are not transactional across Tstores: a failure on one Tstore (a lost
//! node, a disk error) can leave the others changed. A crash cannot: with a data
//! dir, a write that spans several Tstores is recorded in the primary's statement log
//! before it is sent and completed at the next start ([`crate::redo`]).
//!
//! A statement can be canceled (the session's cancel flag, set by a client's
//! CancelRequest) or time out (`SET statement_timeout`, PostgreSQL's semantics: per
//! statement, 0 = off): it then fails with SQLSTATE 57014. Reads stop promptly; a write
//! stops only before its changes are sent to the Tstores (see [`crate::dispatch`]).
//!
//! The intermediate results a query gathers from the Tstores are bounded
//! ([`GatherLimit`]: `SET smrdb.max_intermediate_mib`, default the cluster file's
//! `max_intermediate_mib`): a query whose Tstores send more fails with SQLSTATE
//! 53200 as soon as the bound is passed.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, LogicalPlan};
use smrdb_planner::frontend::{scalar_subqueries, substitute_scalar_subqueries};
use smrdb_planner::{
    Broadcast, Catalog as PlannerCatalog, CopySource, DistOptions, DistPlan, Plan, PlanError,
    Planner, Query,
};
use smrdb_router::{Mode, PeerStats};
use smrdb_tstore::{coerce_batch, encode_batches, StmtWrite, TableSchema, TableStats};

use crate::catalog::Catalog;
use crate::copy::{self, CopyFormat};
use crate::dispatch::{first_error, Dispatcher, Interrupt, Target};
use crate::error::{Error, Result};
use crate::proto::{Reply, Request};
use crate::redo::{StmtLog, Work};

/// Name of the system table: one row per (Tstore, table).
pub const SYSTEM_TABLE: &str = "smrdb_tstores";
/// Name of the router system table: one row per (node, remote peer) with the node's
/// router counters.
pub const ROUTER_TABLE: &str = "smrdb_router";

/// Whether `name` is a system table (answered by the primary).
pub fn is_system_table(name: &str) -> bool {
    name == SYSTEM_TABLE || name == ROUTER_TABLE
}

/// A command tag (`INSERT 0 3`, `UPDATE 2`, `CREATE TABLE`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTag {
    /// The command word(s).
    pub command: String,
    /// The OID field (INSERT only, always 0).
    pub oid: Option<u32>,
    /// Row count, when the command reports one.
    pub rows: Option<u64>,
}

impl CommandTag {
    fn new(command: &str) -> Self {
        CommandTag {
            command: command.into(),
            oid: None,
            rows: None,
        }
    }
    fn rows(command: &str, n: u64) -> Self {
        CommandTag {
            rows: Some(n),
            ..Self::new(command)
        }
    }
}

impl std::fmt::Display for CommandTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.command)?;
        if let Some(o) = self.oid {
            write!(f, " {o}")?;
        }
        if let Some(r) = self.rows {
            write!(f, " {r}")?;
        }
        Ok(())
    }
}

/// What one statement produced.
#[derive(Debug)]
pub enum Output {
    /// A result set.
    Rows {
        /// The rows (one batch; its schema names and types the columns).
        batch: RecordBatch,
        /// `SELECT`, `SHOW` or `EXPLAIN`.
        command: &'static str,
    },
    /// A command without rows.
    Command(CommandTag),
    /// BEGIN / COMMIT / ROLLBACK (accepted; every statement autocommits).
    Transaction {
        /// Whether a transaction block starts (BEGIN) or ends.
        begin: bool,
        /// The tag.
        tag: CommandTag,
    },
    /// `COPY ... FROM STDIN`: the front end collects the data and calls
    /// [`Engine::copy_in`].
    CopyIn {
        /// Target table.
        table: String,
        /// Input format.
        format: CopyFormat,
        /// Number of columns.
        columns: usize,
    },
}

/// Name of the statement timeout setting.
pub const STATEMENT_TIMEOUT: &str = "statement_timeout";
/// Name of the session setting that bounds the intermediate results one query gathers
/// on the primary (MiB; 0 = no limit). Its default is the cluster file's
/// `max_intermediate_mib` ([`crate::config::ClusterFile::max_intermediate_mib`]).
pub const MAX_INTERMEDIATE: &str = "smrdb.max_intermediate_mib";
/// [`MAX_INTERMEDIATE`] when neither the cluster file nor the session sets it.
pub const DEFAULT_MAX_INTERMEDIATE_MIB: u64 = 1024;
/// The largest value [`MAX_INTERMEDIATE`] takes (1 TiB).
pub const MAX_INTERMEDIATE_MIB: u64 = 1 << 20;

/// Per-connection settings (`SET` / `SHOW`) and the cancel flag.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Settings changed with SET, by lower-case name.
    pub vars: BTreeMap<String, String>,
    /// Set (by the front end, on a client's CancelRequest) to make the running
    /// statement fail with 57014; the front end clears it before each statement.
    pub cancel: Arc<AtomicBool>,
}

impl Session {
    /// The statement timeout in force (`None`: off).
    pub fn statement_timeout(&self) -> Option<Duration> {
        let ms = self
            .vars
            .get(STATEMENT_TIMEOUT)
            .and_then(|v| parse_timeout_ms(v).ok())
            .unwrap_or(0);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// The bound on a query's intermediate results in force: the session's
    /// [`MAX_INTERMEDIATE`] if set, else `default_mib` (the cluster's).
    pub fn gather_limit(&self, default_mib: u64) -> GatherLimit {
        match self
            .vars
            .get(MAX_INTERMEDIATE)
            .and_then(|v| parse_intermediate_mib(v).ok())
        {
            Some(mib) => GatherLimit {
                mib,
                from_session: true,
            },
            None => GatherLimit {
                mib: default_mib,
                from_session: false,
            },
        }
    }
}

/// How many bytes of intermediate results one query may gather on the primary (the
/// Arrow IPC bytes every Tstore answers with, summed), and where the bound comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatherLimit {
    /// MiB; 0 = no limit.
    pub mib: u64,
    /// Set with `SET` in this session (else the cluster's default).
    pub from_session: bool,
}

impl GatherLimit {
    /// No limit.
    pub const NONE: GatherLimit = GatherLimit {
        mib: 0,
        from_session: false,
    };

    /// Fails with SQLSTATE 53200 when `gathered` bytes, from the first `answered` of
    /// `tstores` Tstores, exceed the limit; the message names the size, the limit and
    /// how to raise it (when not every Tstore answered yet, the value it suggests is
    /// extrapolated to all of them).
    ///
    /// # Errors
    /// 53200.
    pub fn check(&self, gathered: u64, answered: usize, tstores: usize) -> Result<()> {
        if !self.over(gathered) {
            return Ok(());
        }
        let answered = answered.clamp(1, tstores.max(1));
        let whole = (gathered as f64 * tstores as f64 / answered as f64) as u64;
        let from = if answered < tstores {
            format!("the first {answered} of {tstores} Tstores to answer")
        } else {
            format!("the {tstores} Tstores")
        };
        Err(self.error(&from, gathered, whole))
    }

    /// As [`GatherLimit::check`] for rows streamed by `tstores` Tstores at once,
    /// `largest` bytes of them from one Tstore, `expected` bytes in all by the
    /// planner's estimate: the suggestion takes the larger of the estimate and every
    /// Tstore sending as much as the one that sent most (rows are spread evenly),
    /// plus a quarter.
    ///
    /// # Errors
    /// 53200.
    pub fn check_streaming(
        &self,
        gathered: u64,
        largest: u64,
        expected: u64,
        tstores: usize,
    ) -> Result<()> {
        if !self.over(gathered) {
            return Ok(());
        }
        let whole = gathered
            .max(largest.saturating_mul(tstores as u64))
            .max(expected);
        let whole = whole.saturating_add(whole / 4);
        Err(self.error(
            &format!("the {tstores} Tstores, part-way,"),
            gathered,
            whole,
        ))
    }

    fn over(&self, gathered: u64) -> bool {
        self.mib != 0 && gathered > self.mib.saturating_mul(1 << 20)
    }

    /// The 53200 error: `from` returned `gathered` bytes; the statement needs about
    /// `whole`.
    fn error(&self, from: &str, gathered: u64, whole: u64) -> Error {
        let need = whole.div_ceil(1 << 20).max(self.mib + 1);
        Error::sql(
            "53200",
            format!(
                "out of memory for intermediate results: {from} returned {:.1} MiB \
                 ({gathered} bytes) for this query, more than {MAX_INTERMEDIATE} = {} MiB ({}); \
                 raise it (SET {MAX_INTERMEDIATE} = {need}, or max_intermediate_mib in the \
                 cluster file; 0 = no limit) or make the query return fewer rows or columns",
                gathered as f64 / f64::from(1 << 20),
                self.mib,
                if self.from_session {
                    "set in this session"
                } else {
                    "the cluster's default"
                },
            ),
        )
    }
}

/// Parses a value of [`MAX_INTERMEDIATE`]: a whole number of MiB in
/// 0..=[`MAX_INTERMEDIATE_MIB`] (0 = no limit).
///
/// # Errors
/// 22023 for anything else.
pub fn parse_intermediate_mib(value: &str) -> Result<u64> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|&m| m <= MAX_INTERMEDIATE_MIB)
        .ok_or_else(|| {
            Error::sql(
                "22023",
                format!(
                    "invalid value for parameter \"{MAX_INTERMEDIATE}\": \"{value}\" \
                     (a whole number of MiB from 0 to {MAX_INTERMEDIATE_MIB}; 0 = no limit)"
                ),
            )
        })
}

const MAX_TIMEOUT_MS: f64 = 2_147_483_647.0;

/// Parses a time setting the way PostgreSQL does for `statement_timeout`: a number
/// of milliseconds, or a number with a unit (`us`, `ms`, `s`, `min`, `h`, `d`);
/// 0 turns it off.
///
/// # Errors
/// 22023 for anything else, or a value out of 0..=2147483647 ms.
pub fn parse_timeout_ms(value: &str) -> Result<u64> {
    let bad = || {
        Error::sql(
            "22023",
            format!(
                "invalid value for parameter \"{STATEMENT_TIMEOUT}\": \"{value}\" \
                 (a number of milliseconds, or with a unit: us, ms, s, min, h, d)"
            ),
        )
    };
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1e3,
        "min" => 60e3,
        "h" => 3600e3,
        "d" => 86400e3,
        _ => return Err(bad()),
    };
    let ms = (n * scale).round();
    if !ms.is_finite() || !(0.0..=MAX_TIMEOUT_MS).contains(&ms) {
        return Err(Error::sql(
            "22023",
            format!(
                "{value} is outside the valid range for parameter \"{STATEMENT_TIMEOUT}\" \
                 (0 .. 2147483647 ms)"
            ),
        ));
    }
    Ok(ms as u64)
}

/// How `SHOW` prints a number of milliseconds: in the largest unit that divides it,
/// as PostgreSQL does (`0`, `1500ms`, `2s`, `1min`, `1h`, `1d`).
pub fn format_timeout_ms(ms: u64) -> String {
    if ms == 0 {
        return "0".into();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("min", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// The statement engine.
pub struct Engine {
    disp: Arc<Dispatcher>,
    catalog: Mutex<Catalog>,
    write: Mutex<()>,
    planner: Planner,
    /// The statement log (persistent clusters).
    log: Option<Mutex<StmtLog>>,
    /// Default of [`MAX_INTERMEDIATE`] (MiB; 0 = no limit).
    max_intermediate_mib: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The planner's view of the catalog (and the session's settings) at one moment.
struct View<'a> {
    engine: &'a Engine,
    tables: BTreeMap<String, (TableSchema, Option<TableStats>)>,
    settings: BTreeMap<String, String>,
}

impl PlannerCatalog for View<'_> {
    fn table(&self, name: &str) -> Option<(TableSchema, Option<TableStats>)> {
        self.tables.get(name).cloned()
    }
    fn system_table(&self, name: &str) -> Option<RecordBatch> {
        let r = match name {
            SYSTEM_TABLE => self.engine.system_batch(),
            ROUTER_TABLE => self.engine.router_batch(),
            _ => return None,
        };
        match r {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!("system table {name}: {e}");
                None
            }
        }
    }
    fn setting(&self, name: &str) -> Option<String> {
        self.settings.get(name).cloned()
    }
}

fn undefined_table(name: &str) -> Error {
    Error::sql("42P01", format!("relation \"{name}\" does not exist"))
}

/// The largest `Ack` count (the Tstores' answers to [`Request::LastStmt`]).
fn count_max(replies: &[(u32, Reply)]) -> u64 {
    replies
        .iter()
        .map(|(_, r)| match r {
            Reply::Ack { count } => *count,
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

fn count(replies: &[(u32, Reply)]) -> u64 {
    replies
        .iter()
        .map(|(_, r)| match r {
            Reply::Ack { count } => *count,
            _ => 0,
        })
        .sum()
}

/// One text column called `name` holding `lines`.
fn text_batch(name: &str, lines: Vec<String>) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new(name, ArrowType::Utf8, false)]));
    Ok(
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(lines)) as ArrayRef])
            .map_err(|e| Error::sql("XX000", e.to_string()))?,
    )
}

impl Engine {
    /// An engine over `disp` and `catalog`.
    ///
    /// # Errors
    /// The planner could not be set up (a bug).
    pub fn new(disp: Arc<Dispatcher>, catalog: Catalog) -> Result<Engine> {
        Ok(Engine {
            disp,
            catalog: Mutex::new(catalog),
            write: Mutex::new(()),
            planner: Planner::new()?,
            log: None,
            max_intermediate_mib: DEFAULT_MAX_INTERMEDIATE_MIB,
        })
    }

    /// Sets the default bound on a query's intermediate results (the cluster file's
    /// `max_intermediate_mib`; 0 = no limit); a session changes its own with
    /// `SET smrdb.max_intermediate_mib`.
    pub fn with_max_intermediate_mib(mut self, mib: u64) -> Engine {
        self.max_intermediate_mib = mib;
        self
    }

    /// The default bound on a query's intermediate results, MiB (0 = no limit).
    pub fn max_intermediate_mib(&self) -> u64 {
        self.max_intermediate_mib
    }

    /// Logs every write that spans several Tstores in `log` first (see
    /// [`crate::redo`]); call [`Engine::recover`] before serving.
    pub fn with_stmt_log(mut self, log: StmtLog) -> Engine {
        self.log = Some(Mutex::new(log));
        self
    }

    /// Completes the statements the log holds unfinished (cut by a crash): each is
    /// re-sent to every Tstore it names, in order, and the Tstores that already
    /// applied it skip it. Then empties the log. Returns how many were re-sent.
    ///
    /// # Errors
    /// Dispatch errors (a Tstore that does not answer): the node should not serve.
    pub fn recover(&self) -> Result<usize> {
        let Some(log) = &self.log else {
            return Ok(0);
        };
        let _w = lock(&self.write);
        let mut log = lock(log);
        let r = self.disp.call(Target::All, Request::LastStmt)?;
        first_error(&r)?;
        log.advance_past(count_max(&r));
        let unfinished = log.take_recovered();
        let n = unfinished.len();
        for (id, work) in unfinished {
            let r = self.disp.call_logged(work.requests(id))?;
            if let Err(e) = first_error(&r) {
                // As the statement itself would have reported it.
                tracing::warn!("statement log: statement {id} failed on a Tstore: {e}");
            }
        }
        log.reset()?;
        if n > 0 {
            tracing::info!("statement log: completed {n} statement(s) cut by a crash");
        }
        Ok(n)
    }

    /// Brings a node that was lost and connected again (see
    /// [`Dispatcher::next_rejoined`]) back into service, under the write lock:
    ///
    /// 1. its Tstores must hold a slice of every table in the catalog (a node restarted
    ///    without its data directory does not, and would answer with rows missing: it
    ///    stays out, and the error says why);
    /// 2. logged statements its loss cut (begun, not done: some Tstores applied them)
    ///    are sent again to every Tstore, as at a restart of the primary (the Tstores
    ///    that applied one skip it), so none stays half-applied;
    /// 3. statements may use it again ([`Dispatcher::readmit`]).
    ///
    /// Returns `Ok(false)` when the node was lost again meanwhile.
    ///
    /// # Errors
    /// A node without its data ([`Error::NodeLost`], and the node stays lost), Tstore
    /// errors, a lost node.
    pub fn readmit(&self, node: u32) -> Result<bool> {
        let since = self.disp.losses();
        let _w = lock(&self.write);
        let tstores = self.disp.tstores_of(node);
        let stats = self.disp.call_admitting(
            node,
            tstores
                .iter()
                .map(|&t| (Target::One(t), Request::Stats))
                .collect(),
        )?;
        first_error(&stats)?;
        let tables: Vec<String> = lock(&self.catalog)
            .tables()
            .map(|t| t.name.clone())
            .collect();
        for (t, r) in &stats {
            let Reply::Stats { tables: have, .. } = r else {
                return Err(Error::Protocol(format!(
                    "tstore {t}: unexpected reply to Stats"
                )));
            };
            if let Some(missing) = tables.iter().find(|n| !have.iter().any(|h| &h.name == *n)) {
                let reason = format!(
                    "it came back without its data: tstore {t} has no slice of table {missing}                      (a node restarted without its --data-dir cannot rejoin; restart it with                      its data directory, or restart the cluster)"
                );
                self.disp.mark_lost(node, reason.clone());
                return Err(Error::NodeLost { node, reason });
            }
        }
        if let Some(log) = &self.log {
            let mut log = lock(log);
            let cut = log.pending()?;
            for (id, work) in cut {
                let r = self.disp.call_admitting(node, work.requests(id))?;
                if let Err(e) = first_error(&r) {
                    tracing::warn!("statement log: statement {id} failed on a Tstore: {e}");
                }
                log.done(id);
                tracing::info!(
                    "statement log: completed statement {id}, cut by the loss of node {node}"
                );
            }
        }
        Ok(self.disp.readmit(node, since))
    }

    /// Sends a write to the Tstores: through the statement log when it spans several
    /// Tstores of a persistent cluster, else as plain requests (one WAL record on one
    /// Tstore is atomic by itself).
    fn write_tstores(&self, work: Work) -> Result<Vec<(u32, Reply)>> {
        let spans = match &work {
            Work::All(_) => self.disp.total_tstores() > 1,
            Work::Each(v) => v.len() > 1,
        };
        let Some(log) = self.log.as_ref().filter(|_| spans) else {
            let plain = |w: StmtWrite| match w {
                StmtWrite::Insert { table, ipc } => Request::Insert { table, ipc },
                StmtWrite::Update {
                    table,
                    assignments,
                    filter,
                } => Request::Update {
                    table,
                    assignments,
                    filter,
                    dry_run: false,
                },
                StmtWrite::Delete { table, filter } => Request::Delete { table, filter },
            };
            return match work {
                Work::All(w) => self.disp.call(Target::All, plain(w)),
                Work::Each(v) => self
                    .disp
                    .call_each(v.into_iter().map(|(t, w)| (t, plain(w))).collect()),
            };
        };
        // Refuse now what could not be sent now (a cancel, a lost node): once logged,
        // a statement is completed, at the latest by the next start.
        Interrupt::check_current()?;
        self.disp.check_all_alive()?;
        let id = lock(log).begin(&work)?;
        let res = self.disp.call_logged(work.requests(id));
        if res.is_ok() {
            lock(log).done(id);
        }
        res
    }

    /// The dispatcher.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.disp
    }

    /// The planner.
    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// Refreshes the statistics of tables written since they were last fetched.
    fn refresh_stats(&self) -> Result<()> {
        let dirty: Vec<String> = lock(&self.catalog)
            .tables()
            .filter(|t| t.stats_dirty)
            .map(|t| t.name.clone())
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let r = self.disp.call(Target::All, Request::Stats)?;
        first_error(&r)?;
        let mut merged: BTreeMap<String, TableStats> = BTreeMap::new();
        for (_, reply) in r {
            if let Reply::Stats { tables, .. } = reply {
                for t in tables {
                    if dirty.contains(&t.name) {
                        merged.entry(t.name).or_default().merge(&t.stats);
                    }
                }
            }
        }
        let mut c = lock(&self.catalog);
        for (name, s) in merged {
            c.set_stats(&name, s);
        }
        Ok(())
    }

    fn view(&self, session: Option<&Session>) -> View<'_> {
        if let Err(e) = self.refresh_stats() {
            tracing::debug!("statistics not refreshed: {e}");
        }
        View {
            engine: self,
            tables: lock(&self.catalog)
                .tables()
                .map(|t| (t.name.clone(), (t.schema.clone(), t.stats.clone())))
                .collect(),
            settings: session.map(|s| s.vars.clone()).unwrap_or_default(),
        }
    }

    pub(crate) fn schema_of(&self, table: &str) -> Result<TableSchema> {
        lock(&self.catalog)
            .get(table)
            .map(|t| t.schema.clone())
            .ok_or_else(|| undefined_table(table))
    }

    /// Plans one statement (no `;`-separated lists: see
    /// [`crate::sqltext::split_statements`]).
    ///
    /// # Errors
    /// The planner's error.
    pub fn plan(&self, sql: &str) -> Result<Vec<Plan>> {
        Ok(self.planner.plan_sql(sql, &self.view(None))?)
    }

    /// Plans with the session's settings visible to the planner.
    ///
    /// # Errors
    /// The planner's error.
    pub fn plan_in(&self, sql: &str, session: &Session) -> Result<Vec<Plan>> {
        Ok(self.planner.plan_sql(sql, &self.view(Some(session)))?)
    }

    /// Result columns of a statement, if it returns rows (for Describe).
    ///
    /// # Errors
    /// The planner's error.
    pub fn describe(&self, sql: &str) -> Result<Option<SchemaRef>> {
        let plans = self.plan(sql)?;
        Ok(match plans.last() {
            Some(Plan::Query(q)) => Some(q.arrow_schema()),
            Some(Plan::Explain { .. }) => Some(Arc::new(Schema::new(vec![Field::new(
                "QUERY PLAN",
                ArrowType::Utf8,
                false,
            )]))),
            Some(Plan::Show { name }) => Some(Arc::new(Schema::new(vec![Field::new(
                name.to_lowercase(),
                ArrowType::Utf8,
                true,
            )]))),
            _ => None,
        })
    }

    /// Plans and runs one statement.
    ///
    /// # Errors
    /// Planning and execution errors, with SQLSTATEs.
    /// The statement is interruptible: the session's cancel flag and its
    /// `statement_timeout` (counted from here) make it fail with 57014.
    pub fn execute_sql(&self, sql: &str, session: &mut Session) -> Result<Vec<Output>> {
        let interrupt = Interrupt::new(session.cancel.clone(), session.statement_timeout());
        let _installed = interrupt.install();
        interrupt.check()?;
        let plans = self.plan_in(sql, session)?;
        let mut out = Vec::with_capacity(plans.len());
        for p in plans {
            interrupt.check()?;
            out.push(self.execute(p, session)?);
        }
        Ok(out)
    }

    /// How this cluster's routers carry a broadcast to remote Tstores.
    fn broadcast(&self) -> Broadcast {
        match self.disp.router().mode() {
            Mode::Smr => Broadcast::PerNode,
            Mode::Naive => Broadcast::PerTstore,
        }
    }

    /// What distribution needs: the cluster's shape and the session's settings.
    fn dist_options(&self, session: &Session) -> Result<DistOptions> {
        let map = self.disp.router().map();
        let nodes = map.nodes().len().max(1);
        let overlap = match session.vars.get(smrdb_planner::OVERLAP_SETTING) {
            Some(v) => smrdb_planner::parse_bool_setting(smrdb_planner::OVERLAP_SETTING, v)?,
            None => true,
        };
        let pivot = session
            .vars
            .get(smrdb_planner::PIVOT_SETTING)
            .filter(|v| !v.eq_ignore_ascii_case("auto") && !v.is_empty())
            .cloned();
        Ok(DistOptions {
            nodes,
            tstores_per_node: (map.total_tstores() as usize / nodes).max(1),
            total_tstores: Some(map.total_tstores() as usize),
            broadcast: self.broadcast(),
            pivot,
            overlap,
        })
    }

    /// Runs the uncorrelated scalar subqueries of `plan` (each a query of its own,
    /// exactly one value: none is NULL, two or more fail with 21000) and returns the
    /// plan with their values in their place, and their distributed plans (EXPLAIN).
    fn with_subqueries(
        &self,
        plan: &LogicalPlan,
        session: &Session,
        limit: &GatherLimit,
    ) -> Result<(LogicalPlan, Vec<DistPlan>)> {
        let subs = scalar_subqueries(plan);
        if subs.is_empty() {
            return Ok((plan.clone(), Vec::new()));
        }
        let mut values = Vec::with_capacity(subs.len());
        let mut dists = Vec::with_capacity(subs.len());
        for sq in &subs {
            let (sp, inner) = self.with_subqueries(sq, session, limit)?;
            let dist = self.planner.distribute(&sp, &self.dist_options(session)?)?;
            let (batches, _) = self.run_dist(&dist, limit, false)?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            if rows > 1 {
                return Err(PlanError::CardinalityViolation.into());
            }
            let field = sp.schema().field(0).clone();
            let v = match batches.iter().find(|b| b.num_rows() > 0) {
                Some(b) => ScalarValue::try_from_array(b.column(0), 0)
                    .map_err(|e| Error::from(PlanError::from(e)))?,
                None => ScalarValue::try_from(field.data_type())
                    .map_err(|e| Error::from(PlanError::from(e)))?,
            };
            values.push(v);
            dists.extend(inner);
            dists.push(dist);
        }
        let p = substitute_scalar_subqueries(plan.clone(), &subs, &values)?;
        Ok((p, dists))
    }

    /// Runs a query; returns its rows as one batch.
    ///
    /// # Errors
    /// As [`Engine::run_dist`].
    pub fn run_query(&self, q: &Query, session: &Session) -> Result<RecordBatch> {
        let limit = session.gather_limit(self.max_intermediate_mib);
        let (plan, _) = self.with_subqueries(&q.plan, session, &limit)?;
        let dist = self
            .planner
            .distribute(&plan, &self.dist_options(session)?)?;
        let (batches, _) = self.run_dist(&dist, &limit, false)?;
        let schema = q.arrow_schema();
        let b = concat(&Arc::new(q.schema().as_arrow().clone()), &batches)?;
        // PostgreSQL's column names (`count`, `?column?`).
        RecordBatch::try_new_with_options(
            schema,
            b.columns().to_vec(),
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
        )
        .map_err(|e| Error::sql("XX000", e.to_string()))
    }

    /// `EXPLAIN [ANALYZE]`.
    fn explain(&self, q: &Query, analyze: bool, session: &Session) -> Result<Output> {
        let limit = session.gather_limit(self.max_intermediate_mib);
        let (plan, subs) = if analyze {
            self.with_subqueries(&q.plan, session, &limit)?
        } else {
            // Plan the subqueries without running them; their values are unknown.
            let subs = scalar_subqueries(&q.plan);
            let mut dists = Vec::new();
            let mut values = Vec::new();
            for s in &subs {
                dists.push(self.planner.distribute(s, &self.dist_options(session)?)?);
                values.push(
                    ScalarValue::try_from(s.schema().field(0).data_type())
                        .map_err(|e| Error::from(PlanError::from(e)))?,
                );
            }
            (
                substitute_scalar_subqueries(q.plan.clone(), &subs, &values)?,
                dists,
            )
        };
        let dist = self
            .planner
            .distribute(&plan, &self.dist_options(session)?)?;
        let analysis = if analyze {
            self.run_dist(&dist, &limit, true)?.1
        } else {
            None
        };
        let lines = smrdb_planner::explain_lines(&dist, &subs, analysis.as_ref());
        Ok(Output::Rows {
            batch: text_batch("QUERY PLAN", lines)?,
            command: "EXPLAIN",
        })
    }

    /// Runs one plan.
    ///
    /// # Errors
    /// Execution errors, with SQLSTATEs.
    pub fn execute(&self, plan: Plan, session: &mut Session) -> Result<Output> {
        match plan {
            Plan::CreateTable {
                name,
                schema,
                if_not_exists,
            } => self.create_table(&name, schema, if_not_exists),
            Plan::DropTable { names, if_exists } => self.drop_tables(&names, if_exists),
            Plan::Insert { table, query } => {
                let batch = self.run_query(&query, session)?;
                let n = self.insert_batch(&table, batch)?;
                Ok(Output::Command(CommandTag {
                    command: "INSERT".into(),
                    oid: Some(0),
                    rows: Some(n),
                }))
            }
            Plan::Copy {
                table,
                source,
                format,
            } => {
                let schema = self.schema_of(&table)?;
                let format = CopyFormat {
                    text: format.quote == 0,
                    columns: format.columns,
                    header: format.header,
                    delimiter: format.delimiter,
                    null: format.null,
                    quote: format.quote,
                };
                match source {
                    CopySource::Stdin => Ok(Output::CopyIn {
                        table,
                        format,
                        columns: schema.columns.len(),
                    }),
                    CopySource::File(path) => {
                        let data = std::fs::read(&path).map_err(|e| {
                            Error::sql(
                                "58P01",
                                format!("could not open file \"{path}\" for reading: {e}"),
                            )
                        })?;
                        let n = self.copy_in(&table, &format, &data)?;
                        Ok(Output::Command(CommandTag::rows("COPY", n)))
                    }
                }
            }
            Plan::Update {
                table,
                assignments,
                filter,
                schema,
            } => {
                let _w = lock(&self.write);
                self.schema_of(&table)?;
                let (assignments, filter) =
                    self.write_exprs(&schema, assignments, filter, session)?;
                // All or nothing: every Tstore first evaluates the new values (without
                // changing anything); only if none fails do they apply them. Writes are
                // serialised by `self.write`, so nothing changes in between.
                let r = self.disp.call(
                    Target::All,
                    Request::Update {
                        table: table.clone(),
                        assignments: assignments.clone(),
                        filter: filter.clone(),
                        dry_run: true,
                    },
                )?;
                first_error(&r)?;
                let work = Work::All(StmtWrite::Update {
                    table: table.clone(),
                    assignments,
                    filter,
                });
                let r = self.write_tstores(work);
                lock(&self.catalog).mark_written(&table);
                let r = r?;
                first_error(&r)?;
                Ok(Output::Command(CommandTag::rows("UPDATE", count(&r))))
            }
            Plan::Delete {
                table,
                filter,
                schema,
            } => {
                let _w = lock(&self.write);
                self.schema_of(&table)?;
                let (_, filter) = self.write_exprs(&schema, Vec::new(), filter, session)?;
                let work = Work::All(StmtWrite::Delete {
                    table: table.clone(),
                    filter,
                });
                let r = self.write_tstores(work);
                lock(&self.catalog).mark_written(&table);
                let r = r?;
                first_error(&r)?;
                Ok(Output::Command(CommandTag::rows("DELETE", count(&r))))
            }
            Plan::Query(q) => Ok(Output::Rows {
                batch: self.run_query(&q, session)?,
                command: "SELECT",
            }),
            Plan::Explain { analyze, query } => self.explain(&query, analyze, session),
            Plan::Set { name, value } => {
                let name = name.to_lowercase();
                if name == smrdb_planner::OVERLAP_SETTING {
                    smrdb_planner::parse_bool_setting(&name, &value)?;
                }
                if name == MAX_INTERMEDIATE {
                    if value.eq_ignore_ascii_case("default") {
                        session.vars.remove(&name);
                    } else {
                        let mib = parse_intermediate_mib(&value)?;
                        session.vars.insert(name, mib.to_string());
                    }
                    return Ok(Output::Command(CommandTag::new("SET")));
                }
                if name == STATEMENT_TIMEOUT {
                    if value.eq_ignore_ascii_case("default") {
                        session.vars.remove(&name);
                        return Ok(Output::Command(CommandTag::new("SET")));
                    }
                    let ms = parse_timeout_ms(&value)?;
                    session.vars.insert(name, format_timeout_ms(ms));
                    return Ok(Output::Command(CommandTag::new("SET")));
                }
                session.vars.insert(name, value);
                Ok(Output::Command(CommandTag::new("SET")))
            }
            Plan::Show { name } => {
                let key = name.to_lowercase();
                let value = session
                    .vars
                    .get(&key)
                    .cloned()
                    .or_else(|| {
                        (key == MAX_INTERMEDIATE).then(|| self.max_intermediate_mib.to_string())
                    })
                    .or_else(|| default_setting(&key).map(str::to_string))
                    .ok_or_else(|| {
                        Error::sql(
                            "42704",
                            format!("unrecognized configuration parameter \"{name}\""),
                        )
                    })?;
                let schema = Arc::new(Schema::new(vec![Field::new(&key, ArrowType::Utf8, true)]));
                let batch = RecordBatch::try_new(
                    schema,
                    vec![Arc::new(StringArray::from(vec![value])) as ArrayRef],
                )
                .map_err(|e| Error::sql("XX000", e.to_string()))?;
                Ok(Output::Rows {
                    batch,
                    command: "SHOW",
                })
            }
            Plan::Transaction { kind } => {
                let k = kind.to_uppercase();
                let (begin, tag) = if k.starts_with("BEGIN") || k.starts_with("START") {
                    (true, "BEGIN")
                } else if k.starts_with("ROLLBACK") || k.starts_with("ABORT") {
                    (false, "ROLLBACK")
                } else {
                    (false, "COMMIT")
                };
                Ok(Output::Transaction {
                    begin,
                    tag: CommandTag::new(tag),
                })
            }
        }
    }

    /// The expressions of an UPDATE or DELETE, with scalar subqueries replaced by their
    /// values, as `datafusion-proto` bytes.
    #[allow(clippy::type_complexity)]
    fn write_exprs(
        &self,
        schema: &datafusion::common::DFSchemaRef,
        assignments: Vec<(usize, Expr)>,
        filter: Option<Expr>,
        session: &Session,
    ) -> Result<(Vec<(usize, Vec<u8>)>, Option<Vec<u8>>)> {
        let limit = session.gather_limit(self.max_intermediate_mib);
        // Wrap the expressions in a plan to find and replace their subqueries.
        let mut exprs: Vec<Expr> = assignments.iter().map(|(_, e)| e.clone()).collect();
        if let Some(f) = &filter {
            exprs.push(f.clone());
        }
        let empty = LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
            produce_one_row: true,
            schema: schema.clone(),
        });
        let holder = datafusion::logical_expr::LogicalPlanBuilder::from(empty)
            .project(
                exprs
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(i, e)| e.alias(format!("e{i}"))),
            )
            .map_err(|e| Error::from(PlanError::from(e)))?
            .build()
            .map_err(|e| Error::from(PlanError::from(e)))?;
        let (holder, _) = self.with_subqueries(&holder, session, &limit)?;
        let LogicalPlan::Projection(p) = holder else {
            return Err(Error::Protocol(
                "subquery substitution lost its shape".into(),
            ));
        };
        let mut exprs: Vec<Expr> = p
            .expr
            .into_iter()
            .map(|e| match e {
                Expr::Alias(a) => *a.expr,
                other => other,
            })
            .collect();
        let filter = if filter.is_some() { exprs.pop() } else { None };
        let assignments: Vec<(usize, Expr)> =
            assignments.iter().map(|(i, _)| *i).zip(exprs).collect();
        Ok(smrdb_planner::dml::write_exprs(
            self.planner.frontend(),
            schema,
            &assignments,
            filter.as_ref(),
        )?)
    }

    fn create_table(&self, name: &str, schema: TableSchema, if_not_exists: bool) -> Result<Output> {
        let _w = lock(&self.write);
        let tag = Output::Command(CommandTag::new("CREATE TABLE"));
        if is_system_table(name) || lock(&self.catalog).get(name).is_some() {
            if if_not_exists {
                return Ok(tag);
            }
            return Err(Error::sql(
                "42P07",
                format!("relation \"{name}\" already exists"),
            ));
        }
        // Validate the schema the way a Tstore will, before any Tstore sees it.
        schema
            .validate()
            .map_err(|e| Error::from(PlanError::from(e)))?;
        let r = self.disp.call(
            Target::All,
            Request::CreateTable {
                name: name.to_string(),
                schema: schema.clone(),
            },
        )?;
        first_error(&r)?;
        let mut c = lock(&self.catalog);
        c.insert(name, schema);
        c.save()?;
        Ok(tag)
    }

    fn drop_tables(&self, names: &[String], if_exists: bool) -> Result<Output> {
        let _w = lock(&self.write);
        let mut present = Vec::new();
        {
            let c = lock(&self.catalog);
            for n in names {
                if c.get(n).is_some() {
                    present.push(n.clone());
                } else if is_system_table(n) {
                    return Err(Error::sql("42809", format!("\"{n}\" is a system table")));
                } else if !if_exists {
                    return Err(Error::sql("42P01", format!("table \"{n}\" does not exist")));
                }
            }
        }
        for n in present {
            let r = self
                .disp
                .call(Target::All, Request::DropTable { name: n.clone() })?;
            first_error(&r)?;
            let mut c = lock(&self.catalog);
            c.remove(&n);
            c.save()?;
        }
        Ok(Output::Command(CommandTag::new("DROP TABLE")))
    }

    /// Coerces rows to the table's types (NOT NULL, lengths, ranges: a bad value
    /// fails the statement before any Tstore changes) and inserts them round-robin;
    /// returns the number inserted.
    ///
    /// # Errors
    /// Bad values (nothing is inserted), lost nodes, Tstore errors.
    pub fn insert_batch(&self, table: &str, batch: RecordBatch) -> Result<u64> {
        let _w = lock(&self.write);
        let (schema, cursor) = {
            let c = lock(&self.catalog);
            let t = c.get(table).ok_or_else(|| undefined_table(table))?;
            (t.schema.clone(), t.cursor)
        };
        let batch = coerce_batch(&schema, &batch).map_err(|e| {
            let e = Error::from(PlanError::from(e));
            if e.sqlstate() == "23502" {
                Error::sql("23502", format!("{e} (relation \"{table}\")"))
            } else {
                e
            }
        })?;
        let n = batch.num_rows() as u64;
        if n == 0 {
            return Ok(0);
        }
        let nt = u64::from(self.disp.total_tstores());
        let mut rows: Vec<Vec<u64>> = vec![Vec::new(); nt as usize];
        for i in 0..n {
            rows[((cursor + i) % nt) as usize].push(i);
        }
        let mut work = Vec::new();
        for (t, idx) in rows.into_iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let part = arrow_select::take::take_record_batch(&batch, &UInt64Array::from(idx))
                .map_err(|e| Error::sql("XX000", e.to_string()))?;
            work.push((
                t as u32,
                StmtWrite::Insert {
                    table: table.to_string(),
                    ipc: encode_batches(&[part])?,
                },
            ));
        }
        let res = self.write_tstores(Work::Each(work));
        // Whatever reached the Tstores, the cursor moves on (it only decides balance).
        {
            let mut c = lock(&self.catalog);
            c.set_cursor(table, cursor + n);
            c.mark_written(table);
            c.save()?;
        }
        let r = res?;
        first_error(&r)?;
        Ok(count(&r))
    }

    /// Loads `data` (the whole COPY input) into `table`: parsed completely first, so a
    /// bad line loads nothing.
    ///
    /// # Errors
    /// Parse errors naming the line; as [`Engine::insert_batch`].
    pub fn copy_in(&self, table: &str, format: &CopyFormat, data: &[u8]) -> Result<u64> {
        let schema = self.schema_of(table)?;
        let batch = copy::parse(data, table, &schema, format)?;
        self.insert_batch(table, batch)
    }

    /// Every Tstore's statistics replies.
    fn stats_replies(&self) -> Result<Vec<(u32, Reply)>> {
        let r = self.disp.call(Target::All, Request::Stats)?;
        first_error(&r)?;
        Ok(r)
    }

    /// The rows of [`SYSTEM_TABLE`]: (node, tstore, core, table, rows, bytes).
    ///
    /// # Errors
    /// Dispatch errors.
    pub fn system_batch(&self) -> Result<RecordBatch> {
        let (mut node, mut ts, mut core) = (
            Int32Builder::new(),
            Int32Builder::new(),
            Int32Builder::new(),
        );
        let (mut table, mut rows, mut bytes) = (
            StringBuilder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
        );
        for (t, reply) in self.stats_replies()? {
            let Reply::Stats {
                core: c, tables, ..
            } = reply
            else {
                return Err(Error::Protocol(format!(
                    "tstore {t} answered stats with {reply:?}"
                )));
            };
            for s in tables {
                node.append_value(self.disp.node_of(t).unwrap_or(0) as i32);
                ts.append_value(t as i32);
                core.append_option(c.map(|c| c as i32));
                table.append_value(&s.name);
                rows.append_value(s.stats.rows as i64);
                bytes.append_value(s.stats.bytes as i64);
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("node", ArrowType::Int32, false),
            Field::new("tstore", ArrowType::Int32, false),
            Field::new("core", ArrowType::Int32, true),
            Field::new("table", ArrowType::Utf8, false),
            Field::new("rows", ArrowType::Int64, false),
            Field::new("bytes", ArrowType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(node.finish()),
                Arc::new(ts.finish()),
                Arc::new(core.finish()),
                Arc::new(table.finish()),
                Arc::new(rows.finish()),
                Arc::new(bytes.finish()),
            ],
        )
        .map_err(|e| Error::sql("XX000", e.to_string()))
    }

    /// Every node's router counters, by node id.
    ///
    /// # Errors
    /// Dispatch errors.
    pub fn router_stats(&self) -> Result<BTreeMap<u32, Vec<PeerStats>>> {
        let mut out = BTreeMap::new();
        for (t, reply) in self.stats_replies()? {
            let Reply::Stats { router, .. } = reply else {
                return Err(Error::Protocol(format!(
                    "tstore {t} answered stats with {reply:?}"
                )));
            };
            let node = self.disp.node_of(t).unwrap_or(0);
            out.entry(node).or_insert(router);
        }
        Ok(out)
    }

    /// The rows of [`ROUTER_TABLE`]: every node's router counters per remote peer.
    ///
    /// # Errors
    /// Dispatch errors.
    pub fn router_batch(&self) -> Result<RecordBatch> {
        let names = [
            "bytes_written",
            "writes",
            "messages_sent",
            "messages_received",
            "bytes_received",
            "stalls",
            "refused",
            "reconnects",
        ];
        let mut node = Int32Builder::new();
        let mut peer = Int32Builder::new();
        let mut cols: Vec<Int64Builder> = names.iter().map(|_| Int64Builder::new()).collect();
        for (n, peers) in self.router_stats()? {
            for p in peers {
                node.append_value(n as i32);
                peer.append_value(p.node as i32);
                let v = [
                    p.bytes_written,
                    p.writes,
                    p.messages_sent,
                    p.messages_received,
                    p.bytes_received,
                    p.stalls,
                    p.refused,
                    p.reconnects,
                ];
                for (c, x) in cols.iter_mut().zip(v) {
                    c.append_value(x as i64);
                }
            }
        }
        let mut fields = vec![
            Field::new("node", ArrowType::Int32, false),
            Field::new("peer", ArrowType::Int32, false),
        ];
        fields.extend(
            names
                .iter()
                .map(|n| Field::new(*n, ArrowType::Int64, false)),
        );
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(node.finish()), Arc::new(peer.finish())];
        arrays.extend(cols.iter_mut().map(|c| Arc::new(c.finish()) as ArrayRef));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| Error::sql("XX000", e.to_string()))
    }
}

/// One batch of `batches` (of `schema`).
fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    arrow_select::concat::concat_batches(schema, batches)
        .map_err(|e| Error::sql("XX000", e.to_string()))
}

fn default_setting(name: &str) -> Option<&'static str> {
    Some(match name {
        "server_version" => "16.6",
        "server_version_num" => "160006",
        "server_encoding" | "client_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "timezone" => "UTC",
        "standard_conforming_strings" | "integer_datetimes" => "on",
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "search_path" => "public",
        "application_name" => "",
        "extra_float_digits" => "1",
        "max_identifier_length" => "63",
        "smrdb.overlap" => "on",
        "smrdb.pivot" => "auto",
        STATEMENT_TIMEOUT => "0",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_timeout_values_parse_and_print_like_postgres() {
        for (v, ms, shown) in [
            ("0", 0, "0"),
            ("2000", 2000, "2s"),
            ("2s", 2000, "2s"),
            (" 1500 ms ", 1500, "1500ms"),
            ("1.5s", 1500, "1500ms"),
            ("1min", 60_000, "1min"),
            ("2h", 7_200_000, "2h"),
            ("1d", 86_400_000, "1d"),
            ("2000us", 2, "2ms"),
        ] {
            assert_eq!(parse_timeout_ms(v).unwrap(), ms, "{v}");
            assert_eq!(format_timeout_ms(ms), shown, "{v}");
        }
        for v in [
            "",
            "abc",
            "-1",
            "5 parsecs",
            "1e400",
            "3000000000",
            "s",
            "1..2s",
        ] {
            let e = parse_timeout_ms(v).unwrap_err();
            assert_eq!(e.sqlstate(), "22023", "{v}");
        }
        let mut s = Session::default();
        assert_eq!(s.statement_timeout(), None);
        s.vars.insert(STATEMENT_TIMEOUT.into(), "250ms".into());
        assert_eq!(s.statement_timeout(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn intermediate_limit_parses_and_fails_with_53200_naming_it() {
        for (v, mib) in [("0", 0), ("1", 1), (" 64 ", 64), ("1048576", 1 << 20)] {
            assert_eq!(parse_intermediate_mib(v).unwrap(), mib, "{v}");
        }
        for v in [
            "",
            "-1",
            "1.5",
            "64MB",
            "1048577",
            "99999999999999999999999",
        ] {
            let e = parse_intermediate_mib(v).unwrap_err();
            assert_eq!(e.sqlstate(), "22023", "{v}");
            assert!(e.to_string().contains(MAX_INTERMEDIATE), "{e}");
        }
        let mut s = Session::default();
        let cluster = s.gather_limit(8);
        assert_eq!(
            cluster,
            GatherLimit {
                mib: 8,
                from_session: false
            }
        );
        s.vars.insert(MAX_INTERMEDIATE.into(), "2".into());
        let session = s.gather_limit(8);
        assert_eq!(session.mib, 2);
        assert!(session.from_session);
        // At the limit is fine; one byte more is not.
        session.check(2 << 20, 4, 4).unwrap();
        let e = session.check((2 << 20) + 1, 4, 4).unwrap_err();
        assert_eq!(e.sqlstate(), "53200");
        let m = e.to_string();
        for w in [
            "4 Tstores returned 2.0 MiB (2097153 bytes)",
            "smrdb.max_intermediate_mib = 2 MiB (set in this session)",
            "SET smrdb.max_intermediate_mib = 3",
            "max_intermediate_mib in the cluster file",
        ] {
            assert!(m.contains(w), "{w:?} not in {m}");
        }
        assert!(cluster
            .check(9 << 20, 1, 1)
            .unwrap_err()
            .to_string()
            .contains("(the cluster's default)"));
        GatherLimit::NONE.check(u64::MAX, 4, 4).unwrap();
        // Cut short after 1 of 4 answers: said so, and the suggestion extrapolates.
        let m = session.check(3 << 20, 1, 4).unwrap_err().to_string();
        for w in [
            "the first 1 of 4 Tstores to answer returned 3.0 MiB",
            "SET smrdb.max_intermediate_mib = 12",
        ] {
            assert!(m.contains(w), "{w:?} not in {m}");
        }
        // Streamed: 3 MiB so far, at most 1 MiB of it from one of 4 Tstores: the
        // whole is taken as 4 MiB, and a quarter more; or as the estimate when larger.
        let m = session
            .check_streaming(3 << 20, 1 << 20, 0, 4)
            .unwrap_err()
            .to_string();
        for w in [
            "the 4 Tstores, part-way, returned 3.0 MiB",
            "SET smrdb.max_intermediate_mib = 5",
        ] {
            assert!(m.contains(w), "{w:?} not in {m}");
        }
        let m = session
            .check_streaming(3 << 20, 1 << 20, 8 << 20, 4)
            .unwrap_err()
            .to_string();
        assert!(m.contains("SET smrdb.max_intermediate_mib = 10"), "{m}");
        session
            .check_streaming(2 << 20, 2 << 20, 64 << 20, 4)
            .unwrap();
    }
}
