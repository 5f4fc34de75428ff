//! Fuzzes the kmod index parsers on arbitrary bytes: the input as `modules.dep`,
//! `modules.alias`, `modules.builtin`, `modules.order`, `modules.softdep` and
//! `modules.builtin.modinfo`, and as a module's ELF object (`.modinfo`, vermagic); then kmod's
//! resolution (lookups through alias globs, probe lists with soft dependencies) over what
//! parsed. Any panic is a bug; errors are fine.
#![no_main]

use diskconv::guest::kmod::elf::vermagic;
use diskconv::guest::kmod::index::glob_match;
use diskconv::guest::kmod::{
    KernelModules, module_name, parse_modules_alias, parse_modules_builtin,
    parse_modules_builtin_modinfo, parse_modules_dep, parse_modules_order, parse_modules_softdep,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vermagic(data);
    let _ = parse_modules_order(data, 0);
    let mut k = KernelModules::default();
    if let Ok(d) = parse_modules_dep(data, 0) {
        k.dep = d;
    }
    if let Ok(a) = parse_modules_alias(data, 0) {
        k.aliases = a;
    }
    if let Ok(b) = parse_modules_builtin(data, 0) {
        k.builtin = b;
    }
    if let Ok(s) = parse_modules_softdep(data, 0) {
        k.softdeps = s;
    }
    if let Ok(m) = parse_modules_builtin_modinfo(data, 0) {
        k.builtin_modinfo = m;
    }
    // The second half of the input as names and patterns.
    let text = String::from_utf8_lossy(&data[data.len() / 2..]).into_owned();
    for w in text.split_whitespace().take(16) {
        let _ = module_name(w);
        let _ = glob_match(w, &text);
        for r in k.lookup(w) {
            if let diskconv::guest::kmod::Resolved::Module { name, path } = r {
                let _ = k.probe_list(&name, &path);
            }
        }
    }
    for e in k.dep.entries.iter().take(16) {
        let _ = k.probe_list(&module_name(&e.path), &e.path);
    }
});
