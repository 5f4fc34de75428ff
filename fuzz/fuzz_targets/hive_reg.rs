//! Fuzzes the `.reg` parser on arbitrary bytes; what parses is imported into a new hive
//! (relative paths, no prefix) and exported; the export must parse and, imported into another
//! new hive, export the same text. Any panic is a bug; errors are fine.
#![no_main]

use diskconv::guest::hive::reg;
use diskconv::guest::hive::Hive;
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "HKEY_LOCAL_MACHINE\\FUZZ";

fuzz_target!(|data: &[u8]| {
    let Ok(ops) = reg::parse(data) else {
        return;
    };
    let Ok(mut hive) = Hive::new("ROOT") else {
        return;
    };
    // Errors (names too long, deleting the root) are fine; panics are not.
    let _ = reg::import(&mut hive, &ops, "");
    let Ok(text) = reg::export(&hive, hive.root(), PREFIX) else {
        return;
    };
    // Names read from a .reg file hold no line break, so the export reads back.
    let again = reg::parse(text.as_bytes()).expect("our export parses");
    let mut copy = Hive::new("ROOT").expect("new hive");
    reg::import(&mut copy, &again, PREFIX).expect("our export imports");
    let text2 = reg::export(&copy, copy.root(), PREFIX).expect("export of the copy");
    assert_eq!(text, text2);
});
