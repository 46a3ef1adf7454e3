//! Multi-set queries on one Tstore: building join tables from the local slices and
//! comparing the local pivot slice with every join table, chunk by chunk.
//!
//! A [`JoinSpec`] (made by the planner) names the *pivot* input, which stays where it
//! is, and the *join tables*, which every Tstore builds from its own slices
//! ([`build_join_table`]) and sends to every Tstore. The *combined row* is the pivot's
//! kept columns followed by each join table's kept columns, in `join_tables` order;
//! step `i` joins `join_tables[i]` onto the row built so far. Every later expression
//! (step keys, step filters, the post [`Fragment`]) is over that combined row.
//!
//! [`JoinExec`] is the per-query state on one Tstore. Join-table chunks are pushed in
//! arrival order. With one join table, the filtered pivot slice is hashed on the join
//! keys up front and every arriving chunk is probed at once (never waiting for the
//! whole table); with several, all but the last join table are collected, the pivot
//! is joined with them when they are complete, and the last one is streamed against
//! that. The post fragment (filter, projection or partial aggregation) runs on the
//! joined rows as they are produced.
//!
//! Equi-join semantics follow SQL: a NULL in any key never matches, keys are compared
//! in their common type (INT = BIGINT as BIGINT, INT = DOUBLE as DOUBLE), `-0.0 = 0.0`
//! and `NaN = NaN` (PostgreSQL). No keys is a cross product.
//!
//! How: a hash table groups the build side's rows by key (rows of a group stored
//! contiguously, so a probe finds all its matches, or just their number, at once).
//! One integer-like key (INT, BIGINT, DATE, BOOLEAN, DOUBLE by its normalised bits) in
//! a small range is addressed directly (`key - min`, no hashing); otherwise it is an
//! open-addressing table of i64 keys. TEXT keys are hashed by their bytes, several keys
//! by their Arrow row format. Probes prefetch a few rows ahead. Joined rows are
//! gathered with vectorised `take`s, and only the columns some later expression uses
//! are gathered (the others are all-NULL placeholders). When the post fragment is only
//! `COUNT(*)`s with no filter after the last join, matches are counted, not gathered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{
    make_array, new_empty_array, new_null_array, Array, ArrayRef, ArrowPrimitiveType, Int64Array,
    RecordBatch, RecordBatchOptions, StringArray, UInt32Array,
};
use arrow_buffer::{NullBuffer, ScalarBuffer};
use arrow_data::transform::MutableArrayData;
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::{DataType as ArrowType, SchemaRef};
use arrow_select::filter::filter_record_batch;
use arrow_select::take::take;
use serde::{Deserialize, Serialize};

use crate::agg::{AggCall, AggFunc, PartialAgg};
use crate::error::{Error, Result};
use crate::expr::{cast_array, true_mask, Expr};
use crate::fragment::{project_batch, projection_schema, Fragment};
use crate::slice::Slice;
use crate::types::{ColumnDef, DataType, TableSchema};

/// One input of a join: a table's slice, filtered, then projected to `columns`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinInput {
    /// Table name.
    pub table: String,
    /// The name the query calls it by (alias or table name; for EXPLAIN and errors).
    pub alias: String,
    /// Rows where this is TRUE are kept (over the table's columns).
    pub filter: Option<Expr>,
    /// The table's column indices kept, in output order (may be empty: a join table
    /// that only multiplies rows, e.g. `SELECT count(*) FROM a, b`).
    pub columns: Vec<usize>,
    /// Planner's estimate of the rows kept cluster-wide (EXPLAIN only).
    pub est_rows: u64,
    /// Planner's estimate of the bytes kept cluster-wide (EXPLAIN only).
    pub est_bytes: u64,
}

/// One join step: `join_tables[i]` joined onto the combined row built so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinStep {
    /// Equi-join keys over the combined row so far (the pivot's and earlier join
    /// tables' columns). Empty: a cross product.
    pub left_keys: Vec<Expr>,
    /// The matching keys over this join table's kept columns (same length and, after
    /// the planner's casts, the same types as `left_keys`). NULL never matches.
    pub right_keys: Vec<Expr>,
    /// Rows of the combined row after this step are kept where this is TRUE (non-equi
    /// conditions whose columns are all available here).
    pub filter: Option<Expr>,
}

/// The distributed part of a multi-set query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinSpec {
    /// The table that stays in place.
    pub pivot: JoinInput,
    /// The tables every Tstore builds and sends to every Tstore, in join order.
    pub join_tables: Vec<JoinInput>,
    /// One step per join table.
    pub steps: Vec<JoinStep>,
    /// Why this pivot (EXPLAIN).
    pub pivot_reason: String,
    /// Why the join tables are in this order (EXPLAIN): a summary, then one line per
    /// join table; empty when there was nothing to choose.
    pub order_reasons: Vec<String>,
    /// Compare while receiving (the design): each chunk of the last join table is
    /// probed as it arrives. `false` (`SET smrdb.overlap = off`, for the overlap
    /// experiment) copies every chunk out of the ring and compares only once the whole
    /// table is in.
    pub overlap: bool,
}

/// What one Tstore measured while running its part of a join (EXPLAIN ANALYZE).
/// [`JoinExec`] fills `pivot_rows`, `joined_rows`, `received_rows`, `pivot` and
/// `compare`; the node fills the rest (it builds, encodes and receives the chunks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinStats {
    /// Rows this Tstore put into each join table it built.
    pub built_rows: Vec<u64>,
    /// Bytes (Arrow IPC, as sent) this Tstore put into each join table.
    pub built_bytes: Vec<u64>,
    /// Chunks this Tstore sent of each join table (the node fills it).
    pub built_chunks: Vec<u64>,
    /// Rows of each join table this Tstore received (from every Tstore).
    pub received_rows: Vec<u64>,
    /// Chunks of each join table this Tstore received.
    pub received_chunks: Vec<u64>,
    /// Pivot rows after the pivot filter.
    pub pivot_rows: u64,
    /// Joined rows produced (before the post fragment).
    pub joined_rows: u64,
    /// Time building join tables (scan, filter, project, encode).
    pub build: Duration,
    /// Time preparing the pivot (scan, filter, hash).
    pub pivot: Duration,
    /// Time comparing (probing chunks, joining, post fragment).
    pub compare: Duration,
    /// Time from the request to the last join-table chunk.
    pub transfer: Duration,
}

/// The combined row's schema: the pivot's kept columns, then each join table's, named
/// `alias.column`, all nullable.
///
/// # Errors
/// A kept column index outside its table.
pub fn combined_schema(spec: &JoinSpec, schemas: &[TableSchema]) -> crate::Result<TableSchema> {
    if schemas.len() != 1 + spec.join_tables.len() {
        return Err(Error::Internal(format!(
            "join of {} inputs given {} schemas",
            1 + spec.join_tables.len(),
            schemas.len()
        )));
    }
    let mut columns = Vec::new();
    for (input, schema) in inputs(spec).zip(schemas) {
        for &c in &input.columns {
            let def = schema
                .columns
                .get(c)
                .ok_or_else(|| Error::UnknownColumn(format!("{}.#{c}", input.alias)))?;
            columns.push(ColumnDef::new(
                format!("{}.{}", input.alias, def.name),
                def.data_type,
                true,
            ));
        }
    }
    Ok(TableSchema::new(columns))
}

/// Builds this Tstore's join table for `input` from `store`'s slice: filter, then
/// project to the kept columns.
///
/// # Errors
/// An unknown table or column, a bad filter.
pub fn build_join_table(
    store: &crate::Store,
    input: &JoinInput,
) -> crate::Result<Vec<crate::RecordBatch>> {
    let slice = store
        .table(&input.table)
        .ok_or_else(|| Error::UnknownTable(input.table.clone()))?;
    scan(slice, input.filter.as_ref(), &input.columns)
}

/// The pivot followed by the join tables.
fn inputs(spec: &JoinSpec) -> impl Iterator<Item = &JoinInput> {
    std::iter::once(&spec.pivot).chain(&spec.join_tables)
}

/// The non-empty batches of `slice`'s rows where `filter` is TRUE, projected to
/// `columns`. Unlike [`crate::Slice::scan`] this filters only the kept columns.
fn scan(slice: &Slice, filter: Option<&Expr>, columns: &[usize]) -> Result<Vec<RecordBatch>> {
    for &c in columns {
        slice.schema().column(c)?;
    }
    if let Some(f) = filter {
        check_predicate(f, slice.schema(), "WHERE")?;
    }
    let mut out = Vec::new();
    for b in slice.batches() {
        let projected = b.project(columns)?;
        let b = match filter {
            None => projected,
            Some(f) => {
                let mask = true_mask(&f.eval_predicate(b)?);
                if mask.true_count() == b.num_rows() {
                    projected
                } else {
                    filter_record_batch(&projected, &mask)?
                }
            }
        };
        if b.num_rows() > 0 {
            out.push(b);
        }
    }
    Ok(out)
}

/// Errors unless `e` is a boolean (or NULL) expression over `schema`.
fn check_predicate(e: &Expr, schema: &TableSchema, what: &str) -> Result<()> {
    let cols: Vec<DataType> = schema.columns.iter().map(|c| c.data_type).collect();
    match e.infer(&cols)? {
        None | Some(DataType::Boolean) => Ok(()),
        Some(t) => Err(Error::TypeMismatch(format!(
            "argument of {what} must be BOOLEAN, not {t}"
        ))),
    }
}

fn with_rows(schema: SchemaRef, columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// Rows of `batch` where `filter` is TRUE.
fn apply_filter(filter: Option<&Expr>, batch: RecordBatch) -> Result<RecordBatch> {
    let Some(f) = filter else {
        return Ok(batch);
    };
    let mask = true_mask(&f.eval_predicate(&batch)?);
    if mask.true_count() == batch.num_rows() {
        return Ok(batch);
    }
    Ok(filter_record_batch(&batch, &mask)?)
}

/// One batch of `schema` holding all rows of `batches` (which have its column types).
fn concat_all(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    match batches {
        [] => Ok(RecordBatch::new_empty(schema.clone())),
        [b] => with_rows(schema.clone(), b.columns().to_vec(), b.num_rows()),
        _ => {
            let rows = batches.iter().map(|b| b.num_rows()).sum();
            let cols = (0..schema.fields().len())
                .map(|c| {
                    let parts: Vec<&dyn Array> =
                        batches.iter().map(|b| b.column(c).as_ref()).collect();
                    Ok(arrow_select::concat::concat(&parts)?)
                })
                .collect::<Result<Vec<_>>>()?;
            with_rows(schema.clone(), cols, rows)
        }
    }
}

/// A copy of `batch` (as `schema`) that shares no buffer with it.
fn deep_copy(schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
    let cols = batch
        .columns()
        .iter()
        .map(|a| {
            let data = a.to_data();
            let mut m = MutableArrayData::new(vec![&data], false, data.len());
            m.try_extend(0, 0, data.len())?;
            Ok(make_array(m.freeze()))
        })
        .collect::<Result<Vec<_>>>()?;
    with_rows(schema.clone(), cols, batch.num_rows())
}

// ---------------------------------------------------------------- column use

/// Marks every combined column `v` (an expression, fragment or aggregate) refers to.
/// Walks the serialized form so that any expression-bearing field counts, including
/// ones added to the aggregate types later; on failure everything is marked.
fn mark_columns<T: Serialize>(v: &T, used: &mut [bool]) {
    fn walk(j: &serde_json::Value, used: &mut [bool]) {
        match j {
            serde_json::Value::Object(m) => {
                if m.len() == 1 {
                    if let Some(i) = m.get("Column").and_then(|c| c.as_u64()) {
                        if let Some(u) = usize::try_from(i).ok().and_then(|i| used.get_mut(i)) {
                            *u = true;
                        }
                        return;
                    }
                }
                m.values().for_each(|v| walk(v, used));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, used)),
            _ => {}
        }
    }
    match serde_json::to_value(v) {
        Ok(j) => walk(&j, used),
        Err(_) => used.iter_mut().for_each(|u| *u = true),
    }
}

/// All-NULL arrays for the columns a stage does not need (slices of one cached array
/// per type, so they cost nothing per batch).
#[derive(Default)]
struct NullCache(Vec<ArrayRef>);

impl NullCache {
    fn get(&mut self, t: &ArrowType, n: usize) -> ArrayRef {
        match self.0.iter_mut().find(|a| a.data_type() == t) {
            Some(a) => {
                if a.len() < n {
                    *a = new_null_array(t, n.max(2 * a.len()));
                }
                a.slice(0, n)
            }
            None => {
                let a = new_null_array(t, n.max(4096));
                self.0.push(a.clone());
                a.slice(0, n)
            }
        }
    }
}

// ---------------------------------------------------------------- keys

/// Group id meaning "no group" (a NULL key, or no match).
const NONE: u32 = u32::MAX;

/// How the keys of one step are hashed and compared.
enum KeyKind {
    /// No keys: a cross product.
    Cross,
    /// One key whose values map one-to-one to i64 (Int, BigInt, Date, Boolean, and
    /// Double by its normalised bits).
    Int,
    /// One TEXT key, compared by its bytes.
    Text,
    /// Anything else: the row format of the key columns.
    Rows(RowConverter),
}

/// The keys of one step: their common types and how to hash them.
struct KeySpec {
    types: Vec<DataType>,
    kind: KeyKind,
}

/// One side's evaluated keys.
enum KeyData {
    Cross(usize),
    Int(ScalarBuffer<i64>, Option<NullBuffer>),
    Text(StringArray, Option<NullBuffer>),
    Rows(Rows, Option<NullBuffer>),
}

/// -0.0 -> 0.0 and every NaN -> one NaN, so that equal SQL values have equal bits.
fn canon_f64(x: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else {
        x + 0.0
    }
}

fn canon_floats(a: ArrayRef) -> ArrayRef {
    match a.as_primitive_opt::<Float64Type>() {
        Some(f) => Arc::new(f.unary::<_, Float64Type>(canon_f64)),
        None => a,
    }
}

fn int_keys(a: &ArrayRef) -> Result<ScalarBuffer<i64>> {
    fn widen<T: ArrowPrimitiveType>(
        a: &ArrayRef,
        f: impl Fn(T::Native) -> i64,
    ) -> ScalarBuffer<i64> {
        a.as_primitive::<T>()
            .values()
            .iter()
            .map(|&v| f(v))
            .collect::<Vec<i64>>()
            .into()
    }
    Ok(match a.data_type() {
        ArrowType::Int64 => a.as_primitive::<Int64Type>().values().clone(),
        ArrowType::Int32 => widen::<Int32Type>(a, i64::from),
        ArrowType::Date32 => widen::<Date32Type>(a, i64::from),
        ArrowType::Float64 => widen::<Float64Type>(a, |x| canon_f64(x).to_bits() as i64),
        ArrowType::Boolean => a
            .as_boolean()
            .values()
            .iter()
            .map(i64::from)
            .collect::<Vec<i64>>()
            .into(),
        t => return Err(Error::Internal(format!("{t} is not an integer join key"))),
    })
}

impl KeySpec {
    /// Keys `left` (over `left_schema`) = `right` (over `right_schema`).
    fn new(
        left: &[Expr],
        right: &[Expr],
        left_schema: &TableSchema,
        right_schema: &TableSchema,
    ) -> Result<KeySpec> {
        if left.len() != right.len() {
            return Err(Error::TypeMismatch(format!(
                "join step with {} left keys and {} right keys",
                left.len(),
                right.len()
            )));
        }
        let lt: Vec<DataType> = left_schema.columns.iter().map(|c| c.data_type).collect();
        let rt: Vec<DataType> = right_schema.columns.iter().map(|c| c.data_type).collect();
        let mut types = Vec::with_capacity(left.len());
        for (l, r) in left.iter().zip(right) {
            let t = match (l.infer(&lt)?, r.infer(&rt)?) {
                (None, None) => DataType::Text,
                (Some(t), None) | (None, Some(t)) => t,
                (Some(a), Some(b)) if a == b => a,
                (Some(a), Some(b)) => DataType::numeric_common(a, b).ok_or_else(|| {
                    Error::TypeMismatch(format!(
                        "join keys of types {a} and {b} cannot be compared"
                    ))
                })?,
            };
            types.push(t);
        }
        let kind = match types.as_slice() {
            [] => KeyKind::Cross,
            [DataType::Text] => KeyKind::Text,
            [_] => KeyKind::Int,
            _ => KeyKind::Rows(RowConverter::new(
                types.iter().map(|t| SortField::new(t.to_arrow())).collect(),
            )?),
        };
        Ok(KeySpec { types, kind })
    }

    /// Evaluates `exprs` (one side's keys) over `batch`.
    fn eval(&self, exprs: &[Expr], batch: &RecordBatch) -> Result<KeyData> {
        let arrays = exprs
            .iter()
            .zip(&self.types)
            .map(|(e, t)| cast_array(e.eval(batch)?, *t))
            .collect::<Result<Vec<_>>>()?;
        let nulls = arrays.iter().fold(None, |acc: Option<NullBuffer>, a| {
            NullBuffer::union(acc.as_ref(), a.logical_nulls().as_ref())
        });
        let first = || {
            arrays
                .first()
                .ok_or_else(|| Error::Internal("join keys missing".into()))
        };
        Ok(match &self.kind {
            KeyKind::Cross => KeyData::Cross(batch.num_rows()),
            KeyKind::Int => KeyData::Int(int_keys(first()?)?, nulls),
            KeyKind::Text => KeyData::Text(
                first()?
                    .as_string_opt::<i32>()
                    .ok_or_else(|| Error::Internal("TEXT key is not a string array".into()))?
                    .clone(),
                nulls,
            ),
            KeyKind::Rows(conv) => {
                let arrays: Vec<ArrayRef> = arrays.into_iter().map(canon_floats).collect();
                KeyData::Rows(conv.convert_columns(&arrays)?, nulls)
            }
        })
    }
}

impl KeyData {
    fn len(&self) -> usize {
        match self {
            KeyData::Cross(n) => *n,
            KeyData::Int(v, _) => v.len(),
            KeyData::Text(a, _) => a.len(),
            KeyData::Rows(r, _) => r.num_rows(),
        }
    }

    fn nulls(&self) -> Option<&NullBuffer> {
        match self {
            KeyData::Cross(_) => None,
            KeyData::Int(_, n) | KeyData::Text(_, n) | KeyData::Rows(_, n) => n.as_ref(),
        }
    }

    /// Hints the CPU to fetch where row `i`'s key bytes are found.
    #[inline]
    fn prefetch(&self, i: usize) {
        if let KeyData::Text(a, _) = self {
            prefetch(a.value_offsets().as_ptr().wrapping_add(i));
        }
    }

    /// The key bytes of row `i` (Text and Rows keys only).
    fn bytes(&self, i: usize) -> &[u8] {
        match self {
            KeyData::Text(a, _) => a.value(i).as_bytes(),
            KeyData::Rows(r, _) => r.row(i).data(),
            _ => &[],
        }
    }
}

#[inline]
fn hash_i64(k: i64) -> u64 {
    let x = k as u64;
    (x ^ (x >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[inline]
fn hash_bytes(b: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = 0x243F_6A88_85A3_08D3 ^ (b.len() as u64).wrapping_mul(K);
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(<[u8; 8]>::try_from(c).unwrap_or_default());
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    // murmur3's finaliser: every input bit reaches the top bits used as the index.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    #[cfg(test)]
    if WEAK_HASH.with(|w| w.get()) {
        return h & 3;
    }
    h
}

#[cfg(test)]
thread_local! {
    /// Tests: every byte key hashes to one of four values, so that different keys
    /// share hashes and slots.
    static WEAK_HASH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Slot count for `n` entries at a load factor of at most 1/2 (at least 16).
fn capacity_for(n: usize) -> usize {
    (n.saturating_mul(2)).next_power_of_two().max(16)
}

/// One slot of [`IntMap`]: a distinct key, its group and the group's size.
#[derive(Clone, Copy)]
struct IntSlot {
    key: i64,
    gid: u32,
    count: u32,
}

const EMPTY_INT: IntSlot = IntSlot {
    key: 0,
    gid: NONE,
    count: 0,
};

/// Open addressing (linear probing) from an i64 key to its group; the group's size is
/// in the slot too, so counting matches reads one cache line per probe.
struct IntMap {
    slots: Vec<IntSlot>,
    shift: u32,
    len: usize,
}

impl IntMap {
    fn with_capacity(n: usize) -> IntMap {
        let cap = capacity_for(n);
        IntMap {
            slots: vec![EMPTY_INT; cap],
            shift: 64 - cap.trailing_zeros(),
            len: 0,
        }
    }

    /// The slot holding `key`, or the empty slot where it would go.
    #[inline]
    fn position(&self, key: i64) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = (hash_i64(key) >> self.shift) as usize;
        loop {
            let s = &self.slots[i];
            if s.gid == NONE || s.key == key {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    fn get(&self, key: i64) -> &IntSlot {
        &self.slots[self.position(key)]
    }

    #[inline]
    fn prefetch(&self, key: i64) {
        let i = (hash_i64(key) >> self.shift) as usize;
        prefetch(self.slots.as_ptr().wrapping_add(i));
    }

    /// The group of `key`, creating group `next` if it is new.
    fn insert(&mut self, key: i64, next: u32) -> u32 {
        if 2 * (self.len + 1) > self.slots.len() {
            let mut bigger = IntMap::with_capacity(self.slots.len());
            for s in self.slots.iter().filter(|s| s.gid != NONE) {
                let p = bigger.position(s.key);
                bigger.slots[p] = *s;
            }
            bigger.len = self.len;
            *self = bigger;
        }
        let p = self.position(key);
        let s = &mut self.slots[p];
        if s.gid == NONE {
            *s = IntSlot {
                key,
                gid: next,
                count: 0,
            };
            self.len += 1;
        }
        s.gid
    }
}

/// One slot of [`ByteMap`]: a distinct key's hash, its group and a build row holding
/// the key (whose bytes are compared).
#[derive(Clone, Copy)]
struct ByteSlot {
    hash: u64,
    gid: u32,
    rep: u32,
}

const EMPTY_BYTES: ByteSlot = ByteSlot {
    hash: 0,
    gid: NONE,
    rep: 0,
};

/// Open addressing (linear probing) from a byte key to its group.
struct ByteMap {
    slots: Vec<ByteSlot>,
    shift: u32,
    len: u32,
}

impl ByteMap {
    fn with_capacity(n: usize) -> ByteMap {
        let cap = capacity_for(n);
        ByteMap {
            slots: vec![EMPTY_BYTES; cap],
            shift: 64 - cap.trailing_zeros(),
            len: 0,
        }
    }

    #[inline]
    fn home(&self, h: u64) -> usize {
        (h >> self.shift) as usize
    }

    #[inline]
    fn prefetch(&self, h: u64) {
        prefetch(self.slots.as_ptr().wrapping_add(self.home(h)));
    }

    /// The slot of `key` (hash `h`), or the empty slot where it would go, searching
    /// from slot `i`.
    #[inline]
    fn position_from(&self, mut i: usize, h: u64, key: &[u8], build: &KeyData) -> usize {
        let mask = self.slots.len() - 1;
        loop {
            let s = &self.slots[i];
            if s.gid == NONE || (s.hash == h && build.bytes(s.rep as usize) == key) {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// The first slot from `h`'s home with hash `h` or empty (the key's slot unless
    /// two keys share all 64 hash bits).
    #[inline]
    fn candidate(&self, h: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = self.home(h);
        loop {
            let s = &self.slots[i];
            if s.gid == NONE || s.hash == h {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    fn insert(&mut self, h: u64, row: usize, build: &KeyData) -> u32 {
        if 2 * (self.len as usize + 1) > self.slots.len() {
            let mut bigger = ByteMap::with_capacity(self.slots.len());
            let mask = bigger.slots.len() - 1;
            for s in self.slots.iter().filter(|s| s.gid != NONE) {
                let mut p = bigger.home(s.hash);
                while bigger.slots[p].gid != NONE {
                    p = (p + 1) & mask;
                }
                bigger.slots[p] = *s;
            }
            bigger.len = self.len;
            *self = bigger;
        }
        let p = self.position_from(self.home(h), h, build.bytes(row), build);
        let s = &mut self.slots[p];
        if s.gid == NONE {
            *s = ByteSlot {
                hash: h,
                gid: self.len,
                rep: row as u32,
            };
            self.len += 1;
        }
        s.gid
    }
}

enum Index {
    Cross,
    /// Integer keys in a small range: group `k - min` holds the rows with key `k`
    /// (no hashing at all; typical of surrogate keys).
    Direct {
        min: i64,
    },
    Int(IntMap),
    Bytes(ByteMap),
}

/// The largest key range hashed by direct addressing for `n` build rows: the offsets
/// array (4 bytes per key value) stays within a few times the hash table's size.
fn direct_range_limit(n: usize) -> u64 {
    (4 * n as u64).clamp(1 << 12, 1 << 27)
}

/// Hints the CPU to fetch `p`'s cache line (hash probes are independent, so fetching
/// a few rows ahead hides most of the memory latency).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and has no effect on memory,
    // whatever the address (SSE is part of the x86_64 baseline).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How many rows ahead probes prefetch.
const PREFETCH: usize = 16;

/// A hash table over one side's rows: rows with equal keys form a group, stored
/// contiguously (`rows[offsets[g]..offsets[g + 1]]`, ascending).
struct HashTable {
    index: Index,
    /// The build side's keys (compared for byte keys).
    keys: KeyData,
    offsets: Vec<u32>,
    rows: Vec<u32>,
}

impl HashTable {
    /// Hashes a side's rows. `with_rows` false: only match counts are needed (no
    /// [`HashTable::emit`]), so the rows are not grouped.
    fn build(keys: KeyData, with_rows: bool) -> Result<HashTable> {
        let n = keys.len();
        if n >= NONE as usize {
            return Err(Error::InvalidValue(format!(
                "join input of {n} rows is too large"
            )));
        }
        let valid = |i: usize| keys.nulls().is_none_or(|nb| nb.is_valid(i));
        let mut gids = Vec::with_capacity(n);
        let (index, ngroups) = match &keys {
            KeyData::Cross(_) => {
                gids.resize(n, 0);
                (Index::Cross, 1)
            }
            KeyData::Int(v, _) => {
                let (mut min, mut max) = (i64::MAX, i64::MIN);
                match keys.nulls() {
                    None => v.iter().for_each(|&k| {
                        min = min.min(k);
                        max = max.max(k);
                    }),
                    Some(nb) => v.iter().zip(nb.iter()).for_each(|(&k, ok)| {
                        if ok {
                            min = min.min(k);
                            max = max.max(k);
                        }
                    }),
                }
                let range = (i128::from(max) - i128::from(min) + 1).max(0);
                if range <= i128::from(direct_range_limit(n)) {
                    gids.extend(v.iter().enumerate().map(|(i, &k)| {
                        if valid(i) {
                            k.wrapping_sub(min) as u32
                        } else {
                            NONE
                        }
                    }));
                    (Index::Direct { min }, range as usize)
                } else {
                    let mut m = IntMap::with_capacity(n / 2);
                    let mut next = 0;
                    for (i, &k) in v.iter().enumerate() {
                        if let Some(&ahead) = v.get(i + PREFETCH) {
                            m.prefetch(ahead);
                        }
                        if valid(i) {
                            let g = m.insert(k, next);
                            next += u32::from(g == next);
                            gids.push(g);
                        } else {
                            gids.push(NONE);
                        }
                    }
                    (Index::Int(m), next as usize)
                }
            }
            KeyData::Text(..) | KeyData::Rows(..) => {
                let hashes: Vec<u64> = (0..n).map(|i| hash_bytes(keys.bytes(i))).collect();
                let mut m = ByteMap::with_capacity(n / 2);
                for (i, &h) in hashes.iter().enumerate() {
                    if let Some(&ahead) = hashes.get(i + PREFETCH) {
                        m.prefetch(ahead);
                    }
                    gids.push(if valid(i) {
                        m.insert(h, i, &keys)
                    } else {
                        NONE
                    });
                }
                let g = m.len as usize;
                (Index::Bytes(m), g)
            }
        };
        let mut offsets = vec![0u32; ngroups + 1];
        for &g in &gids {
            if g != NONE {
                offsets[g as usize + 1] += 1;
            }
        }
        for g in 0..ngroups {
            offsets[g + 1] += offsets[g];
        }
        let mut rows = Vec::new();
        if with_rows {
            let mut pos: Vec<u32> = offsets[..ngroups].to_vec();
            rows = vec![0u32; offsets[ngroups] as usize];
            for (r, &g) in gids.iter().enumerate() {
                if g != NONE {
                    let p = &mut pos[g as usize];
                    rows[*p as usize] = r as u32;
                    *p += 1;
                }
            }
        }
        let mut t = HashTable {
            index,
            keys,
            offsets,
            rows,
        };
        if let Index::Int(m) = &mut t.index {
            for s in m.slots.iter_mut().filter(|s| s.gid != NONE) {
                let g = s.gid as usize;
                s.count = t.offsets[g + 1] - t.offsets[g];
            }
        }
        Ok(t)
    }

    /// The number of rows in group `g`.
    fn group_len(&self, g: u32) -> u32 {
        let g = g as usize;
        self.offsets[g + 1] - self.offsets[g]
    }

    /// The rows of group `g` (built `with_rows`).
    fn group(&self, g: u32) -> &[u32] {
        let g = g as usize;
        &self.rows[self.offsets[g] as usize..self.offsets[g + 1] as usize]
    }

    /// The group of every probe row (`NONE`: no match).
    fn lookup(&self, probe: &KeyData, out: &mut Vec<u32>) {
        out.clear();
        let n = probe.len();
        out.reserve(n);
        let nulls = probe.nulls();
        let valid = |i: usize| nulls.is_none_or(|nb| nb.is_valid(i));
        match (&self.index, probe) {
            (Index::Cross, _) => out.resize(n, 0),
            (Index::Direct { min }, KeyData::Int(v, _)) => {
                let ngroups = (self.offsets.len() - 1) as u64;
                let group = |k: i64| {
                    let d = k.wrapping_sub(*min) as u64;
                    if d < ngroups {
                        d as u32
                    } else {
                        NONE
                    }
                };
                match nulls {
                    None => out.extend(v.iter().map(|&k| group(k))),
                    Some(nb) => {
                        out.extend(
                            v.iter()
                                .zip(nb.iter())
                                .map(|(&k, ok)| if ok { group(k) } else { NONE }),
                        )
                    }
                }
            }
            (Index::Int(m), KeyData::Int(v, _)) => {
                for (i, &k) in v.iter().enumerate() {
                    if let Some(&ahead) = v.get(i + PREFETCH) {
                        m.prefetch(ahead);
                    }
                    out.push(if valid(i) { m.get(k).gid } else { NONE });
                }
            }
            (Index::Bytes(m), KeyData::Text(..) | KeyData::Rows(..)) => {
                // In passes of independent steps so that cache misses overlap: hashes,
                // candidate slots (by hash), then the byte comparisons.
                let hashes: Vec<u64> = (0..n).map(|i| hash_bytes(probe.bytes(i))).collect();
                let mut cand = Vec::with_capacity(n);
                for (i, &h) in hashes.iter().enumerate() {
                    if let Some(&ahead) = hashes.get(i + PREFETCH) {
                        m.prefetch(ahead);
                    }
                    cand.push(m.candidate(h));
                }
                let mask = m.slots.len() - 1;
                for (i, (&c, &h)) in cand.iter().zip(&hashes).enumerate() {
                    if let Some(&ahead) = cand.get(i + PREFETCH) {
                        self.keys.prefetch(m.slots[ahead].rep as usize);
                    }
                    let s = &m.slots[c];
                    out.push(if s.gid == NONE || !valid(i) {
                        NONE
                    } else {
                        let key = probe.bytes(i);
                        if self.keys.bytes(s.rep as usize) == key {
                            s.gid
                        } else {
                            m.slots[m.position_from((c + 1) & mask, h, key, &self.keys)].gid
                        }
                    });
                }
            }
            // Both sides come from one KeySpec, so the kinds always agree.
            _ => out.resize(n, NONE),
        }
    }

    /// The number of (build, probe) pairs with equal keys.
    fn count(&self, probe: &KeyData) -> u64 {
        let nulls = probe.nulls();
        let valid = |i: usize| nulls.is_none_or(|nb| nb.is_valid(i));
        match (&self.index, probe) {
            (Index::Cross, _) => u64::from(self.group_len(0)) * probe.len() as u64,
            (Index::Direct { min }, KeyData::Int(v, _)) => {
                let off = &self.offsets;
                let ngroups = (off.len() - 1) as u64;
                let mut total = 0u64;
                for (i, &k) in v.iter().enumerate() {
                    if let Some(&ahead) = v.get(i + PREFETCH) {
                        let d = ahead.wrapping_sub(*min) as u64;
                        prefetch(off.as_ptr().wrapping_add(d.min(ngroups) as usize));
                    }
                    let d = k.wrapping_sub(*min) as u64;
                    if d < ngroups && valid(i) {
                        let d = d as usize;
                        total += u64::from(off[d + 1] - off[d]);
                    }
                }
                total
            }
            (Index::Int(m), KeyData::Int(v, _)) => {
                let mut total = 0u64;
                for (i, &k) in v.iter().enumerate() {
                    if let Some(&ahead) = v.get(i + PREFETCH) {
                        m.prefetch(ahead);
                    }
                    if valid(i) {
                        total += u64::from(m.get(k).count);
                    }
                }
                total
            }
            _ => {
                let mut gids = Vec::new();
                self.lookup(probe, &mut gids);
                gids.iter()
                    .filter(|&&g| g != NONE)
                    .map(|&g| u64::from(self.group_len(g)))
                    .sum()
            }
        }
    }

    /// Calls `f(build_rows, probe_rows)` for the matching pairs of `gids` (from
    /// [`HashTable::lookup`]), at most `cap` pairs at a time.
    fn emit(
        &self,
        gids: &[u32],
        cap: usize,
        mut f: impl FnMut(Vec<u32>, Vec<u32>) -> Result<()>,
    ) -> Result<()> {
        let (mut b, mut p) = (Vec::new(), Vec::new());
        for (i, &g) in gids.iter().enumerate() {
            if g == NONE {
                continue;
            }
            let mut rows = self.group(g);
            while !rows.is_empty() {
                if b.is_empty() {
                    b.reserve(cap.min(gids.len() - i + rows.len()));
                    p.reserve(b.capacity());
                }
                let take = rows.len().min(cap - b.len());
                b.extend_from_slice(&rows[..take]);
                p.resize(p.len() + take, i as u32);
                rows = &rows[take..];
                if b.len() == cap {
                    f(std::mem::take(&mut b), std::mem::take(&mut p))?;
                }
            }
        }
        if !b.is_empty() {
            f(b, p)?;
        }
        Ok(())
    }
}

/// The joined rows `left[lidx] ++ right[ridx]` as a batch of `schema`; columns not in
/// `need` are all-NULL placeholders.
fn gather(
    schema: &SchemaRef,
    need: &[bool],
    left: &RecordBatch,
    lidx: Vec<u32>,
    right: &RecordBatch,
    ridx: Vec<u32>,
    nulls: &mut NullCache,
) -> Result<RecordBatch> {
    let n = lidx.len();
    let (lidx, ridx) = (UInt32Array::from(lidx), UInt32Array::from(ridx));
    let lw = left.num_columns();
    let cols = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(c, f)| {
            if !need[c] {
                return Ok(nulls.get(f.data_type(), n));
            }
            let (src, idx) = if c < lw {
                (left.column(c), &lidx)
            } else {
                (right.column(c - lw), &ridx)
            };
            Ok(take(src.as_ref(), idx, None)?)
        })
        .collect::<Result<Vec<_>>>()?;
    with_rows(schema.clone(), cols, n)
}

// ---------------------------------------------------------------- post fragment

/// Pairs emitted per joined batch.
const JOIN_BATCH: usize = 32 * 1024;
/// Joined rows buffered before a partial aggregate is computed over them.
const AGG_ROWS: usize = 128 * 1024;
/// Partial states kept before they are merged into one.
const MAX_PARTIALS: usize = 16;
/// Projected rows buffered before they are concatenated into one output batch.
const OUT_ROWS: usize = 64 * 1024;

enum SinkMode {
    /// `COUNT(*)`s only, no filters after the last step: matches are counted without
    /// being materialised. `template` is the (one-row) state of zero rows.
    Count { n: u64, template: RecordBatch },
    Agg {
        agg: PartialAgg,
        pending: Vec<RecordBatch>,
        pending_rows: usize,
        partials: Vec<RecordBatch>,
    },
    /// `schema` `None`: every combined column.
    Project {
        exprs: Vec<Expr>,
        schema: Option<SchemaRef>,
        pending: Vec<RecordBatch>,
        pending_rows: usize,
        out: Vec<RecordBatch>,
    },
}

/// The post fragment, fed joined batches (combined rows) as they are produced.
struct Sink {
    filter: Option<Expr>,
    /// The combined row's schema.
    schema: TableSchema,
    mode: SinkMode,
}

impl Sink {
    /// `count_ok`: no step filter after the last join (so matches may be counted).
    fn new(post: Fragment, schema: TableSchema, count_ok: bool) -> Result<Sink> {
        if let Some(f) = &post.filter {
            check_predicate(f, &schema, "WHERE")?;
        }
        let mode = match post.partial_agg {
            Some(agg) => {
                let template = agg.partial(&schema, &[])?;
                let count_star = serde_json::to_value(AggCall::count_star()).ok();
                let only_count_star = !agg.aggs.is_empty()
                    && agg.aggs.iter().all(|a| {
                        a.func == AggFunc::CountStar && serde_json::to_value(a).ok() == count_star
                    });
                if count_ok
                    && post.filter.is_none()
                    && agg.group_by.is_empty()
                    && only_count_star
                    && template.num_rows() == 1
                    && template.num_columns() == agg.aggs.len()
                    && template
                        .columns()
                        .iter()
                        .all(|c| c.data_type() == &ArrowType::Int64)
                {
                    SinkMode::Count { n: 0, template }
                } else {
                    SinkMode::Agg {
                        agg,
                        pending: Vec::new(),
                        pending_rows: 0,
                        partials: Vec::new(),
                    }
                }
            }
            None => SinkMode::Project {
                schema: if post.projection.is_empty() {
                    None
                } else {
                    Some(projection_schema(&schema, &post.projection)?)
                },
                exprs: post.projection,
                pending: Vec::new(),
                pending_rows: 0,
                out: Vec::new(),
            },
        };
        Ok(Sink {
            filter: post.filter,
            schema,
            mode,
        })
    }

    /// Whether matches may be counted rather than materialised.
    fn counts(&self) -> bool {
        matches!(self.mode, SinkMode::Count { .. })
    }

    fn add_count(&mut self, k: u64) {
        if let SinkMode::Count { n, .. } = &mut self.mode {
            *n += k;
        }
    }

    /// Joined rows (a batch of the combined row).
    fn push(&mut self, batch: RecordBatch) -> Result<()> {
        let batch = apply_filter(self.filter.as_ref(), batch)?;
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        match &mut self.mode {
            SinkMode::Count { n, .. } => *n += rows as u64,
            SinkMode::Agg {
                pending,
                pending_rows,
                ..
            } => {
                pending.push(batch);
                *pending_rows += rows;
                if *pending_rows >= AGG_ROWS {
                    self.flush()?;
                }
            }
            SinkMode::Project {
                exprs,
                schema,
                pending,
                pending_rows,
                ..
            } => {
                pending.push(match schema {
                    Some(s) => project_batch(&batch, exprs, s)?,
                    None => batch,
                });
                *pending_rows += rows;
                if *pending_rows >= OUT_ROWS {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        match &mut self.mode {
            SinkMode::Count { .. } => {}
            SinkMode::Agg {
                agg,
                pending,
                pending_rows,
                partials,
            } => {
                if !pending.is_empty() {
                    partials.push(agg.partial(&self.schema, pending)?);
                    pending.clear();
                    *pending_rows = 0;
                }
                if partials.len() >= MAX_PARTIALS {
                    let merged = agg.merge(partials)?;
                    *partials = vec![merged];
                }
            }
            SinkMode::Project {
                pending,
                pending_rows,
                out,
                ..
            } => {
                if let Some(first) = pending.first() {
                    let schema = first.schema();
                    out.push(concat_all(&schema, pending)?);
                    pending.clear();
                    *pending_rows = 0;
                }
            }
        }
        Ok(())
    }

    /// The post fragment's result: one partial state batch, or the projected batches.
    fn finish(mut self) -> Result<Vec<RecordBatch>> {
        self.flush()?;
        Ok(match self.mode {
            SinkMode::Count { n, template } => {
                let n = i64::try_from(n)
                    .map_err(|_| Error::Overflow("bigint out of range in COUNT".into()))?;
                let cols = (0..template.num_columns())
                    .map(|_| Arc::new(Int64Array::from(vec![n])) as ArrayRef)
                    .collect();
                vec![RecordBatch::try_new(template.schema(), cols)?]
            }
            SinkMode::Agg {
                agg, mut partials, ..
            } => vec![match partials.len() {
                0 => agg.partial(&self.schema, &[])?,
                1 => partials.remove(0),
                _ => agg.merge(&partials)?,
            }],
            SinkMode::Project { out, .. } => out,
        })
    }
}

// ---------------------------------------------------------------- JoinExec

/// The per-query join state on one Tstore. See the module docs.
pub struct JoinExec {
    spec: JoinSpec,
    /// Schema of stage `s` (the row after `s` steps: inputs `0..=s`).
    stage_schema: Vec<SchemaRef>,
    /// `need[s][c]`: combined column `c` is used at stage `s` or later (others are
    /// all-NULL placeholders).
    need: Vec<Vec<bool>>,
    /// Schema of each join table's chunks.
    jt_schema: Vec<SchemaRef>,
    keys: Vec<KeySpec>,
    /// The stage-0 batch (the filtered pivot) until the joins before the last are done.
    pivot: Option<RecordBatch>,
    /// Copies of the chunks of join tables `0..k-1`.
    collected: Vec<Vec<RecordBatch>>,
    /// Copies of the last join table's chunks that arrived before the probe side.
    queued: Vec<RecordBatch>,
    complete: Vec<bool>,
    /// The stage `k - 1` batch hashed on the last step's left keys.
    probe: Option<(RecordBatch, HashTable)>,
    sink: Sink,
    nulls: NullCache,
    gids: Vec<u32>,
    stats: JoinStats,
}

impl JoinExec {
    /// Prepares the pivot side from `store` (scan, filter, project; hash when there is
    /// one join table). `post` runs over the combined row (its `table` is ignored).
    ///
    /// # Errors
    /// Unknown tables, bad expressions.
    pub fn new(store: &crate::Store, spec: JoinSpec, post: Fragment) -> crate::Result<JoinExec> {
        let start = Instant::now();
        let k = spec.join_tables.len();
        if spec.steps.len() != k {
            return Err(Error::Internal(format!(
                "join of {k} tables with {} steps",
                spec.steps.len()
            )));
        }
        let slices = inputs(&spec)
            .map(|i| {
                store
                    .table(&i.table)
                    .ok_or_else(|| Error::UnknownTable(i.table.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        let schemas: Vec<TableSchema> = slices.iter().map(|s| s.schema().clone()).collect();
        let combined = combined_schema(&spec, &schemas)?;
        let mut offsets = vec![0];
        for i in inputs(&spec) {
            offsets.push(offsets[offsets.len() - 1] + i.columns.len());
        }
        let part = |from: usize, to: usize| TableSchema::new(combined.columns[from..to].to_vec());
        let stage_table: Vec<TableSchema> = (0..=k).map(|s| part(0, offsets[s + 1])).collect();
        let stage_schema: Vec<SchemaRef> = stage_table.iter().map(|t| t.to_arrow()).collect();
        let jt_table: Vec<TableSchema> = (0..k)
            .map(|j| part(offsets[j + 1], offsets[j + 2]))
            .collect();
        let jt_schema = jt_table.iter().map(|t| t.to_arrow()).collect();
        for (i, input) in inputs(&spec).enumerate() {
            if let Some(f) = &input.filter {
                check_predicate(f, &schemas[i], "WHERE")?;
            }
        }
        let mut keys = Vec::with_capacity(k);
        for (i, step) in spec.steps.iter().enumerate() {
            keys.push(KeySpec::new(
                &step.left_keys,
                &step.right_keys,
                &stage_table[i],
                &jt_table[i],
            )?);
            if let Some(f) = &step.filter {
                check_predicate(f, &stage_table[i + 1], "JOIN filter")?;
            }
        }

        // Which columns each stage materialises.
        let width = combined.columns.len();
        let mut need = Vec::with_capacity(k + 1);
        for s in 0..=k {
            let mut used = vec![false; width];
            if post.partial_agg.is_none() && post.projection.is_empty() {
                used.fill(true);
            }
            mark_columns(&post.filter, &mut used);
            match &post.partial_agg {
                Some(agg) => mark_columns(agg, &mut used),
                None => mark_columns(&post.projection, &mut used),
            }
            for (i, step) in spec.steps.iter().enumerate() {
                if i >= s {
                    mark_columns(&step.left_keys, &mut used);
                }
                if i + 1 >= s {
                    mark_columns(&step.filter, &mut used);
                }
            }
            used.truncate(offsets[s + 1]);
            need.push(used);
        }

        let last_filter = spec.steps.last().and_then(|s| s.filter.as_ref());
        let sink = Sink::new(post, combined, k > 0 && last_filter.is_none())?;

        // The pivot: only the needed columns are scanned; the rest are placeholders.
        let mut nulls = NullCache::default();
        let pivot_cols: Vec<usize> = (0..offsets[1]).filter(|&c| need[0][c]).collect();
        let table_cols: Vec<usize> = pivot_cols.iter().map(|&c| spec.pivot.columns[c]).collect();
        let scanned = scan(slices[0], spec.pivot.filter.as_ref(), &table_cols)?;
        let rows: usize = scanned.iter().map(|b| b.num_rows()).sum();
        let stage0 = stage_schema[0].clone();
        let mut cols = Vec::with_capacity(offsets[1]);
        let mut next = 0;
        for (c, f) in stage0.fields().iter().enumerate() {
            if need[0][c] {
                let parts: Vec<&dyn Array> =
                    scanned.iter().map(|b| b.column(next).as_ref()).collect();
                next += 1;
                cols.push(match parts.as_slice() {
                    [] => new_empty_array(f.data_type()),
                    _ => arrow_select::concat::concat(&parts)?,
                });
            } else {
                cols.push(nulls.get(f.data_type(), rows));
            }
        }
        let pivot = with_rows(stage0.clone(), cols, rows)?;

        let mut exec = JoinExec {
            stats: JoinStats {
                received_rows: vec![0; k],
                pivot_rows: rows as u64,
                ..JoinStats::default()
            },
            spec,
            stage_schema,
            need,
            jt_schema,
            keys,
            pivot: Some(pivot),
            collected: vec![Vec::new(); k],
            queued: Vec::new(),
            complete: vec![false; k],
            probe: None,
            sink,
            nulls,
            gids: Vec::new(),
        };
        if k == 1 {
            exec.prepare_last()?;
        }
        exec.stats.pivot = start.elapsed();
        Ok(exec)
    }

    fn join_table_index(&self, jt: usize) -> Result<()> {
        if jt >= self.spec.join_tables.len() {
            return Err(Error::Internal(format!(
                "join table {jt} of a join with {} join tables",
                self.spec.join_tables.len()
            )));
        }
        if self.complete[jt] {
            return Err(Error::Internal(format!(
                "join table {} ({jt}) is already complete",
                self.spec.join_tables[jt].alias
            )));
        }
        Ok(())
    }

    /// A chunk of join table `jt` arrived (from any Tstore, in arrival order).
    ///
    /// `batch` may point straight into a receive ring whose space goes back to the
    /// sender when the batch is dropped: a streamed chunk is probed and dropped here;
    /// a chunk kept for later (every join table but the last) is deep-copied first, so
    /// a Tstore never holds ring space while it waits for other chunks.
    ///
    /// # Errors
    /// A batch whose schema does not match the join table, evaluation errors.
    pub fn push(&mut self, jt: usize, batch: crate::RecordBatch) -> crate::Result<()> {
        self.join_table_index(jt)?;
        let want = self.jt_schema[jt].clone();
        let alias = &self.spec.join_tables[jt].alias;
        if batch.num_columns() != want.fields().len() {
            return Err(Error::TypeMismatch(format!(
                "join table {alias}: chunk has {} columns, expected {}",
                batch.num_columns(),
                want.fields().len()
            )));
        }
        for (a, f) in batch.columns().iter().zip(want.fields()) {
            if a.data_type() != f.data_type() {
                return Err(Error::TypeMismatch(format!(
                    "join table {alias}: column {} is {} in the chunk, expected {}",
                    f.name(),
                    a.data_type(),
                    f.data_type()
                )));
            }
        }
        let start = Instant::now();
        self.stats.received_rows[jt] += batch.num_rows() as u64;
        // An empty pivot joins with nothing: no chunk needs to be kept or probed.
        if batch.num_rows() > 0 && self.stats.pivot_rows > 0 {
            if jt + 1 < self.spec.join_tables.len() {
                let copy = deep_copy(&want, &batch)?;
                self.collected[jt].push(copy);
            } else if self.probe.is_some() && self.spec.overlap {
                self.probe_chunk(&batch)?;
            } else {
                let copy = deep_copy(&want, &batch)?;
                self.queued.push(copy);
            }
        }
        self.stats.compare += start.elapsed();
        Ok(())
    }

    /// Every chunk of join table `jt` has arrived.
    ///
    /// # Errors
    /// Evaluation errors.
    pub fn complete(&mut self, jt: usize) -> crate::Result<()> {
        self.join_table_index(jt)?;
        self.complete[jt] = true;
        let k = self.spec.join_tables.len();
        if self.probe.is_none() && self.complete[..k - 1].iter().all(|&c| c) {
            let start = Instant::now();
            self.prepare_last()?;
            self.stats.compare += start.elapsed();
        }
        if jt + 1 == k && self.probe.is_some() && !self.queued.is_empty() {
            // Overlap off: the whole last join table is in; compare it now.
            let start = Instant::now();
            for q in std::mem::take(&mut self.queued) {
                self.probe_chunk(&q)?;
            }
            self.stats.compare += start.elapsed();
        }
        Ok(())
    }

    /// After every join table is complete: the post fragment's result (one partial
    /// aggregate state batch, or the projected batches) and the statistics.
    ///
    /// # Errors
    /// A join table not complete, evaluation errors.
    pub fn finish(mut self) -> crate::Result<(Vec<crate::RecordBatch>, JoinStats)> {
        if let Some(j) = self.complete.iter().position(|&c| !c) {
            return Err(Error::Internal(format!(
                "join table {} is not complete",
                self.spec.join_tables[j].alias
            )));
        }
        let start = Instant::now();
        if self.spec.join_tables.is_empty() {
            if let Some(p) = self.pivot.take() {
                self.stats.joined_rows = p.num_rows() as u64;
                self.sink.push(p)?;
            }
        }
        let mut stats = self.stats;
        let out = self.sink.finish()?;
        stats.compare += start.elapsed();
        Ok((out, stats))
    }

    /// Joins the pivot with join tables `0..k-1` (all complete), hashes the result on
    /// the last step's left keys and probes the queued chunks of the last table.
    fn prepare_last(&mut self) -> Result<()> {
        let k = self.spec.join_tables.len();
        let Some(mut left) = self.pivot.take() else {
            return Err(Error::Internal("join pivot already consumed".into()));
        };
        for i in 0..k - 1 {
            let parts = std::mem::take(&mut self.collected[i]);
            let right = concat_all(&self.jt_schema[i], &parts)?;
            drop(parts);
            left = self.join_complete(i, &left, &right)?;
        }
        let keys = self.keys[k - 1].eval(&self.spec.steps[k - 1].left_keys, &left)?;
        let table = HashTable::build(keys, !self.sink.counts())?;
        self.probe = Some((left, table));
        for q in std::mem::take(&mut self.queued) {
            self.probe_chunk(&q)?;
        }
        Ok(())
    }

    /// Step `i` over complete inputs: hashes the smaller side.
    fn join_complete(
        &mut self,
        i: usize,
        left: &RecordBatch,
        right: &RecordBatch,
    ) -> Result<RecordBatch> {
        let step = &self.spec.steps[i];
        let schema = &self.stage_schema[i + 1];
        let lk = self.keys[i].eval(&step.left_keys, left)?;
        let rk = self.keys[i].eval(&step.right_keys, right)?;
        let build_left = left.num_rows() <= right.num_rows();
        let (table, probe) = if build_left {
            (HashTable::build(lk, true)?, rk)
        } else {
            (HashTable::build(rk, true)?, lk)
        };
        let mut gids = Vec::new();
        table.lookup(&probe, &mut gids);
        drop(probe);
        let (need, nulls) = (&self.need[i + 1], &mut self.nulls);
        let mut out = Vec::new();
        table.emit(&gids, JOIN_BATCH, |b, p| {
            let (l, r) = if build_left { (b, p) } else { (p, b) };
            let joined = gather(schema, need, left, l, right, r, nulls)?;
            let joined = apply_filter(step.filter.as_ref(), joined)?;
            if joined.num_rows() > 0 {
                out.push(joined);
            }
            Ok(())
        })?;
        concat_all(schema, &out)
    }

    /// Probes a chunk of the last join table and feeds the joined rows to the sink.
    fn probe_chunk(&mut self, chunk: &RecordBatch) -> Result<()> {
        let k = self.spec.join_tables.len();
        let Some((left, table)) = &self.probe else {
            return Err(Error::Internal("join probe side not ready".into()));
        };
        if left.num_rows() == 0 || chunk.num_rows() == 0 {
            return Ok(());
        }
        let step = &self.spec.steps[k - 1];
        let keys = self.keys[k - 1].eval(&step.right_keys, chunk)?;
        if self.sink.counts() {
            let n = table.count(&keys);
            self.stats.joined_rows += n;
            self.sink.add_count(n);
            return Ok(());
        }
        table.lookup(&keys, &mut self.gids);
        drop(keys);
        let (schema, need) = (&self.stage_schema[k], &self.need[k]);
        let (nulls, sink, stats) = (&mut self.nulls, &mut self.sink, &mut self.stats);
        table.emit(&self.gids, JOIN_BATCH, |b, p| {
            let joined = gather(schema, need, left, b, chunk, p, nulls)?;
            let joined = apply_filter(step.filter.as_ref(), joined)?;
            stats.joined_rows += joined.num_rows() as u64;
            sink.push(joined)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agg::AggCall;
    use crate::expr::BinaryOp;
    use crate::slice::batches_to_rows;
    use crate::types::{values_to_array, Value};
    use crate::Store;

    // ------------------------------------------------------------ helpers

    /// A table's name and rows.
    type TableRows<'a> = (&'a str, Vec<Vec<Value>>);

    fn col(name: &str, t: DataType) -> ColumnDef {
        ColumnDef::new(name, t, true)
    }

    fn c(i: usize) -> Expr {
        Expr::col(i)
    }

    fn input(table: &str, alias: &str, columns: Vec<usize>, filter: Option<Expr>) -> JoinInput {
        JoinInput {
            table: table.into(),
            alias: alias.into(),
            filter,
            columns,
            est_rows: 0,
            est_bytes: 0,
        }
    }

    fn step(left_keys: Vec<Expr>, right_keys: Vec<Expr>, filter: Option<Expr>) -> JoinStep {
        JoinStep {
            left_keys,
            right_keys,
            filter,
        }
    }

    fn spec(pivot: JoinInput, join_tables: Vec<JoinInput>, steps: Vec<JoinStep>) -> JoinSpec {
        JoinSpec {
            pivot,
            join_tables,
            steps,
            pivot_reason: "test".into(),
            order_reasons: Vec::new(),
            overlap: true,
        }
    }

    fn project(projection: Vec<Expr>, filter: Option<Expr>) -> Fragment {
        Fragment {
            table: String::new(),
            filter,
            projection,
            partial_agg: None,
        }
    }

    fn aggregate(group_by: Vec<Expr>, aggs: Vec<AggCall>, filter: Option<Expr>) -> Fragment {
        Fragment {
            table: String::new(),
            filter,
            projection: vec![],
            partial_agg: Some(PartialAgg { group_by, aggs }),
        }
    }

    fn count_star() -> Fragment {
        aggregate(vec![], vec![AggCall::count_star()], None)
    }

    /// A store per entry of `parts`; `tables` gives each table's columns, `parts[s]`
    /// its rows in store `s`.
    fn cluster(tables: &[(&str, Vec<ColumnDef>)], parts: &[Vec<TableRows>]) -> Vec<Store> {
        parts
            .iter()
            .map(|p| {
                let mut s = Store::in_memory_with_chunk_rows(5);
                for (name, cols) in tables {
                    s.create_table(name, TableSchema::new(cols.clone()))
                        .unwrap();
                }
                for (name, rows) in p {
                    s.insert(name, rows.clone()).unwrap();
                }
                s
            })
            .collect()
    }

    /// Tiny deterministic PRNG (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
    }

    /// Runs the join on every store: each builds its join tables and every chunk
    /// (`chunk` rows at most) goes to every store's [`JoinExec`], tables interleaved
    /// at random (by `seed`), each completed after its last chunk.
    fn run(
        stores: &[Store],
        spec: &JoinSpec,
        post: &Fragment,
        chunk: usize,
        seed: u64,
    ) -> Result<Vec<(Vec<RecordBatch>, JoinStats)>> {
        let mut rng = Rng(seed | 1);
        let mut chunks: Vec<std::collections::VecDeque<RecordBatch>> = Vec::new();
        for jt in &spec.join_tables {
            let mut q = std::collections::VecDeque::new();
            for s in stores {
                for b in build_join_table(s, jt)? {
                    let mut off = 0;
                    while off < b.num_rows() {
                        let n = (1 + rng.below(chunk)).min(b.num_rows() - off);
                        q.push_back(b.slice(off, n));
                        off += n;
                    }
                }
            }
            chunks.push(q);
        }
        let mut execs = stores
            .iter()
            .map(|s| JoinExec::new(s, spec.clone(), post.clone()))
            .collect::<Result<Vec<_>>>()?;
        let mut open: Vec<usize> = (0..chunks.len()).collect();
        while !open.is_empty() {
            let p = rng.below(open.len());
            let jt = open[p];
            match chunks[jt].pop_front() {
                Some(b) => {
                    for e in &mut execs {
                        e.push(jt, b.clone())?;
                    }
                }
                None => {
                    for e in &mut execs {
                        e.complete(jt)?;
                    }
                    open.remove(p);
                }
            }
        }
        execs.into_iter().map(|e| e.finish()).collect()
    }

    fn sorted(mut rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
        rows.sort_by_key(|r| format!("{r:?}"));
        rows
    }

    /// The final rows of the post fragment over every store's output.
    fn final_rows(post: &Fragment, outs: Vec<Vec<RecordBatch>>) -> Vec<Vec<Value>> {
        let all: Vec<RecordBatch> = outs.into_iter().flatten().collect();
        let rows = match &post.partial_agg {
            Some(agg) => batches_to_rows(&[agg.merge_finalize(&all).unwrap()]).unwrap(),
            None => batches_to_rows(&all).unwrap(),
        };
        sorted(rows)
    }

    fn join_rows(stores: &[Store], spec: &JoinSpec, post: &Fragment) -> Vec<Vec<Value>> {
        let out = run(stores, spec, post, 4, 7).unwrap();
        for (batches, _) in &out {
            if post.partial_agg.is_some() {
                assert_eq!(batches.len(), 1);
            }
        }
        final_rows(post, out.into_iter().map(|o| o.0).collect())
    }

    fn rows_to_batch(schema: &TableSchema, rows: &[Vec<Value>]) -> RecordBatch {
        let cols = schema
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| values_to_array(c.data_type, rows.iter().map(|r| &r[i])).unwrap())
            .collect();
        with_rows(schema.to_arrow(), cols, rows.len()).unwrap()
    }

    fn eval_rows(exprs: &[Expr], schema: &TableSchema, rows: &[Vec<Value>]) -> Vec<Vec<Value>> {
        let b = rows_to_batch(schema, rows);
        let arrays: Vec<ArrayRef> = exprs.iter().map(|e| e.eval(&b).unwrap()).collect();
        (0..rows.len())
            .map(|i| {
                arrays
                    .iter()
                    .map(|a| Value::from_array(a, i).unwrap())
                    .collect()
            })
            .collect()
    }

    /// The same query by nested loops over values.
    fn reference(stores: &[Store], spec: &JoinSpec, post: &Fragment) -> Vec<Vec<Value>> {
        let schemas: Vec<TableSchema> = inputs(spec)
            .map(|i| stores[0].table(&i.table).unwrap().schema().clone())
            .collect();
        let combined = combined_schema(spec, &schemas).unwrap();
        let rows_of = |i: &JoinInput| -> Vec<Vec<Value>> {
            stores
                .iter()
                .flat_map(|s| batches_to_rows(&build_join_table(s, i).unwrap()).unwrap())
                .collect()
        };
        let part = |a: usize, b: usize| TableSchema::new(combined.columns[a..b].to_vec());
        let mut cur = rows_of(&spec.pivot);
        let mut width = spec.pivot.columns.len();
        for (jt, st) in spec.join_tables.iter().zip(&spec.steps) {
            let right = rows_of(jt);
            let rw = width + jt.columns.len();
            let lk = eval_rows(&st.left_keys, &part(0, width), &cur);
            let rk = eval_rows(&st.right_keys, &part(width, rw), &right);
            let mut next = Vec::new();
            for (l, lk) in cur.iter().zip(&lk) {
                for (r, rk) in right.iter().zip(&rk) {
                    if lk.iter().zip(rk).all(|(a, b)| a.sql_eq(b) == Some(true)) {
                        next.push(l.iter().chain(r).cloned().collect::<Vec<_>>());
                    }
                }
            }
            width = rw;
            if let Some(f) = &st.filter {
                let m = true_mask(
                    &f.eval_predicate(&rows_to_batch(&part(0, width), &next))
                        .unwrap(),
                );
                next = next
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| m.value(*i))
                    .map(|(_, r)| r)
                    .collect();
            }
            cur = next;
        }
        let out = post
            .run_over(&combined, &[rows_to_batch(&combined, &cur)])
            .unwrap();
        final_rows(post, vec![out])
    }

    fn v(i: i32) -> Value {
        Value::Int(i)
    }
    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }
    const N: Value = Value::Null;

    /// customers(id INT, name TEXT, city TEXT) and orders(id INT, cust INT, amount
    /// BIGINT), split over two stores.
    fn shop() -> Vec<Store> {
        let tables = [
            (
                "customers",
                vec![
                    col("id", DataType::Int),
                    col("name", DataType::Text),
                    col("city", DataType::Text),
                ],
            ),
            (
                "orders",
                vec![
                    col("id", DataType::Int),
                    col("cust", DataType::Int),
                    col("amount", DataType::BigInt),
                ],
            ),
        ];
        let big = |x: i64| Value::BigInt(x);
        cluster(
            &tables,
            &[
                vec![
                    (
                        "customers",
                        vec![
                            vec![v(1), t("ann"), t("oslo")],
                            vec![v(2), t("bob"), t("rome")],
                            vec![N, t("nul"), t("oslo")],
                        ],
                    ),
                    (
                        "orders",
                        vec![
                            vec![v(10), v(1), big(5)],
                            vec![v(11), v(2), big(7)],
                            vec![v(12), v(1), big(1)],
                            vec![v(13), N, big(100)],
                        ],
                    ),
                ],
                vec![
                    (
                        "customers",
                        vec![vec![v(3), t("cy"), t("rome")], vec![v(4), t("dee"), N]],
                    ),
                    (
                        "orders",
                        vec![
                            vec![v(14), v(3), big(2)],
                            vec![v(15), v(9), big(50)],
                            vec![v(16), v(3), big(4)],
                            vec![v(17), v(1), big(3)],
                        ],
                    ),
                ],
            ],
        )
    }

    // ------------------------------------------------------------ schema, build

    #[test]
    fn combined_schema_names_and_types() {
        let stores = shop();
        let sp = spec(
            input("orders", "o", vec![2, 0], None),
            vec![input("customers", "c", vec![1], None)],
            vec![step(vec![], vec![], None)],
        );
        let schemas = vec![
            stores[0].table("orders").unwrap().schema().clone(),
            stores[0].table("customers").unwrap().schema().clone(),
        ];
        let s = combined_schema(&sp, &schemas).unwrap();
        assert_eq!(
            s.columns,
            vec![
                col("o.amount", DataType::BigInt),
                col("o.id", DataType::Int),
                col("c.name", DataType::Text),
            ]
        );
        let mut bad = sp.clone();
        bad.join_tables[0].columns = vec![3];
        assert!(matches!(
            combined_schema(&bad, &schemas),
            Err(Error::UnknownColumn(_))
        ));
        assert!(combined_schema(&sp, &schemas[..1]).is_err());
    }

    #[test]
    fn build_join_table_filters_and_projects() {
        let stores = shop();
        let i = input("orders", "o", vec![2, 1], Some(c(2).gt(Expr::lit(3i64))));
        let b = build_join_table(&stores[0], &i).unwrap();
        assert_eq!(
            sorted(batches_to_rows(&b).unwrap()),
            sorted(vec![
                vec![Value::BigInt(5), v(1)],
                vec![Value::BigInt(7), v(2)],
                vec![Value::BigInt(100), N],
            ])
        );
        // No kept columns: batches of zero columns with the right row count.
        let b = build_join_table(&stores[1], &input("orders", "o", vec![], None)).unwrap();
        assert!(b.iter().all(|b| b.num_columns() == 0));
        assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
        assert!(matches!(
            build_join_table(&stores[0], &input("nope", "n", vec![], None)),
            Err(Error::UnknownTable(_))
        ));
        assert!(build_join_table(&stores[0], &input("orders", "o", vec![5], None)).is_err());
        assert!(build_join_table(&stores[0], &input("orders", "o", vec![0], Some(c(0)))).is_err());
    }

    // ------------------------------------------------------------ semantics

    #[test]
    fn one_table_int_key_with_projection() {
        // SELECT o.id, c.name, o.amount * 2 FROM orders o JOIN customers c
        // ON o.cust = c.id WHERE o.amount < 50
        let stores = shop();
        let sp = spec(
            input(
                "orders",
                "o",
                vec![0, 1, 2],
                Some(c(2).lt(Expr::lit(50i64))),
            ),
            vec![input("customers", "c", vec![0, 1], None)],
            vec![step(vec![c(1)], vec![c(0)], None)],
        );
        let post = project(
            vec![c(0), c(4), c(2).binary(BinaryOp::Mul, Expr::lit(2i64))],
            None,
        );
        let got = join_rows(&stores, &sp, &post);
        let b = Value::BigInt;
        assert_eq!(
            got,
            sorted(vec![
                vec![v(10), t("ann"), b(10)],
                vec![v(12), t("ann"), b(2)],
                vec![v(17), t("ann"), b(6)],
                vec![v(11), t("bob"), b(14)],
                vec![v(14), t("cy"), b(4)],
                vec![v(16), t("cy"), b(8)],
            ])
        );
        assert_eq!(got, reference(&stores, &sp, &post));
        // Output schemas are the same on every store (names from the combined row).
        let out = run(&stores, &sp, &post, 3, 1).unwrap();
        let schemas: Vec<_> = out
            .iter()
            .flat_map(|o| o.0.iter().map(|b| b.schema()))
            .collect();
        assert!(schemas.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(schemas[0].field(0).name(), "o.id");
        assert_eq!(schemas[0].field(1).name(), "c.name");
        // Empty projection: every combined column.
        let all = join_rows(&stores, &sp, &project(vec![], Some(c(0).eq(Expr::lit(11)))));
        assert_eq!(
            all,
            vec![vec![v(11), v(2), Value::BigInt(7), v(2), t("bob")]]
        );
    }

    #[test]
    fn statistics() {
        let stores = shop();
        let sp = spec(
            input("orders", "o", vec![1], None),
            vec![input("customers", "c", vec![0], None)],
            vec![step(vec![c(0)], vec![c(0)], None)],
        );
        let out = run(&stores, &sp, &count_star(), 2, 3).unwrap();
        let (s0, s1) = (&out[0].1, &out[1].1);
        assert_eq!((s0.pivot_rows, s1.pivot_rows), (4, 4));
        assert_eq!(s0.received_rows, vec![5]);
        assert_eq!(s1.received_rows, vec![5]);
        // Store 0: orders of customers 1, 2, 1; store 1: 3, 3, 1 (9 has no customer).
        assert_eq!((s0.joined_rows, s1.joined_rows), (3, 3));
        assert!(s0.built_rows.is_empty() && s0.transfer == Duration::ZERO);
        assert_eq!(
            final_rows(&count_star(), out.into_iter().map(|o| o.0).collect()),
            vec![vec![Value::BigInt(6)]]
        );
    }

    #[test]
    fn overlap_off_compares_only_once_complete() {
        let stores = shop();
        let mut sp = spec(
            input("orders", "o", vec![1, 2], None),
            vec![input("customers", "c", vec![0, 1], None)],
            vec![step(vec![c(0)], vec![c(0)], None)],
        );
        let post = project(vec![c(1), c(3)], None);
        let streamed = join_rows(&stores, &sp, &post);
        sp.overlap = false;
        assert_eq!(join_rows(&stores, &sp, &post), streamed);
        assert_eq!(streamed.len(), 6);
        // Nothing is joined while chunks arrive; all of it when the table completes.
        let mut e = JoinExec::new(&stores[0], sp.clone(), count_star()).unwrap();
        for b in build_join_table(&stores[1], &sp.join_tables[0]).unwrap() {
            e.push(0, b).unwrap();
        }
        assert_eq!(e.stats.joined_rows, 0);
        for b in build_join_table(&stores[0], &sp.join_tables[0]).unwrap() {
            e.push(0, b).unwrap();
        }
        assert_eq!(e.stats.joined_rows, 0);
        e.complete(0).unwrap();
        assert_eq!(e.stats.joined_rows, 3);
        let (out, stats) = e.finish().unwrap();
        assert_eq!(stats.joined_rows, 3);
        assert_eq!(
            final_rows(&count_star(), vec![out]),
            vec![vec![Value::BigInt(3)]]
        );
    }

    #[test]
    fn text_keys_and_group_by() {
        // SELECT c.city, count(*), sum(o.amount) FROM customers c JOIN customers d
        // ON c.city = d.city JOIN orders o ON o.cust = d.id GROUP BY c.city
        let stores = shop();
        let sp = spec(
            input("customers", "c", vec![2], None),
            vec![
                input("customers", "d", vec![0, 2], None),
                input("orders", "o", vec![1, 2], None),
            ],
            vec![
                step(vec![c(0)], vec![c(1)], None),
                step(vec![c(1)], vec![c(0)], None),
            ],
        );
        let post = aggregate(
            vec![c(0)],
            vec![AggCall::count_star(), AggCall::new(AggFunc::Sum, c(4))],
            None,
        );
        let got = join_rows(&stores, &sp, &post);
        // oslo: c in {ann, nul} x d = ann (orders 5, 1, 3) -> 6 rows, sum 18
        //       (d = nul has a NULL id: no orders).
        // rome: c in {bob, cy} x d in {bob (7), cy (2, 4)} -> 6 rows, sum 26.
        let b = Value::BigInt;
        assert_eq!(
            got,
            vec![vec![t("oslo"), b(6), b(18)], vec![t("rome"), b(6), b(26)]]
        );
        assert_eq!(got, reference(&stores, &sp, &post));
    }

    #[test]
    fn null_keys_never_match() {
        let tables = [("a", vec![col("k", DataType::Int), col("s", DataType::Text)])];
        let rows = vec![
            vec![N, N],
            vec![N, t("x")],
            vec![v(1), N],
            vec![v(1), t("x")],
        ];
        let stores = cluster(&tables, &[vec![("a", rows)]]);
        for keys in [vec![0], vec![1], vec![0, 1]] {
            let k: Vec<Expr> = keys.iter().map(|&i| c(i)).collect();
            let sp = spec(
                input("a", "l", vec![0, 1], None),
                vec![input("a", "r", vec![0, 1], None)],
                vec![step(k.clone(), k.clone(), None)],
            );
            let got = join_rows(&stores, &sp, &project(vec![], None));
            let want: Vec<Vec<Value>> = match keys.as_slice() {
                // k = 1 rows: (1, NULL), (1, 'x') -> 4 pairs.
                [0] => vec![
                    vec![v(1), N, v(1), N],
                    vec![v(1), N, v(1), t("x")],
                    vec![v(1), t("x"), v(1), N],
                    vec![v(1), t("x"), v(1), t("x")],
                ],
                // s = 'x' rows: (NULL, 'x'), (1, 'x') -> 4 pairs.
                [1] => vec![
                    vec![N, t("x"), N, t("x")],
                    vec![N, t("x"), v(1), t("x")],
                    vec![v(1), t("x"), N, t("x")],
                    vec![v(1), t("x"), v(1), t("x")],
                ],
                _ => vec![vec![v(1), t("x"), v(1), t("x")]],
            };
            assert_eq!(got, sorted(want), "keys {keys:?}");
            assert_eq!(got, reference(&stores, &sp, &project(vec![], None)));
        }
    }

    #[test]
    fn duplicate_keys_on_both_sides() {
        let tables = [(
            "a",
            vec![col("k", DataType::BigInt), col("x", DataType::Int)],
        )];
        let rows: Vec<Vec<Value>> = (0..12)
            .map(|i| vec![Value::BigInt(i % 3), v(i as i32)])
            .collect();
        let stores = cluster(&tables, &[vec![("a", rows)]]);
        let sp = spec(
            input("a", "l", vec![0, 1], None),
            vec![input("a", "r", vec![0, 1], None)],
            vec![step(vec![c(0)], vec![c(0)], None)],
        );
        // 3 keys with 4 rows each on both sides: 3 * 16 pairs.
        let got = join_rows(&stores, &sp, &project(vec![c(1), c(3)], None));
        assert_eq!(got.len(), 48);
        assert_eq!(
            got,
            reference(&stores, &sp, &project(vec![c(1), c(3)], None))
        );
        assert_eq!(
            join_rows(&stores, &sp, &count_star()),
            vec![vec![Value::BigInt(48)]]
        );
    }

    #[test]
    fn cross_join_and_zero_columns() {
        // SELECT count(*), sum(o.amount) FROM orders o, customers c (no kept columns of c).
        let stores = shop();
        let sp = spec(
            input("orders", "o", vec![2], None),
            vec![input("customers", "c", vec![], None)],
            vec![step(vec![], vec![], None)],
        );
        let post = aggregate(
            vec![],
            vec![AggCall::count_star(), AggCall::new(AggFunc::Sum, c(0))],
            None,
        );
        let b = Value::BigInt;
        assert_eq!(
            join_rows(&stores, &sp, &post),
            vec![vec![b(40), b(5 * 172)]]
        );
        assert_eq!(join_rows(&stores, &sp, &count_star()), vec![vec![b(40)]]);
        // Neither side keeps a column.
        let mut sp0 = sp.clone();
        sp0.pivot.columns.clear();
        assert_eq!(join_rows(&stores, &sp0, &count_star()), vec![vec![b(40)]]);
        let rows = join_rows(&stores, &sp0, &project(vec![], None));
        assert_eq!(rows.len(), 40);
        assert!(rows.iter().all(|r| r.is_empty()));
        // A cross product with a projection.
        let p = project(vec![c(0)], Some(c(0).gt(Expr::lit(49i64))));
        assert_eq!(
            join_rows(&stores, &sp, &p),
            sorted(
                vec![vec![b(50)]; 5]
                    .into_iter()
                    .chain(vec![vec![b(100)]; 5])
                    .collect()
            )
        );
    }

    #[test]
    fn step_filters_apply_after_their_step() {
        // orders o JOIN customers c ON o.cust = c.id AND o.amount > 2
        //          JOIN orders o2 ON o2.cust = c.id AND o2.id > o.id
        let stores = shop();
        let sp = spec(
            input("orders", "o", vec![0, 1, 2], None),
            vec![
                input("customers", "c", vec![0], None),
                input("orders", "o2", vec![0, 1], None),
            ],
            vec![
                step(vec![c(1)], vec![c(0)], Some(c(2).gt(Expr::lit(2i64)))),
                step(vec![c(3)], vec![c(1)], Some(c(4).gt(c(0)))),
            ],
        );
        let post = project(vec![c(0), c(4)], None);
        let got = join_rows(&stores, &sp, &post);
        // o with amount > 2 and a customer: 10 (cust 1), 11 (2), 16 (3), 17 (1);
        // later orders of the same customer: 10 -> 12, 17; 16 -> none; 17 -> none.
        assert_eq!(got, vec![vec![v(10), v(12)], vec![v(10), v(17)]]);
        assert_eq!(got, reference(&stores, &sp, &post));
        // A post filter and a count over the same join (no count shortcut).
        let post = aggregate(
            vec![],
            vec![AggCall::count_star()],
            Some(c(4).lt(Expr::lit(17))),
        );
        assert_eq!(join_rows(&stores, &sp, &post), vec![vec![Value::BigInt(1)]]);
    }

    #[test]
    fn zero_row_sides() {
        let stores = shop();
        let none = Some(Expr::lit(false));
        let cases = [
            (none.clone(), None),
            (None, none.clone()),
            (none.clone(), none.clone()),
        ];
        for (pf, jf) in cases {
            for k in [1, 2] {
                let mut sp = spec(
                    input("orders", "o", vec![1, 2], pf.clone()),
                    vec![input("customers", "c", vec![0, 2], jf.clone())],
                    vec![step(vec![c(0)], vec![c(0)], None)],
                );
                if k == 2 {
                    sp.join_tables.push(input("customers", "d", vec![0], None));
                    sp.steps.push(step(vec![c(2)], vec![c(0)], None));
                }
                let b = Value::BigInt;
                assert_eq!(join_rows(&stores, &sp, &count_star()), vec![vec![b(0)]]);
                let post = aggregate(
                    vec![],
                    vec![AggCall::count_star(), AggCall::new(AggFunc::Sum, c(1))],
                    None,
                );
                let out = run(&stores, &sp, &post, 3, 5).unwrap();
                assert!(out.iter().all(|o| o.0.len() == 1 && o.0[0].num_rows() == 1));
                assert_eq!(
                    final_rows(&post, out.into_iter().map(|o| o.0).collect()),
                    vec![vec![b(0), N]]
                );
                // Grouped: one state batch with no rows.
                let post = aggregate(vec![c(3)], vec![AggCall::count_star()], None);
                let out = run(&stores, &sp, &post, 3, 5).unwrap();
                assert!(out.iter().all(|o| o.0.len() == 1 && o.0[0].num_rows() == 0));
                assert!(join_rows(&stores, &sp, &project(vec![], None)).is_empty());
            }
        }
    }

    #[test]
    fn three_tables_with_early_chunks_of_the_last() {
        // a(x) JOIN b ON a.x = b.x JOIN c ON b.y = c.y JOIN d ON c.z = d.z AND a.x = d.x
        let int = |n: &str| col(n, DataType::Int);
        let tables = [
            ("a", vec![int("x")]),
            ("b", vec![int("x"), int("y")]),
            ("c", vec![int("y"), int("z")]),
            ("d", vec![int("z"), int("x"), int("w")]),
        ];
        let r = |vals: &[i32]| vals.iter().map(|&x| v(x)).collect::<Vec<_>>();
        let data = vec![
            ("a", vec![r(&[1]), r(&[2]), r(&[3]), r(&[1])]),
            (
                "b",
                vec![r(&[1, 10]), r(&[2, 20]), r(&[3, 30]), r(&[1, 11])],
            ),
            (
                "c",
                vec![r(&[10, 100]), r(&[20, 200]), r(&[11, 100]), r(&[30, 300])],
            ),
            (
                "d",
                vec![
                    r(&[100, 1, 7]),
                    r(&[200, 2, 8]),
                    r(&[200, 3, 9]),
                    r(&[100, 1, 6]),
                    r(&[300, 3, 5]),
                ],
            ),
        ];
        let stores = cluster(&tables, &[data.clone(), data]);
        let sp = spec(
            input("a", "a", vec![0], None),
            vec![
                input("b", "b", vec![0, 1], None),
                input("c", "c", vec![0, 1], None),
                input("d", "d", vec![0, 1, 2], None),
            ],
            vec![
                step(vec![c(0)], vec![c(0)], None),
                step(vec![c(2)], vec![c(0)], None),
                step(vec![c(4), c(0)], vec![c(0), c(1)], None),
            ],
        );
        let post = aggregate(vec![c(7)], vec![AggCall::count_star()], None);
        let reference_rows = reference(&stores, &sp, &post);
        // Every interleaving: the last table's chunks often come before the others
        // are complete.
        for seed in 1..40 {
            let out = run(&stores, &sp, &post, 3, seed).unwrap();
            assert_eq!(
                final_rows(&post, out.into_iter().map(|o| o.0).collect()),
                reference_rows,
                "seed {seed}"
            );
        }
        // By hand, every table twice (once per store): x = 1: 4 a x 4 b (y 10, 11)
        // x 2 c (z 100) x 2 d per w (6, 7); x = 2 (w 8) and x = 3 (w 5): 2 x 2 x 2 x 2.
        let b = Value::BigInt;
        assert_eq!(
            reference_rows,
            vec![
                vec![v(5), b(16)],
                vec![v(6), b(64)],
                vec![v(7), b(64)],
                vec![v(8), b(16)],
            ]
        );
        // Chunks of d pushed before anything else, then b and c.
        let mut e = JoinExec::new(&stores[0], sp.clone(), count_star()).unwrap();
        for b in build_join_table(&stores[1], &sp.join_tables[2]).unwrap() {
            e.push(2, b).unwrap();
        }
        for jt in 0..2 {
            for b in build_join_table(&stores[1], &sp.join_tables[jt]).unwrap() {
                e.push(jt, b).unwrap();
            }
        }
        e.complete(2).unwrap();
        e.complete(1).unwrap();
        e.complete(0).unwrap();
        let (out, stats) = e.finish().unwrap();
        // Store 0's a (1, 2, 3, 1) against store 1's b, c, d: x = 1: 2 a x 2 b x 1 c
        // x 2 d; x = 2 and x = 3: 1 each.
        assert_eq!(stats.received_rows, vec![4, 4, 5]);
        assert_eq!(stats.joined_rows, 10);
        assert_eq!(batches_to_rows(&out).unwrap(), vec![vec![b(10)]]);
    }

    #[test]
    fn float_keys_zero_and_nan() {
        let tables = [(
            "f",
            vec![col("d", DataType::Double), col("i", DataType::Int)],
        )];
        let d = Value::Double;
        let rows = vec![
            vec![d(0.0), v(1)],
            vec![d(-0.0), v(2)],
            vec![d(f64::NAN), v(3)],
            vec![d(-f64::NAN), v(4)],
            vec![d(1.5), v(5)],
            vec![N, v(6)],
        ];
        let stores = cluster(&tables, &[vec![("f", rows)]]);
        for multi in [false, true] {
            let keys = if multi { vec![c(0), c(0)] } else { vec![c(0)] };
            let sp = spec(
                input("f", "l", vec![0, 1], None),
                vec![input("f", "r", vec![0, 1], None)],
                vec![step(keys.clone(), keys, None)],
            );
            let got = join_rows(&stores, &sp, &project(vec![c(1), c(3)], None));
            let pairs: Vec<Vec<Value>> = [(1, 1), (1, 2), (2, 1), (2, 2)]
                .into_iter()
                .chain([(3, 3), (3, 4), (4, 3), (4, 4), (5, 5)])
                .map(|(a, b)| vec![v(a), v(b)])
                .collect();
            assert_eq!(got, sorted(pairs), "multi {multi}");
        }
        // INT = DOUBLE compares as DOUBLE; INT = BIGINT as BIGINT.
        let sp = spec(
            input("f", "l", vec![1], None),
            vec![input("f", "r", vec![0, 1], None)],
            vec![step(
                vec![c(0)],
                vec![c(0).binary(BinaryOp::Add, Expr::lit(1.0))],
                None,
            )],
        );
        let got = join_rows(&stores, &sp, &project(vec![c(0), c(2)], None));
        assert_eq!(got, vec![vec![v(1), v(1)], vec![v(1), v(2)]]);
        let sp = spec(
            input("f", "l", vec![1], None),
            vec![input("f", "r", vec![1], None)],
            vec![step(vec![c(0)], vec![c(0).cast(DataType::BigInt)], None)],
        );
        assert_eq!(
            join_rows(&stores, &sp, &count_star()),
            vec![vec![Value::BigInt(6)]]
        );
    }

    #[test]
    fn integer_keys_direct_and_hashed() {
        let tables = [(
            "a",
            vec![col("k", DataType::BigInt), col("x", DataType::Int)],
        )];
        let b = Value::BigInt;
        for keys in [
            vec![-5, -3, -3, 0, 7, 1000], // a small range: direct
            vec![i64::MIN, -1, 0, i64::MAX, i64::MAX, 1 << 40], // hashed
            (0..400).map(|i| i * 7919 % 5000).collect(), // many groups
        ] {
            let rows: Vec<Vec<Value>> = keys
                .iter()
                .enumerate()
                .map(|(i, &k)| vec![b(k), v(i as i32)])
                .chain([vec![N, v(-1)]])
                .collect();
            let stores = cluster(&tables, &[vec![("a", rows.clone())]]);
            // The probe side: every key, one more and one less, and NULL.
            let probe: Vec<Vec<Value>> = keys
                .iter()
                .flat_map(|&k| [k, k.wrapping_add(1), k.wrapping_sub(1)])
                .map(|k| vec![b(k), v(0)])
                .chain([vec![N, v(0)]])
                .collect();
            let mut both = stores;
            both.push(cluster(&tables, &[vec![("a", probe)]]).remove(0));
            let sp = spec(
                input("a", "l", vec![0, 1], None),
                vec![input("a", "r", vec![0], None)],
                vec![step(vec![c(0)], vec![c(0)], None)],
            );
            let post = project(vec![c(1), c(2)], None);
            assert_eq!(join_rows(&both, &sp, &post), reference(&both, &sp, &post));
            assert_eq!(
                join_rows(&both, &sp, &count_star()),
                reference(&both, &sp, &count_star())
            );
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let stores = shop();
        let sp = spec(
            input("orders", "o", vec![1], None),
            vec![input("customers", "c", vec![0, 1], None)],
            vec![step(vec![c(0)], vec![c(0)], None)],
        );
        let mut e = JoinExec::new(&stores[0], sp.clone(), count_star()).unwrap();
        let good = build_join_table(&stores[1], &sp.join_tables[0]).unwrap();
        let wrong_types =
            build_join_table(&stores[1], &input("customers", "c", vec![1, 0], None)).unwrap();
        let wrong_count =
            build_join_table(&stores[1], &input("customers", "c", vec![0], None)).unwrap();
        assert!(matches!(
            e.push(0, wrong_types[0].clone()),
            Err(Error::TypeMismatch(_))
        ));
        assert!(matches!(
            e.push(0, wrong_count[0].clone()),
            Err(Error::TypeMismatch(_))
        ));
        assert!(e.push(1, good[0].clone()).is_err());
        assert!(e.complete(1).is_err());
        e.push(0, good[0].clone()).unwrap();
        e.complete(0).unwrap();
        assert!(e.push(0, good[0].clone()).is_err());
        assert!(e.complete(0).is_err());
        e.finish().unwrap();
        // finish before complete.
        let e = JoinExec::new(&stores[0], sp.clone(), count_star()).unwrap();
        assert!(e.finish().is_err());
        // Bad specs.
        let mut bad = sp.clone();
        bad.pivot.table = "nope".into();
        assert!(matches!(
            JoinExec::new(&stores[0], bad, count_star()),
            Err(Error::UnknownTable(_))
        ));
        let mut bad = sp.clone();
        bad.steps[0].right_keys = vec![c(1)]; // INT = TEXT
        assert!(matches!(
            JoinExec::new(&stores[0], bad, count_star()),
            Err(Error::TypeMismatch(_))
        ));
        let mut bad = sp.clone();
        bad.steps[0].filter = Some(c(0));
        assert!(JoinExec::new(&stores[0], bad, count_star()).is_err());
        let mut bad = sp.clone();
        bad.steps.clear();
        assert!(JoinExec::new(&stores[0], bad, count_star()).is_err());
        let mut bad = sp.clone();
        bad.steps[0].left_keys = vec![c(7)];
        assert!(JoinExec::new(&stores[0], bad, count_star()).is_err());
        // Evaluation errors surface from push.
        let mut div = sp.clone();
        div.steps[0].right_keys = vec![c(0).binary(BinaryOp::Div, Expr::lit(0))];
        let mut e = JoinExec::new(&stores[0], div, count_star()).unwrap();
        assert!(matches!(
            e.push(0, good[0].clone()),
            Err(Error::DivisionByZero)
        ));
    }

    #[test]
    fn join_exec_is_send() {
        fn send<T: Send>() {}
        send::<JoinExec>();
    }

    #[test]
    fn kept_chunks_do_not_hold_pushed_buffers() {
        let stores = shop();
        let sp = spec(
            input("orders", "o", vec![1], None),
            vec![
                input("customers", "c", vec![0, 1], None),
                input("customers", "d", vec![0, 1], None),
            ],
            vec![
                step(vec![c(0)], vec![c(0)], None),
                step(vec![c(1)], vec![c(0)], None),
            ],
        );
        let mut e = JoinExec::new(&stores[0], sp.clone(), project(vec![c(2)], None)).unwrap();
        let chunk = deep_copy(
            &e.jt_schema[0],
            &build_join_table(&stores[1], &sp.join_tables[0]).unwrap()[0],
        )
        .unwrap();
        let buffers = |b: &RecordBatch| -> Vec<usize> {
            b.columns()
                .iter()
                .flat_map(|a| {
                    let d = a.to_data();
                    d.buffers()
                        .iter()
                        .map(|b| b.strong_count())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let before = buffers(&chunk);
        e.push(0, chunk.clone()).unwrap(); // collected
        e.push(1, chunk.clone()).unwrap(); // queued
        assert_eq!(buffers(&chunk), before);
        e.complete(0).unwrap();
        e.push(1, chunk.clone()).unwrap(); // streamed
        e.complete(1).unwrap();
        let (out, _) = e.finish().unwrap();
        assert_eq!(buffers(&chunk), before);
        drop(out);
    }

    // ------------------------------------------------------------ random

    const RAND_COLS: usize = 6;

    fn random_tables(rng: &mut Rng, stores: usize) -> Vec<Store> {
        let cols = vec![
            col("i", DataType::Int),
            col("b", DataType::BigInt),
            col("s", DataType::Text),
            col("d", DataType::Double),
            col("t", DataType::Boolean),
            col("dt", DataType::Date),
        ];
        let names = ["t0", "t1", "t2", "t3"];
        let tables: Vec<(&str, Vec<ColumnDef>)> =
            names.iter().map(|n| (*n, cols.clone())).collect();
        let texts = ["a", "b", "", "é", "bb"];
        let scale = [1, -3_000_000_000_000, i64::MAX / 4][rng.below(3)];
        let doubles = [0.0, -0.0, 1.5, f64::NAN, -2.0];
        let value = |rng: &mut Rng, c: usize| -> Value {
            if rng.chance(12) {
                return N;
            }
            match c {
                0 => v(rng.below(5) as i32),
                // Sometimes spread out: hashed rather than directly addressed.
                1 => Value::BigInt(rng.below(5) as i64 * scale),
                2 => t(texts[rng.below(texts.len())]),
                3 => Value::Double(doubles[rng.below(doubles.len())]),
                4 => Value::Bool(rng.chance(50)),
                _ => Value::Date(rng.below(4) as i32),
            }
        };
        let parts: Vec<Vec<TableRows>> = (0..stores)
            .map(|_| {
                names
                    .iter()
                    .map(|n| {
                        let rows = if rng.chance(10) { 0 } else { rng.below(14) };
                        let rows = (0..rows)
                            .map(|_| (0..RAND_COLS).map(|c| value(rng, c)).collect())
                            .collect();
                        (*n, rows)
                    })
                    .collect()
            })
            .collect();
        cluster(&tables, &parts)
    }

    fn random_spec(rng: &mut Rng) -> (JoinSpec, Fragment) {
        let k = 1 + rng.below(3);
        let all: Vec<usize> = (0..RAND_COLS).collect();
        let table = |rng: &mut Rng| format!("t{}", rng.below(4));
        let filter = |rng: &mut Rng| -> Option<Expr> {
            rng.chance(30)
                .then(|| c(0).gt(Expr::lit(rng.below(3) as i32)).or(c(4)))
        };
        let pivot = input(&table(rng), "p", all.clone(), filter(rng));
        let mut jts = Vec::new();
        let mut steps = Vec::new();
        for i in 0..k {
            jts.push(input(
                &table(rng),
                &format!("j{i}"),
                all.clone(),
                filter(rng),
            ));
            // A key column from a random earlier input, matched to the same (or a
            // comparable) column of this table.
            let base = RAND_COLS * rng.below(i + 1);
            let key = |rng: &mut Rng| -> (Expr, Expr) {
                match rng.below(9) {
                    0 => (c(base), c(0)),
                    1 => (c(base), c(1)),     // INT = BIGINT
                    2 => (c(base + 1), c(1)), // BIGINT
                    3 => (c(base + 2), c(2)), // TEXT
                    4 => (c(base + 3), c(3)), // DOUBLE
                    5 => (c(base + 4), c(4)), // BOOLEAN
                    6 => (c(base + 5), c(5)), // DATE
                    7 => (c(base + 3), c(0)), // DOUBLE = INT
                    _ => (c(base).binary(BinaryOp::Add, Expr::lit(1)), c(1)),
                }
            };
            let nkeys = [0, 1, 1, 1, 1, 2, 2, 3][rng.below(8)];
            let (l, r): (Vec<Expr>, Vec<Expr>) = (0..nkeys).map(|_| key(rng)).unzip();
            let width = RAND_COLS * (i + 2);
            let sf = rng.chance(25).then(|| {
                c(rng.below(width))
                    .is_null()
                    .or(c(width - RAND_COLS).lt_eq_i(c(rng.below(i + 1) * RAND_COLS)))
            });
            steps.push(step(l, r, sf));
        }
        let width = RAND_COLS * (k + 1);
        let post_filter = rng.chance(25).then(|| c(rng.below(width)).is_null().not_());
        let post = match rng.below(5) {
            0 => project(vec![], post_filter),
            1 => project(
                vec![
                    c(RAND_COLS * k + 2),
                    c(0).binary(BinaryOp::Add, c(RAND_COLS * k)),
                    c(3),
                ],
                post_filter,
            ),
            2 => count_star(),
            3 => aggregate(vec![], vec![AggCall::count_star()], post_filter),
            _ => aggregate(
                vec![c(2), c(RAND_COLS * k + 4)],
                vec![
                    AggCall::count_star(),
                    AggCall::new(AggFunc::Sum, c(RAND_COLS * k)),
                    AggCall::new(AggFunc::Max, c(RAND_COLS * k + 1)),
                    AggCall::new(AggFunc::Min, c(RAND_COLS * k + 2)),
                    AggCall::new(AggFunc::Count, c(5)),
                ],
                post_filter,
            ),
        };
        (spec(pivot, jts, steps), post)
    }

    trait ExprExt {
        fn lt_eq_i(self, o: Expr) -> Expr;
        fn not_(self) -> Expr;
    }
    impl ExprExt for Expr {
        fn lt_eq_i(self, o: Expr) -> Expr {
            self.binary(BinaryOp::LtEq, o)
        }
        fn not_(self) -> Expr {
            !self
        }
    }

    #[test]
    fn random_joins_match_nested_loops() {
        random_cases(0x5EED_1234_ABCD_0001, 200);
    }

    #[test]
    fn random_joins_with_colliding_hashes() {
        WEAK_HASH.with(|w| w.set(true));
        random_cases(0xC011_1DE5, 100);
        WEAK_HASH.with(|w| w.set(false));
    }

    /// `cases` random joins on random data (1 or 2 stores), checked against
    /// [`reference`].
    fn random_cases(seed: u64, cases: usize) {
        let mut rng = Rng(seed);
        let mut nonempty = 0;
        for case in 0..cases {
            let nstores = 1 + rng.below(2);
            let stores = random_tables(&mut rng, nstores);
            let (sp, post) = random_spec(&mut rng);
            let want = reference(&stores, &sp, &post);
            if !want.is_empty() && format!("{want:?}") != "[[BigInt(0)]]" {
                nonempty += 1;
            }
            let seed = rng.next();
            let chunk = 1 + rng.below(8);
            let out = run(&stores, &sp, &post, chunk, seed)
                .unwrap_or_else(|e| panic!("case {case}: {e}\n{sp:?}\n{post:?}"));
            let got = final_rows(&post, out.into_iter().map(|o| o.0).collect());
            // Debug strings: NaN is not equal to itself as a Value.
            assert_eq!(
                format!("{got:?}"),
                format!("{want:?}"),
                "case {case}\n{sp:?}\n{post:?}"
            );
        }
        assert!(nonempty > cases / 4, "only {nonempty} cases produced rows");
    }

    // ------------------------------------------------------------ performance

    /// `cargo test -p smrdb-tstore --release -- --ignored --nocapture join_perf`
    #[test]
    #[ignore]
    fn join_perf() {
        use std::time::Instant;
        let mut rng = Rng(42);
        // Hash / probe micro benchmark: 500k build rows (~400k distinct keys), probe
        // 100k keys (about half match).
        let n = 500_000;
        let build: Vec<u64> = (0..n).map(|_| rng.next() % 400_000).collect();
        let probe: Vec<u64> = (0..100_000).map(|_| rng.next() % 800_000).collect();
        let keys = |name: &str, vals: &[u64]| -> (KeySpec, KeyData) {
            let (t, a): (DataType, ArrayRef) = match name {
                "dense BIGINT" => (
                    DataType::BigInt,
                    Arc::new(Int64Array::from_iter_values(vals.iter().map(|&k| k as i64))),
                ),
                "sparse BIGINT" => (
                    DataType::BigInt,
                    Arc::new(Int64Array::from_iter_values(
                        vals.iter()
                            .map(|&k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15) as i64),
                    )),
                ),
                _ => (
                    DataType::Text,
                    Arc::new(StringArray::from_iter_values(
                        vals.iter().map(|k| format!("customer-{k}")),
                    )),
                ),
            };
            let mut types = vec![t];
            let mut arrays = vec![a];
            if name == "(INT, TEXT)" {
                types.insert(0, DataType::Int);
                arrays.insert(
                    0,
                    Arc::new(arrow_array::Int32Array::from_iter_values(
                        vals.iter().map(|&k| (k % 7) as i32),
                    )),
                );
            }
            let schema = TableSchema::new(types.iter().map(|&t| col("k", t)).collect());
            let exprs: Vec<Expr> = (0..types.len()).map(c).collect();
            let spec = KeySpec::new(&exprs, &exprs, &schema, &schema).unwrap();
            let b = with_rows(schema.to_arrow(), arrays, vals.len()).unwrap();
            let data = spec.eval(&exprs, &b).unwrap();
            (spec, data)
        };
        for name in ["dense BIGINT", "sparse BIGINT", "TEXT", "(INT, TEXT)"] {
            let (_, bk) = keys(name, &build);
            let (_, pk) = keys(name, &probe);
            let t0 = Instant::now();
            let table = HashTable::build(bk, true).unwrap();
            let t_build = t0.elapsed();
            let t0 = Instant::now();
            let mut total = 0;
            for _ in 0..10 {
                total += table.count(&pk);
            }
            let t_count = t0.elapsed() / 10;
            let mut gids = Vec::new();
            let t0 = Instant::now();
            let mut pairs = 0;
            for _ in 0..10 {
                table.lookup(&pk, &mut gids);
                table
                    .emit(&gids, JOIN_BATCH, |b, _| {
                        pairs += b.len();
                        Ok(())
                    })
                    .unwrap();
            }
            let t_pairs = t0.elapsed() / 10;
            println!(
                "{name}: hash {n} rows {t_build:?}; probe 100k keys: count {t_count:?} \
                 ({} matches), lookup + pairs {t_pairs:?}",
                total / 10
            );
            assert_eq!(pairs as u64, total);
        }

        // The benchmark query on one of 2 Tstores: purchases (5M here, month 1..12)
        // is the pivot, customers (1M in all, half new) the streamed join table.
        // SELECT count(*) FROM purchases p JOIN customers c ON p.cust_id = c.cust_id
        // WHERE c.is_new AND p.month = 7
        let mut store = Store::in_memory();
        store
            .create_table(
                "purchases",
                TableSchema::new(vec![
                    col("cust_id", DataType::BigInt),
                    col("month", DataType::Int),
                    col("amount", DataType::Double),
                ]),
            )
            .unwrap();
        store
            .create_table(
                "customers",
                TableSchema::new(vec![
                    col("cust_id", DataType::BigInt),
                    col("is_new", DataType::Boolean),
                    col("region", DataType::Text),
                ]),
            )
            .unwrap();
        let t0 = Instant::now();
        for _ in 0..50 {
            let rows = (0..100_000)
                .map(|_| {
                    vec![
                        Value::BigInt((rng.next() % 1_000_000) as i64),
                        v(1 + rng.below(12) as i32),
                        Value::Double(rng.below(10_000) as f64 / 100.0),
                    ]
                })
                .collect();
            store.insert("purchases", rows).unwrap();
        }
        let regions = ["north", "south", "east", "west"];
        for part in 0..10 {
            let rows = (0..100_000)
                .map(|i| {
                    vec![
                        Value::BigInt(part * 100_000 + i),
                        Value::Bool(rng.chance(50)),
                        t(regions[rng.below(4)]),
                    ]
                })
                .collect();
            store.insert("customers", rows).unwrap();
        }
        println!("load: {:?}", t0.elapsed());
        let sp = spec(
            input("purchases", "p", vec![0, 2], Some(c(1).eq(Expr::lit(7)))),
            vec![input("customers", "c", vec![0, 2], Some(c(1)))],
            vec![step(vec![c(0)], vec![c(0)], None)],
        );
        {
            let slice = store.table("purchases").unwrap();
            let t0 = Instant::now();
            let scanned = scan(slice, sp.pivot.filter.as_ref(), &[0]).unwrap();
            let t_scan = t0.elapsed();
            let t0 = Instant::now();
            let parts: Vec<&dyn Array> = scanned.iter().map(|b| b.column(0).as_ref()).collect();
            let cat = arrow_select::concat::concat(&parts).unwrap();
            let t_cat = t0.elapsed();
            let t0 = Instant::now();
            let table = HashTable::build(
                KeyData::Int(cat.as_primitive::<Int64Type>().values().clone(), None),
                false,
            )
            .unwrap();
            let t_hash = t0.elapsed();
            println!(
                "pivot breakdown: scan {t_scan:?}, concat {t_cat:?}, hash {t_hash:?} ({} rows)",
                table.offsets.last().unwrap_or(&0)
            );
        }
        let t0 = Instant::now();
        let chunks = build_join_table(&store, &sp.join_tables[0]).unwrap();
        let t_jt = t0.elapsed();
        let jt_rows: usize = chunks.iter().map(|b| b.num_rows()).sum();
        let posts = [
            ("count(*)", count_star()),
            (
                "count(*), sum(p.amount) GROUP BY c.region",
                aggregate(
                    vec![c(3)],
                    vec![AggCall::count_star(), AggCall::new(AggFunc::Sum, c(1))],
                    None,
                ),
            ),
            (
                "count(*) WHERE p.amount > 50 (materialised)",
                aggregate(
                    vec![],
                    vec![AggCall::count_star()],
                    Some(c(1).gt(Expr::lit(50.0))),
                ),
            ),
        ];
        for (name, post) in posts {
            let t0 = Instant::now();
            let mut e = JoinExec::new(&store, sp.clone(), post.clone()).unwrap();
            let t_new = t0.elapsed();
            let t1 = Instant::now();
            for b in &chunks {
                e.push(0, b.clone()).unwrap();
            }
            e.complete(0).unwrap();
            let (out, stats) = e.finish().unwrap();
            let t_probe = t1.elapsed();
            let res = post
                .partial_agg
                .as_ref()
                .unwrap()
                .merge_finalize(&out)
                .unwrap();
            println!(
                "{name}: pivot {} rows in {t_new:?} (stats.pivot {:?}); probe {jt_rows} rows \
                 in {t_probe:?} (stats.compare {:?}); joined {}; result rows {}",
                stats.pivot_rows,
                stats.pivot,
                stats.compare,
                stats.joined_rows,
                res.num_rows()
            );
        }
        println!("build join table (scan, filter, project): {t_jt:?}");
    }
}
