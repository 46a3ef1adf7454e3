//! The cluster file: one TOML (or JSON, by extension `.json`) file every process of a
//! cluster reads. See `node/examples/cluster.toml` for a documented example.
//!
//! ```toml
//! secret = "change me"          # cluster secret (HMAC bootstrap; never sent)
//! fabric = "shm"                # shm | tcp | verbs
//! # verbs_device = "rxe0"       # verbs only; default: first device / $SMRDB_VERBS_DEVICE
//! # verbs_gid_index = 1         # verbs only; default: a RoCE v2 IPv4 GID
//! ring_mib = 16                 # receive ring per remote peer
//! arena_mib = 64                # outgoing arena
//! chunk_kib = 1024              # largest chunk a message is cut into (<= ring, <= arena)
//! # router_mode = "naive"       # smr (default) | naive: one copy per remote Tstore
//! task_timeout_s = 60           # how long the primary waits for Tstore replies
//! connect_timeout_s = 60        # how long a node waits for its peers at start
//! # max_intermediate_mib = 1024 # most intermediate results one query gathers (0: no limit)
//!
//! [primary]
//! node = 0
//! pg_host = "127.0.0.1"         # loopback only; "0.0.0.0" / "::" to serve other hosts
//! pg_port = 5432
//! auth = "trust"                # trust | md5 | scram-sha-256
//! # users = [{ name = "smrdb", password = "..." }]
//!
//! [[nodes]]
//! id = 0
//! router = "127.0.0.1:7100"     # the node's router listens here for peers
//! tstores = 2
//! ```
//!
//! ## Memory
//!
//! Each node's *common memory* is `(nodes - 1) x ring_mib + arena_mib` MiB, registered
//! once at start (on verbs it must fit under `ulimit -l`). Every message (requests,
//! replies, join-table chunks) is cut into chunks of at most `chunk_kib`, each built in
//! the outgoing arena and written into a peer's receive ring, so a chunk must fit in
//! both: [`ClusterFile::validate`] refuses a `chunk_kib` above the ring or the arena
//! (such a node could never send a full chunk). A ring or arena smaller than the data
//! only slows a query down (the sender stalls until the receiver releases); a row of a
//! join table larger than a chunk fails the query with SQLSTATE 54000 naming
//! `chunk_kib`.
//!
//! `max_intermediate_mib` bounds the intermediate results one query gathers on the
//! primary (the Arrow IPC bytes every Tstore returns, summed): a query that gathers
//! more fails with SQLSTATE 53200 naming the size and the setting. A session changes
//! its own bound with `SET smrdb.max_intermediate_mib = N` (`SHOW` prints it); 0 turns
//! it off.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smrdb_router::{Mode, NodeSpec, RouterConfig};
use smrdb_transport::{FabricConfig, FabricKind};

use crate::error::{Error, Result};

fn default_ring() -> usize {
    16
}
fn default_arena() -> usize {
    64
}
fn default_chunk() -> usize {
    1024
}
fn default_mode() -> Mode {
    Mode::Smr
}
fn is_smr(m: &Mode) -> bool {
    *m == Mode::Smr
}
fn default_task_timeout() -> u64 {
    60
}
fn default_connect_timeout() -> u64 {
    60
}
fn default_max_intermediate() -> u64 {
    crate::engine::DEFAULT_MAX_INTERMEDIATE_MIB
}
fn is_default_max_intermediate(m: &u64) -> bool {
    *m == default_max_intermediate()
}
/// Largest ring or arena, and largest common memory per node (1 TiB), in MiB.
const MAX_MEMORY_MIB: usize = 1 << 20;
/// Largest chunk (1 GiB), in KiB: router headers carry chunk lengths as 32 bits.
const MAX_CHUNK_KIB: usize = 1 << 20;
fn default_pg_host() -> String {
    "127.0.0.1".into()
}
fn default_pg_port() -> u16 {
    5432
}
fn is_trust(a: &AuthMethod) -> bool {
    *a == AuthMethod::Trust
}

/// How Postgres clients authenticate to the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMethod {
    /// No password: any user name is accepted (the local demo's default).
    #[default]
    #[serde(rename = "trust")]
    Trust,
    /// PostgreSQL's `md5` method: the client proves it knows the password with a
    /// salted MD5 hash. A user whose stored password is a SCRAM verifier is asked for
    /// SCRAM-SHA-256 instead, as PostgreSQL does.
    #[serde(rename = "md5")]
    Md5,
    /// SCRAM-SHA-256 (RFC 7677, without channel binding): the password never crosses
    /// the wire and the server proves it knows the verifier too.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
        })
    }
}

/// One Postgres user of the primary (`auth` other than `trust`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The user name clients connect as.
    pub name: String,
    /// The password: in clear, or as PostgreSQL stores it (`rolpassword`): an MD5
    /// hash `md5<32 hex digits>` (usable with `auth = "md5"` only) or a SCRAM
    /// verifier `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub password: String,
}

impl std::fmt::Debug for User {
    // Never print the password (or its hash).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The whole cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The cluster secret every node proves it knows.
    pub secret: String,
    /// The fabric.
    pub fabric: FabricKind,
    /// verbs: device name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbs_device: Option<String>,
    /// verbs: GID index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbs_gid_index: Option<u32>,
    /// Receive ring per remote peer, MiB.
    #[serde(default = "default_ring")]
    pub ring_mib: usize,
    /// Outgoing arena, MiB.
    #[serde(default = "default_arena")]
    pub arena_mib: usize,
    /// Largest message chunk, KiB: at most the ring and the arena.
    #[serde(default = "default_chunk")]
    pub chunk_kib: usize,
    /// How broadcasts reach remote Tstores: `smr` (one copy per remote node, fanned
    /// out there by pointer: the design) or `naive` (one copy per remote Tstore: the
    /// baseline experiments compare against).
    #[serde(default = "default_mode", skip_serializing_if = "is_smr")]
    pub router_mode: Mode,
    /// Seconds the primary waits for the replies to one task.
    #[serde(default = "default_task_timeout")]
    pub task_timeout_s: u64,
    /// Seconds a node waits for every peer at start.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: u64,
    /// Most intermediate results one query gathers on the primary, MiB (0: no limit):
    /// the default of the session setting `smrdb.max_intermediate_mib`.
    #[serde(
        default = "default_max_intermediate",
        skip_serializing_if = "is_default_max_intermediate"
    )]
    pub max_intermediate_mib: u64,
    /// The primary node.
    pub primary: Primary,
    /// Every node, in Tstore-id order (node i's Tstores follow node i-1's).
    pub nodes: Vec<NodeEntry>,
}

/// Which node is primary and where it speaks Postgres.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Primary {
    /// Node id of the primary.
    pub node: u32,
    /// Host (address) of the Postgres listener.
    #[serde(default = "default_pg_host")]
    pub pg_host: String,
    /// Port of the Postgres listener.
    #[serde(default = "default_pg_port")]
    pub pg_port: u16,
    /// How clients authenticate.
    #[serde(default, skip_serializing_if = "is_trust")]
    pub auth: AuthMethod,
    /// Who may connect when `auth` is not `trust`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Node id (unique).
    pub id: u32,
    /// `host:port` its router listens on for peers.
    pub router: String,
    /// Number of Tstores (worker threads) on it.
    pub tstores: u32,
}

impl ClusterFile {
    /// Reads and validates a cluster file: JSON when the name ends in `.json`, TOML
    /// otherwise.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file and the problem.
    pub fn load(path: &Path) -> Result<ClusterFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let is_json = path.extension().is_some_and(|e| e == "json");
        let cf = Self::parse(&text, is_json)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(cf)
    }

    /// Parses and validates cluster-file text.
    ///
    /// # Errors
    /// [`Error::Config`].
    pub fn parse(text: &str, json: bool) -> Result<ClusterFile> {
        let cf: ClusterFile = if json {
            serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?
        };
        cf.validate()?;
        Ok(cf)
    }

    /// Writes the file (TOML, or JSON for a `.json` name).
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = if path.extension().is_some_and(|e| e == "json") {
            serde_json::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))?
        } else {
            toml::to_string(self).map_err(|e| Error::Config(e.to_string()))?
        };
        std::fs::write(path, text)?;
        Ok(())
    }

    /// Checks the file's consistency.
    ///
    /// # Errors
    /// [`Error::Config`] describing the first problem.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.secret.is_empty() {
            return bad("the cluster secret is empty".into());
        }
        if self.nodes.is_empty() {
            return bad("no nodes".into());
        }
        let mut ids: Vec<u32> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.nodes.len() {
            return bad("duplicate node ids".into());
        }
        if self.nodes.iter().any(|n| n.id >= 0x7fff_0000) {
            return bad("node ids must be below 2147418112".into());
        }
        if !self.nodes.iter().any(|n| n.id == self.primary.node) {
            return bad(format!("primary node {} is not a node", self.primary.node));
        }
        if self.total_tstores() == 0 {
            return bad("the cluster has no Tstores".into());
        }
        for n in &self.nodes {
            if !n.router.contains(':') {
                return bad(format!(
                    "node {}: router address {:?} is not host:port",
                    n.id, n.router
                ));
            }
        }
        self.validate_memory()?;
        if self.task_timeout_s == 0 || self.connect_timeout_s == 0 {
            return bad("timeouts must be > 0".into());
        }
        if self.primary.pg_host.trim().is_empty() {
            return bad("primary.pg_host is empty".into());
        }
        self.validate_users()
    }

    /// The common-memory settings: sizes in range, and a chunk that fits in a ring and
    /// in the arena (else a node could never build or place a full chunk: its sends
    /// would wait forever).
    fn validate_memory(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.ring_mib == 0 || self.arena_mib == 0 || self.chunk_kib == 0 {
            return bad("ring_mib, arena_mib and chunk_kib must be > 0".into());
        }
        if self.ring_mib > MAX_MEMORY_MIB || self.arena_mib > MAX_MEMORY_MIB {
            return bad(format!(
                "ring_mib ({}) and arena_mib ({}) must be at most {MAX_MEMORY_MIB} (1 TiB)",
                self.ring_mib, self.arena_mib
            ));
        }
        if self.chunk_kib > MAX_CHUNK_KIB {
            return bad(format!(
                "chunk_kib ({}) must be at most {MAX_CHUNK_KIB} (1 GiB)",
                self.chunk_kib
            ));
        }
        let peers = self.nodes.len().saturating_sub(1);
        let common = self
            .ring_mib
            .saturating_mul(peers)
            .saturating_add(self.arena_mib);
        if common > MAX_MEMORY_MIB {
            return bad(format!(
                "common memory per node of {common} MiB ({peers} receive rings of ring_mib = {} \
                 plus arena_mib = {}) exceeds {MAX_MEMORY_MIB} MiB (1 TiB)",
                self.ring_mib, self.arena_mib
            ));
        }
        if self.chunk_kib > self.ring_mib * 1024 {
            return bad(format!(
                "chunk_kib ({} KiB) exceeds the receive ring (ring_mib = {} MiB): a chunk must \
                 fit in a ring; raise ring_mib (smrdb cluster --ring-mib) or lower chunk_kib \
                 (--chunk-kib)",
                self.chunk_kib, self.ring_mib
            ));
        }
        if self.chunk_kib > self.arena_mib * 1024 {
            return bad(format!(
                "chunk_kib ({} KiB) exceeds the outgoing arena (arena_mib = {} MiB): every chunk \
                 is built in the arena, so it must fit there; raise arena_mib (smrdb cluster \
                 --arena-mib) or lower chunk_kib (--chunk-kib)",
                self.chunk_kib, self.arena_mib
            ));
        }
        if self.max_intermediate_mib > crate::engine::MAX_INTERMEDIATE_MIB {
            return bad(format!(
                "max_intermediate_mib ({}) must be at most {} (0 = no limit)",
                self.max_intermediate_mib,
                crate::engine::MAX_INTERMEDIATE_MIB
            ));
        }
        Ok(())
    }

    fn validate_users(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let p = &self.primary;
        if p.auth != AuthMethod::Trust && p.users.is_empty() {
            return bad(format!(
                "primary.auth = \"{}\" needs at least one entry in primary.users",
                p.auth
            ));
        }
        let mut names: Vec<&str> = Vec::new();
        for u in &p.users {
            if u.name.is_empty() || u.name.contains('\0') {
                return bad("primary.users: a user name is empty or contains NUL".into());
            }
            if names.contains(&u.name.as_str()) {
                return bad(format!("primary.users: user {:?} is listed twice", u.name));
            }
            names.push(&u.name);
            if u.password.is_empty() {
                return bad(format!(
                    "primary.users: user {:?} has an empty password",
                    u.name
                ));
            }
            // Hashed forms must be well formed (the error never shows the value).
            if let Err(why) = crate::auth::check_password_form(&u.password) {
                return bad(format!("primary.users: user {:?}: {why}", u.name));
            }
            if p.auth == AuthMethod::ScramSha256 && crate::auth::is_md5_hash(&u.password) {
                return bad(format!(
                    "primary.users: user {:?} has an MD5 hash, which cannot be used with \
                     auth = \"scram-sha-256\" (give the password or a SCRAM verifier)",
                    u.name
                ));
            }
        }
        Ok(())
    }

    /// Total Tstores of the cluster.
    pub fn total_tstores(&self) -> u32 {
        self.nodes.iter().map(|n| n.tstores).sum()
    }

    /// The entry of node `id`.
    pub fn node(&self, id: u32) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Per-task reply timeout.
    pub fn task_timeout(&self) -> Duration {
        Duration::from_secs(self.task_timeout_s)
    }

    /// The router settings of node `me`.
    pub fn router_config(&self, me: u32) -> RouterConfig {
        let mut fc = FabricConfig::new(self.fabric, self.secret.as_bytes().to_vec());
        if self.verbs_device.is_some() {
            fc.device = self.verbs_device.clone();
        }
        if self.verbs_gid_index.is_some() {
            fc.gid_index = self.verbs_gid_index;
        }
        fc.connect_timeout = Duration::from_secs(self.connect_timeout_s.min(20));
        let nodes = self
            .nodes
            .iter()
            .map(|n| NodeSpec {
                id: n.id,
                addr: n.router.clone(),
                tstores: n.tstores,
            })
            .collect();
        let mut rc = RouterConfig::new(me, nodes, fc);
        rc.ring_bytes = self.ring_mib << 20;
        rc.arena_bytes = self.arena_mib << 20;
        rc.max_chunk = self.chunk_kib << 10;
        rc.mode = self.router_mode;
        rc.connect_timeout = Duration::from_secs(self.connect_timeout_s);
        rc.backpressure_timeout = self.task_timeout();
        rc
    }

    /// The cluster file of a local cluster on loopback: `nodes` nodes with `tstores`
    /// Tstores each, routers on `router_ports`, node 0 primary on `pg_port`.
    pub fn local(
        fabric: FabricKind,
        nodes: u32,
        tstores: u32,
        pg_port: u16,
        router_ports: &[u16],
        secret: String,
    ) -> ClusterFile {
        ClusterFile {
            secret,
            fabric,
            verbs_device: None,
            verbs_gid_index: None,
            ring_mib: 8,
            arena_mib: 32,
            chunk_kib: 1024,
            router_mode: Mode::Smr,
            task_timeout_s: default_task_timeout(),
            connect_timeout_s: default_connect_timeout(),
            max_intermediate_mib: default_max_intermediate(),
            primary: Primary {
                node: 0,
                pg_host: default_pg_host(),
                pg_port,
                auth: AuthMethod::Trust,
                users: Vec::new(),
            },
            nodes: (0..nodes)
                .map(|i| NodeEntry {
                    id: i,
                    router: format!("127.0.0.1:{}", router_ports[i as usize]),
                    tstores,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_round_trips() {
        let text = include_str!("../examples/cluster.toml");
        let cf = ClusterFile::parse(text, false).unwrap();
        assert_eq!(cf.nodes.len(), 2);
        assert_eq!(cf.total_tstores(), 4);
        let again = ClusterFile::parse(&toml::to_string(&cf).unwrap(), false).unwrap();
        assert_eq!(cf, again);
        let json = serde_json::to_string(&cf).unwrap();
        assert_eq!(ClusterFile::parse(&json, true).unwrap(), cf);
        let rc = cf.router_config(1);
        assert_eq!(rc.me, 1);
        assert_eq!(rc.ring_bytes, cf.ring_mib << 20);
        assert_eq!(rc.mode, Mode::Smr);
        let naive = text.replacen("router_mode = \"smr\"", "router_mode = \"naive\"", 1);
        let cf = ClusterFile::parse(&naive, false).unwrap();
        assert_eq!(cf.router_mode, Mode::Naive);
        assert_eq!(cf.router_config(0).mode, Mode::Naive);
        let without = text.replacen("router_mode = \"smr\"", "", 1);
        assert_eq!(
            ClusterFile::parse(&without, false).unwrap().router_mode,
            Mode::Smr
        );
    }

    #[test]
    fn bad_files_are_refused() {
        let text = include_str!("../examples/cluster.toml");
        for (from, to) in [
            ("node = 0", "node = 9"),
            ("fabric = \"shm\"", "fabric = \"ipoib\""),
            ("id = 1", "id = 0"),
            ("secret = ", "unknown_key = 1\nsecret = "),
            ("router_mode = \"smr\"", "router_mode = \"broadcast\""),
        ] {
            assert!(text.contains(from), "{from}");
            let t = text.replacen(from, to, 1);
            assert!(ClusterFile::parse(&t, false).is_err(), "{to} accepted");
        }
    }

    #[test]
    fn memory_settings_are_checked() {
        let text = include_str!("../examples/cluster.toml");
        let cf = ClusterFile::parse(text, false).unwrap();
        assert_eq!(
            cf.max_intermediate_mib,
            crate::engine::DEFAULT_MAX_INTERMEDIATE_MIB
        );
        // Written only when it differs from the default; read back either way.
        assert!(!toml::to_string(&cf)
            .unwrap()
            .contains("max_intermediate_mib"));
        let set = |from: &str, to: &str| {
            let mut t = text.to_string();
            // `a|b` -> `c|d`: replace a with c, then b with d.
            for (f, n) in from.split('|').zip(to.split('|')) {
                assert!(t.contains(f), "{f}");
                t = t.replacen(f, n, 1);
            }
            ClusterFile::parse(&t, false)
        };
        let cf = set(
            "task_timeout_s = 60",
            "task_timeout_s = 60\nmax_intermediate_mib = 0",
        )
        .unwrap();
        assert_eq!(cf.max_intermediate_mib, 0);
        let cf = set(
            "task_timeout_s = 60",
            "task_timeout_s = 60\nmax_intermediate_mib = 8",
        )
        .unwrap();
        assert_eq!(cf.max_intermediate_mib, 8);
        let again = ClusterFile::parse(&toml::to_string(&cf).unwrap(), false).unwrap();
        assert_eq!(again, cf);
        // A chunk as large as the arena is fine; one larger never fits in it.
        set("arena_mib = 64\n", "arena_mib = 1\n").unwrap();
        for (from, to, words) in [
            (
                "arena_mib = 64",
                "arena_mib = 0",
                &["ring_mib, arena_mib and chunk_kib must be > 0"][..],
            ),
            (
                "arena_mib = 64|chunk_kib = 1024",
                "arena_mib = 1|chunk_kib = 1025",
                &[
                    "chunk_kib (1025 KiB) exceeds the outgoing arena (arena_mib = 1 MiB)",
                    "--arena-mib",
                ][..],
            ),
            (
                "chunk_kib = 1024",
                "chunk_kib = 32768",
                &[
                    "chunk_kib (32768 KiB) exceeds the receive ring (ring_mib = 16 MiB)",
                    "--ring-mib",
                ][..],
            ),
            (
                "ring_mib = 16",
                "ring_mib = 17592186044416",
                &["at most 1048576"][..],
            ),
            (
                "ring_mib = 16",
                "ring_mib = 1048560",
                &["common memory per node"][..],
            ),
            (
                "chunk_kib = 1024",
                "chunk_kib = 4194304",
                &["at most 1048576 (1 GiB)"][..],
            ),
            (
                "task_timeout_s = 60",
                "max_intermediate_mib = 99999999999",
                &["max_intermediate_mib"][..],
            ),
        ] {
            let e = set(from, to).unwrap_err().to_string();
            for w in words {
                assert!(e.contains(w), "{to}: {e}");
            }
        }
    }

    #[test]
    fn auth_settings_parse_and_are_checked() {
        let text = include_str!("../examples/cluster.toml");
        let cf = ClusterFile::parse(text, false).unwrap();
        assert_eq!(cf.primary.auth, AuthMethod::Trust);
        assert_eq!(cf.primary.pg_host, "127.0.0.1");
        let users = "auth = \"trust\"\nusers = [{ name = \"smrdb\", password = \"pw\" }, \
                     { name = \"md\", password = \"md5a3556571e93b0d20722ba62be61e8c2d\" }]";
        for (auth, ok) in [("md5", true), ("scram-sha-256", false), ("trust", true)] {
            let t = text.replacen("auth = \"trust\"", &users.replace("trust", auth), 1);
            let r = ClusterFile::parse(&t, false);
            assert_eq!(r.is_ok(), ok, "{auth}: {r:?}");
            if let Ok(cf) = r {
                // Round trip, and Debug never shows a password.
                let again = ClusterFile::parse(&toml::to_string(&cf).unwrap(), false).unwrap();
                assert_eq!(again, cf);
                let dbg = format!("{cf:?}");
                assert!(!dbg.contains("\"pw\"") && !dbg.contains("md5a35"), "{dbg}");
            }
        }
        for bad in [
            "auth = \"scram-sha-256\"",
            "auth = \"password\"",
            "auth = \"md5\"\nusers = [{ name = \"a\", password = \"x\" }, { name = \"a\", password = \"y\" }]",
            "auth = \"md5\"\nusers = [{ name = \"\", password = \"x\" }]",
            "auth = \"md5\"\nusers = [{ name = \"a\", password = \"\" }]",
            "auth = \"md5\"\nusers = [{ name = \"a\", password = \"SCRAM-SHA-256$1:x$y:z\" }]",
            "auth = \"md5\"\nusers = [{ name = \"a\", pass = \"x\" }]",
        ] {
            let t = text.replacen("auth = \"trust\"", bad, 1);
            assert!(ClusterFile::parse(&t, false).is_err(), "{bad} accepted");
        }
        assert!(ClusterFile::parse(
            &text.replacen("pg_host = \"127.0.0.1\"", "pg_host = \" \"", 1),
            false
        )
        .is_err());
        // The local demo's file is trust and loopback.
        let local = ClusterFile::local(FabricKind::Shm, 1, 1, 5432, &[7000], "s".into());
        assert_eq!(local.primary.auth, AuthMethod::Trust);
        assert_eq!(local.primary.pg_host, "127.0.0.1");
    }
}
