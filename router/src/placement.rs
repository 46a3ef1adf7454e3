//! Where threads run: each Tstore pinned to a core of its own (its memory is then
//! first-touched there, so it is NUMA-local), the router thread on a core of the NIC's
//! NUMA node when that can be told. Topology comes from hwloc (`hwlocality`).
//!
//! On a machine with fewer cores than threads, the plan wraps around and says so once.

use std::sync::atomic::{AtomicBool, Ordering};

use hwlocality::cpu::binding::CpuBindingFlags;
use hwlocality::cpu::cpuset::CpuSet;
use hwlocality::object::types::ObjectType;
use hwlocality::Topology;

/// The machine's cores and a way to pin threads to them.
pub struct Placement {
    topology: Option<Topology>,
    /// One CPU set per core, in topology order, with the NUMA node of each.
    cores: Vec<(CpuSet, Option<usize>)>,
    warned: AtomicBool,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("cores", &self.cores.len())
            .field("numa_nodes", &self.numa_nodes())
            .finish()
    }
}

impl Placement {
    /// Reads the topology. Without hwloc's answer, placement is a no-op.
    pub fn detect() -> Placement {
        let topology = match Topology::new() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("hwloc topology unavailable ({e}); threads will not be pinned");
                None
            }
        };
        let mut cores = Vec::new();
        if let Some(t) = &topology {
            let nodes: Vec<_> = t
                .objects_with_type(ObjectType::NUMANode)
                .filter_map(|n| Some((n.os_index()?, n.cpuset()?.clone_target())))
                .collect();
            let mut objs: Vec<_> = t.objects_with_type(ObjectType::Core).collect();
            if objs.is_empty() {
                objs = t.objects_with_type(ObjectType::PU).collect();
            }
            for o in objs {
                if let Some(set) = o.cpuset() {
                    let set = set.clone_target();
                    let numa = nodes
                        .iter()
                        .find(|(_, ns)| ns.includes(&set))
                        .map(|(i, _)| *i);
                    cores.push((set, numa));
                }
            }
        }
        Placement {
            topology,
            cores,
            warned: AtomicBool::new(false),
        }
    }

    /// Number of cores found (0 when hwloc could not tell).
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// Number of NUMA nodes among the cores.
    pub fn numa_nodes(&self) -> usize {
        let mut n: Vec<_> = self.cores.iter().filter_map(|c| c.1).collect();
        n.sort_unstable();
        n.dedup();
        n.len().max(1)
    }

    /// Cores for `tstores` Tstore threads (one each, wrapping around when there are
    /// fewer cores, which is said once) and for the router thread (last: a core of
    /// `nic_numa` when given, else the last core).
    pub fn plan(&self, tstores: usize, nic_numa: Option<usize>) -> (Vec<usize>, usize) {
        let n = self.cores.len().max(1);
        if tstores + 1 > n && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{} threads (Tstores + router) on {n} cores: cores are shared",
                tstores + 1
            );
        }
        let router = nic_numa
            .and_then(|node| self.cores.iter().rposition(|c| c.1 == Some(node)))
            .unwrap_or(n - 1);
        // Tstores take the cores other than the router's first.
        let order: Vec<usize> = (0..n).filter(|&c| c != router).chain([router]).collect();
        ((0..tstores).map(|i| order[i % n]).collect(), router)
    }

    /// Pins the calling thread to core `core` (modulo the core count).
    ///
    /// # Errors
    /// A description when the topology is unknown or binding fails.
    pub fn pin_current_thread(&self, core: usize) -> Result<(), String> {
        let t = self.topology.as_ref().ok_or("no topology")?;
        if self.cores.is_empty() {
            return Err("no cores found".into());
        }
        let set = &self.cores[core % self.cores.len()].0;
        t.bind_cpu(set, CpuBindingFlags::THREAD)
            .map_err(|e| format!("binding to core {core} failed: {e}"))
    }

    /// The NUMA node of an RDMA device, as the kernel reports it (sysfs).
    pub fn nic_numa_node(device: &str) -> Option<usize> {
        let s = std::fs::read_to_string(format!("/sys/class/infiniband/{device}/device/numa_node"))
            .ok()?;
        s.trim()
            .parse::<i64>()
            .ok()
            .and_then(|n| usize::try_from(n).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_one_core_per_tstore_and_wraps() {
        let p = Placement::detect();
        let n = p.cores();
        assert!(n >= 1, "hwloc found no cores");
        let (ts, router) = p.plan(n - 1, None);
        assert_eq!(router, n - 1);
        let mut sorted = ts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            ts.len(),
            "each Tstore has its own core when they fit"
        );
        assert!(!ts.contains(&router) || n == 1);
        let (ts, _) = p.plan(3 * n, None);
        assert_eq!(ts.len(), 3 * n);
        assert!(ts.iter().all(|&c| c < n));
    }

    #[test]
    fn pins_this_thread() {
        let p = Placement::detect();
        std::thread::spawn(move || {
            p.pin_current_thread(0).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            let cpu = unsafe { libc::sched_getcpu() };
            assert!(cpu >= 0);
            let set = &p.cores[0].0;
            assert!(
                set.is_set(cpu as usize),
                "running on cpu {cpu}, pinned to {set}"
            );
        })
        .join()
        .unwrap();
    }
}
