//! `diskconv inspect`: partition tables (checked against `sfdisk --json`), NTFS volumes and
//! the installed Windows (checked against the hive facts read with `hivexget`), on fixture
//! disks in raw, qcow2 and VHDX; the image is never written.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::inject_windows::build_case;
use crate::ntfs_fixture::{self as fx, Layout};
use crate::util::{self, run, sha256_file};

fn inspect_json(img: &Path) -> Value {
    let out = util::diskconv()
        .arg("inspect")
        .arg(img)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn hivexget(hive: &Path, key: &str, value: &str) -> String {
    let out = run(Command::new("hivexget").arg(hive).arg(key).arg(value));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// sfdisk's view of a raw disk: (start bytes, size bytes) of each partition.
fn sfdisk_parts(raw: &Path) -> Vec<(u64, u64)> {
    let out = run(Command::new("sfdisk").arg("--json").arg(raw));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            )
        })
        .collect()
}

#[test]
fn inspect_windows10_gpt_vhdx() {
    if !fx::require_tools() {
        return;
    }
    let Some(hives) = fx::win10_hives() else {
        return;
    };
    let case = build_case(Layout::Gpt, "vhdx", &hives, 40 << 20, &[]);
    let sha = sha256_file(&case.img);
    let r = inspect_json(&case.img);
    assert_eq!(sha256_file(&case.img), sha, "inspect changed the image");
    assert_eq!(r["format"], "vhdx");
    let raw = case.dir.path().join("check.raw");
    fx::convert_to_raw(&case.img, "vhdx", &raw);
    assert_eq!(
        r["virtual_size"].as_u64().unwrap(),
        std::fs::metadata(&raw).unwrap().len()
    );
    assert_eq!(r["partition_table"]["scheme"], "gpt");
    let parts = sfdisk_parts(&raw);
    let ours = r["partition_table"]["partitions"].as_array().unwrap();
    assert_eq!(ours.len(), parts.len());
    for (p, (start, len)) in ours.iter().zip(&parts) {
        assert_eq!(p["start"].as_u64().unwrap(), *start);
        assert_eq!(p["len"].as_u64().unwrap(), *len);
    }
    let vols = r["volumes"].as_array().unwrap();
    let win: Vec<&Value> = vols.iter().filter(|v| !v["windows"].is_null()).collect();
    assert_eq!(win.len(), 1, "{vols:?}");
    let v = win[0];
    assert_eq!(v["volume"]["partition"]["number"], 3);
    assert_eq!(v["volume"]["fs"], "ntfs");
    assert_eq!(v["ntfs"]["cluster_size"], 4096);
    assert_eq!(v["ntfs"]["label"], "Windows");
    assert!(v["not_writable"].is_null(), "{}", v["not_writable"]);
    let w = &v["windows"]["info"];
    // The facts, from the hives with hivex.
    let dir = case.dir.path();
    let sw = dir.join("SOFTWARE");
    std::fs::write(&sw, &hives.software).unwrap();
    let cv = "Microsoft\\Windows NT\\CurrentVersion";
    assert_eq!(w["product_name"], hivexget(&sw, cv, "ProductName"));
    assert_eq!(
        w["build"].as_u64().unwrap().to_string(),
        hivexget(&sw, cv, "CurrentBuildNumber")
    );
    assert_eq!(w["edition"], hivexget(&sw, cv, "EditionID"));
    assert_eq!(w["major"], 10);
    assert_eq!(w["server"], false);
    let sys = dir.join("SYSTEM");
    std::fs::write(&sys, &hives.system).unwrap();
    assert_eq!(
        w["arch"].as_str().unwrap(),
        hivexget(
            &sys,
            "ControlSet001\\Control\\Session Manager\\Environment",
            "PROCESSOR_ARCHITECTURE"
        )
        .to_lowercase()
    );
    assert_eq!(
        w["current_control_set"],
        format!(
            "ControlSet{:03}",
            hivexget(&sys, "Select", "Current").parse::<u32>().unwrap()
        )
    );
    assert_eq!(w["driver_database"], true);
    let replayed = v["windows"]["replayed_hives"].as_array().unwrap();
    assert_eq!(replayed.len(), 1, "{replayed:?}");

    // Human output.
    let out = run(util::diskconv().arg("inspect").arg(&case.img));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Windows 10 Enterprise Evaluation"), "{text}");
    assert!(text.contains("build 17763"), "{text}");
    assert!(text.contains("virtio-win folders: w10"), "{text}");
    assert!(text.contains("replayed the logs of"), "{text}");
}

#[test]
fn inspect_windows7_mbr_qcow2_and_a_disk_without_windows() {
    if !fx::require_tools() {
        return;
    }
    let Some(hives) = fx::win7_hives() else {
        return;
    };
    let case = build_case(Layout::Mbr, "qcow2", &hives, 24 << 20, &[]);
    let r = inspect_json(&case.img);
    assert_eq!(r["format"], "qcow2");
    assert_eq!(r["partition_table"]["scheme"], "mbr");
    let v = &r["volumes"][0];
    assert_eq!(v["volume"]["partition"]["bootable"], true);
    let w = &v["windows"]["info"];
    assert_eq!(
        (w["major"].as_u64(), w["minor"].as_u64()),
        (Some(6), Some(1))
    );
    assert_eq!(w["arch"], "x86");
    assert_eq!(w["driver_database"], false);
    assert_eq!(w["build"], 7601);

    // A data disk: an NTFS volume, no Windows; a dirty one is still inspected (read-only).
    let dir = util::tmpdir();
    let vol = dir.path().join("data.ntfs");
    fx::mkntfs(&vol, 8 << 20, 4096, "Data", 2048);
    fx::set_ntfs_dirty(&vol);
    let raw = dir.path().join("data.raw");
    fx::disk_with_volume(Layout::Mbr, &raw, &vol);
    let sha = sha256_file(&raw);
    let r = inspect_json(&raw);
    assert_eq!(sha256_file(&raw), sha);
    let v = &r["volumes"][0];
    assert_eq!(v["volume"]["fs"], "ntfs");
    assert!(v["windows"].is_null());
    assert_eq!(v["ntfs"]["dirty"], true);
    assert!(v["not_writable"].as_str().unwrap().contains("dirty"));
    let out = run(util::diskconv().arg("inspect").arg(&raw));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("windows:    none found"), "{text}");

    // Not an image at all: a clear error, exit 1.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"").unwrap();
    let out = util::diskconv().arg("inspect").arg(&junk).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("diskconv: ") && !err.contains("panicked"),
        "{err}"
    );
}
