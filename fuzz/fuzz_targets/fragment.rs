//! Fuzz target `fragment`: what a Tstore does with the datafusion-proto and postcard
//! bytes the primary sends it, before anything runs: the `fragment` of a `Stages`
//! request (`node/src/worker.rs`, `start_task`: `Fragment::decode`, which validates,
//! then every stage's plan through `codec::plan_from_bytes` in the task's context), a
//! stage's plan bytes on their own, and an UPDATE or DELETE expression
//! (`codec::expr_from_bytes`, as `Store::decode_exprs` reads it).
//!
//! Input layout:
//!
//! ```text
//! byte 0  bits 0-1: what the rest is: 0 a fragment, 1 one stage's plan, 2 an
//!         expression over a table of every column type (the seeds' `t`,
//!         `common/seed_table.rs`), 3 each of the three
//!         bit 7: plans are decoded in a task context with (empty) `TaskInputs`, as a
//!         Tstore's; else in one without (`task_context(None)`)
//! rest    the bytes
//! ```
//!
//! Oracles: no panic in our code, and none escaping the codec's catch (datafusion-proto
//! panics on some malformed input; `plan_from_bytes` turns that into an error, see
//! `common/panics.rs`); a decoded fragment re-encodes and decodes to an equal value; a
//! decoded plan or expression that re-encodes (`plan_to_bytes`, `expr_to_bytes`)
//! decodes again.
#![no_main]

#[path = "common/panics.rs"]
mod panics;
#[path = "common/seed_table.rs"]
mod seed_table;

use std::sync::{Arc, OnceLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use libfuzzer_sys::fuzz_target;
use smrdb_tstore::exec::fragment::Fragment;
use smrdb_tstore::exec::{codec, task_context, TaskInputs};

/// The table UPDATE and DELETE expressions are decoded over (the seeds' `t`).
fn schema() -> &'static SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| seed_table::seed_table().to_arrow())
}

/// The two task contexts (built once: every function registered).
fn contexts() -> &'static [Arc<TaskContext>; 2] {
    static C: OnceLock<[Arc<TaskContext>; 2]> = OnceLock::new();
    C.get_or_init(|| {
        [
            task_context(None),
            task_context(Some(Arc::new(TaskInputs::new()))),
        ]
    })
}

/// A stage's plan as the Tstore decodes it; one that decodes and re-encodes must
/// decode again (the primary encodes what Tstores decode).
fn plan(bytes: &[u8], ctx: &TaskContext) {
    let Ok(p) = codec::plan_from_bytes(bytes, ctx) else {
        return;
    };
    if let Ok(again) = codec::plan_to_bytes(p.clone()) {
        if let Err(e) = codec::plan_from_bytes(&again, ctx) {
            panic!(
                "a decoded plan re-encodes but does not decode: {e}\n{}",
                datafusion::physical_plan::displayable(p.as_ref()).indent(true)
            );
        }
    }
}

fn expression(bytes: &[u8]) {
    let Ok(e) = codec::expr_from_bytes(bytes, schema()) else {
        return;
    };
    if let Ok(again) = codec::expr_to_bytes(&e) {
        if let Err(err) = codec::expr_from_bytes(&again, schema()) {
            panic!("a decoded expression {e} re-encodes but does not decode: {err}");
        }
    }
}

fn fragment(bytes: &[u8], ctx: &TaskContext) {
    let Ok(f) = Fragment::decode(bytes) else {
        return;
    };
    let again = f.encode().expect("a decoded fragment encodes");
    let f2 = Fragment::decode(&again).expect("a re-encoded fragment decodes");
    assert_eq!(f, f2, "decode/encode changed the fragment");
    for s in &f.stages {
        plan(&s.plan, ctx);
    }
}

fuzz_target!(
    init: panics::install(),
    |data: &[u8]| {
        let Some((&sel, rest)) = data.split_first() else {
            return;
        };
        let ctx = &contexts()[usize::from(sel >> 7)];
        match sel & 3 {
            0 => fragment(rest, ctx),
            1 => plan(rest, ctx),
            2 => expression(rest),
            _ => {
                fragment(rest, ctx);
                plan(rest, ctx);
                expression(rest);
            }
        }
    }
);
