//! Fuzzes the registry hive parser on arbitrary bytes: the base block, the independent
//! structural check, then the hive opened from memory and walked (keys, values, data, class
//! names, security descriptors, lookups), and one edit. Any panic is a bug; errors are fine.
//!
//! One property is asserted beyond "no panic": when the check finds the input sound and the
//! editor accepts an edit, the edited hive must be sound too (leaks allowed).
#![no_main]

use diskconv::guest::hive::check::check_bytes;
use diskconv::guest::hive::{BaseBlock, Hive, RegData};
use libfuzzer_sys::fuzz_target;

/// Keys visited per input, to bound the work on a hive with a huge (or cyclic) tree.
const MAX_KEYS: usize = 2000;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = BaseBlock::parse(data, 0) {
        let _ = b.to_bytes();
    }
    let report = check_bytes(data);
    let Ok(mut hive) = Hive::from_bytes(data.to_vec()) else {
        return;
    };
    let mut stack = vec![hive.root()];
    let mut seen = 0usize;
    while let Some(k) = stack.pop() {
        seen += 1;
        if seen > MAX_KEYS {
            break;
        }
        let _ = hive.key_info(k);
        let _ = hive.key_path(k);
        let _ = hive.parent(k);
        let _ = hive.security_descriptor(k);
        if let Ok(values) = hive.values(k) {
            for v in values.iter().take(64) {
                let _ = v.decoded().encode();
                let _ = hive.value(k, &v.name);
            }
        }
        if let Ok(subs) = hive.subkeys(k) {
            if let Some(&first) = subs.first()
                && let Ok(name) = hive.key_name(first)
            {
                let _ = hive.subkey(k, &name);
                let _ = hive.subkey(k, &name.to_uppercase());
            }
            stack.extend(subs.into_iter().take(MAX_KEYS));
        }
    }
    let _ = hive.open_key("a\\b\\c");
    let edited = hive
        .create_key("fuzz\\new key")
        .and_then(|k| hive.set_data(k, "v", &RegData::Sz("x".repeat(40))))
        .is_ok();
    if edited && report.is_clean() {
        let after = check_bytes(&hive.to_bytes());
        assert!(
            after.is_clean(),
            "a sound hive edited is no longer sound: {:#?}",
            after.issues
        );
    }
});
