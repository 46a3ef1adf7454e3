//! Multi-set queries on the primary: send the join to every Tstore, gather the
//! intermediate results, post-process; EXPLAIN [ANALYZE]; the router system table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use smrdb_planner::{Broadcast, QueryPlan};
use smrdb_router::{Mode, PeerStats};
use smrdb_tstore::{decode_batches, ColumnDef, DataType, JoinStats, TableSchema, Value};

use crate::dispatch::Target;
use crate::engine::{is_system_table, rows_to_batch, Engine, GatherLimit, Output};
use crate::error::{resource_hint, Error, Result};
use crate::proto::{Reply, Request};

/// What one run of a multi-set query measured.
#[derive(Debug, Clone, Default)]
pub struct JoinRun {
    /// Per Tstore: its node and what it measured.
    pub stats: Vec<(u32, u32, JoinStats)>,
    /// From sending the request to the last reply.
    pub distributed: Duration,
    /// Decoding the gathered results and post-processing them.
    pub post: Duration,
    /// Rows gathered (intermediate results) and their IPC bytes.
    pub gathered_rows: u64,
    /// Bytes of intermediate results.
    pub gathered_bytes: u64,
}

/// The error to report from a join's replies: a Tstore's own failure rather than the
/// echo ("join aborted: ...") other Tstores answer with. A Tstore's failure for lack of
/// common memory gets the hint of which setting raises it ([`resource_hint`]).
fn join_error(replies: &[(u32, Reply)]) -> Result<()> {
    let mut echo = None;
    for (_, r) in replies {
        if let Reply::Error { sqlstate, message } = r {
            if message.starts_with("join aborted") {
                echo.get_or_insert((sqlstate, message));
            } else {
                return Err(Error::sql(sqlstate, resource_hint(message)));
            }
        }
    }
    match echo {
        Some((s, m)) => Err(Error::sql(s, m.clone())),
        None => Ok(()),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

impl Engine {
    /// Runs a multi-set query: every Tstore builds its join tables, exchanges them
    /// through the routers and compares its pivot slice with all of them; the primary
    /// gathers and post-processes.
    ///
    /// # Errors
    /// Unknown or system tables, Tstore errors, lost nodes, timeouts; 53200 when the
    /// intermediate results exceed `limit` (checked before any of them is decoded).
    pub fn join_query(&self, q: &QueryPlan, limit: GatherLimit) -> Result<(RecordBatch, JoinRun)> {
        let Some(spec) = &q.join else {
            return Err(Error::Protocol("join_query without a join".into()));
        };
        for t in std::iter::once(&spec.pivot).chain(&spec.join_tables) {
            if is_system_table(&t.table) {
                return Err(Error::sql(
                    "0A000",
                    format!("system table \"{}\" cannot take part in a join", t.table),
                ));
            }
            self.schema_of(&t.table)?;
        }
        let timeout = self
            .dispatcher()
            .timeout()
            .saturating_sub(Duration::from_secs(2))
            .max(Duration::from_secs(1));
        let t0 = Instant::now();
        let replies = self.dispatcher().call_gathering(
            Target::All,
            Request::Join {
                spec: spec.clone(),
                post: q.fragment.clone(),
                timeout_ms: timeout.as_millis() as u64,
            },
            limit,
        )?;
        let distributed = t0.elapsed();
        // The limit was checked as the replies arrived (Dispatcher::call_gathering).
        join_error(&replies)?;
        let t1 = Instant::now();
        let mut run = JoinRun {
            distributed,
            ..JoinRun::default()
        };
        let mut batches = Vec::new();
        for (t, reply) in replies {
            match reply {
                Reply::Join { ipc, stats } => {
                    run.gathered_bytes += ipc.len() as u64;
                    let b = decode_batches(&ipc)?;
                    run.gathered_rows += b.iter().map(|b| b.num_rows() as u64).sum::<u64>();
                    batches.extend(b);
                    let node = self.dispatcher().node_of(t).unwrap_or(0);
                    run.stats.push((t, node, stats));
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "tstore {t} answered a join with {other:?}"
                    )))
                }
            }
        }
        let out = q.finish.apply(batches)?;
        run.post = t1.elapsed();
        Ok((out, run))
    }

    /// The rows of [`crate::engine::ROUTER_TABLE`]: every node's router counters per
    /// remote peer (reported by the node's first Tstore).
    ///
    /// # Errors
    /// Dispatch errors.
    pub fn router_rows(&self) -> Result<Vec<Vec<Value>>> {
        Ok(self
            .router_stats()?
            .into_iter()
            .flat_map(|(node, peers)| {
                peers.into_iter().map(move |p| {
                    let b = |x: u64| Value::BigInt(x as i64);
                    vec![
                        Value::Int(node as i32),
                        Value::Int(p.node as i32),
                        b(p.bytes_written),
                        b(p.writes),
                        b(p.messages_sent),
                        b(p.messages_received),
                        b(p.bytes_received),
                        b(p.stalls),
                        b(p.refused),
                        b(p.reconnects),
                    ]
                })
            })
            .collect())
    }

    /// Every node's router counters, by node id.
    fn router_stats(&self) -> Result<BTreeMap<u32, Vec<PeerStats>>> {
        let r = self.dispatcher().call(Target::All, Request::Stats)?;
        crate::dispatch::first_error(&r)?;
        let mut out = BTreeMap::new();
        for (t, reply) in r {
            let Reply::Stats { router, .. } = reply else {
                return Err(Error::Protocol(format!(
                    "tstore {t} answered stats with {reply:?}"
                )));
            };
            let node = self.dispatcher().node_of(t).unwrap_or(0);
            out.entry(node).or_insert(router);
        }
        Ok(out)
    }

    /// `EXPLAIN [ANALYZE]`: the distributed plan, and with ANALYZE what one run did.
    ///
    /// # Errors
    /// As running the query.
    pub fn explain(&self, q: &QueryPlan, analyze: bool, limit: GatherLimit) -> Result<Output> {
        let mut lines = smrdb_planner::explain_lines_for(q, self.broadcast());
        if analyze {
            lines.push(String::new());
            if q.join.is_some() {
                self.analyze_join(q, &mut lines, limit)?;
            } else {
                let t0 = Instant::now();
                let b = self.query(q, limit)?;
                lines.push(format!(
                    "Execution: {} rows in {}",
                    b.num_rows(),
                    ms(t0.elapsed())
                ));
            }
        }
        let schema = TableSchema::new(vec![ColumnDef::new("QUERY PLAN", DataType::Text, false)]);
        let rows: Vec<Vec<Value>> = lines.into_iter().map(|l| vec![Value::Text(l)]).collect();
        Ok(Output::Rows {
            columns: vec![("QUERY PLAN".into(), DataType::Text)],
            batch: rows_to_batch(&schema, &rows)?,
            command: "EXPLAIN",
        })
    }

    /// How this cluster's routers carry a join table to remote Tstores.
    fn broadcast(&self) -> Broadcast {
        match self.dispatcher().router().mode() {
            Mode::Smr => Broadcast::PerNode,
            Mode::Naive => Broadcast::PerTstore,
        }
    }

    fn analyze_join(
        &self,
        q: &QueryPlan,
        lines: &mut Vec<String>,
        limit: GatherLimit,
    ) -> Result<()> {
        let Some(spec) = &q.join else {
            return Ok(());
        };
        let before = self.router_stats()?;
        let t0 = Instant::now();
        let (out, run) = self.join_query(q, limit)?;
        let total = t0.elapsed();
        let after = self.router_stats()?;
        let max = |f: &dyn Fn(&JoinStats) -> Duration| {
            run.stats
                .iter()
                .map(|(_, _, s)| f(s))
                .max()
                .unwrap_or_default()
        };
        lines.push(format!(
            "Execution: {} rows in {} (distributed part {}, gather + post-processing {})",
            out.num_rows(),
            ms(total),
            ms(run.distributed),
            ms(run.post)
        ));
        lines.push(format!(
            "  slowest Tstore: build {}, pivot {}, compare {}, transfer (request to last chunk) {}",
            ms(max(&|s| s.build)),
            ms(max(&|s| s.pivot)),
            ms(max(&|s| s.compare)),
            ms(max(&|s| s.transfer)),
        ));
        for (k, input) in spec.join_tables.iter().enumerate() {
            let sum = |f: &dyn Fn(&JoinStats) -> u64| -> u64 {
                run.stats.iter().map(|(_, _, s)| f(s)).sum()
            };
            let get = |v: &Vec<u64>| v.get(k).copied().unwrap_or(0);
            lines.push(format!(
                "  join table {} ({} as {}): built {} rows, {} bytes in {} chunks; each Tstore received {} rows",
                k + 1,
                input.table,
                input.alias,
                sum(&|s| get(&s.built_rows)),
                sum(&|s| get(&s.built_bytes)),
                sum(&|s| get(&s.built_chunks)),
                run.stats
                    .first()
                    .map(|(_, _, s)| get(&s.received_rows))
                    .unwrap_or(0),
            ));
        }
        for (t, node, s) in &run.stats {
            lines.push(format!(
                "  tstore {t} (node {node}): pivot rows {}, joined rows {}, build {}, pivot {}, compare {}, transfer {}",
                s.pivot_rows,
                s.joined_rows,
                ms(s.build),
                ms(s.pivot),
                ms(s.compare),
                ms(s.transfer)
            ));
        }
        // What crossed the network: each node's join tables, one copy per remote node
        // (shared memory router) or per remote Tstore (naive).
        let mut by_node: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for (_, node, s) in &run.stats {
            let e = by_node.entry(*node).or_default();
            e.0 += s.built_bytes.iter().sum::<u64>();
            e.1 += s.built_chunks.iter().sum::<u64>();
        }
        let broadcast = self.broadcast();
        lines.push(format!(
            "  network (join tables; {}, expected from the Tstores' counts):",
            match broadcast {
                Broadcast::PerNode => "one copy per remote node",
                Broadcast::PerTstore => "one copy per remote Tstore",
            }
        ));
        if by_node.len() < 2 {
            lines.push("    (one node: nothing crosses the network)".into());
        }
        for (&a, &(bytes, chunks)) in &by_node {
            for &b in by_node.keys().filter(|&&b| b != a) {
                let copies = match broadcast {
                    Broadcast::PerNode => 1,
                    Broadcast::PerTstore => self.dispatcher().tstores_of(b).len() as u64,
                };
                lines.push(format!(
                    "    node {a} -> node {b}: {} bytes in {} chunks",
                    bytes * copies,
                    chunks * copies
                ));
            }
        }
        lines
            .push("  network (measured by the routers during this statement, all traffic):".into());
        if after.values().all(Vec::is_empty) {
            lines.push("    (one node: no remote peers)".into());
        }
        for (node, peers) in &after {
            for p in peers {
                let old = before
                    .get(node)
                    .and_then(|v| v.iter().find(|o| o.node == p.node))
                    .cloned()
                    .unwrap_or_default();
                lines.push(format!(
                    "    node {node} -> node {}: {} bytes in {} messages, {} stalls",
                    p.node,
                    p.bytes_written.saturating_sub(old.bytes_written),
                    p.messages_sent.saturating_sub(old.messages_sent),
                    p.stalls.saturating_sub(old.stalls)
                ));
            }
        }
        lines.push(format!(
            "  gathered on the primary: {} rows, {} bytes of intermediate results",
            run.gathered_rows, run.gathered_bytes
        ));
        Ok(())
    }
}
