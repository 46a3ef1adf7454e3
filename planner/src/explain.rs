//! EXPLAIN: a distributed plan in readable lines — the decisions (pivots and why,
//! where hash tables are built), every exchange with its kind and estimated size and
//! bytes per node pair, and every stage's DataFusion operators; with ANALYZE, the
//! rows and time each operator measured (summed over the Tstores) and the bytes each
//! exchange and each node pair moved.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::physical_plan::{displayable, ExecutionPlan};
use smrdb_tstore::exec::fragment::{ExchangeKind, Place};

use crate::distribute::{human_bytes, Broadcast, DistPlan, Exchange};

/// What one operator measured (summed over every place that ran it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperatorMetrics {
    /// Rows it produced.
    pub rows: u64,
    /// CPU time it reported (DataFusion's `elapsed_compute`), summed.
    pub compute_ns: u64,
}

/// The operators of `plan` in display (pre-)order, with what each measured.
pub fn plan_metrics(plan: &Arc<dyn ExecutionPlan>) -> Vec<OperatorMetrics> {
    let mut out = Vec::new();
    fn walk(p: &Arc<dyn ExecutionPlan>, out: &mut Vec<OperatorMetrics>) {
        let m = p.metrics();
        out.push(OperatorMetrics {
            rows: m.as_ref().and_then(|m| m.output_rows()).unwrap_or(0) as u64,
            compute_ns: m.as_ref().and_then(|m| m.elapsed_compute()).unwrap_or(0) as u64,
        });
        for c in p.children() {
            walk(c, out);
        }
    }
    walk(plan, &mut out);
    out
}

/// What EXPLAIN ANALYZE measured.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Per stage: its operators' metrics in display order (summed over Tstores).
    pub stages: BTreeMap<u16, Vec<OperatorMetrics>>,
    /// Per exchange: (rows, bytes, chunks) its producers sent.
    pub exchanges: BTreeMap<u16, (u64, u64, u64)>,
    /// Per node pair (from, to): bytes the routers counted for the query.
    pub node_pairs: BTreeMap<(u32, u32), u64>,
    /// The statement's time end to end.
    pub total: Duration,
}

fn est(x: &Exchange) -> String {
    match (x.est_rows, x.est_bytes) {
        (Some(r), Some(b)) => format!("~{r} rows, ~{}", human_bytes(b as u64)),
        _ => "size unknown".into(),
    }
}

/// Expected bytes that cross each node pair for exchange `x`, when its size is known:
/// (description, bytes per pair).
fn per_pair(plan: &DistPlan, x: &Exchange) -> Option<(String, u64)> {
    let o = &plan.options;
    let b = x.est_bytes? as u64;
    let n = o.nodes.max(1) as u64;
    if n == 1 {
        return Some(("nothing crosses the network (one node)".into(), 0));
    }
    let copies = match o.broadcast {
        Broadcast::PerNode => 1,
        Broadcast::PerTstore => o.tstores_per_node as u64,
    };
    Some(match (x.kind, x.from) {
        (ExchangeKind::Broadcast, Place::Tstores) => (
            format!(
                "each node's share to every other node{}",
                if copies > 1 {
                    format!(", {copies} copies (one per remote Tstore)")
                } else {
                    ", one copy per node".into()
                }
            ),
            b / n * copies,
        ),
        (ExchangeKind::Broadcast, Place::Primary) => (
            format!(
                "from the primary to every other node{}",
                if copies > 1 {
                    format!(", {copies} copies")
                } else {
                    ", one copy per node".into()
                }
            ),
            b * copies,
        ),
        (ExchangeKind::Gather, _) => ("each other node's share to the primary".into(), b / n),
    })
}

fn stage_lines(
    out: &mut Vec<String>,
    plan: &Arc<dyn ExecutionPlan>,
    metrics: Option<&Vec<OperatorMetrics>>,
) {
    let text = displayable(plan.as_ref()).indent(true).to_string();
    for (i, line) in text.lines().enumerate() {
        match metrics.and_then(|m| m.get(i)) {
            Some(m) => out.push(format!(
                "    {line}  [rows={}, time={:.3} ms]",
                m.rows,
                m.compute_ns as f64 / 1e6
            )),
            None => out.push(format!("    {line}")),
        }
    }
}

/// EXPLAIN [ANALYZE] of a distributed plan; `subqueries` are the plans of the scalar
/// subqueries that run first.
pub fn explain_lines(
    plan: &DistPlan,
    subqueries: &[DistPlan],
    analysis: Option<&Analysis>,
) -> Vec<String> {
    let o = &plan.options;
    let mut out = vec![format!(
        "Distributed plan: {} node{} x {} Tstore{}, broadcast {}",
        o.nodes,
        if o.nodes == 1 { "" } else { "s" },
        o.tstores_per_node,
        if o.tstores_per_node == 1 { "" } else { "s" },
        match o.broadcast {
            Broadcast::PerNode => "one copy per node (shared memory router)",
            Broadcast::PerTstore => "one copy per remote Tstore (naive router)",
        }
    )];
    for (i, s) in subqueries.iter().enumerate() {
        out.push(format!(
            "Scalar subquery ${} runs first; its value is sent with the plan:",
            i + 1
        ));
        for l in explain_lines(s, &[], None).into_iter().skip(1) {
            out.push(format!("  {l}"));
        }
    }
    if !plan.decisions.is_empty() {
        out.push("Decisions:".into());
        for d in &plan.decisions {
            out.push(format!("  - {d}"));
        }
    }
    if !plan.exchanges.is_empty() {
        out.push("Exchanges:".into());
    }
    for x in &plan.exchanges {
        let route = match (x.kind, x.from) {
            (ExchangeKind::Broadcast, Place::Tstores) => "broadcast, every Tstore to every Tstore",
            (ExchangeKind::Broadcast, Place::Primary) => "broadcast, the primary to every Tstore",
            (ExchangeKind::Gather, _) => {
                if x.sorted_streams {
                    "gather, sorted streams merged on the primary"
                } else {
                    "gather, every Tstore to the primary"
                }
            }
        };
        out.push(format!("  #{} {route}: {} ({})", x.id, x.why, est(x)));
        if let Some((what, b)) = per_pair(plan, x) {
            out.push(format!(
                "     expected per node pair: {} ({what})",
                human_bytes(b)
            ));
        }
        if x.wait_complete {
            out.push("     consumers wait until it is complete (smrdb.overlap = off)".into());
        }
        if let Some((rows, bytes, chunks)) = analysis.and_then(|a| a.exchanges.get(&x.id)) {
            out.push(format!(
                "     measured: {rows} rows, {} in {chunks} chunks",
                human_bytes(*bytes)
            ));
        }
    }
    for s in &plan.stages {
        let place = match s.place {
            Place::Tstores => "every Tstore",
            Place::Primary => "the primary",
        };
        let to = match s.output {
            Some(x) => format!(
                "exchange #{x} ({})",
                plan.exchange(x).map(|x| x.kind.name()).unwrap_or("?")
            ),
            None => "the result".into(),
        };
        out.push(format!("Stage {} on {place} -> {to}:", s.id));
        stage_lines(
            &mut out,
            &s.plan,
            analysis.and_then(|a| a.stages.get(&s.id)),
        );
    }
    if let Some(a) = analysis {
        if !a.node_pairs.is_empty() {
            out.push("Bytes per node pair (measured by the routers):".into());
            for ((from, to), b) in &a.node_pairs {
                out.push(format!("  node {from} -> node {to}: {}", human_bytes(*b)));
            }
        }
        out.push(format!(
            "Execution time: {:.3} ms",
            a.total.as_secs_f64() * 1e3
        ));
    }
    out
}
