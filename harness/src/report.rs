//! Report directories, the run environment and `report.md`.
//!
//! A run writes everything under one directory, `<base>/<YYYYmmdd-HHMMSS>-<sha>/` (UTC
//! time, short git commit; the naming of the Makefile's `REPORT_DIR`):
//!
//! ```text
//! report.md                 title, command line, environment, one section per experiment
//! environment.json          the Environment, machine-readable
//! <experiment>/results.json every raw repeat (written by the experiment)
//! <experiment>/table.md     the experiment's Markdown table
//! <experiment>/<stem>.svg   its plots
//! <experiment>/logs/        node logs and the like
//! ```
//!
//! Files are written to a temporary name and renamed, so an interrupted run never
//! leaves a half-written `results.json` or `report.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Where and on what a run happened. Every field is best effort: what cannot be found
/// out reads `unknown` (0 for the counts, which [`Environment::markdown`] shows as
/// `unknown`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// When the environment was captured, `YYYY-MM-DDTHH:MM:SSZ`.
    pub date_utc: String,
    /// The full commit of the source tree (`unknown` outside a git checkout).
    pub git_sha: String,
    /// The tree had uncommitted changes to tracked files (false when unknown).
    pub git_dirty: bool,
    /// Host name.
    pub hostname: String,
    /// Kernel, `uname -sr` style (`Linux 6.1.0-18-amd64`).
    pub kernel: String,
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Online CPUs (`/sys/devices/system/cpu/online`).
    pub cores_online: usize,
    /// Online NUMA nodes (`/sys/devices/system/node/online`; 1 on a kernel without NUMA).
    pub numa_nodes: usize,
    /// `MemTotal`, GiB.
    pub mem_total_gib: f64,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages at capture time.
    pub loadavg: String,
    /// Fabric of the run (`shm`, `tcp`, `verbs`).
    pub fabric: String,
    /// verbs device, if any.
    pub device: Option<String>,
    /// Cluster shape, e.g. `2 nodes x 2 Tstores, smr router`.
    pub cluster: String,
    /// Running in a virtual machine: smrdb's Soft-RoCE micro-VM (`SMRDB_VM_OUT` set
    /// by `soft-roce-setup/vm.sh`), a DMI vendor of a hypervisor, or the CPU's
    /// `hypervisor` flag (cloud VMs too).
    pub in_vm: bool,
    /// RDMA devices (`/sys/class/infiniband`), sorted.
    pub rdma_devices: Vec<String>,
    /// smrdb's version (the harness crate's).
    pub smrdb_version: String,
}

const UNKNOWN: &str = "unknown";

impl Environment {
    /// Captures the environment of this process's host for a run on `fabric` (with
    /// `device`) and a cluster described by `cluster`. Never fails.
    pub fn capture(fabric: &str, device: Option<&str>, cluster: &str) -> Environment {
        let git = GitInfo::find();
        Environment {
            date_utc: UtcTime::now().iso(),
            git_sha: git.sha.unwrap_or_else(|| UNKNOWN.to_string()),
            git_dirty: git.dirty.unwrap_or(false),
            hostname: read_trimmed("/proc/sys/kernel/hostname")
                .unwrap_or_else(|| UNKNOWN.to_string()),
            kernel: kernel(),
            cpu_model: cpu_model().unwrap_or_else(|| UNKNOWN.to_string()),
            cores_online: read_trimmed("/sys/devices/system/cpu/online")
                .and_then(|s| count_cpulist(&s))
                .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
                .unwrap_or(0),
            numa_nodes: numa_nodes(),
            mem_total_gib: mem_total_gib().unwrap_or(0.0),
            loadavg: read_trimmed("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| UNKNOWN.to_string()),
            fabric: fabric.to_string(),
            device: device.map(str::to_string),
            cluster: cluster.to_string(),
            in_vm: in_vm(),
            rdma_devices: rdma_devices(),
            smrdb_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The environment as a two-column Markdown table.
    pub fn markdown(&self) -> String {
        let count = |n: usize| {
            if n == 0 {
                UNKNOWN.to_string()
            } else {
                n.to_string()
            }
        };
        let git = if self.git_sha == UNKNOWN {
            UNKNOWN.to_string()
        } else if self.git_dirty {
            format!("`{}` (uncommitted changes)", self.git_sha)
        } else {
            format!("`{}`", self.git_sha)
        };
        let mem = if self.mem_total_gib > 0.0 {
            format!("{:.1} GiB", self.mem_total_gib)
        } else {
            UNKNOWN.to_string()
        };
        let rdma = if self.rdma_devices.is_empty() {
            "none".to_string()
        } else {
            self.rdma_devices.join(", ")
        };
        let rows = vec![
            vec!["date (UTC)".to_string(), self.date_utc.clone()],
            vec!["git commit".to_string(), git],
            vec!["smrdb version".to_string(), self.smrdb_version.clone()],
            vec!["host".to_string(), self.hostname.clone()],
            vec!["kernel".to_string(), self.kernel.clone()],
            vec!["CPU".to_string(), self.cpu_model.clone()],
            vec!["cores online".to_string(), count(self.cores_online)],
            vec!["NUMA nodes".to_string(), count(self.numa_nodes)],
            vec!["memory".to_string(), mem],
            vec![
                "load average (1/5/15 min)".to_string(),
                self.loadavg.clone(),
            ],
            vec![
                "virtual machine".to_string(),
                if self.in_vm { "yes" } else { "no" }.to_string(),
            ],
            vec!["fabric".to_string(), self.fabric.clone()],
            vec![
                "device".to_string(),
                self.device.clone().unwrap_or_else(|| "-".to_string()),
            ],
            vec!["RDMA devices".to_string(), rdma],
            vec!["cluster".to_string(), self.cluster.clone()],
        ];
        markdown_table(&["", ""], &rows)
    }
}

/// A file's content without surrounding whitespace, if readable and not empty.
fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// `Linux 6.1.0-18-amd64`.
fn kernel() -> String {
    let release = read_trimmed("/proc/sys/kernel/osrelease");
    let os =
        read_trimmed("/proc/sys/kernel/ostype").unwrap_or_else(|| std::env::consts::OS.to_string());
    match release {
        Some(r) => format!("{os} {r}"),
        None => UNKNOWN.to_string(),
    }
}

/// The first CPU model line of `/proc/cpuinfo` (x86 `model name`; other
/// architectures' equivalents).
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpu_model_from(&info)
}

/// The CPU model from the text of `/proc/cpuinfo`.
fn cpu_model_from(info: &str) -> Option<String> {
    for key in ["model name", "cpu model", "Hardware", "Processor", "cpu"] {
        for line in info.lines() {
            if let Some((k, v)) = line.split_once(':') {
                let v = v.trim();
                if k.trim() == key && !v.is_empty() {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

/// The number of CPUs (or nodes) in a kernel cpulist like `0-3,8,10-11`.
fn count_cpulist(list: &str) -> Option<usize> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    let mut n = 0usize;
    for part in list.split(',') {
        let part = part.trim();
        let count = match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().ok()?;
                let b: usize = b.trim().parse().ok()?;
                b.checked_sub(a)?.checked_add(1)?
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
        n = n.checked_add(count)?;
    }
    Some(n)
}

/// Online NUMA nodes; 1 when the kernel has no NUMA support (no node directory), 0
/// when unknown.
fn numa_nodes() -> usize {
    if let Some(n) = read_trimmed("/sys/devices/system/node/online").and_then(|s| count_cpulist(&s))
    {
        return n;
    }
    if Path::new("/sys/devices/system/cpu").exists()
        && !Path::new("/sys/devices/system/node").exists()
    {
        1
    } else {
        0
    }
}

/// `MemTotal` of `/proc/meminfo`, GiB.
fn mem_total_gib() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    (kib > 0.0).then_some(kib / (1024.0 * 1024.0))
}

/// Whether this runs in a virtual machine (see [`Environment::in_vm`]).
fn in_vm() -> bool {
    if std::env::var_os("SMRDB_VM_OUT").is_some() {
        return true;
    }
    let dmi = |f: &str| read_trimmed(format!("/sys/class/dmi/id/{f}")).unwrap_or_default();
    let vendor = dmi("sys_vendor");
    let product = dmi("product_name");
    let hypervisors = [
        "QEMU",
        "KVM",
        "VMware",
        "innotek",
        "VirtualBox",
        "Xen",
        "Bochs",
        "Parallels",
    ];
    if hypervisors
        .iter()
        .any(|h| vendor.contains(h) || product.contains(h))
        || product.contains("Virtual Machine")
    {
        return true;
    }
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
    })
}

/// Entries of `/sys/class/infiniband`, sorted.
fn rdma_devices() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/infiniband")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The commit of the source tree and whether it is dirty.
#[derive(Debug, Default)]
struct GitInfo {
    sha: Option<String>,
    dirty: Option<bool>,
}

impl GitInfo {
    /// Asks `git` in the current directory, then in the harness's source directory;
    /// without a `git` binary (the micro-VM), reads `.git` directly (dirty unknown).
    fn find() -> GitInfo {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Ok(cwd) = std::env::current_dir() {
            dirs.push(cwd);
        }
        dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        for dir in &dirs {
            let sha = git(dir, &["rev-parse", "--verify", "HEAD"]).filter(|s| is_sha(s));
            if let Some(sha) = sha {
                let dirty = git(dir, &["status", "--porcelain", "--untracked-files=no"])
                    .map(|s| !s.is_empty());
                return GitInfo {
                    sha: Some(sha),
                    dirty,
                };
            }
        }
        for dir in &dirs {
            if let Some(sha) = read_git_head(dir) {
                return GitInfo {
                    sha: Some(sha),
                    dirty: None,
                };
            }
        }
        GitInfo::default()
    }

    /// The short form of the commit (7 characters, as `git rev-parse --short`).
    fn short(&self) -> Option<String> {
        self.sha.as_ref().map(|s| s.chars().take(7).collect())
    }
}

/// A git command's trimmed stdout, if it ran and succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// 40 hex digits.
fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit of `HEAD` read from the files of the repository containing `start`.
fn read_git_head(start: &Path) -> Option<String> {
    let git_dir = start.ancestors().find_map(|d| {
        let dot = d.join(".git");
        if dot.is_dir() {
            Some(dot)
        } else if dot.is_file() {
            // A worktree or submodule: "gitdir: <path>".
            let content = std::fs::read_to_string(&dot).ok()?;
            let p = content.trim().strip_prefix("gitdir:")?.trim().to_string();
            Some(d.join(p))
        } else {
            None
        }
    })?;
    let common = read_trimmed(git_dir.join("commondir"))
        .map(|c| git_dir.join(c))
        .unwrap_or_else(|| git_dir.clone());
    let head = read_trimmed(git_dir.join("HEAD"))?;
    let Some(refname) = head.strip_prefix("ref:").map(str::trim) else {
        return is_sha(&head).then_some(head);
    };
    if refname.split('/').any(|c| c == ".." || c.is_empty()) {
        return None;
    }
    for dir in [&git_dir, &common] {
        if let Some(sha) = read_trimmed(dir.join(refname)).filter(|s| is_sha(s)) {
            return Some(sha);
        }
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|l| {
        let (sha, name) = l.split_once(' ')?;
        (name.trim() == refname && is_sha(sha)).then(|| sha.to_string())
    })
}

/// A UTC calendar time, computed from `SystemTime` without a date library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UtcTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl UtcTime {
    /// Now (the epoch if the clock is before it).
    fn now() -> UtcTime {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        UtcTime::from_unix(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    /// The calendar time of a Unix timestamp (proleptic Gregorian calendar; Howard
    /// Hinnant's `civil_from_days`).
    fn from_unix(secs: i64) -> UtcTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        UtcTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`.
    fn iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `YYYYmmdd-HHMMSS`.
    fn compact(&self) -> String {
        format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a
/// rename, so readers never see a partial file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        // Best effort: the rename error is the one worth reporting.
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()));
    }
    Ok(())
}

/// The directory of one run's report.
#[derive(Debug, Clone)]
pub struct ReportDir {
    root: PathBuf,
}

impl ReportDir {
    /// Creates `base/<YYYYmmdd-HHMMSS>-<shortsha>/` (UTC; `nogit` outside a checkout;
    /// `-2`, `-3`... appended if a run already took the name), and `base` if needed.
    pub fn create(base: &Path) -> Result<ReportDir> {
        let sha = GitInfo::find()
            .short()
            .unwrap_or_else(|| "nogit".to_string());
        ReportDir::create_named(base, &format!("{}-{sha}", UtcTime::now().compact()))
    }

    /// Creates `base/<name>` or, if taken, `base/<name>-N` for the first free N.
    fn create_named(base: &Path, name: &str) -> Result<ReportDir> {
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        for n in 1..1000u32 {
            let candidate = if n == 1 {
                base.join(name)
            } else {
                base.join(format!("{name}-{n}"))
            };
            match std::fs::create_dir(&candidate) {
                Ok(()) => return Ok(ReportDir { root: candidate }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", candidate.display()))
                }
            }
        }
        bail!("{}: no free name for {name}", base.display())
    }

    /// The report's directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Creates (if needed) and returns the directory of experiment `name`, which must
    /// be a plain file name: ASCII letters, digits, `-`, `_` and `.`, not starting with
    /// a dot.
    pub fn experiment(&self, name: &str) -> Result<ExperimentDir> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            bail!("invalid experiment name {name:?}: use letters, digits, '-', '_' and '.'");
        }
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ExperimentDir {
            dir,
            name: name.to_string(),
        })
    }
}

/// The directory of one experiment inside a [`ReportDir`].
#[derive(Debug, Clone)]
pub struct ExperimentDir {
    dir: PathBuf,
    name: String,
}

impl ExperimentDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The experiment's name (the directory's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `value` as pretty JSON to `results.json` (replacing it atomically, so it
    /// can be rewritten after every measurement) and returns its path.
    pub fn write_results<T: Serialize>(&self, value: &T) -> Result<PathBuf> {
        let path = self.dir.join("results.json");
        let mut json = serde_json::to_vec_pretty(value).context("serialising results")?;
        json.push(b'\n');
        write_atomic(&path, &json)?;
        Ok(path)
    }

    /// Writes `md` to `table.md` and returns its path.
    pub fn write_markdown(&self, md: &str) -> Result<PathBuf> {
        let path = self.dir.join("table.md");
        let mut text = md.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// The path of plot `stem`: `<dir>/<stem>.svg` (characters other than ASCII
    /// letters, digits, `-`, `_` and `.` become `_`).
    pub fn svg_path(&self, stem: &str) -> PathBuf {
        let stem = stem.strip_suffix(".svg").unwrap_or(stem);
        let mut clean: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if clean.is_empty() || clean.starts_with('.') {
            clean.insert_str(0, "plot");
        }
        self.dir.join(format!("{clean}.svg"))
    }

    /// Creates (if needed) and returns `<dir>/logs/`.
    pub fn logs_dir(&self) -> Result<PathBuf> {
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(logs)
    }
}

/// How an experiment ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SectionStatus {
    /// Every measurement ran.
    Done,
    /// Stopped by Ctrl-C: what was measured before is kept.
    Interrupted,
    /// Failed with this error.
    Failed(String),
}

/// One experiment's part of `report.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// Body (tables, notes), inserted as is.
    pub markdown: String,
    /// SVG plots to embed (paths inside the report directory, e.g. from
    /// [`ExperimentDir::svg_path`]).
    pub plots: Vec<PathBuf>,
    /// How the experiment ended.
    pub status: SectionStatus,
    /// The experiment's directory: its `results.json`, `table.md` and `logs/` are
    /// linked when they exist.
    pub dir: Option<PathBuf>,
}

impl Section {
    /// A finished section of experiment `exp` (no plots yet).
    pub fn new(
        exp: &ExperimentDir,
        title: impl Into<String>,
        markdown: impl Into<String>,
    ) -> Section {
        Section {
            title: title.into(),
            markdown: markdown.into(),
            plots: Vec::new(),
            status: SectionStatus::Done,
            dir: Some(exp.path().to_path_buf()),
        }
    }
}

/// `path` relative to `root` if it is inside it (literally or once canonicalised),
/// otherwise `path` unchanged.
fn relative_to(root: &Path, path: &Path) -> PathBuf {
    if let Ok(rel) = path.strip_prefix(root) {
        return rel.to_path_buf();
    }
    if let (Ok(r), Ok(p)) = (root.canonicalize(), path.canonicalize()) {
        if let Ok(rel) = p.strip_prefix(&r) {
            return rel.to_path_buf();
        }
    }
    path.to_path_buf()
}

/// A path as a Markdown link target: `/` separators, spaces and parentheses escaped.
fn link_target(path: &Path) -> String {
    let s = path.to_string_lossy().replace('\\', "/");
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' => out.push_str("%20"),
            '(' => out.push_str("%28"),
            ')' => out.push_str("%29"),
            '<' => out.push_str("%3C"),
            '>' => out.push_str("%3E"),
            _ => out.push(c),
        }
    }
    out
}

/// Writes `report.md` (and `environment.json`) in `root` and returns the report's
/// path: `title`, the `command` line, the environment table, then each section with
/// its status, Markdown, embedded plots and links to its raw results and logs.
pub fn write_report(
    root: &ReportDir,
    title: &str,
    env: &Environment,
    sections: &[Section],
    command: &str,
) -> Result<PathBuf> {
    let mut env_json = serde_json::to_vec_pretty(env).context("serialising the environment")?;
    env_json.push(b'\n');
    write_atomic(&root.path().join("environment.json"), &env_json)?;

    let mut md = String::new();
    let title = title.trim();
    let _ = writeln!(
        md,
        "# {}\n",
        if title.is_empty() {
            "smrdb report"
        } else {
            title
        }
    );
    let fence = if command.contains("```") {
        "~~~~"
    } else {
        "```"
    };
    let _ = writeln!(
        md,
        "Command:\n\n{fence}sh\n{}\n{fence}\n",
        command.trim_end()
    );
    let _ = writeln!(md, "## Environment\n\n{}", env.markdown());
    let _ = writeln!(
        md,
        "Machine-readable: [environment.json](environment.json).\n"
    );

    if sections.len() > 1 {
        md.push_str("## Contents\n\n");
        for s in sections {
            let status = match &s.status {
                SectionStatus::Done => "done",
                SectionStatus::Interrupted => "interrupted",
                SectionStatus::Failed(_) => "failed",
            };
            let _ = writeln!(md, "- {} ({status})", s.title.trim());
        }
        md.push('\n');
    }

    for s in sections {
        let _ = writeln!(md, "## {}\n", s.title.trim());
        let nothing = s.markdown.trim().is_empty() && s.plots.is_empty();
        match &s.status {
            SectionStatus::Done => {}
            SectionStatus::Interrupted if nothing => {
                md.push_str("> **Interrupted** (Ctrl-C) before any measurement completed: nothing was kept.\n\n");
            }
            SectionStatus::Interrupted => {
                let has_results = s
                    .dir
                    .as_ref()
                    .is_some_and(|d| d.join("results.json").is_file());
                let what = if has_results {
                    "what follows, and `results.json`, hold"
                } else {
                    "what follows holds"
                };
                let _ = writeln!(
                    md,
                    "> **Interrupted** (Ctrl-C): {what} only the measurements completed before the \
                     stop; the remaining ones were not run.\n"
                );
            }
            SectionStatus::Failed(e) => {
                let _ = writeln!(md, "> **Failed**: {}\n", e.trim().replace('\n', "\n> "));
                if !nothing {
                    md.push_str("What was measured before the failure:\n\n");
                }
            }
        }
        if !s.markdown.trim().is_empty() {
            let _ = writeln!(md, "{}\n", s.markdown.trim_end());
        }
        for plot in &s.plots {
            let rel = relative_to(root.path(), plot);
            let alt = plot
                .file_stem()
                .map(|s| s.to_string_lossy().replace(['[', ']'], ""))
                .unwrap_or_default();
            let _ = writeln!(md, "![{alt}]({})\n", link_target(&rel));
        }
        if let Some(dir) = &s.dir {
            let mut links = Vec::new();
            for (file, text) in [("results.json", "raw results"), ("table.md", "table")] {
                let p = dir.join(file);
                if p.is_file() {
                    links.push(format!(
                        "[{text}]({})",
                        link_target(&relative_to(root.path(), &p))
                    ));
                }
            }
            let logs = dir.join("logs");
            if logs.is_dir() {
                let mut rel = link_target(&relative_to(root.path(), &logs));
                rel.push('/');
                links.push(format!("[logs]({rel})"));
            }
            if !links.is_empty() {
                let _ = writeln!(md, "Files: {}.\n", links.join(", "));
            }
        }
    }
    let path = root.path().join("report.md");
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

/// Whether a table cell looks like a number: an optional sign, digits with optional
/// `,` grouping, a fraction and an exponent, then at most a short unit (`ms`, `%`,
/// `GiB/s`, `x`).
fn looks_numeric(cell: &str) -> bool {
    let s = cell.trim();
    let s = s.strip_prefix(['-', '+', '~', '≈']).unwrap_or(s);
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut digits = 0;
    while i < bytes.len() && (bytes[i].is_ascii_digit() || (bytes[i] == b',' && digits > 0)) {
        digits += usize::from(bytes[i].is_ascii_digit());
        i += 1;
    }
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            digits += 1;
            i += 1;
        }
    }
    if digits == 0 {
        return false;
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        let mut j = i + 1;
        if j < bytes.len() && (bytes[j] == b'-' || bytes[j] == b'+') {
            j += 1;
        }
        let start = j;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        if j > start {
            i = j;
        }
    }
    let unit = s[i..].trim();
    unit.chars().count() <= 6 && !unit.chars().any(|c| c.is_ascii_digit() || c == '|')
}

/// A cell with no value (`-`, `n/a`...), which does not decide a column's alignment.
fn is_blank(cell: &str) -> bool {
    matches!(cell.trim(), "" | "-" | "—" | "n/a" | "NA" | "?")
}

/// Escapes what would break a table cell: `|` and line breaks.
fn escape_cell(cell: &str) -> String {
    cell.trim()
        .replace('|', "\\|")
        .replace("\r\n", " ")
        .replace(['\n', '\r'], " ")
}

/// A Markdown table (GitHub style) with columns of numbers right-aligned and cells
/// padded so the source reads as a table too. Rows shorter than the header are padded
/// with empty cells; longer rows add unnamed columns.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = rows
        .iter()
        .map(Vec::len)
        .chain([header.len(), 1])
        .max()
        .unwrap_or(1);
    let cell = |r: &Vec<String>, c: usize| r.get(c).map(|s| escape_cell(s)).unwrap_or_default();
    let head: Vec<String> = (0..cols)
        .map(|c| header.get(c).map(|h| escape_cell(h)).unwrap_or_default())
        .collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| (0..cols).map(|c| cell(r, c)).collect())
        .collect();
    let right: Vec<bool> = (0..cols)
        .map(|c| {
            let mut any = false;
            for r in &body {
                let v = &r[c];
                if is_blank(v) {
                    continue;
                }
                if !looks_numeric(v) {
                    return false;
                }
                any = true;
            }
            any
        })
        .collect();
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            body.iter()
                .map(|r| r[c].chars().count())
                .chain([head[c].chars().count(), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let pad = |s: &str, c: usize| {
        let n = width[c].saturating_sub(s.chars().count());
        if right[c] {
            format!("{}{s}", " ".repeat(n))
        } else {
            format!("{s}{}", " ".repeat(n))
        }
    };
    let line = |cells: &[String]| {
        let inner: Vec<String> = cells.iter().enumerate().map(|(c, s)| pad(s, c)).collect();
        format!("| {} |\n", inner.join(" | "))
    };
    let mut out = line(&head);
    let rule: Vec<String> = (0..cols)
        .map(|c| {
            if right[c] {
                format!("{}:", "-".repeat(width[c] - 1))
            } else {
                "-".repeat(width[c])
            }
        })
        .collect();
    out.push_str(&format!("| {} |\n", rule.join(" | ")));
    for r in &body {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_capture_is_sane() {
        let env = Environment::capture("shm", None, "2 nodes x 2 Tstores, smr router");
        assert!(env.cores_online >= 1, "{env:?}");
        assert!(env.mem_total_gib > 0.0, "{env:?}");
        assert!(!env.kernel.is_empty() && env.kernel != UNKNOWN, "{env:?}");
        assert!(env.numa_nodes >= 1, "{env:?}");
        assert_ne!(env.cpu_model, "");
        assert_eq!(env.loadavg.split_whitespace().count(), 3, "{env:?}");
        assert_eq!(env.date_utc.len(), 20);
        assert!(
            env.git_sha == UNKNOWN || is_sha(&env.git_sha),
            "{}",
            env.git_sha
        );
        assert_eq!(env.smrdb_version, env!("CARGO_PKG_VERSION"));
        let md = env.markdown();
        for want in [
            "kernel",
            "cores online",
            "NUMA nodes",
            "memory",
            "2 nodes x 2 Tstores",
            "shm",
        ] {
            assert!(md.contains(want), "{want} missing in\n{md}");
        }
        let json = serde_json::to_string(&env).expect("serialise");
        let back: Environment = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, env);
    }

    #[test]
    fn git_files_match_git() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        if let (Some(from_git), Some(from_files)) = (
            git(&dir, &["rev-parse", "--verify", "HEAD"]),
            read_git_head(&dir),
        ) {
            assert_eq!(from_git, from_files);
        }
    }

    #[test]
    fn cpulists_and_cpuinfo() {
        assert_eq!(count_cpulist("0"), Some(1));
        assert_eq!(count_cpulist("0-1\n"), Some(2));
        assert_eq!(count_cpulist("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpulist(""), None);
        assert_eq!(count_cpulist("3-1"), None);
        assert_eq!(count_cpulist("a-b"), None);
        assert_eq!(count_cpulist("0-18446744073709551615"), None);
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763\n";
        assert_eq!(cpu_model_from(info).as_deref(), Some("AMD EPYC 7763"));
        assert_eq!(cpu_model_from("processor : 0\n"), None);
    }

    #[test]
    fn utc_calendar() {
        assert_eq!(UtcTime::from_unix(0).iso(), "1970-01-01T00:00:00Z");
        assert_eq!(
            UtcTime::from_unix(951_782_400).iso(),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            UtcTime::from_unix(1_709_251_199).iso(),
            "2024-02-29T23:59:59Z"
        );
        assert_eq!(
            UtcTime::from_unix(1_735_689_600).compact(),
            "20250101-000000"
        );
        assert_eq!(UtcTime::from_unix(-1).iso(), "1969-12-31T23:59:59Z");
        assert_eq!(
            UtcTime::from_unix(4_102_444_800).iso(),
            "2100-01-01T00:00:00Z"
        );
    }

    #[test]
    fn report_dir_naming_and_experiments() {
        let base = tempfile::tempdir().expect("tempdir");
        let rd = ReportDir::create(&base.path().join("reports")).expect("create");
        let name = rd
            .path()
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        // YYYYmmdd-HHMMSS-<sha or nogit>
        let parts: Vec<&str> = name.splitn(3, '-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert_eq!(parts[0].len(), 8, "{name}");
        assert_eq!(parts[1].len(), 6, "{name}");
        assert!(parts[0]
            .bytes()
            .chain(parts[1].bytes())
            .all(|b| b.is_ascii_digit()));
        assert!(
            parts[2] == "nogit"
                || (parts[2].len() == 7 && parts[2].bytes().all(|b| b.is_ascii_hexdigit()))
        );
        assert!(rd.path().is_dir());

        let a = ReportDir::create_named(base.path(), "same").expect("first");
        let b = ReportDir::create_named(base.path(), "same").expect("second");
        assert_ne!(a.path(), b.path());
        assert!(b.path().ends_with("same-2"));

        let exp = rd.experiment("broadcast-shm").expect("experiment");
        assert_eq!(exp.name(), "broadcast-shm");
        assert_eq!(exp.path(), rd.path().join("broadcast-shm"));
        for bad in ["", "..", ".hidden", "a/b", "a b", "../x"] {
            assert!(rd.experiment(bad).is_err(), "{bad:?} accepted");
        }
        let results = exp
            .write_results(&serde_json::json!({"repeats": [1.5, 2.5]}))
            .expect("results");
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&results).expect("read")).expect("json");
        assert_eq!(back["repeats"][1], 2.5);
        let table = exp.write_markdown("| a |\n| - |\n| 1 |").expect("table");
        assert!(table.ends_with("table.md"));
        assert_eq!(
            exp.svg_path("time vs size"),
            exp.path().join("time_vs_size.svg")
        );
        assert_eq!(exp.svg_path("t.svg"), exp.path().join("t.svg"));
        assert_eq!(exp.svg_path(""), exp.path().join("plot.svg"));
        let logs = exp.logs_dir().expect("logs");
        assert!(logs.is_dir());
        // No temporary files left behind.
        let names: Vec<String> = std::fs::read_dir(exp.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    }

    #[test]
    fn report_content() {
        let base = tempfile::tempdir().expect("tempdir");
        let rd = ReportDir::create(base.path()).expect("create");
        let env = Environment::capture("verbs", Some("rxe0"), "2 nodes x 1 Tstore, smr router");
        let exp = rd.experiment("broadcast").expect("experiment");
        exp.write_results(&vec![1, 2, 3]).expect("results");
        exp.logs_dir().expect("logs");
        let plot = exp.svg_path("time");
        crate::plot::line_chart(
            &plot,
            &crate::plot::Axes::new("t", "x", "y"),
            &[crate::plot::Series::new("s", vec![(1.0, 2.0)])],
        )
        .expect("plot");
        let mut done = Section::new(&exp, "Broadcast", "| a |\n|---|\n| 1 |");
        done.plots.push(plot);
        let stopped = rd.experiment("query").expect("experiment");
        let mut interrupted =
            Section::new(&stopped, "Queries", "| q | s |\n|---|---|\n| q1 | 0.5 |");
        interrupted.status = SectionStatus::Interrupted;
        let mut failed = Section::new(&stopped, "Load", "");
        failed.status = SectionStatus::Failed("node 1 exited: status 1\nsee logs".to_string());
        let path = write_report(
            &rd,
            "smrdb demo",
            &env,
            &[done, interrupted, failed],
            "smrdb-bench all --fabric verbs",
        )
        .expect("report");
        let md = std::fs::read_to_string(&path).expect("read");
        assert!(md.starts_with("# smrdb demo\n"), "{md}");
        assert!(md.contains("smrdb-bench all --fabric verbs"));
        assert!(md.contains("| cores online"), "{md}");
        assert!(md.contains("rxe0"));
        assert!(md.contains("![time](broadcast/time.svg)"), "{md}");
        assert!(md.contains("[raw results](broadcast/results.json)"), "{md}");
        assert!(md.contains("[logs](broadcast/logs/)"), "{md}");
        assert!(
            !md.contains("query/results.json"),
            "link to a missing file:\n{md}"
        );
        assert!(
            md.contains("**Interrupted**") && md.contains("completed before the stop"),
            "{md}"
        );
        assert!(
            md.contains("**Failed**: node 1 exited: status 1\n> see logs"),
            "{md}"
        );
        assert!(md.contains("- Queries (interrupted)"));
        assert!(rd.path().join("environment.json").is_file());
        // Plots given with an absolute path into the report are made relative too.
        let abs = rd
            .path()
            .canonicalize()
            .expect("canonical")
            .join("broadcast/time.svg");
        assert_eq!(
            relative_to(rd.path(), &abs),
            Path::new("broadcast/time.svg")
        );
    }

    #[test]
    fn table_alignment() {
        let rows = vec![
            vec![
                "smr".to_string(),
                "1,234.5".to_string(),
                "12 ms".to_string(),
                "a|b".to_string(),
            ],
            vec![
                "naive".to_string(),
                "-3e-2".to_string(),
                "-".to_string(),
                "x".to_string(),
            ],
            vec!["short".to_string()],
        ];
        let t = markdown_table(&["mode", "value", "time", "note"], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert_eq!(lines[0], "| mode  |   value |  time | note |");
        assert_eq!(lines[1], "| ----- | ------: | ----: | ---- |");
        assert_eq!(lines[2], "| smr   | 1,234.5 | 12 ms | a\\|b |");
        assert_eq!(lines[3], "| naive |   -3e-2 |     - | x    |");
        assert_eq!(lines[4], "| short |         |       |      |");
        assert!(looks_numeric("3.2x") && looks_numeric("45%") && looks_numeric("1.5 GiB/s"));
        assert!(
            !looks_numeric("rxe0") && !looks_numeric("v1.2.3") && !looks_numeric("2 nodes x 2")
        );
        assert!(!looks_numeric("") && !looks_numeric("e5") && !looks_numeric("."));
        // Empty input still makes a table.
        assert_eq!(markdown_table(&[], &[]), "|     |\n| --- |\n");
    }
}
