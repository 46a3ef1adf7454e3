//! # smrdb-harness: experiments and reports
//!
//! The library behind `smrdb-bench`. Each experiment is a module with an `Options`
//! struct, a `run` function returning a serialisable report, and a Markdown rendering.

#![deny(missing_docs)]

pub mod broadcast_bench;
pub mod load_bench;
pub mod query_bench;
pub mod transport_bench;
