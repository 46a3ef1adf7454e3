//! Starting, attaching to and stopping the smrdb clusters experiments run against.
//!
//! * [`Cluster::start_local`]: `smrdb cluster` on loopback (one process per node), in
//!   its own process group so the harness alone decides when it stops (a Ctrl-C in
//!   the terminal reaches the harness, not the nodes). Its stdout/stderr are appended
//!   to `<log_dir>/cluster.log`, each node logs to `<log_dir>/node-<id>.log`.
//! * [`Cluster::from_file`]: a cluster described by a cluster file (see
//!   `node/examples/cluster.toml`), its nodes started by hand ([`Launch::Print`]), over
//!   ssh ([`Launch::Ssh`]) or already running ([`Launch::Running`]).
//!
//! A cluster is *ready* when its primary accepts a Postgres connection and the router
//! system table `smrdb_router` answers with a row for every (node, peer) pair: that
//! query is a request every Tstore of every node must answer, so it proves the whole
//! cluster is up (and, when tables exist, `smrdb_tstores` must list every Tstore). A
//! cluster that exits or is not ready in time is stopped and the error shows the last
//! lines of every log.
//!
//! [`Cluster::stop`] stops it cleanly (SIGINT to `smrdb cluster`, which stops its nodes;
//! SIGKILL to the whole process group after 20 s); dropping a [`Cluster`] does the same
//! best-effort, so no node process outlives it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use smrdb_node::config::ClusterFile;
use smrdb_router::Mode;
use smrdb_transport::FabricKind;

use crate::measure::pg_rows;

/// How long a started cluster may take to become ready (verbs in a slow VM included).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long [`Launch::Print`] waits for someone to start the nodes.
const PRINT_READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a stopping cluster may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Lines of each log shown when a cluster fails.
const TAIL_LINES: usize = 20;

/// The shape and settings of a local cluster ([`Cluster::start_local`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// Fabric: `shm`, `tcp` or `verbs`.
    pub fabric: String,
    /// Number of nodes (one process each).
    pub nodes: u32,
    /// Tstores per node.
    pub tstores: u32,
    /// How broadcasts reach remote Tstores (SMR or the naive baseline).
    pub router_mode: Mode,
    /// verbs device (`--device`); the first device when None.
    pub device: Option<String>,
    /// Receive ring per remote peer, MiB.
    pub ring_mib: usize,
    /// Largest chunk a message is cut into, KiB.
    pub chunk_kib: usize,
    /// Data directory (durable writes); volatile when None.
    pub data_dir: Option<PathBuf>,
}

impl ClusterSpec {
    /// `nodes` x `tstores` on `fabric`, SMR router, 8 MiB rings, 1024 KiB chunks,
    /// volatile.
    pub fn new(fabric: &str, nodes: u32, tstores: u32) -> ClusterSpec {
        ClusterSpec {
            fabric: fabric.to_string(),
            nodes,
            tstores,
            router_mode: Mode::Smr,
            device: None,
            ring_mib: 8,
            chunk_kib: 1024,
            data_dir: None,
        }
    }

    /// A short label for reports, e.g. `2x2 shm smr`.
    pub fn label(&self) -> String {
        format!(
            "{}x{} {} {}",
            self.nodes,
            self.tstores,
            self.fabric,
            mode_name(self.router_mode)
        )
    }

    /// Refuses settings `smrdb cluster` would refuse, with a clear message.
    fn validate(&self) -> Result<()> {
        self.fabric
            .parse::<FabricKind>()
            .map_err(|_| anyhow!("unknown fabric {:?}: shm, tcp or verbs", self.fabric))?;
        if self.nodes == 0 || self.tstores == 0 {
            bail!("a cluster needs at least 1 node and 1 Tstore per node");
        }
        if self.ring_mib == 0 || self.chunk_kib == 0 {
            bail!("ring_mib and chunk_kib must be at least 1");
        }
        if self.chunk_kib > self.ring_mib.saturating_mul(1024) {
            bail!(
                "chunk_kib ({}) must not exceed the ring ({} MiB)",
                self.chunk_kib,
                self.ring_mib
            );
        }
        Ok(())
    }
}

/// `smr` or `naive`.
fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Smr => "smr",
        Mode::Naive => "naive",
    }
}

/// How a cluster described by a file gets its nodes started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// Print, per node, the command to run on its host, then wait for the cluster (up
    /// to 10 minutes).
    Print,
    /// Start every node with `ssh -o BatchMode=yes <host> smrdb node --cluster <file>
    /// --id N --stop-on-eof` (the host taken from the node's router address; `smrdb` on
    /// the remote PATH and the cluster file at the same path there); stopping closes
    /// ssh's stdin, which stops the remote node.
    Ssh,
    /// The nodes are already running: only wait for them.
    Running,
}

/// The processes behind a [`Cluster`].
enum Procs {
    /// `smrdb cluster`, leader of its own process group (its nodes are in it too).
    Local(Child),
    /// One `ssh` per node (each in its own process group), by node id.
    Ssh(Vec<(u32, Child)>),
    /// Started by someone else; nothing to stop.
    External,
}

/// A running cluster the harness talks to.
pub struct Cluster {
    label: String,
    fabric: String,
    nodes: u32,
    tstores_total: u32,
    /// Node ids, for the log files.
    node_ids: Vec<u32>,
    pg_host: String,
    pg_port: u16,
    log_dir: PathBuf,
    /// None once stopped.
    procs: Option<Procs>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("label", &self.label)
            .field("primary", &format!("{}:{}", self.pg_host, self.pg_port))
            .field("log_dir", &self.log_dir)
            .finish()
    }
}

/// The `smrdb` binary: `$SMRDB_BIN`, else next to this executable, else (for test and
/// example executables in `target/<profile>/deps` or `examples`) one directory up.
///
/// # Errors
/// No binary found: the message says how to build it.
pub fn smrdb_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SMRDB_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("SMRDB_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let me = std::env::current_exe().context("cannot find the current executable")?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", me.display()))?;
    let mut tried = vec![dir.join("smrdb")];
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        if let Some(up) = dir.parent() {
            tried.push(up.join("smrdb"));
        }
    }
    if let Some(p) = tried.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    bail!(
        "the smrdb binary is missing (looked for {}): build it with `cargo build --release -p smrdb-node` or set SMRDB_BIN",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// How long to wait for readiness and when to give up early.
struct Wait<'a> {
    timeout: Duration,
    should_stop: &'a dyn Fn() -> bool,
}

impl Cluster {
    /// Starts `smrdb cluster` for `spec` on loopback (a free Postgres port), with the
    /// node logs in `log_dir` (created if needed), and waits up to 90 s until it is
    /// ready.
    ///
    /// # Errors
    /// Bad settings, a missing `smrdb` binary, a cluster that exits or is not ready in
    /// time (it is stopped; the message has the tail of every log).
    pub fn start_local(spec: &ClusterSpec, log_dir: &Path) -> Result<Cluster> {
        Self::start_local_until(spec, log_dir, &|| false)
    }

    /// [`Cluster::start_local`], giving up (and stopping what was started) as soon as
    /// `should_stop` returns true while waiting for readiness (a Ctrl-C handler's flag).
    ///
    /// # Errors
    /// As [`Cluster::start_local`], and a stop request.
    pub fn start_local_until(
        spec: &ClusterSpec,
        log_dir: &Path,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Cluster> {
        Self::start_local_with(
            spec,
            log_dir,
            &Wait {
                timeout: READY_TIMEOUT,
                should_stop,
            },
        )
    }

    fn start_local_with(spec: &ClusterSpec, log_dir: &Path, wait: &Wait) -> Result<Cluster> {
        spec.validate()?;
        let bin = smrdb_binary()?;
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("cannot create the log directory {}", log_dir.display()))?;
        let log_path = log_dir.join("cluster.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let port = free_port()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("cluster")
            .args(["--nodes", &spec.nodes.to_string()])
            .args(["--tstores", &spec.tstores.to_string()])
            .args(["--fabric", &spec.fabric])
            .args(["--port", &port.to_string()])
            .args(["--router-mode", mode_name(spec.router_mode)])
            .args(["--ring-mib", &spec.ring_mib.to_string()])
            .args(["--chunk-kib", &spec.chunk_kib.to_string()])
            .arg("--log-dir")
            .arg(log_dir);
        if let Some(d) = &spec.data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        if let Some(d) = &spec.device {
            cmd.args(["--device", d]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a terminal's Ctrl-C reaches the harness only, and
            // stopping can signal every node the cluster spawned.
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut c = Cluster {
            label: spec.label(),
            fabric: spec.fabric.clone(),
            nodes: spec.nodes,
            tstores_total: spec.nodes.saturating_mul(spec.tstores),
            node_ids: (0..spec.nodes).collect(),
            pg_host: "127.0.0.1".into(),
            pg_port: port,
            log_dir: log_dir.to_path_buf(),
            procs: Some(Procs::Local(child)),
        };
        c.become_ready(wait)?;
        Ok(c)
    }

    /// Attaches to the cluster described by `file`, starting its nodes as `launch`
    /// says, and waits until it is ready (90 s; 10 minutes for [`Launch::Print`]).
    /// `log_dir` (created if needed) gets the ssh output per node (`node-<id>.log`).
    ///
    /// # Errors
    /// An unreadable or invalid file, ssh that cannot be started, a cluster that is
    /// not ready in time (what was started is stopped; the message has the log tails).
    pub fn from_file(file: &Path, launch: Launch, log_dir: &Path) -> Result<Cluster> {
        Self::from_file_until(file, launch, log_dir, &|| false)
    }

    /// [`Cluster::from_file`], giving up (and stopping what was started) as soon as
    /// `should_stop` returns true while waiting for readiness.
    ///
    /// # Errors
    /// As [`Cluster::from_file`], and a stop request.
    pub fn from_file_until(
        file: &Path,
        launch: Launch,
        log_dir: &Path,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Cluster> {
        let timeout = match launch {
            Launch::Print => PRINT_READY_TIMEOUT,
            Launch::Ssh | Launch::Running => READY_TIMEOUT,
        };
        Self::from_file_with(
            file,
            launch,
            log_dir,
            &Wait {
                timeout,
                should_stop,
            },
            &mut std::io::stdout(),
        )
    }

    fn from_file_with(
        file: &Path,
        launch: Launch,
        log_dir: &Path,
        wait: &Wait,
        out: &mut dyn std::io::Write,
    ) -> Result<Cluster> {
        let cf = ClusterFile::load(file)
            .map_err(|e| anyhow!("{e}"))
            .context("cannot use the cluster file")?;
        // Remote hosts resolve the path from the login directory: make it absolute.
        let file = std::fs::canonicalize(file)
            .with_context(|| format!("cannot resolve {}", file.display()))?;
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("cannot create the log directory {}", log_dir.display()))?;
        let (pg_host, pg_port) = primary_address(&cf);
        let commands = node_commands(&file, &cf);
        let procs = match launch {
            Launch::Running => Procs::External,
            Launch::Print => {
                for line in print_lines(&commands, &pg_host, pg_port, wait.timeout) {
                    writeln!(out, "{line}")?;
                }
                out.flush()?;
                Procs::External
            }
            Launch::Ssh => Procs::Ssh(start_ssh(&commands, log_dir)?),
        };
        let same = cf.nodes.iter().all(|n| n.tstores == cf.nodes[0].tstores);
        let shape = if same {
            format!("{}x{}", cf.nodes.len(), cf.nodes[0].tstores)
        } else {
            format!("{} nodes/{} tstores", cf.nodes.len(), cf.total_tstores())
        };
        let mut c = Cluster {
            label: format!(
                "{shape} {} {}",
                cf.fabric.as_str(),
                mode_name(cf.router_mode)
            ),
            fabric: cf.fabric.as_str().to_string(),
            nodes: u32::try_from(cf.nodes.len()).context("too many nodes")?,
            tstores_total: cf.total_tstores(),
            node_ids: cf.nodes.iter().map(|n| n.id).collect(),
            pg_host,
            pg_port,
            log_dir: log_dir.to_path_buf(),
            procs: Some(procs),
        };
        c.become_ready(wait)?;
        Ok(c)
    }

    /// A new Postgres connection to the primary.
    ///
    /// # Errors
    /// The primary does not accept it.
    pub fn client(&self) -> Result<postgres::Client> {
        postgres::Client::connect(&self.conn_string(10), postgres::NoTls)
            .with_context(|| format!("cannot connect to the primary at {}", self.primary()))
    }

    /// Number of nodes.
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// Tstores of all nodes together.
    pub fn tstores_total(&self) -> u32 {
        self.tstores_total
    }

    /// The fabric (`shm`, `tcp`, `verbs`).
    pub fn fabric(&self) -> &str {
        &self.fabric
    }

    /// A short label for reports, e.g. `2x2 shm smr`.
    pub fn label(&self) -> String {
        self.label.clone()
    }

    /// Where the logs are (`cluster.log`, `node-<id>.log`).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// `host:port` of the primary's Postgres front end.
    pub fn primary(&self) -> String {
        if self.pg_host.contains(':') {
            format!("[{}]:{}", self.pg_host, self.pg_port)
        } else {
            format!("{}:{}", self.pg_host, self.pg_port)
        }
    }

    /// The psql command that connects to the primary.
    pub fn psql_command(&self) -> String {
        format!(
            "psql -h {} -p {} -U smrdb smrdb",
            self.pg_host, self.pg_port
        )
    }

    /// Whether every process the harness started still runs (always Ok for clusters
    /// started by someone else).
    ///
    /// # Errors
    /// Which process exited, with the log tails.
    pub fn check(&mut self) -> Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(what) => bail!("{what}\n{}", self.log_tails()),
        }
    }

    /// Stops the cluster cleanly: SIGINT to `smrdb cluster` (which stops its nodes),
    /// SIGKILL to its whole process group after 20 s; for ssh-started nodes, closes
    /// every ssh's stdin and kills those still running after 20 s. A cluster the
    /// harness did not start is left running.
    ///
    /// # Errors
    /// The cluster had to be killed, or exited with a failure (log tails included).
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    /// Stops whatever the harness started (once).
    fn shutdown(&mut self) -> Result<()> {
        match self.procs.take() {
            None | Some(Procs::External) => Ok(()),
            Some(Procs::Local(mut child)) => {
                let r = stop_local(&mut child);
                r.map_err(|e| anyhow!("{e}\n{}", self.log_tails()))
            }
            Some(Procs::Ssh(mut children)) => {
                let r = stop_ssh(&mut children);
                r.map_err(|e| anyhow!("{e}\n{}", self.log_tails()))
            }
        }
    }

    /// The first started process found exited, described; None when all run.
    fn exited(&mut self) -> Option<String> {
        match self.procs.as_mut()? {
            Procs::External => None,
            Procs::Local(child) => match has_exited(child.id()) {
                Ok(false) => None,
                Ok(true) => Some("smrdb cluster exited".to_string()),
                Err(e) => Some(format!("cannot watch smrdb cluster: {e}")),
            },
            Procs::Ssh(children) => children.iter_mut().find_map(|(id, c)| match c.try_wait() {
                Ok(None) => None,
                Ok(Some(st)) => Some(format!("node {id} (ssh) exited ({st})")),
                Err(e) => Some(format!("cannot watch node {id} (ssh): {e}")),
            }),
        }
    }

    fn conn_string(&self, connect_timeout_s: u32) -> String {
        format!(
            "host={} port={} user=smrdb dbname=smrdb connect_timeout={connect_timeout_s}",
            self.pg_host, self.pg_port
        )
    }

    /// Waits until the cluster is ready; on failure stops it and returns an error with
    /// the log tails.
    fn become_ready(&mut self, wait: &Wait) -> Result<()> {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        let failure = loop {
            if let Some(what) = self.exited() {
                break format!("{what} before the cluster was ready (last check: {last})");
            }
            if (wait.should_stop)() {
                break "stop requested while waiting for the cluster".to_string();
            }
            if start.elapsed() >= wait.timeout {
                break format!(
                    "not ready within {} s (last check: {last})",
                    wait.timeout.as_secs()
                );
            }
            let left = wait.timeout.saturating_sub(start.elapsed());
            let connect_s = left.as_secs().clamp(1, 5) as u32;
            match postgres::Client::connect(&self.conn_string(connect_s), postgres::NoTls) {
                Ok(mut client) => match probe(&mut client, self.nodes, self.tstores_total) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                },
                Err(e) => last = format!("connect to {}: {e}", self.primary()),
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        // Stop first, so the logs are complete when we read them.
        let stopped = self.shutdown().err();
        let mut msg = format!("cluster {} at {}: {failure}", self.label, self.primary());
        if let Some(e) = stopped {
            // shutdown's error already carries the log tails.
            msg += &format!("\nwhile stopping it: {e}");
        } else {
            msg += &format!("\n{}", self.log_tails());
        }
        Err(anyhow!(msg))
    }

    /// The last lines of `cluster.log` and every node's log that exist.
    fn log_tails(&self) -> String {
        let mut names = vec!["cluster.log".to_string()];
        names.extend(self.node_ids.iter().map(|id| format!("node-{id}.log")));
        let mut s = String::new();
        for n in names {
            let p = self.log_dir.join(&n);
            if let Ok(t) = tail_lines(&p, TAIL_LINES) {
                s += &format!("--- last lines of {} ---\n{t}\n", p.display());
            }
        }
        if s.is_empty() {
            s = format!("(no logs in {})", self.log_dir.display());
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("smrdb-harness: stopping cluster {}: {e}", self.label);
        }
    }
}

/// One readiness check: the router table answers with every (node, peer) pair, and
/// `smrdb_tstores`, when tables exist, lists every Tstore.
fn probe(c: &mut postgres::Client, nodes: u32, tstores: u32) -> Result<(), String> {
    let num = |rows: &[Vec<String>], i: usize| -> Result<u64, String> {
        rows.first()
            .and_then(|r| r.get(i))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("unexpected answer {rows:?}"))
    };
    let rows = pg_rows(c, "SELECT count(*), count(DISTINCT node) FROM smrdb_router")
        .map_err(|e| format!("smrdb_router: {e}"))?;
    let (pairs, seen) = (num(&rows, 0)?, num(&rows, 1)?);
    let n = u64::from(nodes);
    let want_seen = if nodes > 1 { n } else { 0 };
    if pairs != n * (n - 1) || seen != want_seen {
        return Err(format!(
            "smrdb_router has {pairs} (node, peer) rows from {seen} node(s); a cluster of {nodes} node(s) has {} from {want_seen}",
            n * (n - 1)
        ));
    }
    let rows = pg_rows(c, "SELECT count(DISTINCT tstore) FROM smrdb_tstores")
        .map_err(|e| format!("smrdb_tstores: {e}"))?;
    let listed = num(&rows, 0)?;
    if listed != 0 && listed != u64::from(tstores) {
        return Err(format!(
            "smrdb_tstores lists {listed} Tstores, expected {tstores}"
        ));
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free port")?
        .port())
}

/// The host part of `host:port` or `[v6]:port`.
fn router_host(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((h, _)) = rest.split_once(']') {
            return h;
        }
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// Where to reach the primary's Postgres front end: its `pg_host`, or the primary
/// node's router host when it listens on every address.
fn primary_address(cf: &ClusterFile) -> (String, u16) {
    let h = cf.primary.pg_host.trim();
    let host = if h.is_empty() || h == "0.0.0.0" || h == "::" || h == "[::]" {
        cf.node(cf.primary.node)
            .map(|n| router_host(&n.router).to_string())
            .unwrap_or_else(|| "127.0.0.1".into())
    } else {
        h.trim_start_matches('[').trim_end_matches(']').to_string()
    };
    (host, cf.primary.pg_port)
}

/// The command that starts one node on its host.
#[derive(Debug, Clone, PartialEq)]
struct NodeCommand {
    id: u32,
    host: String,
    /// `smrdb node --cluster <file> --id N`, one argument each.
    args: Vec<String>,
}

impl NodeCommand {
    /// The command as one shell line.
    fn line(&self) -> String {
        self.args
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn node_commands(file: &Path, cf: &ClusterFile) -> Vec<NodeCommand> {
    cf.nodes
        .iter()
        .map(|n| NodeCommand {
            id: n.id,
            host: router_host(&n.router).to_string(),
            args: vec![
                "smrdb".into(),
                "node".into(),
                "--cluster".into(),
                file.display().to_string(),
                "--id".into(),
                n.id.to_string(),
            ],
        })
        .collect()
}

/// What [`Launch::Print`] prints.
fn print_lines(cmds: &[NodeCommand], pg_host: &str, pg_port: u16, wait: Duration) -> Vec<String> {
    let mut v = vec![
        "start every node on its host (the cluster file must be at the same path there):"
            .to_string(),
    ];
    for c in cmds {
        v.push(format!("  on {}: {}", c.host, c.line()));
    }
    v.push(format!(
        "waiting up to {} s for the primary at {pg_host}:{pg_port} ...",
        wait.as_secs()
    ));
    v
}

/// `s` quoted for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Starts one `ssh` per node; stops those already started when one fails.
fn start_ssh(cmds: &[NodeCommand], log_dir: &Path) -> Result<Vec<(u32, Child)>> {
    let mut children: Vec<(u32, Child)> = Vec::new();
    for c in cmds {
        let started = (|| -> Result<Child> {
            let path = log_dir.join(format!("node-{}.log", c.id));
            let log =
                File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            let remote = format!("{} --stop-on-eof", c.line());
            Command::new("ssh")
                .args(["-o", "BatchMode=yes", &c.host, &remote])
                .stdin(Stdio::piped())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .with_context(|| format!("cannot run ssh for node {} on {}", c.id, c.host))
        })();
        match started {
            Ok(child) => children.push((c.id, child)),
            Err(e) => {
                if let Err(stop) = stop_ssh(&mut children) {
                    eprintln!("smrdb-harness: {stop}");
                }
                return Err(e);
            }
        }
    }
    Ok(children)
}

/// Closes every ssh's stdin (the remote node stops on EOF) and waits; kills what is
/// still running after the grace period.
fn stop_ssh(children: &mut Vec<(u32, Child)>) -> Result<()> {
    for (_, c) in children.iter_mut() {
        drop(c.stdin.take());
    }
    let deadline = Instant::now() + STOP_GRACE;
    let mut problems = Vec::new();
    for (id, c) in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(st)) => {
                    if !st.success() {
                        problems.push(format!("node {id} (ssh) exited with {st}"));
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) | Err(_) => {
                    let _ = c.kill();
                    let _ = c.wait();
                    problems.push(format!(
                        "node {id} (ssh) did not stop within {} s; killed",
                        STOP_GRACE.as_secs()
                    ));
                    break;
                }
            }
        }
    }
    children.clear();
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("; "))
    }
}

/// Whether child `pid` has exited, without reaping it: while it is an unreaped zombie
/// its pid (and so its process-group id) cannot be reused, so signalling the group
/// afterwards cannot hit a stranger.
fn has_exited(pid: u32) -> std::io::Result<bool> {
    let id = libc::id_t::from(pid);
    // SAFETY: siginfo_t is plain old data for which all-zero bytes are a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t that outlives the call; waitid
    // with WNOWAIT only inspects our own child `pid`, leaving it waitable.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            id,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` (or left it zeroed when nothing happened, as
    // WNOHANG documents); si_pid is valid for the SIGCHLD info waitid returns.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Sends `sig` to process group `pgid`; a group that no longer exists is fine.
fn signal_group(pgid: u32, sig: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals the process group the harness
    // created (process_group(0) made the child its leader, and the leader is not yet
    // reaped, so the id is still ours); no memory is involved.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Stops `smrdb cluster`: SIGINT (it stops its nodes), SIGKILL to the whole group
/// after the grace period; then the group is killed anyway (a node left behind goes
/// too) and the leader reaped.
fn stop_local(child: &mut Child) -> Result<()> {
    let pid = child.id();
    let mut clean = matches!(has_exited(pid), Ok(true));
    let already = clean;
    if !already {
        if let Ok(p) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) on our own unreaped child; no memory is involved.
            unsafe {
                libc::kill(p, libc::SIGINT);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match has_exited(pid) {
                Ok(true) => {
                    clean = true;
                    break;
                }
                Ok(false) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
    }
    signal_group(pid, libc::SIGKILL);
    let status: ExitStatus = child.wait().context("cannot wait for smrdb cluster")?;
    if !clean {
        bail!(
            "smrdb cluster did not stop within {} s of SIGINT; killed it and its nodes",
            STOP_GRACE.as_secs()
        );
    }
    if !status.success() {
        bail!(
            "smrdb cluster {}exited with {status}",
            if already { "had already " } else { "" }
        );
    }
    Ok(())
}

/// The last `n` lines of a (possibly large) text file.
fn tail_lines(path: &Path, n: usize) -> std::io::Result<String> {
    const WINDOW: u64 = 64 * 1024;
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines[lines.len().saturating_sub(n)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
secret = "s"
fabric = "tcp"
router_mode = "naive"
[primary]
node = 0
pg_host = "0.0.0.0"
pg_port = PORT
[[nodes]]
id = 0
router = "10.0.0.1:7100"
tstores = 2
[[nodes]]
id = 1
router = "[fe80::2]:7100"
tstores = 3
"#;

    #[test]
    fn spec_label_and_validation() {
        let mut s = ClusterSpec::new("shm", 2, 2);
        assert_eq!(s.label(), "2x2 shm smr");
        assert_eq!((s.ring_mib, s.chunk_kib), (8, 1024));
        s.router_mode = Mode::Naive;
        assert_eq!(s.label(), "2x2 shm naive");
        assert!(s.validate().is_ok());
        s.fabric = "ipoib".into();
        assert!(s.validate().unwrap_err().to_string().contains("ipoib"));
        let mut s = ClusterSpec::new("tcp", 0, 2);
        assert!(s.validate().is_err());
        s.nodes = 1;
        s.chunk_kib = 9 * 1024;
        assert!(s.validate().unwrap_err().to_string().contains("chunk_kib"));
    }

    #[test]
    fn hosts_and_quoting() {
        assert_eq!(router_host("10.0.0.1:7100"), "10.0.0.1");
        assert_eq!(router_host("[fe80::2]:7100"), "fe80::2");
        assert_eq!(router_host("node3.lan:1"), "node3.lan");
        assert_eq!(shell_quote("/a/b-c.toml"), "/a/b-c.toml");
        assert_eq!(shell_quote("/my dir/it's"), r"'/my dir/it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn print_lists_every_node_command() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("my cluster.toml");
        std::fs::write(&file, FILE.replace("PORT", "5999")).unwrap();
        let cf = ClusterFile::load(&file).unwrap();
        let (host, port) = primary_address(&cf);
        assert_eq!((host.as_str(), port), ("10.0.0.1", 5999));
        let cmds = node_commands(&file, &cf);
        let lines = print_lines(&cmds, &host, port, Duration::from_secs(600));
        let q = shell_quote(&file.display().to_string());
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[1],
            format!("  on 10.0.0.1: smrdb node --cluster {q} --id 0")
        );
        assert_eq!(
            lines[2],
            format!("  on fe80::2: smrdb node --cluster {q} --id 1")
        );
        assert!(lines[3].contains("10.0.0.1:5999"), "{}", lines[3]);
    }

    #[test]
    fn not_ready_error_names_the_problem_and_shows_logs() {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let file = dir.path().join("cluster.toml");
        std::fs::write(
            &file,
            FILE.replace("PORT", &port.to_string())
                .replace("0.0.0.0", "127.0.0.1"),
        )
        .unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let lines: String = (0..30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(logs.join("node-1.log"), lines).unwrap();
        let mut out = Vec::new();
        let wait = Wait {
            timeout: Duration::from_millis(600),
            should_stop: &|| false,
        };
        let e = Cluster::from_file_with(&file, Launch::Print, &logs, &wait, &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not ready within"), "{e}");
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(e.contains("line 29") && e.contains("line 10"), "{e}");
        assert!(!e.contains("line 9\n"), "{e}");
        let printed = String::from_utf8(out).unwrap();
        assert!(printed.contains("--id 1"), "{printed}");

        // A stop request ends the wait at once.
        let wait = Wait {
            timeout: Duration::from_secs(60),
            should_stop: &|| true,
        };
        let t = Instant::now();
        let e = Cluster::from_file_with(&file, Launch::Running, &logs, &wait, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("stop requested"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn bad_cluster_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "secret = \"\"").unwrap();
        let e = Cluster::from_file(&file, Launch::Running, dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("c.toml"), "{e:#}");
        let e = Cluster::from_file(&dir.path().join("none.toml"), Launch::Running, dir.path())
            .unwrap_err();
        assert!(format!("{e:#}").contains("none.toml"), "{e:#}");
    }

    #[test]
    fn tails_are_short() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        let big: String = (0..100_000).map(|i| format!("l{i}\n")).collect();
        std::fs::write(&p, big).unwrap();
        let t = tail_lines(&p, 3).unwrap();
        assert_eq!(t, "l99997\nl99998\nl99999");
    }
}
