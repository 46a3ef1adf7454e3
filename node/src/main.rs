//! `smrdb`: run a node, a local cluster, or SQL against a running cluster.
//!
//! ```text
//! smrdb node --cluster FILE --id K [--data-dir D]
//! smrdb cluster --nodes N --tstores T --fabric shm|tcp|verbs [--port P] [--data-dir D]
//! smrdb sql [--host H] [--port P] [-c STATEMENT]
//! ```

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use smrdb_node::config::ClusterFile;
use smrdb_node::node::{self, Exit, NodeOptions};
use smrdb_router::Mode;
use smrdb_transport::FabricKind;

#[derive(Parser)]
#[command(
    name = "smrdb",
    version,
    about = "smrdb: a distributed in-memory SQL database over shared memory routers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node of a cluster described by a cluster file.
    Node {
        /// The cluster file (TOML, or JSON when named *.json).
        #[arg(long)]
        cluster: PathBuf,
        /// This node's id.
        #[arg(long)]
        id: u32,
        /// Keep data under D/node-K (durable); volatile without it.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Stop when standard input reaches end of file (used by `smrdb cluster`).
        #[arg(long, hide = true)]
        stop_on_eof: bool,
    },
    /// Start a local cluster (one process per node, on loopback) in the foreground
    /// until Ctrl-C.
    Cluster(ClusterArgs),
    /// Run SQL against a running cluster: one statement with -c, else a shell.
    Sql {
        /// Host of the primary.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Postgres port of the primary.
        #[arg(long, short, default_value_t = 5432)]
        port: u16,
        /// User name (the password, when the cluster asks for one, is read from
        /// $PGPASSWORD).
        #[arg(long, short = 'U', default_value = "smrdb")]
        user: String,
        /// Run this and exit.
        #[arg(short = 'c')]
        command: Option<String>,
    },
}

/// The shape and settings of a local cluster.
#[derive(clap::Args)]
struct ClusterArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// Tstores per node.
    #[arg(long, default_value_t = 2)]
    tstores: u32,
    /// Fabric: shm, tcp or verbs.
    #[arg(long, default_value = "shm")]
    fabric: FabricKind,
    /// Postgres port of the primary.
    #[arg(long, default_value_t = 5432)]
    port: u16,
    /// Data directory (durable); volatile without it. The cluster file is written
    /// there too.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Restart a node that dies (needs --data-dir: it comes back with its data and
    /// the cluster readmits it).
    #[arg(long, requires = "data_dir")]
    restart: bool,
    /// verbs device.
    #[arg(long)]
    device: Option<String>,
    /// How broadcasts reach remote Tstores: smr (one copy per remote node) or naive
    /// (one copy per remote Tstore).
    #[arg(long, default_value = "smr")]
    router_mode: Mode,
    /// Receive ring per remote peer, MiB.
    #[arg(long, default_value_t = 8)]
    ring_mib: usize,
    /// Outgoing arena per node, MiB.
    #[arg(long, default_value_t = 32)]
    arena_mib: usize,
    /// Largest chunk a message is cut into, KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: usize,
    /// Append each node's log to DIR/node-<id>.log instead of this terminal.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SMRDB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            report_error(&e);
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes a fatal error to stderr in one `write` call per part, so that the errors of
/// nodes that share a terminal (the children of `smrdb cluster`, which often fail
/// together and for the same reason) do not interleave mid-line. The message and its
/// causes come first, on one line; a captured backtrace follows as its own write.
fn report_error(e: &anyhow::Error) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(format!("Error: {e:#}\n").as_bytes());
    let bt = e.backtrace();
    if bt.status() == std::backtrace::BacktraceStatus::Captured {
        let _ = err.write_all(format!("\nStack backtrace:\n{bt}\n").as_bytes());
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Node {
            cluster,
            id,
            data_dir,
            stop_on_eof,
        } => run_node(&cluster, id, data_dir, stop_on_eof),
        Cmd::Cluster(a) => run_cluster(a),
        Cmd::Sql {
            host,
            port,
            user,
            command,
        } => run_sql(&host, port, &user, command),
    }
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::Relaxed))
        .context("cannot install the signal handler")?;
    Ok(stop)
}

fn run_node(cluster: &Path, id: u32, data_dir: Option<PathBuf>, stop_on_eof: bool) -> Result<()> {
    init_logging();
    let cf = ClusterFile::load(cluster)?;
    let stop = stop_flag()?;
    if stop_on_eof {
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            s.store(true, Ordering::Relaxed);
        });
    }
    let exit = node::run(
        NodeOptions {
            cluster: cf,
            id,
            data_dir,
        },
        stop,
        |addr| {
            if addr.is_empty() {
                tracing::info!("node {id} ready");
            } else {
                tracing::info!("node {id} ready: Postgres on {addr}");
            }
        },
    )?;
    match exit {
        Exit::Stopped => Ok(()),
        #[allow(unreachable_patterns)]
        other => bail!("node {id} ended: {other:?}"),
    }
}

/// Children that are stopped (stdin closed, then killed after a grace period) when
/// dropped.
struct Children(Vec<(u32, Child)>);

impl Children {
    fn stop(&mut self) {
        for (_, c) in &mut self.0 {
            drop(c.stdin.take()); // EOF: the node stops cleanly
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for (id, c) in &mut self.0 {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        eprintln!("smrdb: node {id} did not stop in time; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Prints a line to stdout; a closed stdout (the reader went away) is not worth
/// dying for while the cluster runs.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run_cluster(a: ClusterArgs) -> Result<()> {
    let ClusterArgs {
        nodes,
        tstores,
        fabric,
        port,
        data_dir,
        restart,
        device,
        router_mode,
        ring_mib,
        arena_mib,
        chunk_kib,
        log_dir,
    } = a;
    if nodes == 0 || tstores == 0 {
        bail!("--nodes and --tstores must be at least 1");
    }
    let stop = stop_flag()?;
    let dir = match &data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            let d = std::env::temp_dir().join(format!("smrdb-cluster-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            d
        }
    };
    let ports = (0..nodes)
        .map(|_| free_port())
        .collect::<Result<Vec<_>>>()?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let mut cf = ClusterFile::local(fabric, nodes, tstores, port, &ports, hex::encode(secret));
    cf.verbs_device = device;
    cf.router_mode = router_mode;
    cf.ring_mib = ring_mib;
    cf.arena_mib = arena_mib;
    cf.chunk_kib = chunk_kib;
    cf.validate()?;
    let file = dir.join("cluster.toml");
    cf.save(&file)?;
    if let Some(d) = &log_dir {
        std::fs::create_dir_all(d)
            .with_context(|| format!("cannot create the log directory {}", d.display()))?;
    }
    restrict(&file);

    let exe = std::env::current_exe().context("cannot find the smrdb executable")?;
    let spawn = |id: u32| -> Result<Child> {
        let mut cmd = Command::new(&exe);
        cmd.arg("node")
            .arg("--cluster")
            .arg(&file)
            .arg("--id")
            .arg(id.to_string())
            .arg("--stop-on-eof")
            .stdin(Stdio::piped());
        if let Some(d) = &data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        if let Some(d) = &log_dir {
            let path = d.join(format!("node-{id}.log"));
            // Appended: a log directory reused by several runs (or a restarted node)
            // keeps every run's log.
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            cmd.stderr(f.try_clone()?).stdout(f);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        say(&format!("node {id} pid {}", child.id()));
        Ok(child)
    };
    let mut children = Children(Vec::new());
    for id in 0..nodes {
        children.0.push((id, spawn(id)?));
    }
    // Ready when the primary accepts Postgres connections.
    let deadline = Instant::now() + Duration::from_secs(cf.connect_timeout_s + 30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        for (id, c) in &mut children.0 {
            if let Some(st) = c.try_wait()? {
                bail!("node {id} exited during start-up ({st})");
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the primary did not accept connections on port {port} in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    say(&format!(
        "smrdb cluster ready: {nodes} node(s) x {tstores} tstore(s) on {fabric} ({} router), cluster file {}",
        match router_mode {
            Mode::Smr => "smr",
            Mode::Naive => "naive",
        },
        file.display()
    ));
    say(&format!(
        "connect with: psql -h 127.0.0.1 -p {port} -U smrdb smrdb"
    ));
    say(&format!("          or: smrdb sql --port {port}"));
    // A lost secondary is reported and the primary keeps serving (statements that
    // need the lost node's Tstores fail, naming it). With --restart a dead node is
    // started again with its data directory and the cluster readmits it; without it,
    // a lost primary ends the cluster.
    let mut failed = None;
    let mut reported = vec![false; children.0.len()];
    let mut restarts = 0u64;
    // Per node: when it was last started, and how many times in a row it died within
    // BRIEF of its start (a node that cannot start is not restarted forever).
    const BRIEF: Duration = Duration::from_secs(10);
    let mut started = vec![Instant::now(); children.0.len()];
    let mut quick_deaths = vec![0u32; children.0.len()];
    while !stop.load(Ordering::Relaxed) && failed.is_none() {
        std::thread::sleep(Duration::from_millis(100));
        for k in 0..children.0.len() {
            if reported[k] {
                continue;
            }
            let id = children.0[k].0;
            let Some(st) = children.0[k].1.try_wait()? else {
                continue;
            };
            if started[k].elapsed() < BRIEF {
                quick_deaths[k] += 1;
            } else {
                quick_deaths[k] = 0;
            }
            if restart && quick_deaths[k] < 3 {
                restarts += 1;
                eprintln!("smrdb: node {id} exited ({st}); restarting it (restart {restarts})");
                std::thread::sleep(Duration::from_millis(200));
                children.0[k].1 = spawn(id)?;
                started[k] = Instant::now();
                continue;
            }
            if restart {
                eprintln!("smrdb: node {id} died 3 times within {BRIEF:?} of its start; not restarting it again");
            }
            reported[k] = true;
            if id == cf.primary.node {
                failed = Some(format!("the primary (node {id}) exited ({st})"));
            } else {
                eprintln!(
                    "smrdb: node {id} exited ({st}); statements that need it fail until it is \
                     restarted{}",
                    match &data_dir {
                        Some(d) => format!(
                            " (smrdb node --cluster {} --id {id} --data-dir {}: the cluster \
                             readmits it)",
                            file.display(),
                            d.display()
                        ),
                        None => " with its data: this cluster is volatile, restart it".into(),
                    }
                );
            }
        }
    }
    eprintln!("smrdb: stopping the cluster");
    children.stop();
    if data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match failed {
        Some(f) => bail!(f),
        None => Ok(()),
    }
}

#[cfg(unix)]
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

fn print_messages(msgs: Vec<postgres::SimpleQueryMessage>) {
    use postgres::SimpleQueryMessage as M;
    let mut header: Option<Vec<String>> = None;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let flush = |header: &mut Option<Vec<String>>, rows: &mut Vec<Vec<String>>| {
        if let Some(h) = header.take() {
            println!("{}", format_table(&h, rows));
            rows.clear();
        }
    };
    for m in msgs {
        match m {
            M::RowDescription(cols) => {
                flush(&mut header, &mut rows);
                header = Some(cols.iter().map(|c| c.name().to_string()).collect());
            }
            M::Row(r) => {
                if header.is_none() {
                    header = Some(r.columns().iter().map(|c| c.name().to_string()).collect());
                }
                rows.push(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect(),
                );
            }
            M::CommandComplete(n) => {
                if header.is_some() {
                    flush(&mut header, &mut rows);
                    println!("({n} row{})", if n == 1 { "" } else { "s" });
                } else {
                    println!("OK ({n})");
                }
            }
            _ => {}
        }
    }
    flush(&mut header, &mut rows);
}

/// An aligned text table (numbers right-aligned).
fn format_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, v) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(v.chars().count());
            }
        }
    }
    let numeric: Vec<bool> = (0..header.len())
        .map(|i| {
            !rows.is_empty()
                && rows.iter().all(|r| {
                    r.get(i)
                        .is_some_and(|v| v == "NULL" || v.parse::<f64>().is_ok())
                })
        })
        .collect();
    let line = |cells: &[String], align: bool| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if align && numeric[i] {
                    format!(" {c:>width$} ", width = w[i])
                } else {
                    format!(" {c:<width$} ", width = w[i])
                }
            })
            .collect::<Vec<_>>()
            .join("|")
    };
    let mut out = line(header, false);
    out.push('\n');
    out.push_str(
        &w.iter()
            .map(|n| "-".repeat(n + 2))
            .collect::<Vec<_>>()
            .join("+"),
    );
    for r in rows {
        out.push('\n');
        out.push_str(&line(r, true));
    }
    out
}

fn run_sql(host: &str, port: u16, user: &str, command: Option<String>) -> Result<()> {
    let mut cfg = postgres::Config::new();
    cfg.host(host)
        .port(port)
        .user(user)
        .dbname("smrdb")
        .connect_timeout(Duration::from_secs(10));
    // As psql: the password (auth = md5 / scram-sha-256) comes from $PGPASSWORD.
    if let Some(p) = std::env::var_os("PGPASSWORD") {
        cfg.password(p.to_string_lossy().as_bytes());
    }
    let mut client = cfg
        .connect(postgres::NoTls)
        .with_context(|| format!("cannot connect to {host}:{port} as {user}"))?;
    let report = |e: &postgres::Error| match e.as_db_error() {
        Some(d) => eprintln!("ERROR {}: {}", d.code().code(), d.message()),
        None => eprintln!("ERROR: {e}"),
    };
    if let Some(c) = command {
        return match client.simple_query(&c) {
            Ok(m) => {
                print_messages(m);
                Ok(())
            }
            Err(e) => {
                report(&e);
                std::process::exit(1);
            }
        };
    }
    let stdin = std::io::stdin();
    let mut buf = String::new();
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    let prompt = |cont: bool| {
        if interactive {
            print!("{}", if cont { "smrdb-> " } else { "smrdb=> " });
            let _ = std::io::stdout().flush();
        }
    };
    prompt(false);
    for line in stdin.lock().lines() {
        let line = line?;
        let t = line.trim();
        if buf.is_empty() && (t == "\\q" || t == "quit" || t == "exit") {
            break;
        }
        buf.push_str(&line);
        buf.push('\n');
        if t.ends_with(';') {
            match client.simple_query(&buf) {
                Ok(m) => print_messages(m),
                Err(e) => report(&e),
            }
            buf.clear();
        }
        prompt(!buf.trim().is_empty());
    }
    if !buf.trim().is_empty() {
        match client.simple_query(&buf) {
            Ok(m) => print_messages(m),
            Err(e) => report(&e),
        }
    }
    Ok(())
}
