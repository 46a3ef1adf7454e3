//! How the fuzz targets that reach dependencies' decoders and planners count panics.
//!
//! libfuzzer-sys's panic hook aborts on every panic, even one the code under test
//! catches. Some catches are by design: arrow's IPC decoder and datafusion-proto's plan
//! decoder panic on some malformed input, and the node catches that
//! (`exchange::decode_copied`, `codec::plan_from_bytes`) and turns it into an error;
//! the node also turns a statement's panic into an XX000 error (`pg.rs` runs statements
//! in `spawn_blocking`). [`install`] replaces the hook:
//!
//! * a panic located in our code (a file outside cargo's registry and the standard
//!   library: the workspace's crates and these targets) is a bug even when caught: it
//!   is printed with its backtrace and the process aborts (libFuzzer keeps the input as
//!   a crash);
//! * a panic located in a dependency is recorded quietly ([`take_last`]). It still
//!   counts when it escapes (libfuzzer-sys's `catch_unwind` around each input aborts),
//!   and a target may decide it counts when caught ([`fail`]).

use std::backtrace::Backtrace;
use std::panic::PanicHookInfo;
use std::sync::Mutex;

/// One panic: where, what, and the stack of the thread that panicked.
pub struct Panic {
    /// `file:line:column`.
    pub location: String,
    /// The message.
    pub message: String,
    /// Captured (unresolved until printed).
    pub backtrace: Backtrace,
}

static LAST: Mutex<Option<Panic>> = Mutex::new(None);

/// True for a file of a dependency (cargo's registry or git checkouts) or of the
/// standard library.
fn in_dependency(file: &str) -> bool {
    file.contains("/registry/src/")
        || file.contains("/git/checkouts/")
        || file.starts_with("/rustc/")
}

fn message(info: &PanicHookInfo<'_>) -> String {
    let p = info.payload();
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// Installs the hook (call from the target's `init`).
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        let (file, location) = match info.location() {
            Some(l) => (
                l.file(),
                format!("{}:{}:{}", l.file(), l.line(), l.column()),
            ),
            None => ("", "an unknown location".to_string()),
        };
        let p = Panic {
            location,
            message: message(info),
            backtrace: Backtrace::force_capture(),
        };
        if !in_dependency(file) {
            fail(p);
        }
        *LAST.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }));
}

/// The last panic a dependency raised (and forgets it).
#[allow(dead_code)] // not every target asks
pub fn take_last() -> Option<Panic> {
    LAST.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Prints the panic and aborts: libFuzzer reports the input as a crash.
pub fn fail(p: Panic) -> ! {
    eprintln!(
        "panicked at {}:\n{}\n{}",
        p.location, p.message, p.backtrace
    );
    std::process::abort();
}
