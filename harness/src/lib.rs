//! # smrdb-harness: experiments and reports
//!
//! The library behind `smrdb-bench`. Each experiment is a module with an `Options`
//! struct, a `run` function returning a serialisable report, and a Markdown rendering.

#![deny(missing_docs)]

pub mod broadcast_bench;
pub mod cluster;
pub mod load_bench;
pub mod measure;
pub mod paper;
pub mod plot;
pub mod progress;
pub mod query_bench;
pub mod report;
pub mod tpch_bench;
pub mod transport_bench;
pub mod workload;
