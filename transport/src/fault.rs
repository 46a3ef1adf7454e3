//! Fault injection: [`Faulty<F>`] wraps any fabric and, following a [`FaultPlan`]
//! from [`FabricConfig::faults`], drops or delays the small messages its endpoints send
//! and makes an endpoint fail after a number of operations, as a flaky link or a node
//! that dies mid-operation would. Tests of timeouts and node loss use it on the
//! software fabrics; production configurations leave `faults` empty.
//!
//! Faults act on the sending side of each endpoint, so a plan given to one node
//! affects what that node sends. Dropping is deterministic for a given seed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    Control, Endpoint, Error, Event, Fabric, FabricConfig, FabricKind, NodeId, Region, Result,
    Window,
};

/// What to break.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaultPlan {
    /// Drop this fraction (0..=1) of messages (`post_send`) silently: the sender sees
    /// them complete, the peer never gets them.
    pub drop_messages: f64,
    /// Hold every message this long before it is really sent (writes posted after it
    /// wait behind it, so ordering is kept).
    pub delay: Duration,
    /// After this many operations (writes + messages) on an endpoint, every further
    /// post fails as if the peer were gone.
    pub fail_after_ops: Option<u64>,
    /// Only these peers' endpoints are affected (empty: all).
    pub peers: Vec<NodeId>,
    /// Seed of the drop decisions.
    pub seed: u64,
}

impl std::str::FromStr for FaultPlan {
    type Err = Error;

    /// Parses `key=value` pairs separated by commas, as in the `SMRDB_FAULTS`
    /// environment variable of `smrdb node`: `drop=0.1` ([`FaultPlan::drop_messages`]),
    /// `delay_ms=500`, `fail_after=1000`, `peers=2+3`, `seed=7`. An empty string is the
    /// empty plan.
    fn from_str(s: &str) -> Result<FaultPlan> {
        let bad = |what: String| Error::Config(format!("fault plan {s:?}: {what}"));
        let mut p = FaultPlan::default();
        for part in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
            let num = |v: &str| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| bad(format!("{k}: {v:?} is not a whole number")))
            };
            match k.trim() {
                "drop" => {
                    let f: f64 = v
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("drop: {v:?} is not a number")))?;
                    if !(0.0..=1.0).contains(&f) {
                        return Err(bad(format!("drop must be within 0..=1, not {f}")));
                    }
                    p.drop_messages = f;
                }
                "delay_ms" => p.delay = Duration::from_millis(num(v)?),
                "fail_after" => p.fail_after_ops = Some(num(v)?),
                "seed" => p.seed = num(v)?,
                "peers" => {
                    p.peers = v
                        .split('+')
                        .map(|x| {
                            x.trim()
                                .parse::<NodeId>()
                                .map_err(|_| bad(format!("peers: {x:?} is not a node id")))
                        })
                        .collect::<Result<_>>()?
                }
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?} (drop, delay_ms, fail_after, peers, seed)"
                    )))
                }
            }
        }
        Ok(p)
    }
}

/// A fabric with faults injected into its endpoints.
pub struct Faulty<F: Fabric> {
    inner: F,
    plan: Arc<FaultPlan>,
}

impl<F: Fabric> Faulty<F> {
    /// The wrapped fabric.
    pub fn inner(&self) -> &F {
        &self.inner
    }
}

impl<F: Fabric> Fabric for Faulty<F> {
    type Endpoint = FaultyEndpoint<F::Endpoint>;
    const KIND: FabricKind = F::KIND;

    fn open(cfg: &FabricConfig, region_len: usize) -> Result<Self> {
        Ok(Faulty {
            inner: F::open(cfg, region_len)?,
            plan: Arc::new(cfg.faults.clone().unwrap_or_default()),
        })
    }

    fn region(&self) -> &Arc<Region> {
        self.inner.region()
    }

    fn establish(&self, ctl: Control, grant: Window) -> Result<Self::Endpoint> {
        let ep = self.inner.establish(ctl, grant)?;
        let peer = ep.peer();
        let active = self.plan.peers.is_empty() || self.plan.peers.contains(&peer);
        Ok(FaultyEndpoint {
            inner: ep,
            region: self.inner.region().clone(),
            plan: self.plan.clone(),
            active,
            ops: 0,
            rng: self.plan.seed ^ u64::from(peer).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            held: VecDeque::new(),
            dropped_done: Vec::new(),
        })
    }
}

/// An operation held back by a delay.
enum Held {
    Write {
        local_off: usize,
        len: usize,
        remote_off: usize,
        imm: Option<u32>,
        wr_id: u64,
    },
    Send {
        msg: Vec<u8>,
        wr_id: u64,
    },
}

/// An endpoint with faults injected.
pub struct FaultyEndpoint<E: Endpoint> {
    inner: E,
    region: Arc<Region>,
    plan: Arc<FaultPlan>,
    active: bool,
    ops: u64,
    rng: u64,
    /// Operations waiting for their delay, in posting order, with their release time.
    held: VecDeque<(Instant, Held)>,
    /// Completions of dropped messages, reported on the next poll.
    dropped_done: Vec<u64>,
}

impl<E: Endpoint> FaultyEndpoint<E> {
    /// The checks the inner endpoint would make, done before an operation is held back.
    fn check(&self, local_off: usize, len: usize, remote_off: usize) -> Result<()> {
        self.region.check(local_off, len)?;
        Window::check_range("remote window", remote_off, len, self.inner.remote_len())
    }

    fn count_op(&mut self) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        self.ops += 1;
        match self.plan.fail_after_ops {
            Some(n) if self.ops > n => Err(Error::PeerLost {
                peer: self.inner.peer(),
                reason: format!("injected fault: link failed after {n} operations"),
            }),
            _ => Ok(()),
        }
    }

    fn coin(&mut self) -> f64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// When an operation posted now may really be posted (after the delay, and never
    /// before what is already held).
    fn hold_until(&self) -> Option<Instant> {
        let delay = if self.delaying() {
            self.plan.delay
        } else {
            Duration::ZERO
        };
        (self.delaying() || !self.held.is_empty()).then(|| Instant::now() + delay)
    }

    fn write(
        &mut self,
        local_off: usize,
        len: usize,
        remote_off: usize,
        imm: Option<u32>,
        wr_id: u64,
    ) -> Result<()> {
        self.count_op()?;
        if let Some(due) = self.hold_until() {
            self.check(local_off, len, remote_off)?;
            let op = Held::Write {
                local_off,
                len,
                remote_off,
                imm,
                wr_id,
            };
            self.held.push_back((due, op));
            return Ok(());
        }
        match imm {
            None => self.inner.post_write(local_off, len, remote_off, wr_id),
            Some(imm) => self
                .inner
                .post_write_imm(local_off, len, remote_off, imm, wr_id),
        }
    }

    fn delaying(&self) -> bool {
        self.active && !self.plan.delay.is_zero()
    }

    /// Posts held operations whose time has come, in order.
    fn release_held(&mut self) -> Result<()> {
        while let Some((due, _)) = self.held.front() {
            if *due > Instant::now() {
                break;
            }
            let r = match &self.held.front().expect("front exists").1 {
                Held::Write {
                    local_off,
                    len,
                    remote_off,
                    imm: None,
                    wr_id,
                } => self.inner.post_write(*local_off, *len, *remote_off, *wr_id),
                Held::Write {
                    local_off,
                    len,
                    remote_off,
                    imm: Some(imm),
                    wr_id,
                } => self
                    .inner
                    .post_write_imm(*local_off, *len, *remote_off, *imm, *wr_id),
                Held::Send { msg, wr_id } => self.inner.post_send(msg, *wr_id),
            };
            match r {
                Ok(()) => {
                    self.held.pop_front();
                }
                Err(Error::Full { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<E: Endpoint> Endpoint for FaultyEndpoint<E> {
    fn peer(&self) -> NodeId {
        self.inner.peer()
    }

    fn remote_len(&self) -> usize {
        self.inner.remote_len()
    }

    fn max_outstanding(&self) -> usize {
        self.inner.max_outstanding()
    }

    fn post_write(
        &mut self,
        local_off: usize,
        len: usize,
        remote_off: usize,
        wr_id: u64,
    ) -> Result<()> {
        self.write(local_off, len, remote_off, None, wr_id)
    }

    fn post_write_imm(
        &mut self,
        local_off: usize,
        len: usize,
        remote_off: usize,
        imm: u32,
        wr_id: u64,
    ) -> Result<()> {
        self.write(local_off, len, remote_off, Some(imm), wr_id)
    }

    fn post_send(&mut self, msg: &[u8], wr_id: u64) -> Result<()> {
        crate::check_msg(msg)?;
        self.count_op()?;
        if self.active && self.plan.drop_messages > 0.0 && self.coin() < self.plan.drop_messages {
            self.dropped_done.push(wr_id);
            return Ok(());
        }
        if let Some(due) = self.hold_until() {
            self.held.push_back((
                due,
                Held::Send {
                    msg: msg.to_vec(),
                    wr_id,
                },
            ));
            return Ok(());
        }
        self.inner.post_send(msg, wr_id)
    }

    fn poll(&mut self, out: &mut Vec<Event>) -> Result<usize> {
        self.release_held()?;
        let before = out.len();
        out.extend(
            self.dropped_done
                .drain(..)
                .map(|wr_id| Event::Completed { wr_id }),
        );
        self.inner.poll(out)?;
        Ok(out.len() - before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_are_refused() {
        let p: FaultPlan = "delay_ms=500, peers=2+3,drop=0.25,fail_after=9,seed=7"
            .parse()
            .unwrap();
        assert_eq!(p.delay, Duration::from_millis(500));
        assert_eq!(p.peers, vec![2, 3]);
        assert_eq!(p.drop_messages, 0.25);
        assert_eq!(p.fail_after_ops, Some(9));
        assert_eq!(p.seed, 7);
        assert_eq!("".parse::<FaultPlan>().unwrap(), FaultPlan::default());
        for bad in ["delay_ms", "drop=2", "delay_ms=-1", "peers=a", "speed=3"] {
            let e = bad.parse::<FaultPlan>().unwrap_err().to_string();
            assert!(e.contains("fault plan"), "{bad}: {e}");
        }
    }
}
