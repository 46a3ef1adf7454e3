//! Progress display and Ctrl-C handling for long experiment runs.
//!
//! [`install_ctrlc`] turns the first Ctrl-C (or SIGTERM, SIGHUP) into a request to stop: the
//! experiments poll [`stop_requested`] between measurements, stop their cluster
//! cleanly and write what they measured. A second Ctrl-C exits at once with status
//! 130.
//!
//! A terminal's Ctrl-C goes to its whole foreground process group: child processes
//! (node processes of a local cluster) get the SIGINT too unless they were spawned in
//! their own process group (`std::os::unix::process::CommandExt::process_group(0)`),
//! which a driver that wants to finish the current measurement should do.
//!
//! [`Progress`] shows a bar with the elapsed time and an ETA when stderr is a
//! terminal, and one plain line per step otherwise (CI logs, `| tee`), for example
//! `[3/12 ETA 2m10s] pivot: forced c`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Set by the first Ctrl-C.
static STOP: AtomicBool = AtomicBool::new(false);
/// Signals received since [`install_ctrlc`].
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
/// The outcome of the one handler installation.
static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// The exit status after a second Ctrl-C (128 + SIGINT, as shells report it).
pub const ABORT_EXIT_STATUS: i32 = 130;

/// What the handler does for one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignalAction {
    /// First signal: ask the experiments to stop after the current measurement.
    RequestStop,
    /// A later one: exit now.
    Abort,
}

/// Counts a signal in `count` and says what to do about it.
fn on_signal(count: &AtomicUsize) -> SignalAction {
    if count.fetch_add(1, Ordering::SeqCst) == 0 {
        SignalAction::RequestStop
    } else {
        SignalAction::Abort
    }
}

/// Installs the Ctrl-C handler (SIGINT, and SIGTERM and SIGHUP too); calling it again
/// does nothing.
///
/// The first signal sets the flag read by [`stop_requested`] and prints "stopping
/// after the current measurement (Ctrl-C again to abort)" on stderr; the second exits
/// the process with status 130 without any cleanup. Fails only if the handler cannot
/// be installed (another handler was installed through the `ctrlc` crate, or the
/// system refused).
pub fn install_ctrlc() -> Result<()> {
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| match on_signal(&SIGNALS) {
                SignalAction::RequestStop => {
                    STOP.store(true, Ordering::SeqCst);
                    eprintln!("\nstopping after the current measurement (Ctrl-C again to abort)");
                }
                SignalAction::Abort => {
                    eprintln!("\naborted");
                    std::process::exit(ABORT_EXIT_STATUS);
                }
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| anyhow!("installing the Ctrl-C handler: {e}"))
}

/// Whether a stop was requested (first Ctrl-C, or [`request_stop`]).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Requests a stop as a first Ctrl-C would, without printing anything (for a driver
/// that decides to end the run, e.g. after a fatal error in one experiment).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// `d` as `1h02m`, `2m10s` or `45s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// State of the plain (non-terminal) display.
#[derive(Debug)]
struct Plain {
    pos: u64,
    total: u64,
    message: String,
}

/// How progress is shown.
#[derive(Debug)]
enum Display {
    /// An indicatif bar on the terminal.
    Bar(ProgressBar),
    /// One line per step on stderr.
    Plain(Mutex<Plain>),
}

/// Progress of a run of `total` steps: a bar with elapsed time, ETA and a message on a
/// terminal, one plain line per step otherwise.
#[derive(Debug)]
pub struct Progress {
    label: String,
    start: Instant,
    display: Display,
}

impl Progress {
    /// A progress display for `total` steps labelled `label`, drawn on stderr: a bar if
    /// stderr is a terminal, plain lines otherwise.
    pub fn new(total: u64, label: &str) -> Progress {
        Progress::with_terminal(total, label, std::io::stderr().is_terminal())
    }

    /// Like [`Progress::new`] with the display mode chosen by `terminal`.
    fn with_terminal(total: u64, label: &str, terminal: bool) -> Progress {
        let display = if terminal {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix:.bold} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} ETA {eta} {msg}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_secs(1));
            Display::Bar(bar)
        } else {
            Display::Plain(Mutex::new(Plain {
                pos: 0,
                total,
                message: String::new(),
            }))
        };
        Progress {
            label: label.to_string(),
            start: Instant::now(),
            display,
        }
    }

    /// The plain state, even if a thread panicked while holding it.
    fn plain(m: &Mutex<Plain>) -> std::sync::MutexGuard<'_, Plain> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The plain line for a step: `[3/12 ETA 2m10s] label: msg`.
    fn plain_line(&self, p: &Plain, elapsed: Duration, msg: &str) -> String {
        let eta = if p.pos >= p.total {
            "done".to_string()
        } else if p.pos == 0 {
            "ETA ?".to_string()
        } else {
            let per_step = elapsed.as_secs_f64() / p.pos as f64;
            let left = per_step * (p.total - p.pos) as f64;
            format!(
                "ETA {}",
                format_duration(Duration::from_secs_f64(left.min(1e9)))
            )
        };
        if msg.is_empty() {
            format!("[{}/{} {eta}] {}", p.pos, p.total, self.label)
        } else {
            format!("[{}/{} {eta}] {}: {msg}", p.pos, p.total, self.label)
        }
    }

    /// Advances by one step; `msg` describes the step just finished (or the next one,
    /// as the caller prefers) and becomes the current message.
    pub fn step(&self, msg: &str) {
        match &self.display {
            Display::Bar(bar) => {
                bar.set_message(msg.to_string());
                bar.inc(1);
            }
            Display::Plain(m) => {
                let mut p = Progress::plain(m);
                p.pos += 1;
                p.total = p.total.max(p.pos);
                p.message = msg.to_string();
                eprintln!("{}", self.plain_line(&p, self.start.elapsed(), msg));
            }
        }
    }

    /// Sets the message without advancing (shown on the bar; remembered for the next
    /// plain line).
    pub fn set_message(&self, msg: &str) {
        match &self.display {
            Display::Bar(bar) => bar.set_message(msg.to_string()),
            Display::Plain(m) => Progress::plain(m).message = msg.to_string(),
        }
    }

    /// Prints `line` on stderr above the bar (or as is, in plain mode).
    pub fn println(&self, line: &str) {
        match &self.display {
            Display::Bar(bar) => bar.println(line),
            Display::Plain(_) => eprintln!("{line}"),
        }
    }

    /// Ends the display with a final message and the total time taken.
    pub fn finish(&self, msg: &str) {
        let took = format_duration(self.start.elapsed());
        match &self.display {
            Display::Bar(bar) => bar.finish_with_message(format!("{msg} (took {took})")),
            Display::Plain(m) => {
                let p = Progress::plain(m);
                eprintln!("[{}/{} took {took}] {}: {msg}", p.pos, p.total, self.label);
            }
        }
    }

    /// Adds `by` steps to the total (work discovered on the way).
    pub fn inc_total(&self, by: u64) {
        match &self.display {
            Display::Bar(bar) => bar.inc_length(by),
            Display::Plain(m) => {
                let mut p = Progress::plain(m);
                p.total = p.total.saturating_add(by);
            }
        }
    }

    /// Steps done so far.
    pub fn position(&self) -> u64 {
        match &self.display {
            Display::Bar(bar) => bar.position(),
            Display::Plain(m) => Progress::plain(m).pos,
        }
    }

    /// The current total of steps.
    pub fn total(&self) -> u64 {
        match &self.display {
            Display::Bar(bar) => bar.length().unwrap_or(0),
            Display::Plain(m) => Progress::plain(m).total,
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A bar dropped without finish() (an error path) leaves its last state on
        // screen instead of being wiped.
        if let Display::Bar(bar) = &self.display {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_signal_stops_second_aborts() {
        let count = AtomicUsize::new(0);
        assert_eq!(on_signal(&count), SignalAction::RequestStop);
        assert_eq!(on_signal(&count), SignalAction::Abort);
        assert_eq!(on_signal(&count), SignalAction::Abort);
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_secs(45)), "45s");
        assert_eq!(format_duration(Duration::from_secs(130)), "2m10s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn plain_mode_counts_and_formats() {
        let p = Progress::with_terminal(12, "pivot", false);
        assert_eq!(p.position(), 0);
        for i in 0..3 {
            p.step(&format!("step {i}"));
        }
        p.set_message("forced c");
        p.println("a line");
        p.inc_total(2);
        assert_eq!((p.position(), p.total()), (3, 14));
        let Display::Plain(m) = &p.display else {
            panic!("plain mode expected");
        };
        let line = {
            let state = Progress::plain(m);
            p.plain_line(&state, Duration::from_secs(30), "forced c")
        };
        // 10 s per step, 11 steps left.
        assert_eq!(line, "[3/14 ETA 1m50s] pivot: forced c");
        // More steps than announced never underflow.
        for _ in 0..20 {
            p.step("");
        }
        assert_eq!(p.total(), p.position());
        p.finish("done");
    }

    #[test]
    fn bar_mode_does_not_panic() {
        // Draws to stderr only when it is a terminal (indicatif hides it otherwise).
        let p = Progress::with_terminal(2, "bar", true);
        p.step("one");
        p.set_message("two");
        p.println("line");
        p.inc_total(1);
        assert_eq!(p.total(), 3);
        p.step("two");
        p.finish("ok");
        let dropped = Progress::with_terminal(1, "dropped", true);
        drop(dropped);
    }
}
