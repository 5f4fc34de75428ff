//! The summary of what the tests need and is missing (tests/oracles/tools.txt), printed by a
//! test that always runs. The module is named to sort last: libtest starts tests in name order,
//! so the summary comes at the end of the integration tests' output, where it is seen.
//!
//! It is written to the standard error file descriptor, which libtest does not capture (it
//! captures the print macros only), so it shows in `cargo test`'s output although the test
//! passes. `cargo nextest` captures all of a test's output; `.config/nextest.toml` has it show
//! this test's output with the final results. With `CI=true` a missing entry fails the test.

use std::io::Write;

use crate::{oracles, util};

/// Checks every entry of the list and reports what is missing: one line per missing entry,
/// with why, what provides it and the tests that skip because of it, then the command that
/// installs what is missing.
#[test]
fn summary() {
    let missing = oracles::missing();
    let text = oracles::summary_text(&missing);
    let mut err = std::io::stderr().lock();
    // A report that cannot be written is not a test failure.
    let _ = err.write_all(format!("\n{text}\n").as_bytes());
    let _ = err.flush();
    assert!(
        missing.is_empty() || !util::in_ci(),
        "CI=true, and the tests need what is missing:\n{text}"
    );
}
