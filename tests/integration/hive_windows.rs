//! The Windows virtio edit set (REFERENCE.md section 4) applied by `inject::windows` to real
//! SYSTEM hives of the corpus, checked by independent readers: the whole hive exported by
//! `hivexregedit` before and after differs by exactly the expected edits (written out below from
//! REFERENCE.md, not taken from the code under test); regipy reads the result; `hivexget` reads
//! single values; `reged -I` (chntpw) makes the same edits from a `.reg` file as a second writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::guest::hive::{Hive, HiveOpenOptions};
use diskconv::inject::windows::{
    BootStorageDriver, Edit, add_boot_storage_driver, disable_service, set_crash_auto_reboot,
    set_service_start,
};
use diskconv::inspect::windows::current_control_set;

use crate::util;

/// A value as hivex exports it: the name as written, the type and the raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ValueModel {
    name: String,
    kind: u32,
    data: Vec<u8>,
}

/// A key: its path as written and its values keyed by lower-cased name.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct KeyModel {
    path: String,
    values: BTreeMap<String, ValueModel>,
}

/// A whole hive: keys by lower-cased path (the root is "").
type Model = BTreeMap<String, KeyModel>;

/// Parses the quoted value name at the start of `s` (`"..."` with `\\` and `\"` escapes) and
/// returns it with the rest of the line.
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut name = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => name.push(chars.next()?.1),
            '"' => return Some((name, &body[i + 1..])),
            c => name.push(c),
        }
    }
    None
}

fn parse_hex_list(s: &str) -> Vec<u8> {
    if s.is_empty() {
        return Vec::new();
    }
    s.split(',')
        .map(|b| u8::from_str_radix(b.trim(), 16).unwrap_or_else(|e| panic!("hex byte {b:?}: {e}")))
        .collect()
}

/// Parses `hivexregedit --export HIVE '\'` output: `[\path]` lines and `"name"=` / `@=` lines
/// with `hex(N):bytes`, `hex:bytes` or `dword:xxxxxxxx` data.
fn parse_hivex_export(text: &str) -> Model {
    let mut model = Model::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || n == 0 {
            continue;
        }
        if let Some(p) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let path = p.strip_prefix('\\').unwrap_or(p).to_string();
            let lower = path.to_lowercase();
            model.entry(lower.clone()).or_insert(KeyModel {
                path,
                values: BTreeMap::new(),
            });
            current = Some(lower);
            continue;
        }
        let (name, rest) = if let Some(r) = line.strip_prefix('@') {
            (String::new(), r)
        } else {
            parse_quoted(line).unwrap_or_else(|| panic!("line {}: {line:?}", n + 1))
        };
        let rest = rest
            .strip_prefix('=')
            .unwrap_or_else(|| panic!("line {}: no '=' in {line:?}", n + 1));
        let (kind, data) = if let Some(d) = rest.strip_prefix("dword:") {
            let v = u32::from_str_radix(d, 16).unwrap_or_else(|e| panic!("dword {d}: {e}"));
            (4, v.to_le_bytes().to_vec())
        } else if let Some(d) = rest.strip_prefix("hex:") {
            (3, parse_hex_list(d))
        } else if let Some(r) = rest.strip_prefix("hex(") {
            let (t, d) = r
                .split_once("):")
                .unwrap_or_else(|| panic!("line {}: {line:?}", n + 1));
            (
                u32::from_str_radix(t, 16).unwrap_or_else(|e| panic!("type {t}: {e}")),
                parse_hex_list(d),
            )
        } else {
            panic!("line {}: unknown value form {line:?}", n + 1)
        };
        let key = current
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: value before any key", n + 1));
        let k = model.get_mut(key).expect("current key exists");
        k.values
            .insert(name.to_lowercase(), ValueModel { name, kind, data });
    }
    model
}

fn hivex_model(hive: &Path) -> Model {
    parse_hivex_export(&util::hivex_export(hive))
}

/// UTF-16LE with the terminating NUL.
fn sz(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    v.extend_from_slice(&[0, 0]);
    v
}

/// REG_MULTI_SZ: each string with its NUL, then an empty string.
fn multi(items: &[&str]) -> Vec<u8> {
    let mut v: Vec<u8> = items.iter().flat_map(|s| sz(s)).collect();
    v.extend_from_slice(&[0, 0]);
    v
}

fn dword(n: u32) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

/// One expected key and its values (name, type, data).
type ExpectedKey = (String, Vec<(String, u32, Vec<u8>)>);

/// The edits of REFERENCE.md section 4 for `drv` ("viostor" or "vioscsi"), written out by hand.
fn expected_edits(drv: &str, cs: &str, driver_database: bool, label: &str) -> Vec<ExpectedKey> {
    let (ids, conf): (&[&str], &str) = match drv {
        "viostor" => (
            &[
                "PCI\\VEN_1AF4&DEV_1001&REV_00",
                "PCI\\VEN_1AF4&DEV_1042&REV_01",
            ],
            "rhelscsi_inst",
        ),
        "vioscsi" => (
            &[
                "PCI\\VEN_1AF4&DEV_1004&REV_00",
                "PCI\\VEN_1AF4&DEV_1048&REV_01",
            ],
            "vioscsi_inst",
        ),
        other => panic!("no expectations for {other}"),
    };
    let guid = "{4D36E97B-E325-11CE-BFC1-08002BE10318}";
    let inf = format!("{drv}.inf");
    let mut keys: Vec<ExpectedKey> = vec![(
        format!("{cs}\\Services\\{drv}"),
        vec![
            ("Type".into(), 4, dword(1)),
            ("Start".into(), 4, dword(0)),
            ("ErrorControl".into(), 4, dword(1)),
            ("Group".into(), 1, sz("SCSI miniport")),
            (
                "ImagePath".into(),
                2,
                sz(&format!("system32\\drivers\\{drv}.sys")),
            ),
        ],
    )];
    if !driver_database {
        for id in ids {
            keys.push((
                format!(
                    "{cs}\\Control\\CriticalDeviceDatabase\\{}",
                    id.replace('\\', "#")
                ),
                vec![
                    ("Service".into(), 1, sz(drv)),
                    ("ClassGUID".into(), 1, sz(guid)),
                ],
            ));
        }
        return keys;
    }
    keys.push((
        format!("DriverDatabase\\DriverInfFiles\\{inf}"),
        vec![
            ("".into(), 7, multi(&[label])),
            ("Active".into(), 1, sz(label)),
            ("Configurations".into(), 7, multi(&[conf])),
        ],
    ));
    for id in ids {
        keys.push((
            format!("DriverDatabase\\DeviceIds\\{id}"),
            vec![(inf.clone(), 3, vec![0x01, 0xff, 0x00, 0x00])],
        ));
    }
    // 00 ff 09 00 00 00 00 00, the SCSIAdapter class GUID in binary, 24 zero bytes.
    let mut version = vec![0x00, 0xff, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00];
    version.extend_from_slice(&[
        0x7b, 0xe9, 0x36, 0x4d, 0x25, 0xe3, 0xce, 0x11, 0xbf, 0xc1, 0x08, 0x00, 0x2b, 0xe1, 0x03,
        0x18,
    ]);
    version.extend_from_slice(&[0; 24]);
    let pkg = format!("DriverDatabase\\DriverPackages\\{label}");
    keys.push((pkg.clone(), vec![("Version".into(), 3, version)]));
    keys.push((
        format!("{pkg}\\Configurations\\{conf}"),
        vec![
            ("ConfigFlags".into(), 4, dword(0)),
            ("Service".into(), 1, sz(drv)),
        ],
    ));
    for id in ids {
        keys.push((
            format!("{pkg}\\Descriptors\\{id}"),
            vec![("Configuration".into(), 1, sz(conf))],
        ));
    }
    keys
}

/// `before` with `edits` applied: missing keys (and parents) added, values set.
fn apply_expected(before: &Model, edits: &[ExpectedKey]) -> Model {
    let mut m = before.clone();
    for (path, values) in edits {
        let mut prefix = String::new();
        for comp in path.split('\\') {
            if !prefix.is_empty() {
                prefix.push('\\');
            }
            prefix.push_str(comp);
            m.entry(prefix.to_lowercase()).or_insert_with(|| KeyModel {
                path: prefix.clone(),
                values: BTreeMap::new(),
            });
        }
        let k = m.get_mut(&path.to_lowercase()).expect("just inserted");
        for (name, kind, data) in values {
            k.values.insert(
                name.to_lowercase(),
                ValueModel {
                    name: name.to_string(),
                    kind: *kind,
                    data: data.clone(),
                },
            );
        }
    }
    m
}

/// Panics with the first differences (at most 20) when the models differ. Key and value names
/// are compared as written, except that an existing parent key may be spelled differently in
/// the path of the expectations.
fn assert_models_equal(what: &str, expected: &Model, actual: &Model) {
    let mut diffs = Vec::new();
    for (k, e) in expected {
        match actual.get(k) {
            None => diffs.push(format!("missing key {}", e.path)),
            Some(a) => {
                // The key's own name is compared exactly (its parents' spelling may differ
                // between the expectations and the hive).
                let own = |p: &str| p.rsplit('\\').next().unwrap_or("").to_string();
                if own(&a.path) != own(&e.path) {
                    diffs.push(format!("key {} is spelled {}", e.path, a.path));
                }
                for (vn, ev) in &e.values {
                    match a.values.get(vn) {
                        None => diffs.push(format!("{}: missing value {:?}", e.path, ev.name)),
                        Some(av) if av != ev => diffs.push(format!(
                            "{}: value {:?} is {:?}, expected {:?}",
                            e.path, ev.name, av, ev
                        )),
                        _ => {}
                    }
                }
                for (vn, av) in &a.values {
                    if !e.values.contains_key(vn) {
                        diffs.push(format!("{}: unexpected value {:?}", a.path, av.name));
                    }
                }
            }
        }
    }
    for (k, a) in actual {
        if !expected.contains_key(k) {
            diffs.push(format!("unexpected key {}", a.path));
        }
    }
    if !diffs.is_empty() {
        let n = diffs.len();
        diffs.truncate(20);
        panic!("{what}: {n} differences:\n{}", diffs.join("\n"));
    }
}

/// A writable copy of a corpus file (and its logs, `.LOG1`/`.LOG2`, when asked) in `dir`.
fn copy_corpus(rel: &str, dir: &Path, with_logs: bool) -> Option<PathBuf> {
    let src = util::corpus(rel)?;
    let name = src.file_name().expect("file name").to_owned();
    let dst = dir.join(&name);
    std::fs::copy(&src, &dst).expect("copy hive");
    let mut perm = std::fs::metadata(&dst).expect("metadata").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&dst, perm).expect("make writable");
    if with_logs {
        for ext in ["LOG1", "LOG2"] {
            let log = src.with_extension(ext);
            if log.exists() {
                let d = dir.join(log.file_name().expect("log name"));
                std::fs::copy(&log, &d).expect("copy log");
            }
        }
    }
    Some(dst)
}

fn open_opts(accept_data_loss: bool) -> HiveOpenOptions {
    HiveOpenOptions {
        accept_data_loss,
        ..HiveOpenOptions::default()
    }
}

/// Applies `drv` with the library to a copy of `hive_path`, saves in place, and checks that
/// hivex sees exactly the expected edits. Returns the edited file and the expected model.
fn apply_and_check(
    hive_path: &Path,
    before: &Model,
    drv: &BootStorageDriver,
    accept_data_loss: bool,
    expect_driver_database: bool,
) -> Model {
    let mut hive = Hive::open(hive_path, &open_opts(accept_data_loss)).expect("open hive");
    let cs = current_control_set(&hive).expect("control set");
    // Independent reader of Select\Current.
    let current = util::run(
        Command::new("hivexget")
            .arg(hive_path)
            .args(["Select", "Current"]),
    );
    let n: u32 = String::from_utf8_lossy(&current.stdout)
        .trim()
        .parse()
        .expect("hivexget Select Current");
    assert_eq!(cs, format!("ControlSet{n:03}"));

    let report = add_boot_storage_driver(&mut hive, drv).expect("add driver");
    util::assert_hive_sound(&hive.to_bytes(), "hive_windows.rs:358");
    hive.save().expect("save");
    drop(hive);

    let expected_keys = expected_edits(
        &drv.service,
        &cs,
        expect_driver_database,
        &drv.package_label(),
    );
    let expected = apply_expected(before, &expected_keys);
    let after = hivex_model(hive_path);
    assert_models_equal(
        &format!("{} after {}", hive_path.display(), drv.service),
        &expected,
        &after,
    );

    // The report names every value set and every key that did not exist before.
    for (path, values) in &expected_keys {
        for (name, kind, _) in values {
            assert!(
                report.edits.iter().any(|e| matches!(e,
                    Edit::ValueSet { path: p, name: n, kind: k, .. }
                        if p.eq_ignore_ascii_case(path) && n == name && k.0 == *kind)),
                "report lacks {path} : {name}\n{report}"
            );
        }
    }
    for (k, key) in &expected {
        if !before.contains_key(k) {
            assert!(
                report
                    .edits
                    .iter()
                    .any(|e| matches!(e, Edit::KeyCreated { path } if path.eq_ignore_ascii_case(&key.path))),
                "report lacks created key {}\n{report}",
                key.path
            );
        }
    }
    let created = report
        .edits
        .iter()
        .filter(|e| matches!(e, Edit::KeyCreated { .. }))
        .count();
    assert_eq!(created, expected.len() - before.len(), "{report}");
    expected
}

fn hivexget(hive: &Path, key: &str, value: &str) -> String {
    let out = util::run(Command::new("hivexget").arg(hive).arg(key).arg(value));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The values of one key as regipy reads them, one `name = TYPE: value` line each (regipy's own
/// decoding). Reading one key keeps regipy fast on 10 MiB hives, where a full dump is slow.
fn regipy_values(hive: &Path, key: &str) -> String {
    let script = r#"import sys
from regipy.registry import RegistryHive
k = RegistryHive(sys.argv[1]).get_key('\\' + sys.argv[2])
for v in k.iter_values(as_json=False, trim_values=False):
    print('%s = %s: %s' % (v.name, v.value_type, v.value))
"#;
    let out = util::run(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(hive)
            .arg(key),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn oracles() -> bool {
    util::require("hivexregedit") && util::require("hivexget")
}

#[test]
fn viostor_on_system_without_driver_database() {
    if !oracles() {
        return;
    }
    let dir = util::tmpdir();
    let Some(path) = copy_corpus("hives/regipy/SYSTEM", dir.path(), false) else {
        return;
    };
    let before = hivex_model(&path);
    assert!(!before.contains_key("driverdatabase"));
    apply_and_check(&path, &before, &BootStorageDriver::viostor(), false, false);

    assert_eq!(
        hivexget(&path, "ControlSet001\\Services\\viostor", "Start"),
        "0"
    );
    assert_eq!(
        hivexget(&path, "ControlSet001\\Services\\viostor", "Type"),
        "1"
    );
    assert_eq!(
        hivexget(&path, "ControlSet001\\Services\\viostor", "ImagePath"),
        "system32\\drivers\\viostor.sys"
    );
    assert_eq!(
        hivexget(
            &path,
            "ControlSet001\\Control\\CriticalDeviceDatabase\\PCI#VEN_1AF4&DEV_1042&REV_01",
            "ClassGUID"
        ),
        "{4D36E97B-E325-11CE-BFC1-08002BE10318}"
    );

    if util::require_regipy() {
        let svc = regipy_values(&path, "ControlSet001\\Services\\viostor");
        for line in [
            "Type = REG_DWORD: 1",
            "Start = REG_DWORD: 0",
            "ErrorControl = REG_DWORD: 1",
            "Group = REG_SZ: SCSI miniport",
            "ImagePath = REG_EXPAND_SZ: system32\\drivers\\viostor.sys",
        ] {
            assert!(
                svc.lines().any(|l| l == line),
                "regipy: no {line:?} in {svc}"
            );
        }
        let cdd = regipy_values(
            &path,
            "ControlSet001\\Control\\CriticalDeviceDatabase\\PCI#VEN_1AF4&DEV_1001&REV_00",
        );
        assert!(
            cdd.lines().any(|l| l == "Service = REG_SZ: viostor"),
            "{cdd}"
        );
        assert!(
            cdd.lines()
                .any(|l| l == "ClassGUID = REG_SZ: {4D36E97B-E325-11CE-BFC1-08002BE10318}"),
            "{cdd}"
        );
    }
}

/// SYSTEM_2 is dirty and its logs are not in the corpus: opened with `accept_data_loss`, it is
/// edited as it is on disk, which is also what hivex reads.
#[test]
fn viostor_and_vioscsi_on_system_2_driver_database() {
    if !oracles() {
        return;
    }
    for drv in [BootStorageDriver::viostor(), BootStorageDriver::vioscsi()] {
        let dir = util::tmpdir();
        let Some(path) = copy_corpus("hives/regipy/SYSTEM_2", dir.path(), false) else {
            return;
        };
        // Without accepting the loss, the dirty hive without logs must not be edited.
        let mut ro = Hive::open(&path, &open_opts(false)).expect("open read-only");
        assert!(add_boot_storage_driver(&mut ro, &drv).is_err());
        drop(ro);

        let before = hivex_model(&path);
        assert!(before.contains_key("driverdatabase"));
        apply_and_check(&path, &before, &drv, true, true);
        let label = drv.package_label();
        assert_eq!(
            hivexget(
                &path,
                &format!("DriverDatabase\\DriverInfFiles\\{}", drv.inf),
                "Active"
            ),
            label
        );
        if util::require_regipy() {
            let section = regipy_values(
                &path,
                &format!(
                    "DriverDatabase\\DriverPackages\\{label}\\Configurations\\{}",
                    drv.config
                ),
            );
            assert!(
                section
                    .lines()
                    .any(|l| l == format!("Service = REG_SZ: {}", drv.service)),
                "{section}"
            );
            assert!(
                section.lines().any(|l| l == "ConfigFlags = REG_DWORD: 0"),
                "{section}"
            );
        }
    }
}

/// SYSTEM_B is dirty with its LOG1/LOG2: the logs are replayed on open, the replayed hive is the
/// baseline (saved with `save_as`, then read by hivex), and the edits go on top of it.
#[test]
fn viostor_and_vioscsi_on_system_b_replayed() {
    if !oracles() {
        return;
    }
    for drv in [BootStorageDriver::viostor(), BootStorageDriver::vioscsi()] {
        let dir = util::tmpdir();
        let Some(path) = copy_corpus("hives/regipy/SYSTEM_B", dir.path(), true) else {
            return;
        };
        let mut hive = Hive::open(&path, &open_opts(false)).expect("open with logs");
        assert!(hive.recovery().was_dirty);
        assert!(!hive.recovery().data_lost);
        let clean = dir.path().join("SYSTEM_B.clean");
        util::assert_hive_sound(&hive.to_bytes(), "hive_windows.rs:566");
        hive.save_as(&clean).expect("save replayed hive");
        drop(hive);
        let before = hivex_model(&clean);
        apply_and_check(&clean, &before, &drv, false, true);
    }
}

#[test]
fn applying_twice_equals_applying_once() {
    if !oracles() {
        return;
    }
    for (rel, dd) in [
        ("hives/regipy/SYSTEM", false),
        ("hives/regipy/SYSTEM_2", true),
    ] {
        let dir = util::tmpdir();
        let Some(once) = copy_corpus(rel, dir.path(), false) else {
            return;
        };
        let twice = dir.path().join("twice");
        std::fs::copy(&once, &twice).expect("copy");
        let drv = BootStorageDriver::viostor();

        let mut h = Hive::open(&once, &open_opts(true)).expect("open");
        let r1 = add_boot_storage_driver(&mut h, &drv).expect("first run");
        assert!(r1.changed());
        util::assert_hive_sound(&h.to_bytes(), "hive_windows.rs:593");
        h.save().expect("save");
        drop(h);

        let mut h = Hive::open(&twice, &open_opts(true)).expect("open");
        add_boot_storage_driver(&mut h, &drv).expect("first run");
        util::assert_hive_sound(&h.to_bytes(), "hive_windows.rs:598");
        h.save().expect("save");
        drop(h);
        let mut h = Hive::open(&twice, &open_opts(true)).expect("reopen");
        let bytes_before = h.to_bytes();
        let r2 = add_boot_storage_driver(&mut h, &drv).expect("second run");
        assert!(!r2.changed(), "second run changed something:\n{r2}");
        assert!(
            r2.edits
                .iter()
                .all(|e| matches!(e, Edit::ValueSet { changed: false, .. })),
            "{r2}"
        );
        assert!(
            h.to_bytes()[4096..] == bytes_before[4096..],
            "{rel}: the second run changed the hive bins"
        );
        util::assert_hive_sound(&h.to_bytes(), "hive_windows.rs:614");
        h.save().expect("save");
        drop(h);
        let m_once = hivex_model(&once);
        let m_twice = hivex_model(&twice);
        assert_models_equal(&format!("{rel}: twice vs once"), &m_once, &m_twice);
        assert_eq!(dd, m_once.contains_key("driverdatabase"));
    }
}

/// The expected edits as a `.reg` file (every value as `hex(N):`).
fn reg_file(prefix: &str, edits: &[ExpectedKey]) -> String {
    let mut s = String::from("Windows Registry Editor Version 5.00\r\n");
    for (path, values) in edits {
        s.push_str(&format!("\r\n[{prefix}\\{path}]\r\n"));
        for (name, kind, data) in values {
            let lhs = if name.is_empty() {
                "@".to_string()
            } else {
                format!("\"{name}\"")
            };
            let hex: Vec<String> = data.iter().map(|b| format!("{b:02x}")).collect();
            s.push_str(&format!("{lhs}=hex({kind:x}):{}\r\n", hex.join(",")));
        }
    }
    s
}

/// chntpw's `reged -I` writes the same edits from a `.reg` file; hivex must then read the same
/// keys and values from its result and ours. (reged cannot add keys under `Services` in the
/// regipy SYSTEM hive — it stops with "add_key: current ptr not 'nk'" — so the comparison uses
/// SYSTEM_2, the DriverDatabase case, where it can.)
#[test]
fn same_result_as_reged() {
    if !oracles() || !util::require("reged") {
        return;
    }
    for drv in [BootStorageDriver::viostor(), BootStorageDriver::vioscsi()] {
        let dir = util::tmpdir();
        let Some(ours) = copy_corpus("hives/regipy/SYSTEM_2", dir.path(), false) else {
            return;
        };
        let theirs = dir.path().join("SYSTEM_2.reged");
        std::fs::copy(&ours, &theirs).expect("copy");

        let mut h = Hive::open(&ours, &open_opts(true)).expect("open");
        let cs = current_control_set(&h).expect("control set");
        add_boot_storage_driver(&mut h, &drv).expect("edit");
        util::assert_hive_sound(&h.to_bytes(), "hive_windows.rs:661");
        h.save().expect("save");
        drop(h);

        let edits = expected_edits(&drv.service, &cs, true, &drv.package_label());
        let reg = dir.path().join("edits.reg");
        std::fs::write(&reg, reg_file("HKEY_LOCAL_MACHINE\\SYSTEM", &edits)).expect("write reg");
        // reged's exit status is not 0 when it saved a changed hive; its report says whether
        // the import worked.
        let out = Command::new("reged")
            .args(["-I", "-C"])
            .arg(&theirs)
            .arg("HKEY_LOCAL_MACHINE\\SYSTEM")
            .arg(&reg)
            .output()
            .expect("run reged");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("operation SUCCEEDED") && !text.contains("ERROR"),
            "reged: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let m_ours = hivex_model(&ours);
        let m_theirs = hivex_model(&theirs);
        assert_models_equal(
            &format!("{}: ours vs reged", drv.service),
            &m_theirs,
            &m_ours,
        );
    }
}

#[test]
fn service_start_crash_control_and_errors() {
    if !oracles() {
        return;
    }
    let dir = util::tmpdir();
    let Some(path) = copy_corpus("hives/regipy/SYSTEM", dir.path(), false) else {
        return;
    };
    let before = hivex_model(&path);
    let mut h = Hive::open(&path, &HiveOpenOptions::default()).expect("open");
    // Find real services through hivex, not through the code under test.
    let tcpip = before
        .get("controlset001\\services\\tcpip")
        .expect("Tcpip service");
    assert!(tcpip.values.contains_key("start"));
    let r = disable_service(&mut h, "Tcpip").expect("disable");
    assert!(r.changed());
    set_service_start(&mut h, "Tcpip", 4).expect("same again");
    set_crash_auto_reboot(&mut h, false).expect("auto reboot");
    assert!(set_service_start(&mut h, "NoSuchService", 3).is_err());
    assert!(set_service_start(&mut h, "Tcpip", 5).is_err());
    assert!(disable_service(&mut h, "a\\b").is_err());
    util::assert_hive_sound(&h.to_bytes(), "hive_windows.rs:716");
    h.save().expect("save");
    drop(h);

    let mut expected = before.clone();
    expected
        .get_mut("controlset001\\services\\tcpip")
        .expect("key")
        .values
        .get_mut("start")
        .expect("Start")
        .data = dword(4);
    let crash = expected
        .get_mut("controlset001\\control\\crashcontrol")
        .expect("CrashControl");
    crash.values.insert(
        "autoreboot".into(),
        ValueModel {
            name: crash
                .values
                .get("autoreboot")
                .map_or("AutoReboot".into(), |v| v.name.clone()),
            kind: 4,
            data: dword(0),
        },
    );
    assert_models_equal("service start", &expected, &hivex_model(&path));
    assert_eq!(
        hivexget(&path, "ControlSet001\\Services\\Tcpip", "Start"),
        "4"
    );
}

#[test]
fn control_set_errors_are_clear() {
    // A hive without Select: a new empty hive.
    let mut h = Hive::new("ROOT").expect("new hive");
    let e = current_control_set(&h).expect_err("no Select").to_string();
    assert!(e.contains("Select"), "{e}");
    let sel = h.create_key("Select").expect("Select");
    let e = current_control_set(&h).expect_err("no Current").to_string();
    assert!(e.contains("Current"), "{e}");
    h.set_value(sel, "Current", diskconv::guest::hive::RegType::SZ, &sz("1"))
        .expect("set");
    let e = current_control_set(&h)
        .expect_err("not a dword")
        .to_string();
    assert!(e.contains("REG_DWORD") && e.contains("REG_SZ"), "{e}");
    h.set_value(
        sel,
        "Current",
        diskconv::guest::hive::RegType::DWORD,
        &dword(0),
    )
    .expect("set");
    let e = current_control_set(&h).expect_err("zero").to_string();
    assert!(e.contains("found 0"), "{e}");
    h.set_value(
        sel,
        "Current",
        diskconv::guest::hive::RegType::DWORD,
        &dword(2),
    )
    .expect("set");
    let e = current_control_set(&h).expect_err("missing").to_string();
    assert!(e.contains("ControlSet002"), "{e}");
    h.create_key("ControlSet002").expect("cs");
    assert_eq!(current_control_set(&h).expect("ok"), "ControlSet002");
    // No Services key yet: add_boot_storage_driver creates the whole path.
    let r = add_boot_storage_driver(&mut h, &BootStorageDriver::viostor()).expect("add");
    assert!(r.edits.contains(&Edit::KeyCreated {
        path: "ControlSet002\\Control".into()
    }));
}

#[test]
fn hivex_export_parser() {
    let text = "Windows Registry Editor Version 5.00\n\n[\\]\n\n[\\A\\b]\n@=hex(7):61,00,00,00,00,00\n\"x\\\\y\\\"z\"=dword:0000000a\n\"e\"=hex(0):\n\"h\"=hex:01,02\n";
    let m = parse_hivex_export(text);
    assert_eq!(m.len(), 2);
    let k = &m["a\\b"];
    assert_eq!(k.path, "A\\b");
    assert_eq!(k.values[""].kind, 7);
    assert_eq!(k.values[""].data, multi(&["a"]));
    assert_eq!(k.values["x\\y\"z"].data, vec![10, 0, 0, 0]);
    assert_eq!(k.values["e"].data, Vec::<u8>::new());
    assert_eq!(k.values["h"].kind, 3);
}

/// `Select\Current` read by us and by hivexget name the same control set on every SYSTEM hive of
/// the corpus, and the plan picks the binding hivex says the hive needs.
#[test]
fn control_set_and_binding_kind_match_hivex() {
    if !oracles() {
        return;
    }
    for rel in [
        "hives/regipy/SYSTEM",
        "hives/regipy/SYSTEM_2",
        "hives/regipy/SYSTEM_B",
    ] {
        let Some(path) = util::corpus(rel) else {
            return;
        };
        let h = Hive::open(&path, &open_opts(false)).expect("open");
        let cs = current_control_set(&h).expect("control set");
        let n: u32 = hivexget(&path, "Select", "Current")
            .parse()
            .expect("number");
        assert_eq!(cs, format!("ControlSet{n:03}"), "{rel}");
        let root = util::hivexsh(&path, "ls\n");
        let dd = root.lines().any(|l| l.trim() == "DriverDatabase");
        let plan =
            diskconv::inject::windows::plan_boot_storage_driver(&h, &BootStorageDriver::viostor())
                .expect("plan");
        assert_eq!(
            plan.keys
                .iter()
                .any(|k| k.path.starts_with("DriverDatabase\\")),
            dd,
            "{rel}"
        );
        assert_eq!(
            plan.keys
                .iter()
                .any(|k| k.path.contains("\\CriticalDeviceDatabase\\")),
            !dd,
            "{rel}"
        );
    }
}
