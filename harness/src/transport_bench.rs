//! `smrdb-bench transport`: pointer-message latency and WRITE bandwidth between two
//! processes on one fabric, with a baseline measured in the same run (memcpy for shm, a
//! plain loopback socket stream for tcp, perftest's `ib_write_bw`/`ib_write_lat` for
//! verbs).
//!
//! The bench process is the *driver*; it starts itself again as the *peer*
//! (`smrdb-bench transport-peer`), which echoes every message it gets. Latency is half
//! the round trip of a 64-byte message. Bandwidth streams `size`-byte writes into the
//! peer's window (keeping up to `depth` outstanding), then a message, and stops the
//! clock when the peer's echo of that message returns, so every byte has landed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use smrdb_transport::{Endpoint, Error, Event, Fabric, FabricConfig, FabricKind, Window};

/// Options of one transport bench run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Fabric to measure.
    pub fabric: FabricKind,
    /// verbs device (`None` = first / `SMRDB_VERBS_DEVICE`).
    pub device: Option<String>,
    /// verbs GID index.
    pub gid_index: Option<u32>,
    /// Write sizes in bytes.
    pub sizes: Vec<usize>,
    /// Bytes streamed per size per repeat.
    pub bytes_per_size: usize,
    /// Repeats per size (the median is reported).
    pub repeats: usize,
    /// Ping-pong round trips for latency, per round.
    pub lat_iters: usize,
    /// Latency rounds; with `vs_perftest` each is followed by an `ib_write_lat` run of
    /// as many iterations, so both are measured side by side over the same stretch of
    /// time (the medians over rounds are compared).
    pub lat_rounds: usize,
    /// Writes kept outstanding.
    pub depth: usize,
    /// Also run perftest (verbs only).
    pub vs_perftest: bool,
    /// Every write lands at remote offset 0, as perftest's do (otherwise writes walk
    /// through a 64 MiB window, as a ring does).
    pub same_offset: bool,
}

/// What the run measured (also the `--json` file).
#[derive(Debug, Serialize)]
pub struct Report {
    /// Fabric name.
    pub fabric: String,
    /// Write sizes in bytes.
    pub sizes: Vec<usize>,
    /// Median WRITE bandwidth per size, MB/s (10^6 bytes).
    pub write_mb_s: Vec<f64>,
    /// Every repeat, per size, MB/s.
    pub write_mb_s_repeats: Vec<Vec<f64>>,
    /// One-way pointer-message latency (half round trip), microseconds, over every
    /// round trip of every round.
    pub msg_latency_us: Latency,
    /// The median of each latency round, microseconds.
    pub msg_latency_p50_rounds: Vec<f64>,
    /// Same-run baseline of the fabric's medium.
    pub baseline: Option<Baseline>,
    /// perftest figures (verbs with `--vs-perftest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perftest: Option<Perftest>,
}

/// Latency percentiles.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// A baseline measured in the same run.
#[derive(Debug, Serialize)]
pub struct Baseline {
    /// What it is.
    pub name: String,
    /// Its bandwidth, MB/s.
    pub mb_s: f64,
    /// Which fabric figure it is compared with (size in bytes).
    pub compared_size: usize,
    /// Fabric / baseline.
    pub ratio: f64,
}

/// perftest results on the same device.
#[derive(Debug, Serialize)]
pub struct Perftest {
    /// `ib_write_bw` average MB/s per size (same sizes as the fabric).
    pub write_mb_s: Vec<f64>,
    /// `ib_write_lat` t_typical, microseconds: the median over rounds.
    pub lat_us_typical: f64,
    /// `ib_write_lat` t_typical of each round (each right after smrdb's round).
    pub lat_us_typical_rounds: Vec<f64>,
    /// smrdb / perftest bandwidth per size.
    pub bw_ratio: Vec<f64>,
    /// Median over rounds of smrdb's p50 / median over rounds of perftest's t_typical.
    pub lat_ratio: f64,
}

const MSG_LEN: usize = 64;
const PEER_WINDOW_MIN: usize = 64 << 20;

fn fabric_config(o: &Options) -> FabricConfig {
    let mut c = FabricConfig::new(o.fabric, b"smrdb-bench transport".to_vec());
    if o.device.is_some() {
        c.device = o.device.clone();
    }
    if o.gid_index.is_some() {
        c.gid_index = o.gid_index;
    }
    c.queue_depth = (o.depth as u32).max(16) * 2;
    c
}

fn window_len(o: &Options) -> usize {
    o.sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(PEER_WINDOW_MIN)
}

/// Runs the bench as the driver.
///
/// # Errors
/// Fabric failures, a peer that does not start, perftest failures.
pub fn run(o: &Options) -> Result<Report> {
    match o.fabric {
        FabricKind::Shm => run_with::<smrdb_transport::shm::Shm>(o),
        FabricKind::Tcp => run_with::<smrdb_transport::tcp::Tcp>(o),
        #[cfg(feature = "verbs")]
        FabricKind::Verbs => run_with::<smrdb_transport::verbs::Verbs>(o),
        #[cfg(not(feature = "verbs"))]
        FabricKind::Verbs => bail!("this smrdb-bench was built without the verbs feature"),
    }
}

/// Runs the echo peer (the hidden `transport-peer` subcommand): listens on an
/// ephemeral loopback port, prints it, serves one driver.
///
/// # Errors
/// Fabric failures.
pub fn run_peer(o: &Options) -> Result<()> {
    match o.fabric {
        FabricKind::Shm => peer_with::<smrdb_transport::shm::Shm>(o),
        FabricKind::Tcp => peer_with::<smrdb_transport::tcp::Tcp>(o),
        #[cfg(feature = "verbs")]
        FabricKind::Verbs => peer_with::<smrdb_transport::verbs::Verbs>(o),
        #[cfg(not(feature = "verbs"))]
        FabricKind::Verbs => bail!("this smrdb-bench was built without the verbs feature"),
    }
}

fn peer_with<F: Fabric>(o: &Options) -> Result<()> {
    let cfg = fabric_config(o);
    let w = window_len(o);
    let fabric = F::open(&cfg, w).context("open fabric")?;
    let l = TcpListener::bind("127.0.0.1:0")?;
    println!("port {}", l.local_addr()?.port());
    std::io::stdout().flush()?;
    let ctl = smrdb_transport::Control::accept(&l, &cfg, 2, F::KIND)?;
    let mut ep = fabric.establish(ctl, Window { offset: 0, len: w })?;
    let mut evs = Vec::with_capacity(64);
    let mut more = Vec::with_capacity(64);
    // Empty polls since the last event, and when the quiet started (the clock is read
    // only every SPIN_CHECK empty polls: in the VM it is HPET, a system call plus an
    // emulated device read, which would add microseconds to every spin).
    let mut idle = 0u64;
    let mut quiet_since: Option<Instant> = None;
    let mut spinning = true;
    loop {
        evs.clear();
        // Spin while messages flow (as perftest does, so latency is not a wake-up
        // measurement); after 5 ms of quiet, block instead, so that during bandwidth
        // runs the peer does not steal the core the driver (or the tcp reader thread)
        // needs on a small machine.
        let r = if spinning {
            ep.poll(&mut evs)
        } else {
            ep.wait(&mut evs, Duration::from_secs(1))
        };
        match r {
            Ok(0) | Err(Error::Timeout { .. }) => {
                idle += 1;
                if spinning && idle.is_multiple_of(SPIN_CHECK) {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    spinning = since.elapsed() < Duration::from_millis(5);
                }
                std::hint::spin_loop();
                continue;
            }
            Ok(_) => {
                idle = 0;
                quiet_since = None;
                spinning = true;
            }
            Err(Error::PeerLost { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // Echo each message straight from `evs`; what arrives while the send queue is
        // full goes to `more` and is handled next.
        loop {
            for ev in &evs {
                let Event::Message(m) = ev else { continue };
                if m.as_bytes() == b"quit" {
                    return Ok(());
                }
                loop {
                    match ep.post_send(m.as_bytes(), 0) {
                        Ok(()) => break,
                        Err(Error::Full { .. }) => {
                            ep.poll(&mut more)?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if more.is_empty() {
                break;
            }
            std::mem::swap(&mut evs, &mut more);
            more.clear();
        }
    }
}

struct PeerProc(Child);

impl Drop for PeerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_peer(o: &Options) -> Result<(PeerProc, u16)> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("transport-peer")
        .arg("--fabric")
        .arg(o.fabric.as_str())
        .arg("--sizes")
        .arg(
            o.sizes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .arg("--depth")
        .arg(o.depth.to_string());
    if let Some(d) = &o.device {
        cmd.arg("--device").arg(d);
    }
    if let Some(g) = o.gid_index {
        cmd.arg("--gid-index").arg(g.to_string());
    }
    let mut child = PeerProc(
        cmd.stdout(Stdio::piped())
            .spawn()
            .context("start peer process")?,
    );
    let out = child.0.stdout.take().context("peer stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let port: u16 = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("peer did not announce its port (said {line:?})"))?;
    Ok((child, port))
}

/// Sends `msg` and spins until the peer echoes it back; completions are counted.
fn round_trip<E: Endpoint>(
    ep: &mut E,
    msg: &[u8],
    evs: &mut Vec<Event>,
    done: &mut usize,
) -> Result<()> {
    post(ep, evs, done, |e| e.post_send(msg, 0))?;
    let mut start = None;
    let mut spins = 0u64;
    loop {
        evs.clear();
        ep.poll(evs)?;
        let mut got = false;
        for ev in evs.iter() {
            match ev {
                Event::Message(m) if m.as_bytes() == msg => got = true,
                Event::Completed { .. } => *done += 1,
                _ => {}
            }
        }
        if got {
            return Ok(());
        }
        // The clock only now and then (see SPIN_CHECK).
        spins += 1;
        if spins.is_multiple_of(SPIN_CHECK)
            && start.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(30)
        {
            bail!("no echo from the peer within 30 s");
        }
    }
}

/// Spinning loops read the clock once per this many polls.
const SPIN_CHECK: u64 = 1024;

/// A cheap timestamp for timing single round trips (perftest's way: the TSC), turned
/// into time by [`Ticks::per_us`] measured over the whole run. Elsewhere: nanoseconds
/// of `Instant`.
struct Ticks {
    t0: Instant,
    c0: u64,
}

impl Ticks {
    fn start() -> Ticks {
        Ticks {
            t0: Instant::now(),
            c0: Ticks::now_raw(),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn now_raw() -> u64 {
        // SAFETY: RDTSC has no preconditions on x86_64.
        unsafe { std::arch::x86_64::_rdtsc() }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn now_raw() -> u64 {
        use std::sync::OnceLock;
        static T0: OnceLock<Instant> = OnceLock::new();
        T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    /// Ticks per microsecond since `start`.
    fn per_us(&self) -> f64 {
        let ticks = Ticks::now_raw().wrapping_sub(self.c0) as f64;
        ticks / (self.t0.elapsed().as_secs_f64() * 1e6)
    }
}

fn post<E: Endpoint>(
    ep: &mut E,
    evs: &mut Vec<Event>,
    done: &mut usize,
    mut f: impl FnMut(&mut E) -> Result<(), Error>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        match f(ep) {
            Ok(()) => return Ok(()),
            Err(Error::Full { .. }) => {
                evs.clear();
                ep.poll(evs)?;
                *done += evs
                    .iter()
                    .filter(|e| matches!(e, Event::Completed { .. }))
                    .count();
                if start.elapsed() > Duration::from_secs(30) {
                    bail!("send queue stayed full for 30 s");
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn run_with<F: Fabric>(o: &Options) -> Result<Report> {
    let (_peer, port) = spawn_peer(o)?;
    let cfg = fabric_config(o);
    let src_len = o.sizes.iter().copied().max().unwrap_or(4096).max(4096);
    let fabric = F::open(&cfg, src_len).context("open fabric")?;
    // SAFETY: nothing is in flight yet.
    unsafe { fabric.region().bytes_mut(0, src_len)?.fill(0x5a) };
    let mut ep = fabric.connect(
        &format!("127.0.0.1:{port}"),
        &cfg,
        1,
        Window {
            offset: 0,
            len: 4096.min(src_len),
        },
    )?;
    let window = ep.remote_len();
    let mut evs = Vec::with_capacity(256);
    let mut done = 0usize;

    // Latency, in rounds: warm up, then measure round trips; ib_write_lat after each
    // round when comparing with perftest (our peer blocks meanwhile).
    if o.vs_perftest && o.fabric != FabricKind::Verbs {
        bail!("--vs-perftest needs --fabric verbs");
    }
    let mut msg = [0u8; MSG_LEN];
    let warm = (o.lat_iters / 10).max(10);
    let rounds = o.lat_rounds.max(1);
    let mut rtts: Vec<f64> = Vec::with_capacity(o.lat_iters * rounds);
    let mut p50_rounds = Vec::with_capacity(rounds);
    let mut perftest_lat_rounds = Vec::new();
    let mut i = 0u64;
    for _ in 0..rounds {
        let mut ticks = Vec::with_capacity(o.lat_iters);
        let clock = Ticks::start();
        for k in 0..warm + o.lat_iters {
            i += 1;
            msg[..8].copy_from_slice(&i.to_le_bytes());
            let t = Ticks::now_raw();
            round_trip(&mut ep, &msg, &mut evs, &mut done)?;
            if k >= warm {
                ticks.push(Ticks::now_raw().wrapping_sub(t));
            }
        }
        let per_us = clock.per_us();
        let mut round: Vec<f64> = ticks.iter().map(|&t| t as f64 / per_us / 2.0).collect();
        round.sort_by(f64::total_cmp);
        p50_rounds.push(percentile(&round, 0.5));
        rtts.extend(round);
        if o.vs_perftest {
            perftest_lat_rounds.push(perftest_lat(o)?);
        }
    }
    rtts.sort_by(f64::total_cmp);
    let msg_latency_us = Latency {
        p50: percentile(&rtts, 0.50),
        p99: percentile(&rtts, 0.99),
    };

    // Bandwidth.
    let mut write_mb_s = Vec::new();
    let mut write_mb_s_repeats = Vec::new();
    let mut seq = 1u64 << 40;
    for &size in &o.sizes {
        let count = (o.bytes_per_size / size).max(16);
        let mut reps = Vec::new();
        // One untimed pass first: the peer's window pages get faulted in.
        for rep in 0..=o.repeats {
            let t = Instant::now();
            let mut posted = 0usize;
            let base_done = done;
            for i in 0..count {
                let off = if o.same_offset {
                    0
                } else {
                    (i * size) % (window - window % size)
                };
                post(&mut ep, &mut evs, &mut done, |e| {
                    e.post_write(0, size, off, i as u64)
                })?;
                posted += 1;
                while posted.saturating_sub(done - base_done) >= o.depth {
                    evs.clear();
                    ep.poll(&mut evs)?;
                    done += evs
                        .iter()
                        .filter(|e| matches!(e, Event::Completed { .. }))
                        .count();
                }
            }
            seq += 1;
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            round_trip(&mut ep, &msg, &mut evs, &mut done)?;
            let secs = t.elapsed().as_secs_f64();
            if rep > 0 {
                reps.push((count * size) as f64 / secs / 1e6);
            }
        }
        let mut sorted = reps.clone();
        sorted.sort_by(f64::total_cmp);
        write_mb_s.push(percentile(&sorted, 0.5));
        write_mb_s_repeats.push(reps);
    }
    let _ = ep.post_send(b"quit", 0);
    let _ = ep.poll(&mut evs);

    let baseline = match o.fabric {
        FabricKind::Shm => Some(memcpy_baseline(64 << 20, o.repeats.max(3))),
        FabricKind::Tcp => Some(socket_baseline(
            1 << 20,
            o.bytes_per_size.max(256 << 20),
            o.repeats.max(3),
        )?),
        FabricKind::Verbs => None,
    }
    .map(|(name, size, mb_s)| {
        let ours = o
            .sizes
            .iter()
            .position(|&s| s == size)
            .map(|i| write_mb_s[i])
            .unwrap_or(f64::NAN);
        Baseline {
            name,
            mb_s,
            compared_size: size,
            ratio: ours / mb_s,
        }
    });
    let perftest = if o.vs_perftest {
        Some(perftest(o, &write_mb_s, &p50_rounds, perftest_lat_rounds)?)
    } else {
        None
    };
    Ok(Report {
        fabric: o.fabric.as_str().into(),
        sizes: o.sizes.clone(),
        write_mb_s,
        write_mb_s_repeats,
        msg_latency_us,
        msg_latency_p50_rounds: p50_rounds,
        baseline,
        perftest,
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Single-thread memcpy of `len` bytes between two pre-faulted buffers: median MB/s.
fn memcpy_baseline(len: usize, repeats: usize) -> (String, usize, f64) {
    let src = vec![0x5au8; len];
    let mut dst = vec![1u8; len];
    let mut rates = Vec::new();
    for _ in 0..=repeats {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        rates.push(len as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    rates.remove(0);
    rates.sort_by(f64::total_cmp);
    (
        "single-thread memcpy of 64 MiB".into(),
        1 << 20,
        percentile(&rates, 0.5),
    )
}

/// A plain loopback TCP stream (1 MiB writes, reader thread): median MB/s.
fn socket_baseline(chunk: usize, total: usize, repeats: usize) -> Result<(String, usize, f64)> {
    let mut rates = Vec::new();
    for _ in 0..=repeats {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let reader = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = l.accept()?;
            let mut buf = vec![0u8; chunk];
            let mut got = 0;
            while got < total {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            s.write_all(b"k")
        });
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let buf = vec![0x5au8; chunk];
        let t = Instant::now();
        let mut sent = 0;
        while sent < total {
            s.write_all(&buf)?;
            sent += chunk;
        }
        let mut k = [0u8; 1];
        s.read_exact(&mut k)?;
        rates.push(sent as f64 / t.elapsed().as_secs_f64() / 1e6);
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    }
    rates.remove(0);
    rates.sort_by(f64::total_cmp);
    Ok((
        "plain loopback TCP stream, 1 MiB writes".into(),
        chunk,
        percentile(&rates, 0.5),
    ))
}

/// Runs perftest's server and client on the same device over loopback bootstrap.
fn perftest_pair(tool: &str, args: &[String]) -> Result<String> {
    let mut server = PeerProc(
        Command::new(tool)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("run {tool} (install Debian's perftest)"))?,
    );
    let mut last = String::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let out = Command::new(tool).args(args).arg("127.0.0.1").output()?;
        if out.status.success() {
            let _ = server.0.wait();
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    bail!("{tool} client kept failing: {last}")
}

/// The first numeric row after perftest's header line containing `col`; returns the
/// value in that column.
fn perftest_value(out: &str, col: &str) -> Option<f64> {
    let mut idx = None;
    let col = col.replace(' ', "_");
    for line in out.lines() {
        // Multi-word headings ("BW average[MB/sec]", "99% percentile[usec]") are one
        // column each.
        let line = line
            .replace("BW ", "BW_")
            .replace("% percentile", "%_percentile");
        let toks: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = idx {
            if toks.first().is_some_and(|t| t.parse::<u64>().is_ok()) {
                return toks.get(i).and_then(|t: &&str| t.parse().ok());
            }
        } else if toks.contains(&"#bytes") {
            idx = toks.iter().position(|t| t.starts_with(col.as_str()));
        }
    }
    None
}

/// perftest's common arguments: device, no CPU-frequency warning, GID index.
fn perftest_args(o: &Options) -> Result<Vec<String>> {
    let dev = o
        .device
        .clone()
        .or_else(|| std::env::var("SMRDB_VERBS_DEVICE").ok())
        .context("--vs-perftest needs --device or SMRDB_VERBS_DEVICE")?;
    let mut common = vec!["-d".to_string(), dev, "-F".to_string()];
    if let Some(g) = o.gid_index {
        common.extend(["-x".to_string(), g.to_string()]);
    }
    Ok(common)
}

/// One `ib_write_lat` run of `lat_iters` iterations of MSG_LEN bytes: t_typical, µs.
fn perftest_lat(o: &Options) -> Result<f64> {
    let mut a = perftest_args(o)?;
    a.extend([
        "-s".into(),
        MSG_LEN.to_string(),
        "-n".into(),
        o.lat_iters.clamp(100, 10000).to_string(),
    ]);
    let out = perftest_pair("ib_write_lat", &a)?;
    perftest_value(&out, "t_typical")
        .with_context(|| format!("cannot parse ib_write_lat output:\n{out}"))
}

/// `ib_write_bw` per size, and the comparison with our figures.
fn perftest(
    o: &Options,
    ours_bw: &[f64],
    ours_lat_rounds: &[f64],
    lat_rounds: Vec<f64>,
) -> Result<Perftest> {
    let common = perftest_args(o)?;
    let mut bws = Vec::new();
    for &size in &o.sizes {
        let iters = (o.bytes_per_size / size).clamp(16, 5000);
        let mut a = common.clone();
        a.extend([
            "-s".into(),
            size.to_string(),
            "-n".into(),
            iters.to_string(),
            "-t".into(),
            o.depth.min(128).to_string(),
        ]);
        let out = perftest_pair("ib_write_bw", &a)?;
        // ib_write_bw reports MB/s as 2^20 bytes; convert to 10^6 like ours.
        let mib_s = perftest_value(&out, "BW average")
            .with_context(|| format!("cannot parse ib_write_bw output:\n{out}"))?;
        bws.push(mib_s * 1_048_576.0 / 1e6);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let lat = median(&lat_rounds);
    Ok(Perftest {
        bw_ratio: ours_bw.iter().zip(&bws).map(|(a, b)| a / b).collect(),
        lat_ratio: median(ours_lat_rounds) / lat,
        write_mb_s: bws,
        lat_us_typical: lat,
        lat_us_typical_rounds: lat_rounds,
    })
}

/// The report as a Markdown table.
pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "### transport on `{}`\n\npointer-message latency (one way): p50 {:.2} µs, p99 {:.2} µs\n\n",
        r.fabric, r.msg_latency_us.p50, r.msg_latency_us.p99
    );
    if let Some(p) = &r.perftest {
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s += &format!(
            "ib_write_lat t_typical {:.2} µs; smrdb/perftest latency ratio {:.2} (medians of \
             {} alternating rounds: smrdb p50 {} µs; ib_write_lat {} µs)\n\n",
            p.lat_us_typical,
            p.lat_ratio,
            p.lat_us_typical_rounds.len(),
            list(&r.msg_latency_p50_rounds),
            list(&p.lat_us_typical_rounds)
        );
    }
    s += "| write size | smrdb MB/s (median) |";
    if r.perftest.is_some() {
        s += " ib_write_bw MB/s | smrdb/perftest |";
    }
    s += "\n|---:|---:|";
    if r.perftest.is_some() {
        s += "---:|---:|";
    }
    s += "\n";
    for (i, size) in r.sizes.iter().enumerate() {
        s += &format!("| {} | {:.0} |", human(*size), r.write_mb_s[i]);
        if let Some(p) = &r.perftest {
            s += &format!(" {:.0} | {:.2} |", p.write_mb_s[i], p.bw_ratio[i]);
        }
        s += "\n";
    }
    if let Some(b) = &r.baseline {
        s += &format!(
            "\nbaseline, same run: {} = {:.0} MB/s; smrdb {} writes / baseline = {:.2}\n",
            b.name,
            b.mb_s,
            human(b.compared_size),
            b.ratio
        );
    }
    s
}

fn human(b: usize) -> String {
    if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else if b >= 1024 && b.is_multiple_of(1024) {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perftest_rows() {
        let bw = " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]\n 65536      200              1234.56            1100.25              0.017604\n";
        assert_eq!(perftest_value(bw, "BW average"), Some(1100.25));
        let lat = " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]\n 64      1000          3.10           20.5         3.52               3.70\n";
        assert_eq!(perftest_value(lat, "t_typical"), Some(3.52));
        assert_eq!(perftest_value("garbage", "t_typical"), None);
    }

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
