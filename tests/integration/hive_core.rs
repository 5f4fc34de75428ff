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
