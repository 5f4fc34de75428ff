//! Exit codes, and what `--help` says about them.
//!
//! Every command: 0 success, 1 failure, 64 usage error (EX_USAGE of sysexits.h: the command line
//! itself is wrong, nothing was done), 128 + N when stopped by signal N, 141 when the output
//! pipe was closed. `compare`, `verify`, `check` and `hive check` give 1, 2 and 3 their own
//! meanings (a result, not a failure), which is why usage errors do not use 2, clap's default.

/// The command could not do its work (the message says what and where).
pub const FAILURE: u8 = 1;
/// `compare` and `verify`: the command could not do its work (1 means "different").
pub const COMPARE_FAILURE: u8 = 2;
/// The command line is wrong: an unknown command or option, a missing or malformed argument,
/// or options that mean nothing together. Nothing was read or written.
pub const USAGE: u8 = 64;

/// The lines every command's exit-code list ends with.
macro_rules! common_tail {
    () => {
        "  64   usage error: unknown command or option, missing or malformed argument, or options
       that mean nothing together (nothing was done)
  130  stopped by SIGINT (Ctrl-C); 143 by SIGTERM, 129 by SIGHUP (128 + the signal number)
  141  standard output was closed early (a closed pipe)"
    };
}

/// Commands whose only result is success or failure.
pub const DEFAULT: &str = concat!(
    "Exit codes:
  0    success
  1    failure (the message on stderr names the file and what is wrong)
",
    common_tail!()
);

/// `diskconv compare`.
pub const COMPARE: &str = concat!(
    "Exit codes:
  0    the images read the same
  1    they differ (the first differing offset is printed)
  2    failure: the comparison could not run
",
    common_tail!()
);

/// `diskconv verify`.
pub const VERIFY: &str = concat!(
    "Exit codes:
  0    the images are equal block by block
  1    they differ (the mismatching ranges are listed)
  2    failure: the verification could not run
",
    common_tail!()
);

/// `diskconv check`.
pub const CHECK: &str = concat!(
    "Exit codes:
  0    the image is clean (warnings allowed)
  1    failure: the check could not run (not a qcow2, VMDK, VHD, VHDX or VDI image, unreadable)
  2    corruptions found (or a part of the image could not be read)
  3    leaks only (wasted space, harmless)
",
    common_tail!()
);

/// `diskconv hive check`.
pub const HIVE_CHECK: &str = concat!(
    "Exit codes:
  0    the hive is sound
  1    failure: the check could not run (unreadable file)
  2    problems found (listed)
",
    common_tail!()
);

/// `diskconv hive` (the group).
pub const HIVE: &str = concat!(
    "Exit codes:
  0    success (hive check: the hive is sound)
  1    failure (hive check: the check could not run)
  2    hive check only: problems found
",
    common_tail!()
);

/// `diskconv preflight` and `convert --target`: a check failed.
pub const PREFLIGHT_FAILED: u8 = 3;

/// `diskconv preflight`.
pub const PREFLIGHT: &str = concat!(
    "Exit codes:
  0    nothing fails (warnings allowed): the image can go to the target
  1    failure: the preflight could not run (unreadable image)
  3    a check failed (each failure says what fixes it)
",
    common_tail!()
);

/// `diskconv convert`.
pub const CONVERT: &str = concat!(
    "Exit codes:
  0    success
  1    failure (the message on stderr names the file and what is wrong)
  3    --target: the preflight failed and nothing was written (--no-preflight converts anyway)
",
    common_tail!()
);

/// `diskconv --help`: every command.
pub const ALL_COMMANDS: &str = concat!(
    "Exit codes:
  0    success; compare, verify: the images are the same; check, hive check: no problem
  1    failure; compare, verify: the images differ; check, hive check: the check could not run
  2    compare, verify: failure; check: corruptions; hive check: problems found
  3    check: leaked clusters only; preflight, convert --target: a preflight check failed
",
    common_tail!(),
    "

Option --references is taken by the commands that open images, -m/--threads by convert,
compare, sync and verify; see each command's --help."
);

/// Gives every command without an exit-code list of its own the default one.
pub fn with_exit_codes(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_subcommands(with_exit_codes);
    if cmd.get_after_help().is_none() {
        cmd.after_help(DEFAULT)
    } else {
        cmd
    }
}
