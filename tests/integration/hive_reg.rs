//! `.reg` parse, import and export checked against independent writers and readers:
//! `hivexregedit --merge` (hivex as a second writer), `reged -I` (chntpw as a third writer),
//! `hivexregedit --export`, `hivexget` and `hivexsh` (readers), and the real hives of the corpus.

use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::guest::hive::reg::{self, ParseOptions, RegOp};
use diskconv::guest::hive::{Hive, HiveOpenOptions, RegType};

use crate::util;

const SOFTWARE: &str = "HKEY_LOCAL_MACHINE\\SOFTWARE";
const SYSTEM: &str = "HKEY_LOCAL_MACHINE\\SYSTEM";

/// A `.reg` file with every form that both hivexregedit and we accept. Left out because
/// `hivexregedit --merge` does not do them (see [`every_form_matches_hivexregedit`]): a key
/// whose parent is not created first, `dword:` with fewer than 8 digits, a value deleted in the
/// section that set it, non-ASCII strings (hivex's Perl encodes the file's bytes one by one).
const EVERY_FORM: &str = r#"Windows Registry Editor Version 5.00

; a comment, then a blank line

[HKEY_LOCAL_MACHINE\SOFTWARE\Test]
@="default"
"str"="a \"quoted\" back\\slash"
"dw"=dword:0000001f
"bin"=hex:01,ff,00
"empty"=hex:
"none"=hex(0):
"multi"=hex(7):61,00,00,00,62,00,00,00,00,00
"exp"=hex(2):25,00,00,00
"q"=hex(b):01,00,00,00,00,00,00,00
"big"=hex(100000):aa
"res"=hex(8):01,02
"be"=hex(5):00,00,00,01
"cont"=hex:01,02,\
    03,04,\
  05
"gone"=dword:00000001
"h1"=hex(1):41,00,00,00

[HKEY_LOCAL_MACHINE\SOFTWARE\Test\Sub]

[HKEY_LOCAL_MACHINE\SOFTWARE\Test\Sub\Deep]
"x"=hex(a):00,00,00,01

[HKEY_LOCAL_MACHINE\SOFTWARE\Old]
"y"=dword:00000002

[HKEY_LOCAL_MACHINE\SOFTWARE\Old\Child]
"z"=dword:00000003

[-HKEY_LOCAL_MACHINE\SOFTWARE\Old]

[HKEY_LOCAL_MACHINE\SOFTWARE\Test]
"gone"=-
"#;

/// A copy of a corpus hive in `dir`, writable.
fn copy_of(rel: &str, dir: &Path, name: &str) -> Option<PathBuf> {
    let src = util::corpus(rel)?;
    let dst = dir.join(name);
    std::fs::copy(&src, &dst).expect("copy hive");
    let mut perm = std::fs::metadata(&dst).expect("stat").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&dst, perm).expect("chmod");
    Some(dst)
}

/// Parses `text` and imports it into the hive at `hive` with `prefix`, saving in place.
fn import_ours(hive: &Path, text: &[u8], prefix: &str) -> reg::ImportStats {
    let ops = reg::parse(text).expect("parse");
    let mut h = Hive::open(hive, &HiveOpenOptions::default()).expect("open");
    let stats = reg::import(&mut h, &ops, prefix).expect("import");
    util::assert_hive_sound(&h.to_bytes(), "hive_reg.rs:77");
    h.save().expect("save");
    stats
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write .reg");
    p
}

#[test]
fn corpus_reg_files_parse() {
    for name in [
        "windows-system.reg",
        "win10-software.reg",
        "windows-software-all.reg",
    ] {
        let Some(p) = util::corpus(&format!("hives/virt-v2v/{name}")) else {
            return;
        };
        let bytes = std::fs::read(&p).unwrap();
        // These hivexregedit inputs have no header: refused by default, read with the option.
        let err = reg::parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("missing header"), "{err}");
        let ops = reg::parse_with(
            &bytes,
            &ParseOptions {
                require_header: false,
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Count the lines of each kind independently of the parser.
        let text = String::from_utf8(bytes).unwrap();
        let keys = text.lines().filter(|l| l.starts_with('[')).count();
        let values = text.lines().filter(|l| l.starts_with('"')).count();
        let got_keys = ops
            .iter()
            .filter(|o| matches!(o, RegOp::CreateKey(_)))
            .count();
        let got_values = ops
            .iter()
            .filter(|o| matches!(o, RegOp::SetValue { .. }))
            .count();
        assert_eq!((got_keys, got_values), (keys, values), "{name}");
        assert!(keys > 0 && values > 0);
        // hivex's str(1):"..." is a NUL-terminated UTF-16LE REG_SZ.
        if name == "windows-system.reg" {
            assert!(
                ops.contains(&RegOp::SetValue {
                    key: "HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\Tcpip\\Parameters"
                        .into(),
                    name: "Hostname".into(),
                    kind: RegType::SZ,
                    data: "windows.invalid\0"
                        .encode_utf16()
                        .flat_map(|u| u.to_le_bytes())
                        .collect(),
                })
            );
        }
    }
}

#[test]
fn every_form_matches_hivexregedit() {
    if !util::require("hivexregedit") {
        return;
    }
    let dir = util::tmpdir();
    let Some(ours) = copy_of("hives/virt-v2v/minimal-hive", dir.path(), "ours") else {
        return;
    };
    let theirs = copy_of("hives/virt-v2v/minimal-hive", dir.path(), "theirs").unwrap();
    let stats = import_ours(&ours, EVERY_FORM.as_bytes(), SOFTWARE);
    assert_eq!(
        stats,
        reg::ImportStats {
            // Test, Sub, Deep, Old, Child.
            keys_created: 5,
            keys_deleted: 1,
            values_set: 18,
            values_deleted: 1,
        }
    );
    let file = write(dir.path(), "t.reg", EVERY_FORM.as_bytes());
    util::run(
        Command::new("hivexregedit")
            .arg("--merge")
            .arg("--prefix")
            .arg(SOFTWARE)
            .arg(&theirs)
            .arg(&file),
    );
    let a = util::hivex_export(&ours);
    let b = util::hivex_export(&theirs);
    assert_eq!(a, b);
    // The oracle really saw the edits.
    assert!(a.contains("\"big\"=hex(100000):aa"), "{a}");
    assert!(a.contains("[\\Test\\Sub\\Deep]"), "{a}");
    assert!(!a.contains("Old") && !a.contains("\"gone\""), "{a}");

    // The same file as regedit writes it (UTF-16LE with BOM, CRLF), with the short HKLM prefix
    // and written in other case, gives the same hive.
    let third = copy_of("hives/virt-v2v/minimal-hive", dir.path(), "third").unwrap();
    let crlf = EVERY_FORM.replace('\n', "\r\n");
    import_ours(&third, &reg::to_utf16le_with_bom(&crlf), "hklm\\software");
    assert_eq!(util::hivex_export(&third), b);
}

#[test]
fn every_form_matches_reged() {
    if !util::require("reged") || !util::require("hivexregedit") {
        return;
    }
    // reged -I does not do deletions ([-key] aborts it) and crashes on a comment line: the
    // file without them.
    let end = EVERY_FORM
        .find("[HKEY_LOCAL_MACHINE\\SOFTWARE\\Old]")
        .unwrap();
    let text = EVERY_FORM[..end].replace("; a comment, then a blank line\n\n", "");
    let text = text.as_str();
    let dir = util::tmpdir();
    let Some(ours) = copy_of("hives/virt-v2v/minimal-hive", dir.path(), "ours") else {
        return;
    };
    let theirs = copy_of("hives/virt-v2v/minimal-hive", dir.path(), "theirs").unwrap();
    import_ours(&ours, text.as_bytes(), SOFTWARE);
    let file = write(dir.path(), "t.reg", text.as_bytes());
    // reged exits 2 after a successful commit ("hives changed"); check its report instead.
    let out = Command::new("reged")
        .arg("-I")
        .arg("-C")
        .arg(&theirs)
        .arg(SOFTWARE)
        .arg(&file)
        .output()
        .expect("run reged");
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(so.contains("operation SUCCEEDED"), "reged: {so}");
    let a = util::hivex_export(&ours);
    assert_eq!(a, util::hivex_export(&theirs));
    assert!(a.contains("\"gone\"=dword:00000001"), "{a}");
}

/// Exports the hive at `src` with our exporter, imports the text into a new empty hive, and
/// checks that hivex reads both the same (the root's own name is not part of hivex's export).
fn round_trip(rel: &str, prefix: &str) {
    if !util::require("hivexregedit") {
        return;
    }
    let Some(src) = util::corpus(rel) else {
        return;
    };
    let h = Hive::open(&src, &HiveOpenOptions::default()).expect("open");
    let text = reg::export(&h, h.root(), prefix).expect("export");
    assert!(text.starts_with("Windows Registry Editor Version 5.00\r\n\r\n["));
    for l in text.lines() {
        // Regedit's wrapping keeps hex lines under 80 columns (a long name or string is one
        // line whatever its length).
        if l.starts_with("  ") {
            assert!(l.len() <= 80, "{l}");
        }
    }
    let ops = reg::parse(&reg::to_utf16le_with_bom(&text)).expect("parse our export");
    // What the text says is exactly what the hive holds.
    for op in &ops {
        if let RegOp::SetValue {
            key,
            name,
            kind,
            data,
        } = op
        {
            let rel = reg::strip_prefix(key, prefix).expect("inside the prefix");
            let k = h.open_key(&rel).unwrap().expect("exported key exists");
            let v = h.value(k, name).unwrap().expect("exported value exists");
            assert_eq!((v.kind, v.data.len()), (*kind, data.len()), "{key} {name}");
            assert!(v.data == *data, "{key} {name}");
        }
    }
    let mut fresh = Hive::new("ROOT").expect("new");
    reg::import(&mut fresh, &ops, prefix).expect("import");
    let dir = util::tmpdir();
    let out = dir.path().join("copy");
    util::assert_hive_sound(&fresh.to_bytes(), "hive_reg.rs:261");
    fresh.save_as(&out).expect("save_as");
    // Our own reader sees every value of the text in the saved copy.
    let back = Hive::open(&out, &HiveOpenOptions::default()).expect("reopen the copy");
    for op in &ops {
        if let RegOp::SetValue {
            key, name, data, ..
        } = op
        {
            let rel = reg::strip_prefix(key, prefix).expect("inside the prefix");
            let k = back.open_key(&rel).unwrap().expect("imported key exists");
            let v = back.value(k, name).unwrap().expect("imported value exists");
            assert_eq!(v.data.len(), data.len(), "{key} {name} read back");
        }
    }
    let a = util::hivex_export(&src);
    let b = util::hivex_export(&out);
    if a != b {
        // Keep both exports for a look with diff.
        let keep = std::env::temp_dir().join(format!("hive_reg-{}", rel.replace('/', "_")));
        let _ = std::fs::write(keep.with_extension("original.reg"), &a);
        let _ = std::fs::write(keep.with_extension("copy.reg"), &b);
        let first = a
            .lines()
            .zip(b.lines())
            .position(|(x, y)| x != y)
            .unwrap_or(0);
        let show = |s: &str| s.lines().skip(first).take(3).collect::<Vec<_>>().join("\n");
        panic!(
            "{rel}: hivex sees a different hive after the round trip at line {}:\noriginal:\n{}\ncopy:\n{}",
            first + 1,
            show(&a),
            show(&b)
        );
    }
}

#[test]
fn round_trip_regipy_system() {
    round_trip("hives/regipy/SYSTEM", SYSTEM);
}

#[test]
fn round_trip_nt_hive_testhive() {
    round_trip("hives/nt-hive/testhive", "HKEY_CURRENT_USER\\Test");
}

#[test]
fn round_trip_hivex_special() {
    round_trip("hives/hivex/special", "");
}

#[test]
fn windows_system_reg_into_real_system() {
    if !util::require("hivexget") {
        return;
    }
    let dir = util::tmpdir();
    let Some(hive) = copy_of("hives/regipy/SYSTEM", dir.path(), "SYSTEM") else {
        return;
    };
    let bytes = std::fs::read(util::corpus("hives/virt-v2v/windows-system.reg").unwrap()).unwrap();
    let ops = reg::parse_with(
        &bytes,
        &ParseOptions {
            require_header: false,
        },
    )
    .unwrap();
    let mut h = Hive::open(&hive, &HiveOpenOptions::default()).unwrap();
    let stats = reg::import(&mut h, &ops, SYSTEM).unwrap();
    assert!(stats.values_set > 0);
    util::assert_hive_sound(&h.to_bytes(), "hive_reg.rs:332");
    h.save().unwrap();
    let mut checked = 0;
    for op in &ops {
        let RegOp::SetValue {
            key,
            name,
            kind,
            data,
        } = op
        else {
            continue;
        };
        let rel = reg::strip_prefix(key, SYSTEM).unwrap();
        let out = util::run(Command::new("hivexget").arg(&hive).arg(&rel).arg(name));
        let got = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        // hivexget prints strings as text, DWORDs in decimal, other types as hex bytes.
        let want = match *kind {
            RegType::SZ => String::from_utf16_lossy(
                &data
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|&u| u != 0)
                    .collect::<Vec<_>>(),
            ),
            RegType::DWORD => u32::from_le_bytes(data[..4].try_into().unwrap()).to_string(),
            _ => {
                // Compare through hivexsh's lsval, which prints the bytes.
                let ls = util::hivexsh(&hive, &format!("cd {rel}\nlsval\n"));
                let hexs: Vec<String> = data.iter().map(|b| format!("{b:02x}")).collect();
                assert!(ls.contains(&hexs.join(",")), "{rel} {name}: {ls}");
                checked += 1;
                continue;
            }
        };
        assert_eq!(got, want, "{rel}\\{name}");
        checked += 1;
    }
    assert_eq!(checked, stats.values_set);
}

#[test]
fn deletions_seen_by_hivexsh() {
    if !util::require("hivexsh") {
        return;
    }
    let dir = util::tmpdir();
    let Some(hive) = copy_of("hives/nt-hive/testhive", dir.path(), "testhive") else {
        return;
    };
    let before = util::hivexsh(&hive, "ls\n");
    assert!(before.contains("subkey-test"), "{before}");
    let vals = util::hivexsh(&hive, "cd data-test\nlsval\n");
    let first = vals
        .lines()
        .find_map(|l| l.strip_prefix('"').and_then(|r| r.split('"').next()))
        .expect("a named value in data-test")
        .to_string();
    let text = format!(
        "Windows Registry Editor Version 5.00\r\n\r\n\
         [-HKEY_CURRENT_USER\\T\\subkey-test]\r\n\r\n\
         [HKEY_CURRENT_USER\\T\\data-test]\r\n\"{first}\"=-\r\n\"not there\"=-\r\n\r\n\
         [-HKEY_CURRENT_USER\\T\\no such key]\r\n"
    );
    let stats = import_ours(&hive, text.as_bytes(), "HKEY_CURRENT_USER\\T");
    assert_eq!((stats.keys_deleted, stats.values_deleted), (1, 1));
    let after = util::hivexsh(&hive, "ls\n");
    assert!(!after.contains("subkey-test"), "{after}");
    assert!(after.contains("data-test"), "{after}");
    let vals_after = util::hivexsh(&hive, "cd data-test\nlsval\n");
    assert!(
        !vals_after.contains(&format!("\"{first}\"=")),
        "{vals_after}"
    );
    assert_eq!(vals_after.lines().count() + 1, vals.lines().count());
}

#[test]
fn import_errors() {
    let mut h = Hive::new("ROOT").unwrap();
    let ops =
        reg::parse(b"Windows Registry Editor Version 5.00\n\n[HKEY_LOCAL_MACHINE\\SOFTWARE\\A]\n")
            .unwrap();
    let e = reg::import(&mut h, &ops, SYSTEM).unwrap_err().to_string();
    assert!(
        e.contains("HKEY_LOCAL_MACHINE\\SOFTWARE\\A") && e.contains("outside the prefix"),
        "{e}"
    );
    let ops = reg::parse(b"REGEDIT4\n\n[-HKLM\\SYSTEM]\n").unwrap();
    let e = reg::import(&mut h, &ops, SYSTEM).unwrap_err().to_string();
    assert!(e.contains("root"), "{e}");
    // The key equal to the prefix is the root.
    let ops =
        reg::parse(b"REGEDIT4\n\n[HKEY_LOCAL_MACHINE\\SYSTEM]\n\"v\"=dword:00000007\n").unwrap();
    let s = reg::import(&mut h, &ops, SYSTEM).unwrap();
    assert_eq!((s.keys_created, s.values_set), (0, 1));
    assert_eq!(
        h.value(h.root(), "v").unwrap().unwrap().data,
        vec![7, 0, 0, 0]
    );
}

#[test]
fn bad_files_give_line_numbers_never_panic() {
    let cases: &[(&str, &str)] = &[
        ("[K]\n", "line 1: missing header"),
        (
            "Windows Registry Editor Version 5.00\n\n[K]\n\"a\"=\"open\n",
            "line 4: unterminated string data",
        ),
        (
            "Windows Registry Editor Version 5.00\n\n[K]\n\"a\"=hex:zz\n",
            "line 4: bad hex byte 'zz'",
        ),
        (
            "Windows Registry Editor Version 5.00\n\"a\"=hex:00\n",
            "line 2: value line before any [key] line",
        ),
        (
            "Windows Registry Editor Version 5.00\n[K]\n\"a\"=foo:00\n",
            "line 3: unknown type token 'foo:'",
        ),
    ];
    for (text, want) in cases {
        let e = reg::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
    // Every truncation of a real file, and of its UTF-16 form, parses or fails cleanly.
    let Some(p) = util::corpus("hives/virt-v2v/windows-software-all.reg") else {
        return;
    };
    let mut text = "Windows Registry Editor Version 5.00\n\n".to_string();
    text.push_str(&std::fs::read_to_string(p).unwrap());
    let utf16 = reg::to_utf16le_with_bom(&text);
    for i in 0..text.len() {
        let _ = reg::parse(&text.as_bytes()[..i]);
    }
    for i in 0..utf16.len() {
        let _ = reg::parse(&utf16[..i]);
    }
}

/// What the fuzz target does, on every one-byte mutation of [`EVERY_FORM`]: parse, import into
/// a new hive, export; the export parses, imports into another new hive and exports the same.
#[test]
fn mutations_import_and_export_consistently() {
    let base = EVERY_FORM.as_bytes();
    let mut parsed = 0;
    for i in 0..base.len() {
        for x in [b'"', b'\\', b'[', b']', b'-', b'@', b',', b'\n', b'x', 0xc3] {
            let mut m = base.to_vec();
            m[i] = x;
            let Ok(ops) = reg::parse(&m) else {
                continue;
            };
            parsed += 1;
            let mut hive = Hive::new("ROOT").unwrap();
            let _ = reg::import(&mut hive, &ops, "");
            let text = reg::export(&hive, hive.root(), SOFTWARE).unwrap();
            let again = reg::parse(text.as_bytes())
                .unwrap_or_else(|e| panic!("mutation {i}={x:#x}: export does not parse: {e}"));
            let mut copy = Hive::new("ROOT").unwrap();
            reg::import(&mut copy, &again, SOFTWARE).unwrap();
            assert_eq!(
                reg::export(&copy, copy.root(), SOFTWARE).unwrap(),
                text,
                "mutation {i}={x:#x}"
            );
        }
    }
    // Most mutations still parse (they land in names, data or comments).
    assert!(parsed > base.len() * 3, "{parsed}");
}

/// Our export read by another `.reg` reader: `hivexregedit --merge` of our export of a real
/// SYSTEM hive into an empty hive gives what hivex reads in the original. (hivex wants LF line
/// ends, and it stores a "string" byte by byte: see [`hivex_safe`].)
#[test]
fn hivexregedit_reads_our_export() {
    if !util::require("hivexregedit") {
        return;
    }
    let dir = util::tmpdir();
    let Some(src) = util::corpus("hives/regipy/SYSTEM") else {
        return;
    };
    let Some(target) = copy_of("hives/virt-v2v/minimal-hive", dir.path(), "target") else {
        return;
    };
    let h = Hive::open(&src, &HiveOpenOptions::default()).unwrap();
    let text = reg::export(&h, h.root(), SYSTEM).unwrap();
    let file = write(dir.path(), "sys.reg", hivex_safe(&text).as_bytes());
    util::run(
        Command::new("hivexregedit")
            .arg("--merge")
            .arg("--prefix")
            .arg(SYSTEM)
            .arg(&target)
            .arg(&file),
    );
    let a = util::hivex_export(&src);
    let b = util::hivex_export(&target);
    if a != b {
        let first = a
            .lines()
            .zip(b.lines())
            .position(|(x, y)| x != y)
            .unwrap_or(0);
        let show = |s: &str| s.lines().skip(first).take(2).collect::<Vec<_>>().join("\n");
        panic!(
            "line {}:\noriginal:\n{}\nmerged:\n{}",
            first + 1,
            show(&a),
            show(&b)
        );
    }
    // Our export used every short form.
    assert!(text.contains("\"=dword:") && text.contains("\"=hex:") && text.contains("\"=\""));
}

/// Our export made readable by `hivexregedit --merge`: LF line ends, and the `"string"` values
/// holding non-ASCII characters rewritten as `hex(1):` (hivex's Perl reads the file as bytes
/// and stores each byte of a string as one UTF-16 unit).
fn hivex_safe(text: &str) -> String {
    let mut out = String::new();
    for line in text.split("\r\n") {
        if !line.is_ascii() && line.ends_with('"') {
            let one = format!("{}\n\n[K]\n{line}\n", reg::HEADER_V5);
            let ops = reg::parse(one.as_bytes()).expect("one value line");
            if let Some(RegOp::SetValue { name, data, .. }) = ops.get(1) {
                assert!(name.is_ascii(), "non-ASCII value name {name:?}");
                let hex: Vec<String> = data.iter().map(|b| format!("{b:02x}")).collect();
                let lhs = if name.is_empty() {
                    "@".to_string()
                } else {
                    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
                };
                out.push_str(&format!("{lhs}=hex(1):{}\n", hex.join(",")));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
