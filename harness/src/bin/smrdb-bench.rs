//! `smrdb-bench`: smrdb's experiments.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use smrdb_harness::transport_bench;
use smrdb_transport::FabricKind;

#[derive(Parser)]
#[command(name = "smrdb-bench", version, about = "smrdb experiments and reports")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pointer-message latency and WRITE bandwidth between two processes.
    Transport(TransportArgs),
    /// (internal) the echo peer of `transport`.
    #[command(hide = true)]
    TransportPeer(TransportArgs),
}

#[derive(Args)]
struct TransportArgs {
    /// shm, tcp or verbs.
    #[arg(long, default_value = "shm")]
    fabric: FabricKind,
    /// verbs device (default: $SMRDB_VERBS_DEVICE or the first one).
    #[arg(long)]
    device: Option<String>,
    /// verbs GID index (default: a RoCE v2 IPv4 GID, else 0).
    #[arg(long)]
    gid_index: Option<u32>,
    /// Write sizes in bytes, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4096,16384,65536,262144,1048576,4194304"
    )]
    sizes: Vec<usize>,
    /// MiB streamed per size per repeat.
    #[arg(long, default_value_t = 256)]
    mib_per_size: usize,
    /// Repeats per size; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Ping-pong round trips for the latency figure.
    #[arg(long, default_value_t = 20000)]
    lat_iters: usize,
    /// Writes kept outstanding.
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// verbs: also run ib_write_bw / ib_write_lat on the same device and print ratios.
    #[arg(long)]
    vs_perftest: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl TransportArgs {
    fn options(&self) -> transport_bench::Options {
        transport_bench::Options {
            fabric: self.fabric,
            device: self.device.clone(),
            gid_index: self.gid_index,
            sizes: self.sizes.clone(),
            bytes_per_size: self.mib_per_size << 20,
            repeats: self.repeats.max(1),
            lat_iters: self.lat_iters.max(10),
            depth: self.depth.max(1),
            vs_perftest: self.vs_perftest,
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Transport(a) => {
            anyhow::ensure!(
                !a.sizes.is_empty() && a.sizes.iter().all(|&s| s > 0),
                "--sizes must be positive"
            );
            let report = transport_bench::run(&a.options())
                .with_context(|| format!("transport bench on {}", a.fabric))?;
            println!("{}", transport_bench::markdown(&report));
            if let Some(p) = &a.json {
                std::fs::write(p, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("write {}", p.display()))?;
                println!("wrote {}", p.display());
            }
        }
        Cmd::TransportPeer(a) => transport_bench::run_peer(&a.options())?,
    }
    Ok(())
}
