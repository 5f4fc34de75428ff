//! The hive core (read, edit, create, save) checked against independent readers: hivex
//! (`hivexregedit --export`, `hivexsh`) and regipy.

use std::collections::BTreeMap;
use std::path::Path;

use diskconv::guest::hive::{Hive, HiveOpenOptions, KeyId, RegType};

use crate::util;
use crate::util::Rng;

/// A whole hive: key path (components joined with `\`, root = "") → values sorted by name
/// (name, type, data).
pub(crate) type Model = BTreeMap<String, Vec<(String, u32, Vec<u8>)>>;

/// How hivexregedit's Perl prints a string: Latin-1 bytes when every character is at most
/// U+00FF, UTF-8 otherwise; the test helper then reads the output as lossy UTF-8. Applying the
/// same to our names makes them comparable.
pub(crate) fn perlish(s: &str) -> String {
    if s.chars().all(|c| (c as u32) <= 0xFF) {
        let bytes: Vec<u8> = s.chars().map(|c| c as u32 as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        s.to_string()
    }
}

fn unescape_quoted(s: &str) -> (String, &str) {
    // s starts right after the opening quote; returns the name and the rest after the closing
    // quote.
    let mut out = String::new();
    let mut it = s.char_indices();
    while let Some((i, c)) = it.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = it.next() {
                    out.push(n);
                }
            }
            '"' => return (out, &s[i + 1..]),
            c => out.push(c),
        }
    }
    panic!("unterminated quoted name in {s:?}");
}

/// Parses `hivexregedit --export` output into a [`Model`].
pub(crate) fn parse_hivex_export(text: &str) -> Model {
    let mut model = Model::new();
    // Join continuation lines (a line ending with `\` after hex data continues on the next).
    let mut lines: Vec<String> = Vec::new();
    let mut cont = false;
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if cont {
            let last = lines.last_mut().expect("continuation without a line");
            last.push_str(line.trim_start());
        } else {
            lines.push(line.to_string());
        }
        cont = lines
            .last()
            .is_some_and(|l| l.ends_with('\\') && l.contains("=hex"));
        if cont {
            lines.last_mut().unwrap().pop();
        }
    }
    let mut cur: Option<String> = None;
    for line in lines {
        if line.is_empty() || line.starts_with("Windows Registry Editor") {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            let p = &line[1..line.len() - 1];
            let p = p.strip_prefix('\\').unwrap_or(p).to_string();
            model.entry(p.clone()).or_default();
            cur = Some(p);
            continue;
        }
        let (name, rest) = if let Some(r) = line.strip_prefix("@=") {
            (String::new(), r)
        } else if let Some(r) = line.strip_prefix('"') {
            let (n, r) = unescape_quoted(r);
            (n, r.strip_prefix('=').expect("= after the value name"))
        } else {
            panic!("unexpected hivex export line {line:?}");
        };
        let (kind, data) = if let Some(d) = rest.strip_prefix("dword:") {
            (
                4,
                u32::from_str_radix(d, 16).unwrap().to_le_bytes().to_vec(),
            )
        } else if let Some(r) = rest.strip_prefix("hex(") {
            let (t, hex) = r.split_once("):").expect("hex(N):");
            let bytes = if hex.is_empty() {
                Vec::new()
            } else {
                hex.split(',')
                    .map(|b| u8::from_str_radix(b.trim(), 16).unwrap())
                    .collect()
            };
            (u32::from_str_radix(t, 16).unwrap(), bytes)
        } else {
            panic!("unexpected value form in {line:?}");
        };
        let key = cur.clone().expect("value before any key");
        model.get_mut(&key).unwrap().push((name, kind, data));
    }
    for v in model.values_mut() {
        v.sort();
    }
    model
}

/// Our reading of the whole hive as a [`Model`] (names passed through [`perlish`]).
pub(crate) fn our_model(h: &Hive) -> Model {
    let mut m = Model::new();
    walk(h, h.root(), String::new(), &mut m, 0);
    m
}

fn walk(h: &Hive, k: KeyId, path: String, m: &mut Model, depth: usize) {
    assert!(depth < 512, "too deep at {path}");
    let mut vals: Vec<(String, u32, Vec<u8>)> = h
        .values(k)
        .unwrap_or_else(|e| panic!("values of {path}: {e}"))
        .into_iter()
        .map(|v| (perlish(&v.name), v.kind.0, v.data))
        .collect();
    vals.sort();
    m.insert(perlish(&path), vals);
    for c in h
        .subkeys(k)
        .unwrap_or_else(|e| panic!("subkeys of {path}: {e}"))
    {
        let name = h.key_name(c).unwrap();
        let p = if path.is_empty() {
            name
        } else {
            format!("{path}\\{name}")
        };
        walk(h, c, p, m, depth + 1);
    }
}

/// Asserts two models are equal, printing the first differences.
pub(crate) fn assert_models_eq(ours: &Model, theirs: &Model, what: &str) {
    if ours == theirs {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in ours {
        match theirs.get(k) {
            None => diffs.push(format!("only ours: [{k}]")),
            Some(t) if t != v => {
                let brief = |x: &Vec<(String, u32, Vec<u8>)>| {
                    x.iter()
                        .map(|(n, t, d)| format!("{n:?}:{t}:{}", d.len()))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                diffs.push(format!("[{k}] ours {} / hivex {}", brief(v), brief(t)))
            }
            _ => {}
        }
    }
    for k in theirs.keys() {
        if !ours.contains_key(k) {
            diffs.push(format!("only hivex: [{k}]"));
        }
    }
    diffs.truncate(20);
    panic!("{what}: models differ:\n{}", diffs.join("\n"));
}

pub(crate) fn hivex_model(p: &Path) -> Model {
    parse_hivex_export(&util::hivex_export(p))
}

const CLEAN: &[&str] = &[
    "hives/nt-hive/testhive",
    "hives/hivex/special",
    "hives/regipy/SYSTEM",
    "hives/regipy/NTUSER.DAT",
    "hives/regipy/SAM",
    "hives/regipy/BCD",
    "hives/regipy/ntuser_software_partial",
    "hives/virt-v2v/minimal-hive",
];

#[test]
fn clean_corpus_hives_read_like_hivex() {
    if !util::require("hivexregedit") {
        return;
    }
    for rel in CLEAN {
        let Some(p) = util::corpus(rel) else { return };
        let h =
            Hive::open(&p, &HiveOpenOptions::default()).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let ours = our_model(&h);
        let theirs = hivex_model(&p);
        assert!(!theirs.is_empty());
        assert_models_eq(&ours, &theirs, rel);
        eprintln!("{rel}: {} keys equal", ours.len());
    }
}

#[test]
fn navigation_and_key_info() {
    let Some(p) = util::corpus("hives/regipy/SYSTEM") else {
        return;
    };
    let h = Hive::open(&p, &HiveOpenOptions::default()).unwrap();
    let k = h
        .open_key("\\controlset001\\SERVICES\\tcpip")
        .unwrap()
        .expect("Tcpip exists");
    assert_eq!(
        h.key_path(k).unwrap(),
        "ControlSet001\\services\\Tcpip",
        "the stored names, not the query's"
    );
    let parent = h.parent(k).unwrap().unwrap();
    assert_eq!(h.key_name(parent).unwrap(), "services");
    assert_eq!(h.parent(h.root()).unwrap(), None);
    assert_eq!(h.open_key("").unwrap(), Some(h.root()));
    assert!(h.open_key("ControlSet001\\NoSuchKey").unwrap().is_none());
    let info = h.key_info(k).unwrap();
    assert_eq!(info.name, "Tcpip");
    assert!(info.last_written > 0x01c0_0000_0000_0000);
    assert_eq!(info.subkey_count as usize, h.subkeys(k).unwrap().len());
    assert_eq!(info.value_count as usize, h.values(k).unwrap().len());
    let start = h.value(k, "START").unwrap().expect("Start value");
    assert_eq!(start.kind, RegType::DWORD);
    let sd = h.security_descriptor(k).unwrap();
    assert_eq!(sd[0], 1, "self-relative security descriptor revision 1");
    // Compare a value read through hivexget.
    if util::require("hivexget") {
        let out = util::run(
            std::process::Command::new("hivexget")
                .arg(&p)
                .arg("\\ControlSet001\\Services\\Tcpip")
                .arg("Start"),
        );
        let s = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            s.trim(),
            format!(
                "{}",
                u32::from_le_bytes(start.data[..4].try_into().unwrap())
            )
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Edits

fn copy_corpus(rel: &str, dir: &Path) -> Option<std::path::PathBuf> {
    let src = util::corpus(rel)?;
    let dst = dir.join(src.file_name().unwrap());
    std::fs::copy(&src, &dst).unwrap();
    Some(dst)
}

/// The expected model after an edit, mirroring what the hive does (paths as stored names).
fn model_create(m: &mut Model, path: &str) {
    let mut p = String::new();
    for comp in path.split('\\') {
        if !p.is_empty() {
            p.push('\\');
        }
        p.push_str(comp);
        m.entry(perlish(&p)).or_default();
    }
}

fn model_set(m: &mut Model, key: &str, name: &str, kind: u32, data: &[u8]) {
    let v = m.get_mut(&perlish(key)).expect("key in model");
    v.retain(|(n, _, _)| *n != perlish(name));
    v.push((perlish(name), kind, data.to_vec()));
    v.sort();
}

fn model_delete_value(m: &mut Model, key: &str, name: &str) {
    let v = m.get_mut(&perlish(key)).expect("key in model");
    v.retain(|(n, _, _)| *n != perlish(name));
}

fn model_delete_key(m: &mut Model, key: &str) {
    let p = perlish(key);
    let prefix = format!("{p}\\");
    m.retain(|k, _| *k != p && !k.starts_with(&prefix));
}

/// Asserts every byte outside the touched pages and the base block is unchanged.
fn assert_untouched_identical(before: &[u8], after: &[u8], touched: &[u32]) {
    let n = before.len().min(after.len());
    let mut page = 4096;
    while page < n {
        let p = ((page - 4096) / 4096) as u32;
        let end = (page + 4096).min(n);
        if !touched.contains(&p) {
            assert!(
                before[page..end] == after[page..end],
                "untouched page {p} (file offset {page:#x}) changed"
            );
        }
        page = end;
    }
    assert!(after.len() >= before.len(), "the file shrank");
}

/// regipy's view of one key (path relative to the root): one line per value, `name TYPE
/// length`, then `subkeys: N`. Reads only that key, so it is quick on big hives.
pub(crate) fn regipy_key(hive: &Path, key: &str) -> String {
    let script = r#"
import sys
from regipy.registry import RegistryHive
h = RegistryHive(sys.argv[1])
k = h.root if sys.argv[2] == "" else h.get_key("\\" + sys.argv[2])
for v in (k.iter_values(as_json=False, trim_values=False) if k.values_count else []):
    d = v.value
    n = len(d) if isinstance(d, (bytes, bytearray, str, list)) else 4
    print(v.name, v.value_type, n)
print("subkeys:", k.subkey_count)
"#;
    let out = util::run(
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(hive)
            .arg(key),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The edit set used on corpus copies; applies it to the hive and to the model.
fn apply_edit_set(h: &mut Hive, m: &mut Model, rng: &mut Rng) {
    let big20 = rng.bytes(20 * 1024);
    let big1m = rng.bytes(1024 * 1024);
    let k = h.create_key("diskconv-test\\Sub Key\\Deeper").unwrap();
    model_create(m, "diskconv-test\\Sub Key\\Deeper");
    let sets: Vec<(&str, u32, Vec<u8>)> = vec![
        (
            "",
            1,
            "default\0"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect(),
        ),
        (
            "sz",
            1,
            "hello\0"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect(),
        ),
        (
            "expand",
            2,
            "%SystemRoot%\\x\0"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect(),
        ),
        (
            "multi",
            7,
            "a\0bc\0\0"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect(),
        ),
        ("dword", 4, 0x1234_5678u32.to_le_bytes().to_vec()),
        ("dword be", 5, 0x1234_5678u32.to_be_bytes().to_vec()),
        ("qword", 11, 0x1122_3344_5566_7788u64.to_le_bytes().to_vec()),
        ("binary", 3, vec![1, 2, 3]),
        ("none", 0, vec![]),
        ("inline4", 3, vec![9, 8, 7, 6]),
        ("five", 3, vec![1, 2, 3, 4, 5]),
        ("big 20k", 3, big20),
        ("big 1m", 3, big1m),
        (
            "ünïcødé Ω名",
            1,
            "Ω\0".encode_utf16().flat_map(u16::to_le_bytes).collect(),
        ),
        ("odd type", 0x1234, vec![0xAA; 100]),
    ];
    let key = "diskconv-test\\Sub Key\\Deeper";
    for (n, t, d) in &sets {
        h.set_value(k, n, RegType(*t), d).unwrap();
        model_set(m, key, n, *t, d);
    }
    // Replace: smaller in place, bigger (new cell), big -> small, small -> big, inline.
    h.set_value(k, "five", RegType(3), &[5; 6]).unwrap();
    model_set(m, key, "five", 3, &[5; 6]);
    h.set_value(k, "sz", RegType(3), &[7; 300]).unwrap();
    model_set(m, key, "sz", 3, &[7; 300]);
    h.set_value(k, "big 1m", RegType(4), &[1, 0, 0, 0]).unwrap();
    model_set(m, key, "big 1m", 4, &[1, 0, 0, 0]);
    let big = rng.bytes(40_000);
    h.set_value(k, "binary", RegType(3), &big).unwrap();
    model_set(m, key, "binary", 3, &big);
    assert!(h.delete_value(k, "qword").unwrap());
    model_delete_value(m, key, "qword");
    assert!(!h.delete_value(k, "qword").unwrap());
    // A Unicode key name and a key tree to delete.
    h.create_key("diskconv-test\\Ключ ж\\x").unwrap();
    model_create(m, "diskconv-test\\Ключ ж\\x");
    let t = h.create_key("diskconv-test\\tree\\a\\b").unwrap();
    h.set_value(t, "v", RegType(3), &[1; 20_000]).unwrap();
    h.create_key("diskconv-test\\tree\\c").unwrap();
    assert!(h.delete_key("DISKCONV-TEST\\TREE").unwrap());
    assert!(!h.delete_key("diskconv-test\\tree").unwrap());
    // Lookup is case-insensitive for Cyrillic too.
    assert!(h.open_key("diskconv-test\\КЛЮЧ Ж\\X").unwrap().is_some());
}

/// For every `sk` of the ring: (stored reference count) - (keys pointing at it). The ring
/// must close with consistent back links. Edits must leave these differences unchanged
/// (a real hive's counts may include references from volatile keys, which the file lacks).
fn sk_ref_deltas(h: &Hive) -> BTreeMap<u32, i64> {
    use diskconv::guest::hive::security::SecurityNode;
    let mut refs: BTreeMap<u32, i64> = BTreeMap::new();
    let mut stack = vec![h.root()];
    while let Some(k) = stack.pop() {
        let nk = diskconv::guest::hive::key::KeyNode::read(h.cells(), k.0).unwrap();
        *refs.entry(nk.security).or_default() += 1;
        stack.extend(h.subkeys(k).unwrap());
    }
    let first = *refs.keys().next().unwrap();
    let mut deltas = BTreeMap::new();
    let mut cur = first;
    loop {
        let sk = SecurityNode::read(h.cells(), cur).unwrap();
        let next = SecurityNode::read(h.cells(), sk.flink).unwrap();
        assert_eq!(next.blink, cur, "sk ring back link at {cur:#x}");
        assert!(
            deltas.len() <= refs.len() + 10_000,
            "sk ring does not close"
        );
        deltas.insert(
            cur,
            i64::from(sk.refcount) - refs.get(&cur).copied().unwrap_or(0),
        );
        cur = sk.flink;
        if cur == first {
            break;
        }
    }
    for k in refs.keys() {
        assert!(
            deltas.contains_key(k),
            "sk {k:#x} used by keys is not in the ring"
        );
    }
    deltas
}

fn edit_corpus_hive(rel: &str, extra: impl Fn(&mut Hive, &mut Model)) {
    if !util::require("hivexregedit") || !util::require("hivexsh") || !util::require_regipy() {
        return;
    }
    let dir = util::tmpdir();
    let Some(p) = copy_corpus(rel, dir.path()) else {
        return;
    };
    let before = std::fs::read(&p).unwrap();
    let mut m = hivex_model(&p);
    let mut h = Hive::open(&p, &HiveOpenOptions::default()).unwrap();
    let deltas = sk_ref_deltas(&h);
    let mut rng = Rng::new(0x5eed);
    apply_edit_set(&mut h, &mut m, &mut rng);
    extra(&mut h, &mut m);
    let after_deltas = sk_ref_deltas(&h);
    for (sk, d) in &after_deltas {
        assert_eq!(
            deltas.get(sk).copied().unwrap_or(0),
            *d,
            "{rel}: sk {sk:#x} reference count"
        );
    }
    assert!(h.is_modified());
    assert_models_eq(&our_model(&h), &m, &format!("{rel} in memory"));
    let touched = h.touched_pages();
    let original_pages = (before.len() / 4096 - 1) as u32;
    let touched_old = touched.iter().filter(|&&p| p < original_pages).count();
    eprintln!(
        "{rel}: {touched_old} of {original_pages} original pages touched, {} in all",
        touched.len()
    );
    if original_pages > 1000 {
        assert!(
            touched_old < original_pages as usize / 10,
            "an edit set touches few pages"
        );
    }
    util::assert_hive_sound(&h.to_bytes(), "hive_core.rs:523");
    let stats = h.save().unwrap();
    assert!(!h.is_modified());
    assert_eq!(stats.pages_written as usize, touched.len());
    let after = std::fs::read(&p).unwrap();
    assert_untouched_identical(&before, &after, &touched);
    assert_models_eq(
        &hivex_model(&p),
        &m,
        &format!("{rel} saved in place, read by hivex"),
    );
    util::hivexsh(&p, "cd \\diskconv-test\\Sub Key\\Deeper\nlsval\n");
    let r = regipy_key(&p, "diskconv-test\\Sub Key\\Deeper");
    assert!(r.contains("big 20k REG_BINARY 20480"), "{r}");
    assert!(r.contains("binary REG_BINARY 40000"), "{r}");
    // Base block: sequences equal, checksum valid, bins size matches the file.
    let b = diskconv::guest::hive::BaseBlock::parse(&after, 0).unwrap();
    assert!(!b.is_dirty());
    assert_eq!(
        b.primary_sequence(),
        diskconv::guest::hive::BaseBlock::parse(&before, 0)
            .unwrap()
            .primary_sequence()
            + 1
    );
    assert!(after.len() as u64 >= 4096 + u64::from(b.hive_bins_size()));
    // Reopen and save_as a copy: the same content.
    let mut h2 = Hive::open(&p, &HiveOpenOptions::default()).unwrap();
    h2.set_value(h2.root(), "after reopen", RegType::DWORD, &[1, 2, 3, 4])
        .unwrap();
    model_set(&mut m, "", "after reopen", 4, &[1, 2, 3, 4]);
    let q = dir.path().join("copy");
    util::assert_hive_sound(&h2.to_bytes(), "hive_core.rs:554");
    h2.save_as(&q).unwrap();
    assert_models_eq(&hivex_model(&q), &m, &format!("{rel} save_as"));
    assert_eq!(h2.to_bytes(), std::fs::read(&q).unwrap());
    let r = regipy_key(&q, "");
    assert!(r.contains("after reopen REG_DWORD 4"), "{r}");
}

#[test]
fn edits_on_testhive_match_hivex() {
    edit_corpus_hive("hives/nt-hive/testhive", |_, _| {});
}

#[test]
fn edits_on_version_1_3_hive_match_hivex() {
    // BCD is a version 1.3 hive: lf lists, no big data (a 1 MiB value is one cell).
    edit_corpus_hive("hives/regipy/BCD", |_, _| {});
}

#[test]
fn edits_on_system_hive_match_hivex() {
    edit_corpus_hive("hives/regipy/SYSTEM", |h, m| {
        let k = h.create_key("ControlSet001\\Services\\viostor").unwrap();
        h.set_value(k, "Start", RegType::DWORD, &0u32.to_le_bytes())
            .unwrap();
        // The hive stores "services" in lower case: the new key goes under it.
        model_create(m, "ControlSet001\\services\\viostor");
        model_set(
            m,
            "ControlSet001\\services\\viostor",
            "Start",
            4,
            &0u32.to_le_bytes(),
        );
        // Deleting an existing tree of the original hive.
        let path = "ControlSet001\\services\\Tcpip";
        assert!(h.delete_key(path).unwrap());
        model_delete_key(m, path);
    });
}

// ---------------------------------------------------------------------------------------------
// Random edits against a model

/// A key of the expected tree: stored name, values by upper-cased name, subkeys by
/// upper-cased name.
#[derive(Default)]
struct Node {
    name: String,
    values: BTreeMap<Vec<u16>, (String, u32, Vec<u8>)>,
    children: BTreeMap<Vec<u16>, Node>,
}

fn up(s: &str) -> Vec<u16> {
    diskconv::guest::hive::key::upcase_str(s)
}

impl Node {
    fn to_model(&self, path: &str, m: &mut Model) {
        let mut v: Vec<_> = self
            .values
            .values()
            .map(|(n, t, d)| (perlish(n), *t, d.clone()))
            .collect();
        v.sort();
        m.insert(perlish(path), v);
        for c in self.children.values() {
            let p = if path.is_empty() {
                c.name.clone()
            } else {
                format!("{path}\\{}", c.name)
            };
            c.to_model(&p, m);
        }
    }
    fn get_mut(&mut self, path: &[String]) -> &mut Node {
        match path.split_first() {
            None => self,
            Some((f, rest)) => self.children.get_mut(&up(f)).unwrap().get_mut(rest),
        }
    }
    fn paths(&self, prefix: &[String], out: &mut Vec<Vec<String>>) {
        out.push(prefix.to_vec());
        for c in self.children.values() {
            let mut p = prefix.to_vec();
            p.push(c.name.clone());
            c.paths(&p, out);
        }
    }
}

fn random_name(rng: &mut Rng) -> String {
    // Small alphabet with case pairs (ASCII, Greek, Cyrillic) so that names collide without
    // regard to case; no Latin-1 letters above 0x7F (hivex prints those as raw bytes).
    const CH: &[char] = &[
        'a', 'B', 'c', 'A', 'b', 'C', 'ω', 'Ω', 'ж', 'Ж', ' ', '1', '_',
    ];
    let n = 1 + rng.below(6) as usize;
    (0..n)
        .map(|_| CH[rng.below(CH.len() as u64) as usize])
        .collect()
}

/// Checks the subkey lists of the whole hive independently of the library's lookup code:
/// leaves sorted by upper-cased name (strictly), `lh` hashes right, counts right.
fn assert_lists_sorted(h: &Hive) {
    fn rec(h: &Hive, k: KeyId) {
        let subs = h.subkeys(k).unwrap();
        let names: Vec<Vec<u16>> = subs
            .iter()
            .map(|&c| {
                h.key_name(c)
                    .unwrap()
                    .encode_utf16()
                    .map(|u| {
                        // Independent upper-casing: std's char mapping, single-unit only.
                        char::from_u32(u32::from(u))
                            .and_then(|c| {
                                let mut it = c.to_uppercase();
                                match (it.next(), it.next()) {
                                    (Some(x), None) if (x as u32) < 0x10000 => {
                                        Some(x as u32 as u16)
                                    }
                                    _ => None,
                                }
                            })
                            .unwrap_or(u)
                    })
                    .collect()
            })
            .collect();
        for w in names.windows(2) {
            assert!(w[0] < w[1], "subkeys of {:?} not sorted", h.key_path(k));
        }
        assert_eq!(h.key_info(k).unwrap().subkey_count as usize, subs.len());
        for c in subs {
            rec(h, c);
        }
    }
    rec(h, h.root());
}

fn node_from_hive(h: &Hive, k: KeyId) -> Node {
    let mut n = Node {
        name: h.key_name(k).unwrap(),
        ..Node::default()
    };
    for v in h.values(k).unwrap() {
        n.values
            .insert(up(&v.name), (v.name.clone(), v.kind.0, v.data));
    }
    for c in h.subkeys(k).unwrap() {
        let child = node_from_hive(h, c);
        n.children.insert(up(&child.name), child);
    }
    n
}

#[test]
fn random_edits_match_model_and_hivex() {
    random_edits(Hive::new("ROOT").unwrap(), "new hive");
}

#[test]
fn random_edits_on_version_1_3_hive_match_model_and_hivex() {
    let Some(p) = util::corpus("hives/regipy/BCD") else {
        return;
    };
    random_edits(Hive::open(&p, &HiveOpenOptions::default()).unwrap(), "BCD");
}

fn random_edits(mut h: Hive, what: &str) {
    let seed: u64 = std::env::var("HIVE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xD15C_0123);
    eprintln!("{what}: random edit seed {seed} (HIVE_SEED to replay)");
    let mut rng = Rng::new(seed);
    let mut tree = node_from_hive(&h, h.root());
    for step in 0..400 {
        let mut paths = Vec::new();
        tree.paths(&[], &mut paths);
        let path = paths[rng.below(paths.len() as u64) as usize].clone();
        let joined = path.join("\\");
        let k = h.open_key(&joined).unwrap().expect("model key exists");
        match rng.below(10) {
            0..=2 => {
                let name = random_name(&mut rng);
                let c = h.create_key(&format!("{joined}\\{name}")).unwrap();
                let node = tree.get_mut(&path);
                let stored = node
                    .children
                    .entry(up(&name))
                    .or_insert_with(|| Node {
                        name: name.clone(),
                        ..Node::default()
                    })
                    .name
                    .clone();
                assert_eq!(h.key_name(c).unwrap(), stored, "seed {seed} step {step}");
            }
            3..=6 => {
                let name = if rng.below(8) == 0 {
                    String::new()
                } else {
                    random_name(&mut rng)
                };
                let len = match rng.below(8) {
                    0 => 0,
                    1 => 1 + rng.below(4) as usize,
                    2 => 16_344 + rng.below(3) as usize,
                    3 => 17_000 + rng.below(40_000) as usize,
                    _ => 5 + rng.below(600) as usize,
                };
                let kind = rng.below(12) as u32;
                let data = rng.bytes(len);
                h.set_value(k, &name, RegType(kind), &data).unwrap();
                let node = tree.get_mut(&path);
                let e = node
                    .values
                    .entry(up(&name))
                    .or_insert_with(|| (name.clone(), 0, Vec::new()));
                e.1 = kind;
                e.2 = data;
            }
            7 => {
                let node = tree.get_mut(&path);
                if let Some(v) = node.values.keys().next().cloned() {
                    let name = node.values[&v].0.clone();
                    node.values.remove(&v);
                    assert!(h.delete_value(k, &name).unwrap(), "seed {seed} step {step}");
                }
            }
            _ => {
                if path.is_empty() || rng.below(3) != 0 {
                    continue;
                }
                let (last, parent) = path.split_last().unwrap();
                assert!(
                    h.delete_key(&joined.to_uppercase()).unwrap()
                        || joined != joined.to_uppercase()
                );
                if h.open_key(&joined).unwrap().is_some() {
                    // to_uppercase may differ from the registry's upper-casing: delete by the
                    // real name.
                    assert!(h.delete_key(&joined).unwrap());
                }
                tree.get_mut(parent).children.remove(&up(last));
            }
        }
        if step % 50 == 49 {
            let mut m = Model::new();
            tree.to_model("", &mut m);
            assert_models_eq(&our_model(&h), &m, &format!("seed {seed} step {step}"));
            assert_lists_sorted(&h);
        }
    }
    let mut m = Model::new();
    tree.to_model("", &mut m);
    assert_models_eq(&our_model(&h), &m, &format!("seed {seed} end"));
    // Everything freed comes back: the hive parses, and hivex reads the same tree.
    let reparsed = Hive::from_bytes(h.to_bytes()).unwrap();
    assert_models_eq(&our_model(&reparsed), &m, &format!("seed {seed} reparsed"));
    if util::require("hivexregedit") {
        let dir = util::tmpdir();
        let p = dir.path().join("random");
        util::assert_hive_sound(&h.to_bytes(), "hive_core.rs:819");
        h.save_as(&p).unwrap();
        assert_models_eq(&hivex_model(&p), &m, &format!("seed {seed} hivex"));
    }
}

// ---------------------------------------------------------------------------------------------
// Thousands of subkeys

#[test]
fn thousands_of_subkeys_stay_sorted_under_index_roots() {
    let dir = util::tmpdir();
    let p = dir.path().join("many");
    let mut h = Hive::new("ROOT").unwrap();
    let parent = h.create_key("many").unwrap();
    let mut rng = Rng::new(77);
    let mut names: BTreeMap<Vec<u16>, String> = BTreeMap::new();
    const CH: &[char] = &[
        'a', 'B', 'c', 'D', 'e', 'x', 'Y', 'z', '0', '7', 'ω', 'Ж', '-',
    ];
    while names.len() < 5000 {
        let n = 3 + rng.below(10) as usize;
        let s: String = (0..n)
            .map(|_| CH[rng.below(CH.len() as u64) as usize])
            .collect();
        if names.contains_key(&up(&s)) {
            continue;
        }
        h.create_key(&format!("many\\{s}")).unwrap();
        names.insert(up(&s), s);
    }
    let check = |h: &Hive, names: &BTreeMap<Vec<u16>, String>| {
        let subs = h.subkeys(parent).unwrap();
        assert_eq!(subs.len(), names.len());
        let got: Vec<String> = subs.iter().map(|&c| h.key_name(c).unwrap()).collect();
        let want: Vec<String> = names.values().cloned().collect();
        assert_eq!(got, want, "list order = upper-cased UTF-16 order");
        for s in names.values() {
            let swapped: String = s
                .chars()
                .map(|c| {
                    if c.is_lowercase() {
                        c.to_uppercase().next().unwrap()
                    } else {
                        c.to_lowercase().next().unwrap()
                    }
                })
                .collect();
            assert!(
                h.subkey(parent, &swapped).unwrap().is_some(),
                "lookup {swapped}"
            );
        }
        assert_lists_sorted(h);
    };
    check(&h, &names);
    util::assert_hive_sound(&h.to_bytes(), "hive_core.rs:874");
    h.save_as(&p).unwrap();
    // Index root present: the list of "many" is an ri over leaves.
    let bytes = std::fs::read(&p).unwrap();
    let reread = Hive::from_bytes(bytes.clone()).unwrap();
    let k = reread.open_key("many").unwrap().unwrap();
    let list_off = u32::from_le_bytes(
        bytes[4096 + k.0 as usize + 4 + 28..][..4]
            .try_into()
            .unwrap(),
    );
    assert_eq!(&bytes[4096 + list_off as usize + 4..][..2], b"ri");
    let hivex_check = |p: &Path, names: &BTreeMap<Vec<u16>, String>| {
        if util::require("hivexsh") {
            let out = util::hivexsh(p, "cd many\nls\n");
            let got: Vec<&str> = out.lines().collect();
            let want: Vec<&str> = names.values().map(String::as_str).collect();
            assert_eq!(got, want, "hivex lists every subkey in sorted order");
        }
        if util::require_regipy() {
            let r = regipy_key(p, "many");
            assert!(r.contains(&format!("subkeys: {}", names.len())), "{r}");
        }
    };
    hivex_check(&p, &names);
    // Delete half of them.
    let mut h = Hive::open(&p, &HiveOpenOptions::default()).unwrap();
    let all: Vec<(Vec<u16>, String)> = names.clone().into_iter().collect();
    for (i, (u, s)) in all.iter().enumerate() {
        if i % 2 == 0 {
            assert!(h.delete_key(&format!("many\\{s}")).unwrap());
            names.remove(u);
        }
    }
    check(&h, &names);
    util::assert_hive_sound(&h.to_bytes(), "hive_core.rs:908");
    h.save().unwrap();
    hivex_check(&p, &names);
}

// ---------------------------------------------------------------------------------------------
// New hives

#[test]
fn new_hive_is_read_by_hivex_and_regipy() {
    let dir = util::tmpdir();
    let p = dir.path().join("new");
    let mut h = Hive::new("NEWROOT").unwrap();
    assert_eq!(h.root().0, 0x20, "the root key is the first cell");
    let sd = h.security_descriptor(h.root()).unwrap();
    assert_eq!(sd, diskconv::guest::hive::security::default_descriptor());
    util::assert_hive_sound(&h.to_bytes(), "hive_core.rs:923");
    h.save_as(&p).unwrap();
    if util::require("hivexsh") {
        assert_eq!(util::hivexsh(&p, "ls\n"), "");
    }
    if util::require_regipy() {
        assert!(regipy_key(&p, "").contains("subkeys: 0"));
    }
    let mut h = Hive::open(&p, &HiveOpenOptions::default()).unwrap();
    let k = h.create_key("Software\\Vendor").unwrap();
    h.set_value(k, "Version", RegType::SZ, &[0x31, 0, 0, 0])
        .unwrap();
    assert_eq!(
        h.security_descriptor(k).unwrap(),
        sd,
        "new keys share the parent's sk"
    );
    util::assert_hive_sound(&h.to_bytes(), "hive_core.rs:939");
    h.save().unwrap();
    if util::require("hivexregedit") {
        let m = hivex_model(&p);
        assert_eq!(
            m.get("Software\\Vendor").unwrap(),
            &vec![("Version".to_string(), 1, vec![0x31, 0, 0, 0])]
        );
        assert!(m.contains_key("Software"));
    }
    if util::require_regipy() {
        let r = regipy_key(&p, "Software\\Vendor");
        assert!(r.contains("Version REG_SZ"), "{r}");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input

/// Opens `bytes` and walks the whole tree; returns the first error (or None).
fn walk_all(bytes: Vec<u8>) -> Option<String> {
    let h = match Hive::from_bytes(bytes) {
        Ok(h) => h,
        Err(e) => return Some(e.to_string()),
    };
    fn rec(h: &Hive, k: KeyId, depth: usize) -> Result<(), diskconv::Error> {
        if depth > 512 {
            return Ok(());
        }
        h.key_info(k)?;
        h.values(k)?;
        h.security_descriptor(k)?;
        for c in h.subkeys(k)? {
            rec(h, c, depth + 1)?;
        }
        Ok(())
    }
    rec(&h, h.root(), 0).err().map(|e| e.to_string())
}

#[test]
fn corrupted_and_truncated_corpus_hives_give_errors_not_panics() {
    let Some(p) = util::corpus("hives/regipy/corrupted_system_hive") else {
        return;
    };
    let e = walk_all(std::fs::read(&p).unwrap()).expect("the corrupted hive fails");
    assert!(e.contains(" at 0x"), "error names an offset: {e}");
    eprintln!("corrupted_system_hive: {e}");
    let Some(p) = util::corpus("hives/nt-hive/testhive") else {
        return;
    };
    let full = std::fs::read(&p).unwrap();
    for cut in [
        100,
        4096,
        4100,
        8192,
        20_000,
        full.len() - 4096,
        full.len() - 1,
    ] {
        let e = walk_all(full[..cut].to_vec()).unwrap_or_else(|| panic!("cut at {cut} accepted"));
        assert!(e.contains("0x"), "{e}");
    }
    // Random byte damage: errors or success, never a panic.
    let mut rng = Rng::new(99);
    for _ in 0..300 {
        let mut b = full.clone();
        for _ in 0..8 {
            let i = 4096 + rng.below((full.len() - 4096) as u64) as usize;
            b[i] = rng.next() as u8;
        }
        let _ = walk_all(b);
    }
}

// ---------------------------------------------------------------------------------------------
// regipy as a second reader

/// Non-ASCII characters become one `?` per run: regipy and hivex decode Latin-1 names
/// differently, the comparison is about structure and data.
fn norm(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_ascii() { c } else { '?' };
        if !(c == '?' && out.ends_with('?')) {
            out.push(c);
        }
    }
    out
}

type Flat = Vec<(String, Vec<(String, String, Option<String>)>)>;

/// Our tree in list order: key path, then (value name, type name, rendered data for DWORD and
/// BINARY values).
fn our_flat(h: &Hive) -> Flat {
    fn rec(h: &Hive, k: KeyId, path: String, out: &mut Flat) {
        let vals = h
            .values(k)
            .unwrap()
            .into_iter()
            .map(|v| {
                let rendered = match v.kind.0 {
                    4 if v.data.len() == 4 => {
                        Some(u32::from_le_bytes(v.data[..4].try_into().unwrap()).to_string())
                    }
                    3 => Some(util::hex(&v.data)),
                    _ => None,
                };
                (norm(&v.name), v.kind.name(), rendered)
            })
            .collect();
        out.push((norm(&path), vals));
        for c in h.subkeys(k).unwrap() {
            let n = h.key_name(c).unwrap();
            let p = if path.is_empty() {
                n
            } else {
                format!("{path}\\{n}")
            };
            rec(h, c, p, out);
        }
    }
    let mut out = Flat::new();
    rec(h, h.root(), String::new(), &mut out);
    out
}

fn parse_regipy_dump(text: &str) -> Flat {
    let mut out = Flat::new();
    for line in text.lines() {
        if line.starts_with('[') && line.ends_with(']') {
            out.push((norm(&line[1..line.len() - 1]), Vec::new()));
        } else if let Some(rest) = line.strip_prefix("  ") {
            let Some((name, rest)) = rest.split_once(" = ") else {
                continue;
            };
            let Some((kind, value)) = rest.split_once(": ") else {
                continue;
            };
            if let Some(last) = out.last_mut() {
                last.1
                    .push((norm(name), kind.to_string(), Some(value.to_string())));
            }
        }
    }
    out
}

#[test]
fn regipy_reads_corpus_hives_like_us() {
    if !util::require_regipy() {
        return;
    }
    for rel in [
        "hives/nt-hive/testhive",
        "hives/regipy/BCD",
        "hives/regipy/SAM",
        "hives/hivex/special",
        "hives/virt-v2v/minimal-hive",
    ] {
        let Some(p) = util::corpus(rel) else { return };
        let h = Hive::open(&p, &HiveOpenOptions::default()).unwrap();
        let ours = our_flat(&h);
        let theirs = parse_regipy_dump(&util::regipy_dump(&p));
        assert_eq!(
            ours.iter().map(|k| &k.0).collect::<Vec<_>>(),
            theirs.iter().map(|k| &k.0).collect::<Vec<_>>(),
            "{rel}: keys in list order"
        );
        let mut compared = 0;
        for ((path, ov), (_, tv)) in ours.iter().zip(&theirs) {
            assert_eq!(ov.len(), tv.len(), "{rel} [{path}]: value count");
            for ((on, ot, od), (tn, tt, td)) in ov.iter().zip(tv) {
                assert!(
                    on == tn || (on.is_empty() && tn == "(default)"),
                    "{rel} [{path}]: {on} / {tn}"
                );
                if ot.starts_with("REG_0x") || ot == "REG_DWORD_BIG_ENDIAN" {
                    continue; // regipy names unknown types its own way; it misreads DWORD_BE
                }
                assert_eq!(ot, tt, "{rel} [{path}] {on}: type");
                if let (Some(o), Some(t)) = (od, td) {
                    assert_eq!(o, t, "{rel} [{path}] {on}: data");
                    compared += 1;
                }
            }
        }
        eprintln!(
            "{rel}: {} keys, {compared} DWORD/BINARY values equal to regipy's",
            ours.len()
        );
    }
}
