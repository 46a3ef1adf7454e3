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
        let task = disp.open_task()?;
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
        let deadline = Instant::now() + timeout + Duration::from_secs(1);
        let interrupt = Interrupt::current();
        let fail_all = |gathers: &HashMap<u16, Gathered>, why: &str| {
            for g in gathers.values() {
                for q in &g.queues {
                    q.fail(why);
                }
            }
        };
        loop {
            // Stages.
            if woken.swap(false, Ordering::AcqRel) {
                for s in stages.iter_mut().filter(|s| !s.done) {
                    match s.fut.poll() {
                        None => {}
                        Some(Ok(Ok(()))) => s.done = true,
                        Some(Ok(Err(e))) => {
                            fail_all(&gathers, "the query failed");
                            return Err(df_err(&e));
                        }
                        Some(Err(panic)) => {
                            fail_all(&gathers, "the query failed");
                            return Err(Error::sql("XX000", panic));
                        }
                    }
                }
            }
            if let Some(s) = stages.iter().find(|s| s.id == final_id) {
                s.output.with_batches(|b| result.extend(b.drain(..)));
            }
            let mut blocked = false;
            for c in channels.iter_mut() {
                match c.pump(disp.router())? {
                    Pumped::Blocked => blocked = true,
                    Pumped::Waiting | Pumped::Closed => {}
                }
            }
            let stages_done = stages.iter().all(|s| s.done) && channels.iter().all(|c| c.closed);
            let replies_done = !on_tstores || replied.len() == tstores as usize;
            if stages_done && replies_done {
                break;
            }
            if let Some(i) = &interrupt {
                if let Err(e) = i.check() {
                    fail_all(&gathers, "the statement was canceled");
                    return Err(e);
                }
            }
            if Instant::now() >= deadline {
                fail_all(&gathers, "the query timed out");
                let missing: Vec<u32> = (0..tstores).filter(|t| !replied.contains_key(t)).collect();
                return Err(Error::Timeout {
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
                    let (ipc, tr) = ChunkTrailer::split(bytes)?;
                    let Some(g) = gathers.get_mut(&tr.exchange) else {
                        return Err(Error::Protocol(format!(
                            "tstore {t} sent exchange {} to the primary, which does not gather it",
                            tr.exchange
                        )));
                    };
                    if !g.waiting.contains(&t) {
                        return Err(Error::Protocol(format!(
                            "tstore {t} sent exchange {} after its last chunk",
                            tr.exchange
                        )));
                    }
                    gathered += bytes.len() as u64;
                    if let Err(e) = limit.check(gathered, replied.len(), tstores as usize) {
                        fail_all(&gathers, "the query gathered too much");
                        return Err(e);
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
                        let bs = decode_copied(ipc)?;
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
                        return Err(Error::sql(sqlstate, resource_hint(message)));
                    }
                    replied.insert(t, r);
                    if replied.len() == tstores as usize {
                        let all: Vec<(u32, Reply)> =
                            replied.iter().map(|(t, r)| (*t, r.clone())).collect();
                        if let Err(e) = crate::dispatch::first_error(&all) {
                            fail_all(&gathers, "the query failed");
                            return Err(e);
                        }
                    }
                    woken.store(true, Ordering::Release);
                }
                Event::Lost(node, reason) => {
                    fail_all(&gathers, "a node was lost");
                    return Err(Error::NodeLost { node, reason });
                }
            }
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
