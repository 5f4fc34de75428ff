//! The exclusive lock of an image that is being changed in place, and who holds it.
//!
//! The lock is an `flock` on the image file itself: the kernel drops it when its holder exits
//! (also on SIGKILL or a crash), so it is never stale, and nothing is written beside the image
//! (nothing is ever written into the folder of a device node). A refused lock names its holder
//! from what the kernel records (`/proc/locks`: the process holding an `flock` on the file's
//! device and inode), with the holder's command line and the time it started from
//! `/proc/<pid>`. Where that is not readable (another PID namespace, no `/proc`), the refusal
//! says only that another process holds the lock.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Times a lock another process holds is tried, [`RETRY_MS`] apart, before it is refused.
const ATTEMPTS: u32 = 40;
/// Milliseconds between two attempts.
const RETRY_MS: u64 = 50;
/// Longest command line quoted in a refusal (longer ones are cut, with an ellipsis).
const MAX_COMMAND: usize = 200;

/// An exclusive advisory lock (`flock`) on an image file, so that two in-place changes (a
/// `sync` to the image, an injection, an NTFS edit, an in-place hive save, a rollback) cannot run
/// on one image at once. Held until dropped.
#[derive(Debug)]
pub struct ImageLock {
    _file: File,
}

impl ImageLock {
    /// Locks the image at `path`. A lock another process holds is waited for briefly (a child
    /// forked for an unrelated command may hold it for a moment between its fork and its exec),
    /// then refused with [`Error::Busy`], naming the image and the process holding the lock
    /// (see [`LockHolder`]).
    pub fn acquire(path: &Path) -> Result<ImageLock> {
        Self::lock(path, rustix::fs::FlockOperation::NonBlockingLockExclusive)
    }

    /// Takes a shared lock of the image at `path`, for a long-lived reader (`diskconv serve`
    /// of a read-only export): any number of shared holders may read at once, but none while
    /// another diskconv process changes the image in place, and no in-place change starts
    /// while one is held. Refused like [`ImageLock::acquire`].
    pub fn acquire_shared(path: &Path) -> Result<ImageLock> {
        Self::lock(path, rustix::fs::FlockOperation::NonBlockingLockShared)
    }

    fn lock(path: &Path, op: rustix::fs::FlockOperation) -> Result<ImageLock> {
        let f = File::open(path)
            .map_err(|e| Error::io("opening the image to lock it", e).in_file(path))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match rustix::fs::flock(&f, op) {
                Ok(()) => return Ok(ImageLock { _file: f }),
                Err(e) if e == rustix::io::Errno::WOULDBLOCK && attempt <= ATTEMPTS => {
                    std::thread::sleep(std::time::Duration::from_millis(RETRY_MS));
                }
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    let who = match LockHolder::of(&f) {
                        Some(h) => format!(" ({h})"),
                        None => String::new(),
                    };
                    return Err(Error::Busy(format!(
                        "the image is being edited by another diskconv process{who} (it holds \
                         the image's lock)"
                    ))
                    .in_file(path));
                }
                Err(e) => return Err(Error::io("locking the image", e.into()).in_file(path)),
            }
        }
    }
}

/// The process holding the `flock` of a file, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Its process id.
    pub pid: u32,
    /// Its command line (arguments joined by spaces), when readable.
    pub command: Option<String>,
    /// When it started, as an ISO 8601 UTC time (`2026-12-06T22:45:11Z`), when readable.
    pub started: Option<String>,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(c) = &self.command {
            write!(f, ", `{c}`")?;
        }
        if let Some(s) = &self.started {
            write!(f, ", running since {s}")?;
        }
        Ok(())
    }
}

impl LockHolder {
    /// The process holding an exclusive or shared `flock` on `file` (another open of the same
    /// file than `file` itself), or `None` when there is none or the kernel does not say.
    pub fn of(file: &File) -> Option<LockHolder> {
        let st = rustix::fs::fstat(file).ok()?;
        let id = format!(
            "{:02x}:{:02x}:{}",
            rustix::fs::major(st.st_dev),
            rustix::fs::minor(st.st_dev),
            st.st_ino
        );
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        let pid = flock_holder(&locks, &id)?;
        Some(LockHolder {
            pid,
            command: command_of(pid),
            started: started_of(pid),
        })
    }
}

/// The pid of the first `flock` in `locks` (the text of `/proc/locks`) on the file `id`
/// (`major:minor:inode`, as the kernel writes it); waiters (`->` lines) are skipped.
fn flock_holder(locks: &str, id: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, file, ..] if *file == id => {
                pid.parse::<u32>().ok().filter(|p| *p > 0)
            }
            _ => None,
        }
    })
}

/// The command line of process `pid`, arguments joined by spaces, cut at [`MAX_COMMAND`].
fn command_of(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.is_empty() {
        return None;
    }
    let mut c = args.join(" ");
    if c.chars().count() > MAX_COMMAND {
        c = c.chars().take(MAX_COMMAND).collect::<String>() + "...";
    }
    Some(c)
}

/// When process `pid` started (its start time in `/proc/<pid>/stat`, in clock ticks after the
/// boot time `btime` of `/proc/stat`), as ISO 8601 UTC.
fn started_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: fields after it are
    // counted from the last ')'. Field 22 (starttime) is the 20th after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = rustix::param::clock_ticks_per_second();
    if hz == 0 {
        return None;
    }
    Some(unix_time_iso8601(boot + ticks / hz))
}

/// Seconds since 1970-01-01 UTC as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn unix_time_iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = crate::util::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_image_is_refused_naming_it_and_its_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.img");
        std::fs::write(&p, b"x").unwrap();
        let held = ImageLock::acquire(&p).unwrap();
        let e = ImageLock::acquire(&p).unwrap_err();
        let msg = e.chain();
        assert!(
            msg.contains("disk.img") && msg.contains("another diskconv process"),
            "{msg}"
        );
        // The holder is this very process (its other open of the file).
        assert!(
            msg.contains(&format!("pid {},", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("running since 20"), "{msg}");
        assert_eq!(e.kind(), crate::ErrorKind::Busy);
        drop(held);
        ImageLock::acquire(&p).unwrap();
        // A missing image: an I/O error naming it.
        let e = ImageLock::acquire(&d.path().join("none.img")).unwrap_err();
        assert!(e.chain().contains("none.img"), "{}", e.chain());
    }

    #[test]
    fn shared_locks_coexist_and_exclude_a_writer() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.img");
        std::fs::write(&p, b"x").unwrap();
        let a = ImageLock::acquire_shared(&p).unwrap();
        let b = ImageLock::acquire_shared(&p).unwrap();
        assert_eq!(
            ImageLock::acquire(&p).unwrap_err().kind(),
            crate::ErrorKind::Busy
        );
        drop((a, b));
        let w = ImageLock::acquire(&p).unwrap();
        assert_eq!(
            ImageLock::acquire_shared(&p).unwrap_err().kind(),
            crate::ErrorKind::Busy
        );
        drop(w);
    }

    #[test]
    fn proc_locks_lines_are_matched_by_device_and_inode() {
        let locks = "1: POSIX  ADVISORY  WRITE 10 00:2c:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 11 00:2c:78 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 12 00:2c:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 13 00:2c:77 0 EOF\n";
        assert_eq!(flock_holder(locks, "00:2c:77"), Some(13));
        assert_eq!(flock_holder(locks, "00:2c:78"), Some(11));
        assert_eq!(flock_holder(locks, "00:2c:79"), None);
        assert_eq!(flock_holder("garbage\n\n1:", "00:2c:77"), None);
    }

    #[test]
    fn unix_times_print_as_utc_dates() {
        assert_eq!(unix_time_iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(unix_time_iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(unix_time_iso8601(1_796_597_111), "2026-12-06T22:45:11Z");
    }
}
