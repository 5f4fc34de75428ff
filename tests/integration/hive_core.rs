//! The hive core (read, edit, create, save) checked against independent readers: hivex
//! (`hivexregedit --export`, `hivexsh`) and regipy.

use std::collections::BTreeMap;
use std::path::Path;

use diskconv::inject::hive::{Hive, HiveOpenOptions, KeyId, RegType};

use crate::util;

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

/// A deterministic pseudo-random generator (xorshift64*), so a failing seed can be replayed.
pub(crate) struct Rng(u64);
impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
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
    let mut rng = Rng::new(0x5eed);
    apply_edit_set(&mut h, &mut m, &mut rng);
    extra(&mut h, &mut m);
    assert!(h.is_modified());
    assert_models_eq(&our_model(&h), &m, &format!("{rel} in memory"));
    let touched = h.touched_pages();
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
    util::regipy_dump(&p);
    // Base block: sequences equal, checksum valid, bins size matches the file.
    let b = diskconv::inject::hive::BaseBlock::parse(&after, 0).unwrap();
    assert!(!b.is_dirty());
    assert_eq!(
        b.primary_sequence(),
        diskconv::inject::hive::BaseBlock::parse(&before, 0)
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
    h2.save_as(&q).unwrap();
    assert_models_eq(&hivex_model(&q), &m, &format!("{rel} save_as"));
    assert_eq!(h2.to_bytes(), std::fs::read(&q).unwrap());
    util::regipy_dump(&q);
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
