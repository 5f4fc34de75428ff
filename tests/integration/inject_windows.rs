//! `diskconv inject windows` end to end: disks built by the fixtures (mkntfs volumes in GPT and
//! MBR disks, raw / qcow2 / VHDX), a fake virtio-win tree (folder and ISO), then the result
//! checked with independent tools: ntfs-3g (`ntfsls`, `ntfscat`, `ntfsfix -n`, `ntfsinfo -m`)
//! for every file written, hivex (`hivexregedit --export`, `hivexget`) for every registry value
//! of the plan (and nothing else changed), `qemu-img check` for the container, sha256 for the
//! refusals and the dry run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::guest::hive::RegData;
use serde_json::Value;

use crate::ntfs_fixture::{self as fx, Layout, Placed, WinHives};
use crate::util::{self, run, sha256_file};

/// A fixture disk in some container format.
pub(crate) struct Case {
    pub dir: tempfile::TempDir,
    pub img: PathBuf,
    pub fmt: &'static str,
    pub placed: Placed,
}

/// Builds a Windows disk: an NTFS volume of `vol_size` bytes with `hives` (and `extra`
/// files) in a `layout` disk, converted to `fmt`.
pub(crate) fn build_case(
    layout: Layout,
    fmt: &'static str,
    hives: &WinHives,
    vol_size: u64,
    extra: &[(&str, Vec<u8>)],
) -> Case {
    let dir = util::tmpdir();
    let vol = dir.path().join("vol.ntfs");
    fx::windows_volume(&vol, vol_size, fx::ntfs_start_sector(layout), hives, extra);
    let raw = dir.path().join("disk.raw");
    let placed = fx::disk_with_volume(layout, &raw, &vol);
    std::fs::remove_file(&vol).unwrap();
    let img = if fmt == "raw" {
        raw
    } else {
        let img = dir.path().join(format!("disk.{fmt}"));
        fx::convert_to(&raw, fmt, &img);
        std::fs::remove_file(&raw).unwrap();
        img
    };
    Case {
        dir,
        img,
        fmt,
        placed,
    }
}

impl Case {
    /// The NTFS partition as a volume file (extracted with qemu-img and dd).
    pub fn volume(&self) -> PathBuf {
        let out = self.dir.path().join("back.ntfs");
        let _ = std::fs::remove_file(&out);
        fx::extract_partition(&self.img, self.fmt, self.placed, &out);
        out
    }
}

fn inject(img: &Path, args: &[&str]) -> std::process::Output {
    util::diskconv()
        .args(["inject", "windows"])
        .arg(img)
        .args(args)
        .output()
        .unwrap()
}

/// Runs `diskconv inject windows IMG ARGS --json` and returns the report.
fn inject_json(img: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = inject(img, &a);
    assert!(
        out.status.success(),
        "inject {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "inject --json output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs an injection that must fail; returns its error text. The image must be unchanged.
fn inject_fails(img: &Path, args: &[&str]) -> String {
    let before = sha256_file(img);
    let out = inject(img, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "inject {args:?} succeeded: {err}");
    assert!(err.starts_with("diskconv: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        sha256_file(img),
        before,
        "a failed inject changed the image"
    );
    err
}

/// `hivexregedit --export` of a hive as a map: (key, value name) in lower case -> the value
/// as hivexregedit writes it; keys alone are entries with the name "\0key".
fn export_map(hive: &Path) -> BTreeMap<(String, String), String> {
    let text = util::hivex_export(hive);
    let mut map = BTreeMap::new();
    let mut key = String::new();
    for line in text.lines() {
        if let Some(k) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            key = k.trim_start_matches('\\').to_lowercase();
            map.insert((key.clone(), "\0key".into()), String::new());
        } else if let Some((name, val)) = split_value(line) {
            map.insert((key.clone(), name.to_lowercase()), val.to_string());
        }
    }
    map
}

/// `"name"=value` or `@=value` -> (name, value).
fn split_value(line: &str) -> Option<(String, &str)> {
    if let Some(rest) = line.strip_prefix("@=") {
        return Some((String::new(), rest));
    }
    let rest = line.strip_prefix('"')?;
    let mut name = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    name.push(n);
                }
            }
            '"' => return rest[i + 1..].strip_prefix('=').map(|v| (name, v)),
            c => name.push(c),
        }
    }
    None
}

/// The text of a REG_SZ as hivexregedit exports it (`"text"`, or `hex(1):` UTF-16LE bytes with
/// the terminating NUL).
fn reg_sz(exported: &str) -> String {
    if let Some(hex) = exported.strip_prefix("hex(1):") {
        let bytes: Vec<u8> = hex
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16(&units).unwrap()
    } else {
        exported.trim_matches('"').to_string()
    }
}

fn utf16_hex(strings: &[&str], double_nul: bool) -> String {
    let mut b = Vec::new();
    for s in strings {
        for u in s.encode_utf16() {
            b.extend_from_slice(&u.to_le_bytes());
        }
        b.extend_from_slice(&[0, 0]);
    }
    if double_nul {
        b.extend_from_slice(&[0, 0]);
    }
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What hivexregedit writes for a planned value (`kind`, `data` as the report gives them).
fn expected_export(kind: &str, data: &str) -> Vec<String> {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    match kind {
        "REG_DWORD" => vec![format!("dword:{:08x}", data.parse::<u32>().unwrap())],
        "REG_SZ" => vec![
            format!("\"{}\"", esc(data)),
            format!("hex(1):{}", utf16_hex(&[data], false)),
        ],
        "REG_EXPAND_SZ" => vec![
            format!("str(2):\"{}\"", esc(data)),
            format!("hex(2):{}", utf16_hex(&[data], false)),
        ],
        "REG_BINARY" => {
            let bytes: Vec<String> = (0..data.len())
                .step_by(2)
                .map(|i| data[i..i + 2].to_string())
                .collect();
            vec![format!("hex(3):{}", bytes.join(","))]
        }
        "REG_MULTI_SZ" => {
            let parts: Vec<&str> = data.split("; ").collect();
            vec![format!("hex(7):{}", utf16_hex(&parts, true))]
        }
        other => panic!("unexpected planned type {other}"),
    }
}

/// Checks one hive read back from the volume against the hive before and the plan: every
/// planned value present with its data; every difference (new or changed value, new key) is
/// in the plan; nothing removed.
fn check_hive_against_plan(before: &Path, after: &Path, hive: &str, report: &Value) {
    let b = export_map(before);
    let a = export_map(after);
    let planned: Vec<&Value> = report["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["hive"] == hive)
        .collect();
    let mut planned_keys = BTreeMap::new();
    for v in &planned {
        let key = v["key"].as_str().unwrap().to_lowercase();
        let name = v["name"].as_str().unwrap().to_lowercase();
        let got = a
            .get(&(key.clone(), name.clone()))
            .unwrap_or_else(|| panic!("{hive}: planned value {key} : {name} is missing"));
        let want = expected_export(v["kind"].as_str().unwrap(), v["data"].as_str().unwrap());
        assert!(
            want.contains(got),
            "{hive}: {key} : {name} = {got}, expected one of {want:?}"
        );
        planned_keys.insert((key, name), ());
    }
    for (k, v) in &b {
        assert!(a.contains_key(k), "{hive}: {k:?} was removed");
        if a[k] != *v {
            assert!(
                planned_keys.contains_key(k),
                "{hive}: {k:?} changed from {v} to {} outside the plan",
                a[k]
            );
        }
    }
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        if k.1 == "\0key" {
            assert!(
                planned_keys
                    .keys()
                    .any(|(pk, _)| pk == &k.0 || pk.starts_with(&format!("{}\\", k.0))),
                "{hive}: key {} created outside the plan",
                k.0
            );
        } else {
            assert!(
                planned_keys.contains_key(k),
                "{hive}: value {k:?} added outside the plan"
            );
        }
    }
}

/// Where a reported file's expected content is: the source tree (`source` relative to it),
/// or generated (the first-boot script).
fn expected_file(tree: &Path, f: &Value) -> Option<Vec<u8>> {
    let source = f["source"].as_str().unwrap();
    if source == "generated" {
        return None;
    }
    let p = tree.join(source.trim_start_matches('/'));
    Some(std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "reported source {source} is not in the tree ({}): {e}",
            p.display()
        )
    }))
}

/// Every reported file is on the volume (ntfsls lists it, ntfscat reads it back byte for
/// byte), and the volume passes ntfsfix -n / ntfsinfo -m.
fn check_files(vol: &Path, tree: &Path, report: &Value) {
    fx::assert_ntfs_sound(vol);
    for f in report["files"].as_array().unwrap() {
        let path = f["path"].as_str().unwrap().replace('\\', "/");
        let (dir, name) = path.rsplit_once('/').unwrap();
        let names = fx::ntfs_ls(vol, &format!("/{dir}"));
        assert!(
            names.iter().any(|n| n.eq_ignore_ascii_case(name)),
            "ntfsls /{dir} does not list {name}: {names:?}"
        );
        let got = fx::ntfs_cat(vol, &path);
        assert_eq!(got.len() as u64, f["size"].as_u64().unwrap(), "{path}");
        match expected_file(tree, f) {
            Some(want) => assert!(got == want, "{path}: content differs from the source"),
            None => {
                let text = String::from_utf8(got).unwrap();
                assert!(text.contains("pnputil -i -a"), "{path}: {text}");
                assert!(text.contains("SetupType /t REG_DWORD /d 0"), "{text}");
            }
        }
    }
}

fn write_tmp(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn values<'a>(report: &'a Value, hive: &str, key_suffix: &str) -> Vec<&'a Value> {
    report["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| {
            v["hive"] == hive
                && v["key"]
                    .as_str()
                    .unwrap()
                    .to_lowercase()
                    .ends_with(&key_suffix.to_lowercase())
        })
        .collect()
}

/// Windows 10 (dirty SYSTEM replayed from its logs, DriverDatabase) in a GPT disk in qcow2,
/// virtio-win folder: dry run first (plan, nothing written), then the real run, checked with
/// ntfs-3g and hivex, then an idempotent rerun.
#[test]
fn inject_windows10_gpt_qcow2_from_folder() {
    if !fx::require_tools() {
        return;
    }
    let Some(hives) = fx::win10_hives() else {
        return;
    };
    let case = build_case(Layout::Gpt, "qcow2", &hives, 48 << 20, &[]);
    let tree = case.dir.path().join("virtio-win");
    fx::fake_virtio_tree(&tree, &fx::keep_storage_and_net, 20_000).unwrap();
    let img = &case.img;
    let tree_arg = tree.to_str().unwrap();

    let sha = sha256_file(img);
    let plan = inject_json(img, &["--drivers", tree_arg, "--dry-run"]);
    assert_eq!(sha256_file(img), sha, "--dry-run changed the image");
    assert_eq!(plan["written"], false);
    assert_eq!(plan["partition"], 3);
    assert_eq!(plan["windows"]["build"], 17763);
    assert_eq!(plan["windows"]["arch"], "amd64");
    assert_eq!(plan["windows"]["driver_database"], true);
    let replayed = plan["replayed_hives"].as_array().unwrap();
    assert!(
        replayed
            .iter()
            .any(|h| h.as_str().unwrap().ends_with("SYSTEM")),
        "the dirty SYSTEM hive was not replayed: {replayed:?}"
    );
    let files = plan["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(
        paths.contains(&"Windows\\System32\\drivers\\viostor.sys"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"Windows\\Drivers\\VirtIO\\viostor\\viostor.inf"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"Windows\\Drivers\\VirtIO\\netkvm\\netkvm.inf")
            || paths
                .iter()
                .any(|p| p.to_lowercase() == "windows\\drivers\\virtio\\netkvm\\netkvm.inf"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"Windows\\Drivers\\VirtIO\\firstboot.cmd"),
        "{paths:?}"
    );
    // The w10 amd64 files were chosen.
    for f in files {
        let s = f["source"].as_str().unwrap();
        assert!(s == "generated" || s.contains("w10/amd64"), "{s}");
    }
    assert!(
        plan["first_boot"]
            .as_str()
            .unwrap()
            .contains("SetupType = 2"),
        "{}",
        plan["first_boot"]
    );

    let report = inject_json(img, &["--drivers", tree_arg]);
    assert_eq!(report["written"], true);
    // The real run did what the dry run said.
    assert_eq!(report["files"], plan["files"]);
    assert_eq!(report["values"], plan["values"]);
    util::assert_qemu_check(img);

    let vol = case.volume();
    check_files(&vol, &tree, &report);
    let dir = case.dir.path();
    let before_sys = write_tmp(dir, "SYSTEM.before", &hives.system_replayed().to_bytes());
    let after_sys = write_tmp(
        dir,
        "SYSTEM.after",
        &fx::ntfs_cat(&vol, "Windows/System32/config/SYSTEM"),
    );
    util::assert_hive_sound(&std::fs::read(&after_sys).unwrap(), "SYSTEM after inject");
    check_hive_against_plan(&before_sys, &after_sys, "SYSTEM", &report);
    let before_sw = write_tmp(dir, "SOFTWARE.before", &hives.software);
    let after_sw = write_tmp(
        dir,
        "SOFTWARE.after",
        &fx::ntfs_cat(&vol, "Windows/System32/config/SOFTWARE"),
    );
    check_hive_against_plan(&before_sw, &after_sw, "SOFTWARE", &report);

    // The facts, one by one, with hivexget.
    let get = |hive: &Path, key: &str, name: &str| -> String {
        let out = run(Command::new("hivexget").arg(hive).arg(key).arg(name));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        get(&after_sys, "ControlSet001\\Services\\viostor", "Start"),
        "0"
    );
    assert_eq!(
        get(&after_sys, "ControlSet001\\Services\\viostor", "ImagePath"),
        "system32\\drivers\\viostor.sys"
    );
    assert_eq!(
        get(
            &after_sys,
            "ControlSet001\\Control\\CrashControl",
            "AutoReboot"
        ),
        "0"
    );
    assert_eq!(get(&after_sys, "Setup", "SetupType"), "2");
    assert_eq!(
        get(&after_sys, "Setup", "CmdLine"),
        "cmd.exe /c %SystemRoot%\\Drivers\\VirtIO\\firstboot.cmd"
    );
    let label = get(
        &after_sys,
        "DriverDatabase\\DriverInfFiles\\viostor.inf",
        "Active",
    );
    assert!(
        label.starts_with("viostor.inf_amd64_") && label.len() == 34,
        "{label}"
    );
    assert_eq!(
        get(
            &after_sys,
            &format!(
                "DriverDatabase\\DriverPackages\\{label}\\Descriptors\\PCI\\VEN_1AF4&DEV_1001&REV_00"
            ),
            "Configuration"
        ),
        "rhelscsi_inst"
    );
    let dp = get(
        &after_sw,
        "Microsoft\\Windows\\CurrentVersion",
        "DevicePath",
    );
    assert!(
        dp.to_lowercase()
            .ends_with(";%systemroot%\\drivers\\virtio"),
        "DevicePath = {dp}"
    );
    // Every staged INF is in the first-boot script.
    let script =
        String::from_utf8(fx::ntfs_cat(&vol, "Windows/Drivers/VirtIO/firstboot.cmd")).unwrap();
    for p in &paths {
        if p.to_lowercase().ends_with(".inf") {
            let rel = p.trim_start_matches("Windows\\Drivers\\VirtIO\\");
            assert!(script.contains(rel), "{rel} not in the script:\n{script}");
        }
    }

    // A rerun changes nothing.
    let sha = sha256_file(img);
    let again = inject_json(img, &["--drivers", tree_arg]);
    assert_eq!(again["written"], false, "a rerun wrote again");
    // Regression: the rerun called its own hook "Windows setup is already pending".
    let fb = again["first_boot"].as_str().unwrap();
    assert!(
        fb.contains("first-boot hook from an earlier run") && !fb.contains("pending"),
        "{fb}"
    );
    assert!(again["replayed_hives"].as_array().unwrap().is_empty());
    assert_eq!(sha256_file(img), sha, "a rerun changed the image");
    let dp_values = values(&again, "SOFTWARE", "CurrentVersion");
    assert!(
        dp_values.is_empty(),
        "DevicePath appended twice: {dp_values:?}"
    );
}

/// Windows 7 x86 (no DriverDatabase: CriticalDeviceDatabase) in an MBR disk in VHDX, drivers
/// from a virtio-win ISO, virtio-scsi.
#[test]
fn inject_windows7_mbr_vhdx_from_iso() {
    if !fx::require_tools() {
        return;
    }
    let Some(hives) = fx::win7_hives() else {
        return;
    };
    let case = build_case(Layout::Mbr, "vhdx", &hives, 40 << 20, &[]);
    let tree = case.dir.path().join("virtio-win");
    fx::fake_virtio_tree(&tree, &fx::keep_storage_and_net, 9_000).unwrap();
    let iso = case.dir.path().join("virtio-win.iso");
    fx::make_iso(&tree, &iso);
    let img = &case.img;
    let report = inject_json(
        img,
        &[
            "--drivers",
            iso.to_str().unwrap(),
            "--block-driver",
            "vioscsi",
            "-f",
            "vhdx",
        ],
    );
    assert_eq!(report["written"], true);
    assert_eq!(report["partition"], 1);
    assert_eq!(report["windows"]["major"], 6);
    assert_eq!(report["windows"]["minor"], 1);
    assert_eq!(report["windows"]["arch"], "x86");
    assert_eq!(report["windows"]["driver_database"], false);
    for f in report["files"].as_array().unwrap() {
        let s = f["source"].as_str().unwrap();
        assert!(s == "generated" || s.contains("w7/x86"), "{s}");
    }
    util::assert_qemu_check(img);
    let vol = case.volume();
    check_files(&vol, &tree, &report);
    let dir = case.dir.path();
    let before = write_tmp(dir, "SYSTEM.before", &hives.system);
    let after = write_tmp(
        dir,
        "SYSTEM.after",
        &fx::ntfs_cat(&vol, "Windows/System32/config/SYSTEM"),
    );
    check_hive_against_plan(&before, &after, "SYSTEM", &report);
    for id in [
        "PCI#VEN_1AF4&DEV_1004&REV_00",
        "PCI#VEN_1AF4&DEV_1048&REV_01",
    ] {
        let out = run(Command::new("hivexget")
            .arg(&after)
            .arg(format!(
                "ControlSet001\\Control\\CriticalDeviceDatabase\\{id}"
            ))
            .arg("Service"));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "vioscsi");
    }
    assert!(values(&report, "SYSTEM", "DriverDatabase").is_empty());
    let sha = sha256_file(img);
    let again = inject_json(
        img,
        &[
            "--drivers",
            iso.to_str().unwrap(),
            "--block-driver",
            "vioscsi",
        ],
    );
    assert_eq!(again["written"], false);
    assert_eq!(sha256_file(img), sha);
}

/// `--target` without `--drivers`: inbox drivers only. Windows 10 keeps its inbox driver-store
/// bindings and gets the cloud's ids added; Windows 7 gets CriticalDeviceDatabase entries and
/// has no stornvme (a clear error).
#[test]
fn inject_cloud_targets_without_drivers() {
    if !fx::require_tools() {
        return;
    }
    let (Some(w10), Some(w7)) = (fx::win10_hives(), fx::win7_hives()) else {
        return;
    };
    let case = build_case(Layout::Gpt, "raw", &w10, 40 << 20, &[]);
    let img = &case.img;
    let before = case.dir.path().join("SYSTEM.before");
    std::fs::write(&before, w10.system_replayed().to_bytes()).unwrap();
    let aws = inject_json(img, &["--target", "aws-nitro"]);
    assert!(aws["files"].as_array().unwrap().is_empty());
    let azure = inject_json(img, &["--target", "azure"]);
    let vol = case.volume();
    fx::assert_ntfs_sound(&vol);
    let after = case.dir.path().join("SYSTEM.after");
    std::fs::write(&after, fx::ntfs_cat(&vol, "Windows/System32/config/SYSTEM")).unwrap();
    let b = export_map(&before);
    let a = export_map(&after);
    // The inbox stornvme package (label from the hive before) now also serves the EBS ids.
    let inf = b[&(
        "driverdatabase\\driverinffiles\\stornvme.inf".to_string(),
        "active".to_string(),
    )]
        .to_string();
    let inf = reg_sz(&inf).to_lowercase();
    for id in ["pci\\ven_1d0f&dev_8061", "pci\\ven_1d0f&dev_cd01"] {
        assert_eq!(
            a[&(
                format!("driverdatabase\\deviceids\\{id}"),
                "stornvme.inf".into()
            )],
            "hex(3):01,ff,00,00"
        );
        assert_eq!(
            a[&(
                format!("driverdatabase\\driverpackages\\{inf}\\descriptors\\{id}"),
                "configuration".into()
            )],
            format!("hex(1):{}", utf16_hex(&["Stornvme_Inst"], false))
        );
    }
    for svc in ["stornvme", "vmbus", "storvsc"] {
        assert_eq!(
            a[&(format!("controlset001\\services\\{svc}"), "start".into())],
            "dword:00000000"
        );
    }
    // Existing inbox bindings were kept, not rewritten: the plans only touch what was missing.
    assert!(
        values(
            &azure,
            "SYSTEM",
            "\\VMBUS\\{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}"
        )
        .is_empty()
    );
    let mut all = aws.clone();
    all["values"]
        .as_array_mut()
        .unwrap()
        .extend(azure["values"].as_array().unwrap().iter().cloned());
    check_hive_against_plan(&before, &after, "SYSTEM", &all);

    // Windows 7: Azure through the CriticalDeviceDatabase; no inbox NVMe driver.
    let case7 = build_case(Layout::Mbr, "qcow2", &w7, 24 << 20, &[]);
    let err = inject_fails(&case7.img, &["--target", "aws-nitro"]);
    assert!(
        err.contains("stornvme") && err.contains("Windows 8.1"),
        "{err}"
    );
    let r = inject_json(&case7.img, &["--target", "azure"]);
    let cdd = values(
        &r,
        "SYSTEM",
        "CriticalDeviceDatabase\\VMBUS#{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}",
    );
    assert_eq!(cdd.len(), 2, "{cdd:?}");
    let vol7 = case7.volume();
    let after7 = case7.dir.path().join("SYSTEM7.after");
    std::fs::write(
        &after7,
        fx::ntfs_cat(&vol7, "Windows/System32/config/SYSTEM"),
    )
    .unwrap();
    let out = run(Command::new("hivexget")
        .arg(&after7)
        .arg("ControlSet001\\Control\\CriticalDeviceDatabase\\VMBUS#{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}")
        .arg("Service"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "storvsc");
}

fn small_hives(system: Vec<u8>, version: &[(&str, RegData)], remove: &[&str]) -> Option<WinHives> {
    Some(WinHives {
        system,
        system_logs: Vec::new(),
        software: fx::software_hive(version, remove)?,
    })
}

/// Refusals: every one names the problem and leaves the image byte-identical.
#[test]
fn inject_refusals_leave_the_image_unchanged() {
    if !fx::require_tools() {
        return;
    }
    let Some(hives) = small_hives(fx::small_system_hive("AMD64", true, 0), &[], &[]) else {
        return;
    };
    let dir = util::tmpdir();
    let tree = dir.path().join("virtio-win");
    fx::fake_virtio_tree(&tree, &|r: &str| r.starts_with("viostor/"), 4_000).unwrap();
    let drivers = tree.to_str().unwrap();

    // A dirty volume.
    let vol = dir.path().join("dirty.ntfs");
    fx::windows_volume(&vol, 8 << 20, 2048, &hives, &[]);
    fx::set_ntfs_dirty(&vol);
    let disk = dir.path().join("dirty.raw");
    fx::disk_with_volume(Layout::Mbr, &disk, &vol);
    let err = inject_fails(&disk, &["--drivers", drivers]);
    assert!(err.contains("dirty"), "{err}");

    // A hibernated Windows (Fast Startup): hiberfil.sys starts with "HIBR".
    let vol = dir.path().join("hiber.ntfs");
    let mut hiber = b"HIBR".to_vec();
    hiber.resize(64 << 10, 0);
    fx::windows_volume(&vol, 8 << 20, 2048, &hives, &[("hiberfil.sys", hiber)]);
    let disk = dir.path().join("hiber.raw");
    fx::disk_with_volume(Layout::Mbr, &disk, &vol);
    let err = inject_fails(&disk, &["--drivers", drivers]);
    assert!(err.to_lowercase().contains("hibernat"), "{err}");

    // No Windows: an NTFS volume without Windows\System32\config\SYSTEM.
    let vol = dir.path().join("data.ntfs");
    fx::mkntfs(&vol, 8 << 20, 4096, "Data", 10240);
    fx::ntfs_mkdirs(&vol, &["Users"]);
    let disk = dir.path().join("nowin.raw");
    fx::disk_with_volume(Layout::Gpt, &disk, &vol);
    let err = inject_fails(&disk, &["--drivers", drivers]);
    assert!(err.contains("no Windows found"), "{err}");
    assert!(err.contains("partition 3"), "{err}");

    // Windows Server 2003 (5.2): virtio-win has nothing for it.
    let Some(old) = small_hives(
        fx::small_system_hive("x86", false, 0),
        &[
            ("CurrentVersion", RegData::Sz("5.2".into())),
            ("CurrentBuildNumber", RegData::Sz("3790".into())),
            ("ProductName", RegData::Sz("Windows Server 2003".into())),
            ("InstallationType", RegData::Sz("Server".into())),
        ],
        &["CurrentMajorVersionNumber", "CurrentMinorVersionNumber"],
    ) else {
        return;
    };
    let vol = dir.path().join("old.ntfs");
    fx::windows_volume(&vol, 8 << 20, 2048, &old, &[]);
    let disk = dir.path().join("old.raw");
    fx::disk_with_volume(Layout::Mbr, &disk, &vol);
    let err = inject_fails(&disk, &["--drivers", drivers]);
    assert!(err.contains("no driver for Windows Server 2003"), "{err}");
    assert!(err.contains("build 3790"), "{err}");

    // Windows 10 but the source only has Windows 7 drivers: the error lists what it has.
    let w7only = dir.path().join("w7only");
    fx::fake_virtio_tree(&w7only, &|r: &str| r.starts_with("viostor/w7/"), 4_000).unwrap();
    let vol = dir.path().join("w10.ntfs");
    fx::windows_volume(&vol, 8 << 20, 2048, &hives, &[]);
    let disk = dir.path().join("w10.raw");
    fx::disk_with_volume(Layout::Mbr, &disk, &vol);
    let err = inject_fails(&disk, &["--drivers", w7only.to_str().unwrap()]);
    assert!(
        err.contains("no driver for") && err.contains("w10"),
        "{err}"
    );
    assert!(
        err.contains("w7"),
        "the error does not list what the source has: {err}"
    );

    // A full volume: the drivers do not fit.
    let big = dir.path().join("big");
    fx::fake_virtio_tree(
        &big,
        &|r: &str| r.starts_with("viostor/w10/amd64/"),
        12 << 20,
    )
    .unwrap();
    let err = inject_fails(&disk, &["--drivers", big.to_str().unwrap()]);
    assert!(err.contains("full"), "{err}");

    // Nothing asked, and a bad option.
    let err = inject_fails(&disk, &[]);
    assert!(err.contains("nothing to inject"), "{err}");
    let err = inject_fails(&disk, &["--target", "ec2"]);
    assert!(err.contains("aws-nitro, gcp or azure"), "{err}");

    // The refusals wrote nothing, and the volume still injects fine afterwards.
    let r = inject_json(&disk, &["--drivers", drivers]);
    assert_eq!(r["written"], true);
}

/// An image whose Windows setup is pending (SetupType 1, e.g. sysprepped): the Setup key is left
/// alone and the report says the drivers are found through DevicePath.
#[test]
fn inject_leaves_pending_setup_alone() {
    if !fx::require_tools() {
        return;
    }
    let Some(hives) = small_hives(fx::small_system_hive("AMD64", true, 1), &[], &[]) else {
        return;
    };
    let dir = util::tmpdir();
    let tree = dir.path().join("virtio-win");
    fx::fake_virtio_tree(&tree, &|r: &str| r.starts_with("viostor/"), 4_000).unwrap();
    let vol = dir.path().join("v.ntfs");
    fx::windows_volume(&vol, 8 << 20, 2048, &hives, &[]);
    let disk = dir.path().join("d.raw");
    let placed = fx::disk_with_volume(Layout::Mbr, &disk, &vol);
    let r = inject_json(&disk, &["--drivers", tree.to_str().unwrap()]);
    let fb = r["first_boot"].as_str().unwrap();
    assert!(
        fb.contains("SetupType = 1") && fb.contains("DevicePath"),
        "{fb}"
    );
    assert!(values(&r, "SYSTEM", "Setup").is_empty());
    let names: Vec<&str> = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.ends_with("firstboot.cmd")),
        "{names:?}"
    );
    let back = dir.path().join("back.ntfs");
    fx::extract_partition(&disk, "raw", placed, &back);
    let after = write_tmp(
        dir.path(),
        "SYSTEM.after",
        &fx::ntfs_cat(&back, "Windows/System32/config/SYSTEM"),
    );
    let out = run(Command::new("hivexget")
        .arg(&after)
        .arg("Setup")
        .arg("SetupType"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    // Human output lists the files and values.
    let out = inject(&disk, &["--drivers", tree.to_str().unwrap(), "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Windows\\System32\\drivers\\viostor.sys"),
        "{text}"
    );
    assert!(
        text.contains("SYSTEM\\ControlSet001\\Services\\viostor : Start = 0 (REG_DWORD)"),
        "{text}"
    );
    assert!(text.contains("dry run: nothing written"), "{text}");
}
