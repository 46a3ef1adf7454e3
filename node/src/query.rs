//! A distributed query on the primary: the fragment goes to every Tstore in one
//! router message per node; the primary runs its own stages (the gathers' consumers:
//! final aggregation, the merge of sorted runs, limits, windows, and any result it
//! broadcasts back to the Tstores) on the statement's thread, fed by the gathered
//! chunks the controller hands over, until the final stage is done and every Tstore
//! has answered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use smrdb_planner::explain::plan_metrics;
use smrdb_planner::{Analysis, DistPlan, PlanError};
use smrdb_router::Addr;
use smrdb_tstore::exec::fragment::{ExchangeKind, Place};
use smrdb_tstore::exec::{codec, task_context, ExchangeQueue, TaskInputs};

use crate::dispatch::{Event, Interrupt};
use crate::engine::{Engine, GatherLimit};
use crate::error::{resource_hint, Error, Result};
use crate::exchange::{decode_copied, stage_future, OutChannel, Polled, Pumped, StageOutput};
use crate::proto::{ChunkTrailer, Reply, Request, CHUNK_ABORT, CHUNK_LAST};

/// A gather input on the primary.
struct Gathered {
    /// One queue, or one per Tstore (sorted streams).
    queues: Vec<Arc<ExchangeQueue>>,
    sorted: bool,
    /// Tstores whose last chunk is due.
    waiting: BTreeSet<u32>,
}

/// A primary stage being run.
struct PrimaryStage {
    id: u16,
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    fut: Polled<datafusion::common::Result<()>>,
    output: Arc<StageOutput>,
    done: bool,
}

fn df_err(e: &datafusion::common::DataFusionError) -> Error {
    let p = PlanError::from_datafusion(e);
    Error::sql(p.sqlstate(), p.to_string())
}

impl Engine {
    /// Runs a distributed plan; returns the result batches and, with `analyze`, what
    /// the stages and exchanges measured.
    ///
    /// # Errors
    /// A stage's error (the cause, not an echo of it), lost nodes, the deadline, an
    /// interrupt (57014), 53200 when the gathered rows exceed `limit`.
    pub fn run_dist(
        &self,
        dist: &DistPlan,
        limit: &GatherLimit,
        analyze: bool,
    ) -> Result<(Vec<RecordBatch>, Option<Analysis>)> {
        let disp = self.dispatcher();
        let t0 = Instant::now();
        let tstores = disp.total_tstores();
        let on_tstores = !dist.primary_only();
        let task = if on_tstores {
            disp.open_task()?
        } else {
            disp.open_local_task()
        };
        let timeout = disp
            .timeout()
            .saturating_sub(Duration::from_secs(2))
            .max(Duration::from_secs(1));
        let before = if analyze && on_tstores {
            Some(self.router_stats()?)
        } else {
            None
        };
        if on_tstores {
            let frag = dist.fragment(timeout.as_millis() as u64)?;
            let bytes = frag.encode().map_err(Error::Protocol)?;
            task.send_all(Request::Stages { fragment: bytes })?;
        }
        // The primary's inputs: every gather.
        let mut inputs = TaskInputs::new();
        let mut gathers: HashMap<u16, Gathered> = HashMap::new();
        for x in dist
            .exchanges
            .iter()
            .filter(|x| x.kind == ExchangeKind::Gather)
        {
            let queues: Vec<Arc<ExchangeQueue>> = if x.sorted_streams {
                (0..tstores).map(|_| ExchangeQueue::new(1, false)).collect()
            } else {
                vec![ExchangeQueue::new(tstores as usize, false)]
            };
            for (p, q) in queues.iter().enumerate() {
                inputs.add_exchange(x.id, p, q.clone());
            }
            gathers.insert(
                x.id,
                Gathered {
                    queues,
                    sorted: x.sorted_streams,
                    waiting: (0..tstores).collect(),
                },
            );
        }
        let ctx = task_context(Some(Arc::new(inputs)));
        let woken = Arc::new(AtomicBool::new(true));
        let me = Addr::controller(disp.router().me());
        let mut stages = Vec::new();
        let mut channels: Vec<OutChannel> = Vec::new();
        for s in dist.stages.iter().filter(|s| s.place == Place::Primary) {
            // Every stage runs as decoded (the same semantics wherever it runs).
            let bytes = codec::plan_to_bytes(s.plan.clone())?;
            let plan = codec::plan_from_bytes(&bytes, &ctx).map_err(|e| df_err(&e))?;
            let output = StageOutput::new();
            if let Some(x) = s.output {
                channels.push(OutChannel::new(
                    task.id,
                    x,
                    me,
                    Addr::ALL_TSTORES,
                    output.clone(),
                ));
            }
            stages.push(PrimaryStage {
                id: s.id,
                fut: Polled::new(
                    stage_future(plan.clone(), ctx.clone(), output.clone()),
                    woken.clone(),
                ),
                plan,
                output,
                done: false,
            });
        }
        let final_id = dist.result_stage().id;
        let mut result: Vec<RecordBatch> = Vec::new();
        let mut replied: BTreeMap<u32, Reply> = BTreeMap::new();
        let mut gathered = 0u64;
        // Bytes gathered from each Tstore, and what the planner expects in all.
        let mut shares: HashMap<u32, u64> = HashMap::new();
        let expected: u64 = dist
            .exchanges
            .iter()
            .filter(|x| x.kind == ExchangeKind::Gather)
            .filter_map(|x| x.est_bytes)
            .map(|b| b as u64)
            .sum();
        let deadline = Instant::now() + timeout + Duration::from_secs(1);
        let interrupt = Interrupt::current();
        let fail_all = |gathers: &HashMap<u16, Gathered>, why: &str| {
            for g in gathers.values() {
                for q in &g.queues {
                    q.fail(why);
                }
            }
        };
        // A primary stage's failure that only echoes a Tstore's abort, and until when
        // to wait for that Tstore's own error.
        let mut pending: Option<(Error, Instant)> = None;
        let outcome: Result<()> = 'run: loop {
            // Stages.
            if woken.swap(false, Ordering::AcqRel) {
                for s in stages.iter_mut().filter(|s| !s.done) {
                    match s.fut.poll() {
                        None => {}
                        Some(Ok(Ok(()))) => s.done = true,
                        Some(Ok(Err(e))) => {
                            let err = df_err(&e);
                            if pending.is_none() && err.to_string().contains("aborted by tstore") {
                                // A Tstore aborted its gather: its error reply, the
                                // cause, follows (a moment later at most).
                                s.done = true;
                                pending = Some((err, Instant::now() + Duration::from_secs(2)));
                            } else {
                                fail_all(&gathers, "the query failed");
                                break 'run Err(err);
                            }
                        }
                        Some(Err(panic)) => {
                            fail_all(&gathers, "the query failed");
                            break 'run Err(Error::sql("XX000", panic));
                        }
                    }
                }
            }
            if let Some(s) = stages.iter().find(|s| s.id == final_id) {
                s.output.with_batches(|b| result.extend(b.drain(..)));
            }
            let mut blocked = false;
            for c in channels.iter_mut() {
                let pumped = match c.pump(disp.router()) {
                    Ok(p) => p,
                    Err(e) => break 'run Err(e.into()),
                };
                if c.too_big {
                    break 'run Err(Error::sql(
                        "54000",
                        format!(
                            "a row of exchange {} is larger than a router chunk ({} bytes); {}",
                            c.exchange,
                            disp.router().max_chunk(),
                            crate::error::CHUNK_HINT
                        ),
                    ));
                }
                match pumped {
                    Pumped::Blocked => blocked = true,
                    Pumped::Waiting | Pumped::Closed => {}
                }
            }
            let stages_done = stages.iter().all(|s| s.done) && channels.iter().all(|c| c.closed);
            let replies_done = !on_tstores || replied.len() == tstores as usize;
            if let Some((_, until)) = &pending {
                if stages_done && replies_done || Instant::now() >= *until {
                    fail_all(&gathers, "the query failed");
                    let (e, _) = pending.take().unwrap_or_else(|| unreachable!());
                    break 'run Err(e);
                }
            }
            if stages_done && replies_done {
                break 'run Ok(());
            }
            if let Some(i) = &interrupt {
                if let Err(e) = i.check() {
                    fail_all(&gathers, "the statement was canceled");
                    break 'run Err(e);
                }
            }
            if Instant::now() >= deadline {
                fail_all(&gathers, "the query timed out");
                let missing: Vec<u32> = (0..tstores).filter(|t| !replied.contains_key(t)).collect();
                break 'run Err(Error::Timeout {
                    what: format!("the stages of tstores {missing:?}"),
                    secs: timeout.as_secs(),
                });
            }
            let wait = if woken.load(Ordering::Acquire) {
                Duration::ZERO
            } else if blocked {
                Duration::from_micros(200)
            } else {
                Duration::from_millis(20)
            };
            let ev = if wait.is_zero() {
                task.events.try_recv().ok()
            } else {
                task.events.recv_timeout(wait).ok()
            };
            let Some(ev) = ev else { continue };
            match ev {
                Event::Chunk(d) => {
                    let Some(t) = d
                        .spec
                        .src
                        .as_tstore()
                        .filter(|&t| disp.node_of(t) == Some(d.from))
                    else {
                        tracing::warn!("query {}: a chunk from {:?} ignored", task.id, d.spec.src);
                        continue;
                    };
                    let bytes = d.data.bytes();
                    let (ipc, tr) = match ChunkTrailer::split(bytes) {
                        Ok(x) => x,
                        Err(e) => break 'run Err(e),
                    };
                    let Some(g) = gathers.get_mut(&tr.exchange) else {
                        break 'run Err(Error::Protocol(format!(
                            "tstore {t} sent exchange {} to the primary, which does not gather it",
                            tr.exchange
                        )));
                    };
                    if !g.waiting.contains(&t) {
                        break 'run Err(Error::Protocol(format!(
                            "tstore {t} sent exchange {} after its last chunk",
                            tr.exchange
                        )));
                    }
                    gathered += bytes.len() as u64;
                    *shares.entry(t).or_default() += bytes.len() as u64;
                    let largest = shares.values().copied().max().unwrap_or(0);
                    if let Err(e) =
                        limit.check_streaming(gathered, largest, expected, tstores as usize)
                    {
                        fail_all(&gathers, "the query gathered too much");
                        break 'run Err(e);
                    }
                    let q = if g.sorted {
                        g.queues[t as usize].clone()
                    } else {
                        g.queues[0].clone()
                    };
                    if tr.flags & CHUNK_ABORT != 0 {
                        q.fail(format!(
                            "the query was aborted by tstore {t} (see its error)"
                        ));
                    } else {
                        let bs = match decode_copied(ipc) {
                            Ok(bs) => bs,
                            Err(e) => break 'run Err(e.into()),
                        };
                        drop(d);
                        for b in bs {
                            q.push(b);
                        }
                    }
                    if tr.flags & (CHUNK_LAST | CHUNK_ABORT) != 0 {
                        g.waiting.remove(&t);
                        q.finish_sender();
                    }
                    woken.store(true, Ordering::Release);
                }
                Event::Reply(t, r) => {
                    if let Reply::Error {
                        sqlstate,
                        message,
                        echo: false,
                    } = &r
                    {
                        fail_all(&gathers, "the query failed");
                        break 'run Err(Error::sql(sqlstate, resource_hint(message)));
                    }
                    replied.insert(t, r);
                    if replied.len() == tstores as usize {
                        let all: Vec<(u32, Reply)> =
                            replied.iter().map(|(t, r)| (*t, r.clone())).collect();
                        if let Err(e) = crate::dispatch::first_error(&all) {
                            fail_all(&gathers, "the query failed");
                            break 'run Err(e);
                        }
                    }
                    woken.store(true, Ordering::Release);
                }
                Event::Lost(node, reason) => {
                    fail_all(&gathers, "a node was lost");
                    break 'run Err(Error::NodeLost { node, reason });
                }
            }
        };
        if let Err(e) = outcome {
            // The Tstores that wait for the primary's broadcasts learn of the failure
            // now, not at their deadline.
            abort_channels(&mut channels, disp.router());
            return Err(e);
        }
        let analysis = if analyze {
            let mut a = Analysis {
                total: t0.elapsed(),
                ..Analysis::default()
            };
            for s in &stages {
                a.stages.insert(s.id, plan_metrics(&s.plan));
            }
            for c in &channels {
                a.exchanges.insert(c.exchange, c.sent);
            }
            for r in replied.values() {
                if let Reply::Done { stages } = r {
                    for s in stages {
                        let e = a.stages.entry(s.stage).or_default();
                        if e.len() < s.operators.len() {
                            e.resize(s.operators.len(), Default::default());
                        }
                        for (m, (rows, ns)) in e.iter_mut().zip(&s.operators) {
                            m.rows += rows;
                            m.compute_ns += ns;
                        }
                        if let Some(x) = dist
                            .stages
                            .iter()
                            .find(|x| x.id == s.stage)
                            .and_then(|x| x.output)
                        {
                            let e = a.exchanges.entry(x).or_default();
                            e.0 += s.sent.0;
                            e.1 += s.sent.1;
                            e.2 += s.sent.2;
                        }
                    }
                }
            }
            if let Some(before) = before {
                let after = self.router_stats()?;
                for (node, peers) in &after {
                    for p in peers {
                        let old = before
                            .get(node)
                            .and_then(|v| v.iter().find(|o| o.node == p.node))
                            .map(|o| o.bytes_written)
                            .unwrap_or(0);
                        a.node_pairs
                            .insert((*node, p.node), p.bytes_written.saturating_sub(old));
                    }
                }
            }
            Some(a)
        } else {
            None
        };
        Ok((result, analysis))
    }
}

/// Ends the primary's unfinished output channels with an ABORT chunk (best effort,
/// for at most 100 ms): their consumers fail at once instead of at their deadline.
fn abort_channels(channels: &mut [OutChannel], router: &smrdb_router::RouterHandle) {
    let until = Instant::now() + Duration::from_millis(100);
    for c in channels.iter_mut() {
        c.output.with_batches(|b| b.clear());
        c.output.fail();
        while !c.closed && Instant::now() < until {
            match c.pump(router) {
                Ok(Pumped::Closed) | Err(_) => break,
                Ok(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    }
}
