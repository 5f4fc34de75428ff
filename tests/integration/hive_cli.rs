//! `diskconv hive ...` end to end, on copies of the corpus hives, checked with independent
//! readers: hivexsh, hivexget and hivexregedit (libhivex), regipy, and the structural check
//! (`diskconv hive check`, whose walker shares no code with the parser).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::{self, corpus, diskconv, hivex_export, hivexsh, regipy_dump, require};

/// One `set` of the every-type test: name, type, data arguments, type number, stored bytes.
type SetCase<'a> = (&'a str, &'a str, Vec<&'a str>, u32, Vec<u8>);

/// A change made to a copy of a hive's bytes.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

/// A key of a hivex export and its values (name, type, bytes) in list order.
type Model = BTreeMap<String, Vec<(String, u32, Vec<u8>)>>;

/// Parses `hivexregedit --export` text into a model keyed by `\path` (the root is `\`), with
/// the parser of the hive_core tests.
fn model(text: &str) -> Model {
    crate::hive_core::parse_hivex_export(text)
        .into_iter()
        .map(|(k, v)| (format!("\\{k}"), v))
        .collect()
}

/// The values of `key` in a model, the key's path compared without regard to case.
fn key_values<'a>(m: &'a Model, key: &str) -> &'a [(String, u32, Vec<u8>)] {
    m.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .unwrap_or_else(|| panic!("no key {key} in the export"))
        .1
}

/// Asserts two models are equal, printing only the keys that differ.
#[track_caller]
fn assert_same(got: &Model, want: &Model, what: &str) {
    let mut diffs = Vec::new();
    for (k, v) in got {
        match want.get(k) {
            None => diffs.push(format!("extra key {k}")),
            Some(w) if w != v => diffs.push(format!("key {k}: {v:?}\n  expected {w:?}")),
            _ => {}
        }
    }
    for k in want.keys().filter(|k| !got.contains_key(*k)) {
        diffs.push(format!("missing key {k}"));
    }
    diffs.truncate(10);
    assert!(diffs.is_empty(), "{what}:\n{}", diffs.join("\n"));
}

/// The model without the string values (REG_SZ, REG_EXPAND_SZ, REG_MULTI_SZ) holding a
/// non-ASCII UTF-16 unit, and how many were removed.
fn ascii_strings_only(mut m: Model) -> (Model, usize) {
    let mut removed = 0;
    for values in m.values_mut() {
        let before = values.len();
        values.retain(|(_, kind, data)| {
            !matches!(kind, 1 | 2 | 7)
                || data
                    .chunks(2)
                    .all(|c| c.len() == 2 && c[0] < 0x80 && c[1] == 0)
        });
        removed += before - values.len();
    }
    (m, removed)
}

/// The path of an existing key as the model spells it (case as stored).
fn stored_path(m: &Model, key: &str) -> String {
    m.keys()
        .find(|k| k.eq_ignore_ascii_case(key))
        .unwrap_or_else(|| panic!("no key {key}"))
        .clone()
}

fn oracles() -> bool {
    require("hivexregedit") && require("hivexsh") && require("hivexget")
}

/// Copies a corpus hive into `dir`.
fn copy(rel: &str, dir: &Path) -> Option<PathBuf> {
    let src = corpus(rel)?;
    let dst = dir.join(src.file_name().unwrap());
    std::fs::copy(&src, &dst).unwrap();
    Some(dst)
}

/// Runs a command that may fail (util::run panics on failure).
fn exec(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn dc(args: &[&str]) -> Output {
    exec(diskconv().args(args))
}

fn dcp(hive: &Path, args: &[&str]) -> Output {
    let mut c = diskconv();
    c.arg("hive").arg(args[0]).arg(hive).args(&args[1..]);
    exec(&mut c)
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "diskconv failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command failed with exit 1 and one clear line on stderr (no panic).
#[track_caller]
fn fails(out: &Output, needle: &str) {
    fails_with(out, 1, needle);
}

/// The command failed with exit `code` (64: a usage error) and one clear line on stderr.
#[track_caller]
fn fails_with(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("diskconv: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "expected '{needle}' in: {err}"
    );
}

fn utf16z(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    v.extend_from_slice(&[0, 0]);
    v
}

fn check_exit(hive: &Path) -> (i32, String) {
    let out = dc(&["hive", "check", hive.to_str().unwrap()]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[track_caller]
fn assert_sound(hive: &Path) {
    let (code, text) = check_exit(hive);
    assert_eq!(code, 0, "check of {}:\n{text}", hive.display());
}

fn sha(p: &Path) -> String {
    util::sha256_file(p)
}

/// Runs a hivexsh script expecting it to fail (e.g. `cd` to a missing key).
fn hivexsh_fails(hive: &Path, script: &str) -> bool {
    let dir = util::tmpdir();
    let f = dir.path().join("script");
    std::fs::write(&f, script).unwrap();
    !exec(Command::new("hivexsh").arg("-f").arg(&f).arg(hive))
        .status
        .success()
}

#[test]
fn ls_lists_what_hivex_lists() {
    let Some(system) = corpus("hives/regipy/SYSTEM") else {
        return;
    };
    if !oracles() {
        return;
    }
    let key = "ControlSet001\\Services\\Tcpip";
    let json: serde_json::Value =
        serde_json::from_str(&ok(&dcp(&system, &["ls", key, "--json"]))).unwrap();
    let subkeys: Vec<&str> = json["subkeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let hivex_ls = hivexsh(&system, &format!("cd \\{key}\nls\n"));
    let expected: Vec<&str> = hivex_ls.lines().collect();
    assert_eq!(subkeys, expected);
    assert!(!subkeys.is_empty());
    // Values: names, types and raw bytes as hivexregedit exports them.
    let export = run_hivexregedit_export(&system, &format!("\\{key}"));
    let m = model(&export);
    let want = key_values(&m, &format!("\\{key}"));
    let values = json["values"].as_array().unwrap();
    assert_eq!(values.len(), want.len());
    // hivexregedit sorts the values by name; ours come in value-list order.
    let mut values = values.clone();
    values.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut want = want.to_vec();
    want.sort();
    for (v, (name, kind, bytes)) in values.iter().zip(&want) {
        assert_eq!(v["name"].as_str().unwrap(), name);
        assert_eq!(v["type_code"].as_u64().unwrap(), *kind as u64);
        assert_eq!(v["size"].as_u64().unwrap(), bytes.len() as u64);
        let shown = if name.is_empty() { "@" } else { name.as_str() };
        let raw = dcp(&system, &["get", key, shown, "--raw"]);
        assert_eq!(&raw.stdout, bytes, "raw data of {name}");
    }
    // The text form: subkeys with a trailing backslash, then one line per value.
    let text = ok(&dcp(&system, &["ls", key]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), subkeys.len() + values.len());
    assert_eq!(lines[0], format!("{}\\", subkeys[0]));
}

/// `hivexregedit --export HIVE KEY` (no prefix).
fn run_hivexregedit_export(hive: &Path, key: &str) -> String {
    let out = util::run(
        Command::new("hivexregedit")
            .arg("--export")
            .arg(hive)
            .arg(key),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn get_prints_what_hivexget_prints() {
    let Some(system) = corpus("hives/regipy/SYSTEM") else {
        return;
    };
    if !oracles() {
        return;
    }
    for (key, value) in [
        ("Select", "Current"),
        ("ControlSet001\\Services\\Tcpip", "ImagePath"),
        ("ControlSet001\\Services\\Tcpip", "DisplayName"),
        ("ControlSet001\\Control", "PreshutdownOrder"),
        ("controlset001\\SERVICES\\tcpip", "start"),
    ] {
        let ours = ok(&dcp(&system, &["get", key, value]));
        let theirs = util::run(Command::new("hivexget").arg(&system).arg(key).arg(value));
        assert!(theirs.status.success());
        // hivexget ends a REG_MULTI_SZ with an empty line; compare without trailing newlines.
        assert_eq!(
            ours.trim_end_matches('\n'),
            String::from_utf8_lossy(&theirs.stdout).trim_end_matches('\n'),
            "{key} {value}"
        );
    }
    // Key information.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&dcp(&system, &["get", "Select", "--json"]))).unwrap();
    assert_eq!(json["name"], "Select");
    let values = hivexsh(&system, "cd \\Select\nlsval\n").lines().count();
    assert_eq!(json["values"].as_u64().unwrap(), values as u64);
    assert!(json["security_descriptor"].as_str().unwrap().len() > 40);
}

#[test]
fn set_every_type_read_back_by_hivex_and_regipy() {
    if !oracles() {
        return;
    }
    let dir = util::tmpdir();
    let Some(hive) = copy("hives/virt-v2v/minimal-hive", dir.path()) else {
        return;
    };
    let key = "Software\\Test Key";
    let big: Vec<u8> = (0..20000u32).map(|i| (i * 7 % 251) as u8).collect();
    let big_hex: String = big.iter().map(|b| format!("{b:02x}")).collect();
    let cases: Vec<SetCase> = vec![
        ("Str", "sz", vec!["héllo wörld"], 1, utf16z("héllo wörld")),
        (
            "Exp",
            "expand_sz",
            vec!["%SystemRoot%\\x"],
            2,
            utf16z("%SystemRoot%\\x"),
        ),
        ("Multi", "multi_sz", vec!["a", "bc"], 7, {
            let mut v = utf16z("a");
            v.extend(utf16z("bc"));
            v.extend([0, 0]);
            v
        }),
        (
            "Dw",
            "dword",
            vec!["0x12345678"],
            4,
            0x1234_5678u32.to_le_bytes().to_vec(),
        ),
        ("Be", "dword_be", vec!["1"], 5, 1u32.to_be_bytes().to_vec()),
        (
            "Qw",
            "qword",
            vec!["18446744073709551615"],
            11,
            vec![0xff; 8],
        ),
        ("Bin", "binary", vec!["01 02 ff"], 3, vec![1, 2, 0xff]),
        ("Nothing", "none", vec![], 0, vec![]),
        ("@", "sz", vec!["default"], 1, utf16z("default")),
        ("Big", "binary", vec![&big_hex], 3, big.clone()),
        ("Neg", "dword", vec!["4294967295"], 4, vec![0xff; 4]),
    ];
    for (name, kind, data, _, _) in &cases {
        let mut args = vec!["set", key, name, kind];
        args.extend(data.iter().copied());
        let out = dcp(&hive, &args);
        ok(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("wrote"), "{err}");
    }
    assert_sound(&hive);
    let m = model(&hivex_export(&hive));
    let values = &m[&format!("\\{key}")];
    for (name, _, _, kind, bytes) in &cases {
        let want = if *name == "@" { "" } else { name };
        let got = values
            .iter()
            .find(|v| v.0 == want)
            .unwrap_or_else(|| panic!("{name} not in the hivex export"));
        assert_eq!((got.1, &got.2), (*kind, bytes), "{name}");
    }
    assert_eq!(values.len(), cases.len());
    // hivexget decodes the strings and numbers the same way.
    let get = |v: &str| {
        let o = util::run(Command::new("hivexget").arg(&hive).arg(key).arg(v));
        String::from_utf8_lossy(&o.stdout).trim_end().to_string()
    };
    assert_eq!(get("Str"), "héllo wörld");
    assert_eq!(get("Dw"), "305419896");
    // regipy, a second reader (big data included; not REG_DWORD_BIG_ENDIAN, which it misreads).
    if util::require_regipy() {
        let dump = regipy_dump(&hive);
        assert!(dump.contains("  Str = REG_SZ: héllo wörld"), "{dump}");
        assert!(dump.contains("  Dw = REG_DWORD: 305419896"), "{dump}");
        assert!(
            dump.contains(&format!("  Big = REG_BINARY: {big_hex}")),
            "big data"
        );
    }
    // Replacing a value keeps one value of that name.
    ok(&dcp(&hive, &["set", key, "STR", "sz", "again"]));
    let m = model(&hivex_export(&hive));
    let values = &m[&format!("\\{key}")];
    assert_eq!(values.len(), cases.len());
    assert_eq!(get("Str"), "again");
    assert_sound(&hive);
}

#[test]
fn set_on_system_changes_exactly_the_edit_and_writes_few_pages() {
    if !oracles() {
        return;
    }
    let dir = util::tmpdir();
    let Some(hive) = copy("hives/regipy/SYSTEM", dir.path()) else {
        return;
    };
    let before_bytes = std::fs::read(&hive).unwrap();
    let before = model(&hivex_export(&hive));
    let key = "ControlSet001\\Services\\viostor";
    let out = dcp(&hive, &["set", key, "Start", "dword", "0"]);
    ok(&out);
    let theirs = util::run(Command::new("hivexget").arg(&hive).arg(key).arg("Start"));
    assert_eq!(String::from_utf8_lossy(&theirs.stdout).trim(), "0");
    let mut expected = before.clone();
    let services = stored_path(&before, "\\ControlSet001\\Services");
    expected.insert(
        format!("{services}\\viostor"),
        vec![("Start".into(), 4, 0u32.to_le_bytes().to_vec())],
    );
    assert_same(&model(&hivex_export(&hive)), &expected, "SYSTEM after set");
    assert_sound(&hive);
    // In place: only a few pages changed (the base block and the touched or appended bins).
    let after_bytes = std::fs::read(&hive).unwrap();
    let changed = after_bytes
        .chunks(4096)
        .zip(before_bytes.chunks(4096))
        .filter(|(a, b)| a != b)
        .count();
    assert!(changed <= 8, "{changed} pages changed for one edit");
    // `-o`: the source stays byte-identical, the output has the edit.
    let sum = sha(&hive);
    let out_path = dir.path().join("SYSTEM.out");
    ok(&dcp(
        &hive,
        &[
            "set",
            key,
            "Type",
            "dword",
            "1",
            "-o",
            out_path.to_str().unwrap(),
        ],
    ));
    assert_eq!(sha(&hive), sum);
    let theirs = util::run(Command::new("hivexget").arg(&out_path).arg(key).arg("Type"));
    assert_eq!(String::from_utf8_lossy(&theirs.stdout).trim(), "1");
    assert_sound(&out_path);
}

#[test]
fn delete_values_and_key_trees() {
    if !oracles() {
        return;
    }
    let dir = util::tmpdir();
    let Some(hive) = copy("hives/regipy/SAM", dir.path()) else {
        return;
    };
    let before = model(&hivex_export(&hive));
    ok(&dcp(&hive, &["delete", "SAM", "ServerDomainUpdates"]));
    ok(&dcp(&hive, &["delete", "SAM\\Domains\\Builtin"]));
    assert!(hivexsh_fails(&hive, "cd \\SAM\\Domains\\Builtin\n"));
    hivexsh(&hive, "cd \\SAM\\Domains\\Account\n");
    let mut expected = before.clone();
    expected
        .get_mut("\\SAM")
        .unwrap()
        .retain(|v| v.0 != "ServerDomainUpdates");
    expected.retain(|k, _| {
        !(k == "\\SAM\\Domains\\Builtin" || k.starts_with("\\SAM\\Domains\\Builtin\\"))
    });
    assert!(expected.len() < before.len() - 1);
    assert_same(&model(&hivex_export(&hive)), &expected, "SAM after deletes");
    assert_sound(&hive);
    if util::require_regipy() {
        let dump = regipy_dump(&hive);
        assert!(!dump.contains("[SAM\\Domains\\Builtin"));
        assert!(!dump.contains("ServerDomainUpdates"));
    }
    // Deleting what is not there fails and changes nothing.
    let sum = sha(&hive);
    fails(&dcp(&hive, &["delete", "SAM\\Domains\\Builtin"]), "no key");
    fails(&dcp(&hive, &["delete", "SAM", "NoSuchValue"]), "no value");
    assert_eq!(sha(&hive), sum);
}

/// Our export merged by hivexregedit into the minimal hive reproduces every key and value.
#[test]
fn export_merges_back_with_hivexregedit() {
    if !oracles() {
        return;
    }
    for rel in ["hives/regipy/SAM", "hives/regipy/BCD"] {
        let dir = util::tmpdir();
        let Some(src) = corpus(rel) else {
            return;
        };
        let Some(target) = copy("hives/virt-v2v/minimal-hive", dir.path()) else {
            return;
        };
        let reg = dir.path().join("out.reg");
        let prefix = "HKEY_LOCAL_MACHINE\\T";
        ok(&dcp(
            &src,
            &[
                "export",
                "",
                "--prefix",
                prefix,
                "-o",
                reg.to_str().unwrap(),
            ],
        ));
        let out = util::run(
            Command::new("hivexregedit")
                .args(["--merge", "--prefix", prefix])
                .arg(&target)
                .arg(&reg),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // hivexregedit --merge reads a UTF-8 .reg file's strings as Latin-1, so string values
        // with non-ASCII characters cannot come through it intact: leave those out of the
        // comparison (the import test covers them).
        let (got, n1) = ascii_strings_only(model(&hivex_export(&target)));
        let (want, n2) = ascii_strings_only(model(&hivex_export(&src)));
        assert_eq!(n1, n2, "{rel}");
        assert!(
            n2 * 10 < want.values().map(|v| v.len()).sum::<usize>(),
            "{rel}"
        );
        assert_same(&got, &want, rel);
        // The same export to stdout, and as UTF-16LE with a byte order mark.
        let text = ok(&dcp(&src, &["export", "", "--prefix", prefix]));
        assert_eq!(text.as_bytes(), std::fs::read(&reg).unwrap().as_slice());
        let wide = dcp(&src, &["export", "", "--prefix", prefix, "--utf16"]);
        ok(&wide);
        assert_eq!(&wide.stdout[..2], &[0xff, 0xfe]);
        let units: Vec<u16> = wide.stdout[2..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(String::from_utf16(&units).unwrap(), text);
    }
}

#[test]
fn import_applies_a_hivex_export_and_deletions() {
    if !oracles() {
        return;
    }
    let dir = util::tmpdir();
    let Some(src) = corpus("hives/regipy/SAM") else {
        return;
    };
    let Some(target) = copy("hives/virt-v2v/minimal-hive", dir.path()) else {
        return;
    };
    let prefix = "HKEY_LOCAL_MACHINE\\SAM";
    let out = util::run(
        Command::new("hivexregedit")
            .args(["--export", "--prefix", prefix])
            .arg(&src)
            .arg("\\"),
    );
    assert!(out.status.success());
    let reg = dir.path().join("sam.reg");
    std::fs::write(&reg, &out.stdout).unwrap();
    let o = dcp(
        &target,
        &["import", reg.to_str().unwrap(), "--prefix", prefix],
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("values set"));
    assert_same(
        &model(&hivex_export(&target)),
        &model(&hivex_export(&src)),
        "import of SAM",
    );
    assert_sound(&target);
    // Deletions, in a UTF-16LE file as regedit writes them, to a new file with -o.
    let edits = format!(
        "Windows Registry Editor Version 5.00\r\n\r\n[-{prefix}\\SAM\\Domains\\Builtin]\r\n\r\n\
         [{prefix}\\SAM]\r\n\"ServerDomainUpdates\"=-\r\n\"New\"=dword:0000002a\r\n"
    );
    let mut bytes = vec![0xff, 0xfe];
    bytes.extend(edits.encode_utf16().flat_map(|u| u.to_le_bytes()));
    let reg2 = dir.path().join("edits.reg");
    std::fs::write(&reg2, bytes).unwrap();
    let out_path = dir.path().join("edited");
    let sum = sha(&target);
    ok(&dcp(
        &target,
        &[
            "import",
            reg2.to_str().unwrap(),
            "--prefix",
            prefix,
            "-o",
            out_path.to_str().unwrap(),
        ],
    ));
    assert_eq!(sha(&target), sum, "the source of -o is not modified");
    assert!(hivexsh_fails(&out_path, "cd \\SAM\\Domains\\Builtin\n"));
    let theirs = util::run(
        Command::new("hivexget")
            .arg(&out_path)
            .arg("SAM")
            .arg("New"),
    );
    assert_eq!(String::from_utf8_lossy(&theirs.stdout).trim(), "42");
    let m = model(&hivex_export(&out_path));
    assert!(!m["\\SAM"].iter().any(|v| v.0 == "ServerDomainUpdates"));
    assert_sound(&out_path);
}

const CLEAN: &[&str] = &[
    "hives/hivex/special",
    "hives/nt-hive/testhive",
    "hives/regipy/BCD",
    "hives/regipy/NTUSER.DAT",
    "hives/regipy/SAM",
    "hives/regipy/SYSTEM",
    "hives/regipy/ntuser_software_partial",
    "hives/virt-v2v/minimal-hive",
    "hives/yarp/NewDirtyHive1/RecoveredHive_Windows10",
    "hives/yarp/OldDirtyHive/RecoveredHive_Windows7",
];

#[test]
fn check_is_clean_on_clean_corpus_hives_and_finds_the_corrupted_one() {
    for rel in CLEAN {
        let Some(p) = corpus(rel) else {
            return;
        };
        assert_sound(&p);
    }
    // Dirty hives are reported as such.
    if let Some(p) = corpus("hives/regipy/SECURITY") {
        let (code, text) = check_exit(&p);
        assert_eq!(code, 2);
        assert!(text.contains("sequence numbers differ"), "{text}");
    }
    let Some(bad) = corpus("hives/regipy/corrupted_system_hive") else {
        return;
    };
    let (code, text) = check_exit(&bad);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("expected \"hbin\""), "{text}");
    let out = dc(&["hive", "check", "--json", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!json["issues"].as_array().unwrap().is_empty());
    assert!(json["issues"][0]["offset"].as_u64().is_some());
    // A file that is no hive at all, and one that does not exist.
    let dir = util::tmpdir();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a hive").unwrap();
    assert_eq!(check_exit(&junk).0, 2);
    let out = dc(&["hive", "check", dir.path().join("nope").to_str().unwrap()]);
    fails(&out, "nope");
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// File offset of the data of the cell at hive offset `cell`.
fn data_at(cell: u32) -> usize {
    4096 + cell as usize + 4
}

#[test]
fn check_finds_hand_made_damage() {
    let Some(src) = corpus("hives/regipy/SYSTEM") else {
        return;
    };
    let good = std::fs::read(&src).unwrap();
    let root = le32(&good, 36);
    let nk = data_at(root);
    let list = data_at(le32(&good, nk + 28));
    assert_eq!(
        &good[list..list + 2],
        b"lh",
        "SYSTEM's root list is an lh list"
    );
    let sk = data_at(le32(&good, nk + 44));
    let dir = util::tmpdir();
    let p = dir.path().join("damaged");
    let cases: Vec<(&str, Damage)> = vec![
        (
            "not sorted",
            Box::new(move |b: &mut Vec<u8>| {
                let e0: Vec<u8> = b[list + 4..list + 12].to_vec();
                let e1: Vec<u8> = b[list + 12..list + 20].to_vec();
                b[list + 4..list + 12].copy_from_slice(&e1);
                b[list + 12..list + 20].copy_from_slice(&e0);
            }),
        ),
        (
            "lh hash",
            Box::new(move |b: &mut Vec<u8>| b[list + 8] ^= 0x55),
        ),
        (
            "subkey count",
            Box::new(move |b: &mut Vec<u8>| {
                let n = le32(b, nk + 20) + 1;
                b[nk + 20..nk + 24].copy_from_slice(&n.to_le_bytes());
            }),
        ),
        (
            "reference count",
            Box::new(move |b: &mut Vec<u8>| {
                let n = le32(b, sk + 12) + 1;
                b[sk + 12..sk + 16].copy_from_slice(&n.to_le_bytes());
            }),
        ),
        ("checksum", Box::new(|b: &mut Vec<u8>| b[508] ^= 0xff)),
    ];
    for (needle, damage) in cases {
        let mut b = good.clone();
        damage(&mut b);
        std::fs::write(&p, &b).unwrap();
        let (code, text) = check_exit(&p);
        assert_eq!(code, 2, "{needle}: {text}");
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

/// Copies a corpus folder's hive and its logs into `dir`.
fn copy_with_logs(rel_dir: &str, name: &str, logs: &[&str], dir: &Path) -> Option<PathBuf> {
    let hive = copy(&format!("{rel_dir}/{name}"), dir)?;
    for l in logs {
        copy(&format!("{rel_dir}/{l}"), dir)?;
    }
    Some(hive)
}

#[test]
fn replay_equals_windows_recovery() {
    if !oracles() {
        return;
    }
    for (rel_dir, name, logs, recovered) in [
        (
            "hives/yarp/NewDirtyHive1",
            "NewDirtyHive",
            &["NewDirtyHive.LOG1", "NewDirtyHive.LOG2"][..],
            "RecoveredHive_Windows10",
        ),
        (
            "hives/yarp/OldDirtyHive",
            "OldDirtyHive",
            &["OldDirtyHive.LOG1"][..],
            "RecoveredHive_Windows7",
        ),
    ] {
        let dir = util::tmpdir();
        let Some(hive) = copy_with_logs(rel_dir, name, logs, dir.path()) else {
            return;
        };
        let Some(expected) = corpus(&format!("{rel_dir}/{recovered}")) else {
            return;
        };
        let sums: Vec<String> = std::iter::once(hive.clone())
            .chain(logs.iter().map(|l| dir.path().join(l)))
            .map(|p| sha(&p))
            .collect();
        let out_path = dir.path().join("recovered");
        let out = dcp(&hive, &["replay", "-o", out_path.to_str().unwrap()]);
        ok(&out);
        assert!(String::from_utf8_lossy(&out.stderr).contains("replayed"));
        assert_eq!(hivex_export(&out_path), hivex_export(&expected), "{name}");
        assert_sound(&out_path);
        let after: Vec<String> = std::iter::once(hive.clone())
            .chain(logs.iter().map(|l| dir.path().join(l)))
            .map(|p| sha(&p))
            .collect();
        assert_eq!(sums, after, "replay modified its inputs");
        // Logs named explicitly, under other names.
        let dir2 = util::tmpdir();
        let hive2 = dir2.path().join("h");
        std::fs::copy(&hive, &hive2).unwrap();
        let mut args = vec!["replay".to_string(), "-o".into()];
        let out2 = dir2.path().join("r");
        args.push(out2.to_str().unwrap().into());
        for (i, l) in logs.iter().enumerate() {
            let p = dir2.path().join(format!("log{i}"));
            std::fs::copy(dir.path().join(l), &p).unwrap();
            args.push("--log".into());
            args.push(p.to_str().unwrap().into());
        }
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        ok(&dcp(&hive2, &a));
        assert_eq!(
            hivex_export(&out2),
            hivex_export(&expected),
            "{name}, named logs"
        );
        // Without its logs the dirty hive cannot be replayed.
        let out3 = dcp(
            &hive2,
            &["replay", "-o", dir2.path().join("x").to_str().unwrap()],
        );
        fails(&out3, "dirty");
        assert!(!dir2.path().join("x").exists());
        // The output must not be the hive itself.
        fails(
            &dcp(&hive, &["replay", "-o", hive.to_str().unwrap()]),
            "never modifies",
        );
    }
}

#[test]
fn new_hive_is_read_by_hivex_and_regipy() {
    if !oracles() {
        return;
    }
    let dir = util::tmpdir();
    let p = dir.path().join("fresh");
    let out = dc(&["hive", "new", p.to_str().unwrap(), "--root-name", "MyRoot"]);
    ok(&out);
    assert_sound(&p);
    assert_eq!(hivexsh(&p, "ls\n").trim(), "");
    ok(&dcp(&p, &["set", "A\\B", "V", "sz", "x"]));
    ok(&dcp(&p, &["set", "a\\C", "W", "qword", "5"]));
    assert_eq!(hivexsh(&p, "ls\n").trim(), "A");
    assert_eq!(hivexsh(&p, "cd A\nls\n").trim(), "B\nC");
    assert_sound(&p);
    if util::require_regipy() {
        let dump = regipy_dump(&p);
        assert!(dump.contains("[A\\B]\n  V = REG_SZ: x"), "{dump}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&dcp(&p, &["get", "", "--json"]))).unwrap();
    assert_eq!(json["name"], "MyRoot");
    // `new` never overwrites.
    let sum = sha(&p);
    fails(&dc(&["hive", "new", p.to_str().unwrap()]), "already exists");
    assert_eq!(sha(&p), sum);
}

#[test]
fn bad_arguments_fail_cleanly_and_change_nothing() {
    let dir = util::tmpdir();
    let Some(hive) = copy("hives/regipy/SAM", dir.path()) else {
        return;
    };
    let sum = sha(&hive);
    // Value types and data are usage errors (64), found before the hive is opened; what only
    // the hive can say is a failure (1).
    let cases: &[(&[&str], i32, &str)] = &[
        (&["set", "SAM", "X", "dwrod", "1"], 64, "unknown value type"),
        (&["set", "SAM", "X", "dword", "12x"], 64, "not a number"),
        (
            &["set", "SAM", "X", "dword", "4294967296"],
            64,
            "not a number",
        ),
        (&["set", "SAM", "X", "dword", "1", "2"], 64, "exactly one"),
        (&["set", "SAM", "X", "binary", "0g"], 64, "hex"),
        (&["get", "No\\Such\\Key", "X"], 1, "no key"),
        (&["get", "SAM", "NoSuchValue"], 1, "no value"),
        (&["ls", "No\\Such"], 1, "no key"),
        (&["delete", "No\\Such"], 1, "no key"),
        (&["export", "No\\Such"], 1, "no key"),
        (&["import", "/nonexistent/file.reg"], 1, "file.reg"),
    ];
    for (args, code, needle) in cases {
        let out = dcp(&hive, args);
        fails_with(&out, *code, needle);
        assert_eq!(sha(&hive), sum, "{args:?} changed the hive");
    }
    // A hive that is not a hive.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x41u8; 8192]).unwrap();
    fails(&dcp(&junk, &["ls"]), "regf");
    fails(&dcp(&junk, &["set", "A", "B", "dword", "1"]), "regf");
    assert_eq!(std::fs::read(&junk).unwrap(), vec![0x41u8; 8192]);
    // A truncated real hive.
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &std::fs::read(&hive).unwrap()[..6000]).unwrap();
    let out = dcp(&cut, &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn dirty_hive_without_logs_is_not_edited_unless_asked() {
    let dir = util::tmpdir();
    let Some(hive) = copy("hives/regipy/SECURITY", dir.path()) else {
        return;
    };
    let sum = sha(&hive);
    // Reading works.
    ok(&dcp(&hive, &["ls"]));
    fails(&dcp(&hive, &["set", "Policy", "X", "dword", "1"]), "dirty");
    // The library says what is wrong, the CLI adds the flag that gets past it.
    let out = dcp(&hive, &["set", "Policy", "X", "dword", "1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).ends_with(
            "; replay its transaction logs first (diskconv hive replay), name them, or accept \
             losing the logged data (--accept-data-loss)\n"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha(&hive), sum);
    let out_path = dir.path().join("out");
    ok(&dcp(
        &hive,
        &[
            "set",
            "Policy",
            "X",
            "dword",
            "1",
            "--accept-data-loss",
            "-o",
            out_path.to_str().unwrap(),
        ],
    ));
    assert_eq!(sha(&hive), sum);
    assert_sound(&out_path);
    if require("hivexget") {
        let o = util::run(
            Command::new("hivexget")
                .arg(&out_path)
                .arg("Policy")
                .arg("X"),
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1");
    }
}

/// The dirty real Windows 10 SYSTEM hive with its two logs: replayed, then sound by the
/// structural check and readable by hivex, with more keys than before replay.
#[test]
fn replay_of_dirty_system_hive_is_sound() {
    let dir = util::tmpdir();
    let Some(hive) = copy_with_logs(
        "hives/regipy",
        "SYSTEM_B",
        &["SYSTEM_B.LOG1", "SYSTEM_B.LOG2"],
        dir.path(),
    ) else {
        return;
    };
    let out_path = dir.path().join("SYSTEM_B.clean");
    let out = dcp(&hive, &["replay", "-o", out_path.to_str().unwrap()]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("SYSTEM_B.LOG2"));
    assert_sound(&out_path);
    let (code, _) = check_exit(&hive);
    assert_eq!(code, 2, "the dirty hive itself is reported dirty");
    if require("hivexsh") {
        assert!(
            hivexsh(&out_path, "ls\n")
                .lines()
                .any(|l| l == "ControlSet001")
        );
    }
}
