//! Standard output and error that never panic, and the signals that stop long commands.
//!
//! # Closed pipes
//!
//! Rust ignores SIGPIPE (and diskconv keeps it ignored: network code wants `EPIPE` errors, not a
//! signal), so a write to a closed pipe fails with `EPIPE`; `println!` would panic on it (exit
//! 101). Every write to standard output goes through [`out`] / `outln!` or maps its error with
//! [`stdout_error`], which notes that standard output is closed; `main` then ends the command
//! quietly with exit code [`EXIT_CLOSED_PIPE`] (141, what a shell reports for a command killed by
//! SIGPIPE), after the command's normal clean-up. Diagnostics go through `errln!`, which drops
//! what cannot be written to a closed standard error.
//!
//! # Signals
//!
//! The commands that poll a cancellation flag (convert, sync and its export, verify) call
//! [`cancel_on_signals`]: SIGINT, SIGTERM and SIGHUP then set the flag, the work stops at the
//! next chunk, temporary and scratch files are removed, one line says what was interrupted, and
//! the exit code is 128 + the signal number (130, 143, 129). Further signals while the command
//! cleans up only set the flag again. Other commands keep the default action (the process ends
//! at once); their writes are crash-safe by design (see README.md, "Signals and exit codes").

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use diskconv::error::Hint;
use diskconv::{Error, Result};

/// Exit code when standard output is a closed pipe: 128 + SIGPIPE, as a shell reports it.
pub const EXIT_CLOSED_PIPE: u8 = 141;

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicUsize = AtomicUsize::new(0);

/// The error for a failed write to standard output; notes a closed pipe.
pub fn stdout_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        STDOUT_CLOSED.store(true, Ordering::SeqCst);
    }
    Error::io("writing to standard output", e)
}

/// An error as `diskconv: ...` prints it: the whole cause chain, then, when the library
/// attached a [`Hint`], the flag that gets past it.
pub fn message(e: &Error) -> String {
    let mut s = e.chain();
    if let Some(h) = e.hint() {
        s.push_str(flag_hint(h));
    }
    s
}

/// What the command line says for a library [`Hint`].
fn flag_hint(h: Hint) -> &'static str {
    match h {
        Hint::Rescan => "; pass --rescan to discard it and compare every block with the target",
        Hint::AdoptTarget => {
            "; remove it, or pass --rescan to adopt it (every block is compared with the source)"
        }
        Hint::StateBlockSize => " (omit --block-size to use it)",
        Hint::ChoosePartition => "; choose one with --partition N",
        Hint::AcceptDataLoss => " (--accept-data-loss)",
        Hint::AllowReferences => "; pass --references=anywhere to allow it",
        Hint::SkipManifestCheck => " (--no-verify-manifest skips the check)",
        Hint::AllowCapacityMismatch => " (--allow-capacity-mismatch reads it as it is)",
        Hint::ChooseDisk => " (convert one disk to the device with --disk N)",
        Hint::StatePath => {
            "; pass --state with a path in another folder (state files are never written into /dev)"
        }
        _ => "",
    }
}

/// Whether a write to standard output found it closed.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::SeqCst)
}

/// Writes to standard output and flushes.
pub fn out(args: fmt::Arguments<'_>) -> Result<()> {
    let mut o = io::stdout().lock();
    o.write_fmt(args)
        .and_then(|_| o.flush())
        .map_err(stdout_error)
}

/// Writes to standard error; a failure (closed, full) is ignored: there is nowhere to report it.
pub fn err(args: fmt::Arguments<'_>) {
    let mut e = io::stderr().lock();
    let _ = e.write_fmt(args).and_then(|_| e.flush());
}

/// `println!` that returns a `Result` instead of panicking.
macro_rules! outln {
    () => { $crate::term::out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::term::out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that returns a `Result` instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { $crate::term::out(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::term::err(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Makes SIGINT, SIGTERM and SIGHUP set the returned cancellation flag (and remember which
/// signal came) instead of ending the process.
pub fn cancel_on_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // The signal number first: whoever sees the flag finds it set.
        signal_hook::flag::register_usize(sig, &SIGNAL, sig as usize)
            .and_then(|_| signal_hook::flag::register(sig, flag.clone()))
            .map_err(|e| Error::io(format!("installing the handler of signal {sig}"), e))?;
    }
    Ok(flag)
}

/// The signal that set the cancellation flag, if one did.
pub fn signal_received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        n => i32::try_from(n).ok(),
    }
}

fn signal_name(sig: i32) -> String {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    match sig {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// Prints `diskconv: interrupted by SIG...: <what>` and returns exit code 128 + the signal
/// (130 when the cancellation came without a signal).
pub fn interrupted(what: &str) -> ExitCode {
    let sig = signal_received().unwrap_or(signal_hook::consts::SIGINT);
    errln!("diskconv: interrupted by {}: {what}", signal_name(sig));
    ExitCode::from(128u8.saturating_add(u8::try_from(sig).unwrap_or(0)))
}

/// A progress callback printing one line per 10 % on stderr when `enabled` (for logs and
/// outputs without a progress bar).
pub fn percent_lines(enabled: bool) -> impl FnMut(diskconv::Progress) {
    let mut last = None;
    move |p: diskconv::Progress| {
        if !enabled {
            return;
        }
        let pct = p.done.saturating_mul(10).checked_div(p.total).unwrap_or(10);
        if last != Some(pct) {
            last = Some(pct);
            errln!(
                "diskconv: {}% ({} of {})",
                pct * 10,
                diskconv::util::human_bytes(p.done),
                diskconv::util::human_bytes(p.total)
            );
        }
    }
}
