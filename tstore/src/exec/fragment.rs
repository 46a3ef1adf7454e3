//! The plan fragment: the stages of one query that run on every Tstore, as the
//! primary sends them (one router message per node).
//!
//! ```text
//! Fragment { version: u16 (= FRAGMENT_VERSION), exchanges: [ExchangeSpec], stages: [StageSpec],
//!            tables: [name], timeout_ms: u64 }
//! ExchangeSpec { id: u16, kind: Gather | Broadcast, from: Tstores | Primary,
//!                sorted_streams: bool, wait_complete: bool }
//! StageSpec { id: u16, output: u16 (an exchange from the Tstores), plan: datafusion-proto bytes }
//! ```
//! postcard-encoded inside the task envelope; [`Fragment::validate`] checks every id
//! and reference before anything runs, and the plans are decoded with
//! [`super::codec::plan_from_bytes`] (which refuses malformed bytes without panicking).

use serde::{Deserialize, Serialize};

/// Version of the fragment format.
pub const FRAGMENT_VERSION: u16 = 1;
/// Most stages or exchanges in one fragment.
pub const MAX_STAGES: usize = 4096;

/// Where an exchange's producer (or a stage) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Place {
    /// On every Tstore.
    Tstores,
    /// On the primary's controller.
    Primary,
}

/// How an exchange moves its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExchangeKind {
    /// Every producer's rows to the primary.
    Gather,
    /// Every producer's rows to every Tstore: one copy per node through the router,
    /// fanned out by pointer.
    Broadcast,
}

impl ExchangeKind {
    /// Lower-case name (EXPLAIN, the leaf's display).
    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Gather => "gather",
            ExchangeKind::Broadcast => "broadcast",
        }
    }
}

/// One exchange of a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeSpec {
    /// Id, unique in the query.
    pub id: u16,
    /// Gather or broadcast.
    pub kind: ExchangeKind,
    /// Where its producer stage runs.
    pub from: Place,
    /// Each producer's rows are a stream of their own (a consumer partition per
    /// producer, e.g. sorted runs merged on the primary); else one stream in arrival
    /// order.
    pub sorted_streams: bool,
    /// Consumers take nothing before every producer is done (`smrdb.overlap = off`).
    pub wait_complete: bool,
}

impl ExchangeSpec {
    /// Where its consumers run.
    pub fn to(&self) -> Place {
        match self.kind {
            ExchangeKind::Gather => Place::Primary,
            ExchangeKind::Broadcast => Place::Tstores,
        }
    }
}

/// One stage that runs on every Tstore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Id, unique in the query.
    pub id: u16,
    /// The exchange its output goes to.
    pub output: u16,
    /// The DataFusion plan (datafusion-proto bytes, smrdb leaves by
    /// [`super::codec::SmrdbCodec`]).
    pub plan: Vec<u8>,
}

/// A query's Tstore stages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    /// [`FRAGMENT_VERSION`].
    pub version: u16,
    /// Every exchange of the query (also those the Tstores only feed).
    pub exchanges: Vec<ExchangeSpec>,
    /// The stages every Tstore runs.
    pub stages: Vec<StageSpec>,
    /// The tables the stages scan.
    pub tables: Vec<String>,
    /// A Tstore gives up on the task after this long.
    pub timeout_ms: u64,
}

impl Fragment {
    /// The exchange with id `id`.
    pub fn exchange(&self, id: u16) -> Option<&ExchangeSpec> {
        self.exchanges.iter().find(|x| x.id == id)
    }

    /// The exchanges the Tstores consume (broadcasts).
    pub fn tstore_inputs(&self) -> impl Iterator<Item = &ExchangeSpec> {
        self.exchanges
            .iter()
            .filter(|x| x.kind == ExchangeKind::Broadcast)
    }

    /// Checks versions, counts, ids and references.
    ///
    /// # Errors
    /// A message naming the first problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != FRAGMENT_VERSION {
            return Err(format!(
                "fragment version {} (this node speaks {FRAGMENT_VERSION})",
                self.version
            ));
        }
        if self.stages.len() > MAX_STAGES || self.exchanges.len() > MAX_STAGES {
            return Err(format!(
                "a fragment of {} stages and {} exchanges",
                self.stages.len(),
                self.exchanges.len()
            ));
        }
        for (i, x) in self.exchanges.iter().enumerate() {
            if self.exchanges[..i].iter().any(|y| y.id == x.id) {
                return Err(format!("exchange {} defined twice", x.id));
            }
            if x.from == Place::Primary && x.kind == ExchangeKind::Gather {
                return Err(format!("exchange {} gathers from the primary", x.id));
            }
        }
        for (i, s) in self.stages.iter().enumerate() {
            if self.stages[..i].iter().any(|t| t.id == s.id) {
                return Err(format!("stage {} defined twice", s.id));
            }
            if self.exchange(s.output).is_none() {
                return Err(format!(
                    "stage {} feeds exchange {}, which does not exist",
                    s.id, s.output
                ));
            }
            if s.plan.is_empty() {
                return Err(format!("stage {} has no plan", s.id));
            }
        }
        for x in &self.exchanges {
            let producers = self.stages.iter().filter(|s| s.output == x.id).count();
            let want = usize::from(x.from == Place::Tstores);
            if producers != want {
                return Err(format!(
                    "exchange {} has {producers} producing stages here, expected {want}",
                    x.id
                ));
            }
        }
        for t in &self.tables {
            if t.is_empty() || t.len() > 1024 {
                return Err(format!("a table name of {} bytes", t.len()));
            }
        }
        Ok(())
    }

    /// postcard bytes.
    ///
    /// # Errors
    /// Serialization errors.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        postcard::to_stdvec(self).map_err(|e| format!("encode fragment: {e}"))
    }

    /// Decodes and [validates](Fragment::validate).
    ///
    /// # Errors
    /// Undecodable or invalid bytes.
    pub fn decode(bytes: &[u8]) -> Result<Fragment, String> {
        let f: Fragment =
            postcard::from_bytes(bytes).map_err(|e| format!("undecodable fragment: {e}"))?;
        f.validate()?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Fragment {
        Fragment {
            version: FRAGMENT_VERSION,
            exchanges: vec![
                ExchangeSpec {
                    id: 0,
                    kind: ExchangeKind::Broadcast,
                    from: Place::Tstores,
                    sorted_streams: false,
                    wait_complete: false,
                },
                ExchangeSpec {
                    id: 1,
                    kind: ExchangeKind::Gather,
                    from: Place::Tstores,
                    sorted_streams: true,
                    wait_complete: false,
                },
            ],
            stages: vec![
                StageSpec {
                    id: 0,
                    output: 0,
                    plan: vec![1],
                },
                StageSpec {
                    id: 1,
                    output: 1,
                    plan: vec![2],
                },
            ],
            tables: vec!["t".into()],
            timeout_ms: 1000,
        }
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let f = sample();
        assert_eq!(Fragment::decode(&f.encode().unwrap()).unwrap(), f);
        // Expect: each broken invariant is refused with a message naming it.
        let cases: Vec<(&str, Box<dyn Fn(&mut Fragment)>)> = vec![
            ("version", Box::new(|f| f.version = 9)),
            ("defined twice", Box::new(|f| f.exchanges[1].id = 0)),
            ("does not exist", Box::new(|f| f.stages[1].output = 7)),
            ("producing stages", Box::new(|f| f.stages[1].output = 0)),
            (
                "gathers from the primary",
                Box::new(|f| {
                    f.exchanges[1].from = Place::Primary;
                }),
            ),
            ("no plan", Box::new(|f| f.stages[0].plan.clear())),
            ("table name", Box::new(|f| f.tables.push(String::new()))),
        ];
        for (want, break_it) in cases {
            let mut g = sample();
            break_it(&mut g);
            let e = Fragment::decode(&g.encode().unwrap()).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        // Expect: truncations and garbage are errors, never panics.
        let bytes = f.encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(Fragment::decode(&bytes[..cut]).is_err());
        }
    }
}
