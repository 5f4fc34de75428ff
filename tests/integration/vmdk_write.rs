//! The VMDK and OVA writers, checked by independent tools: qemu-img (check, compare, info),
//! GNU tar, sha256sum and python3's XML parser.

use std::path::Path;
use std::process::Command;

use diskconv::{ConvertOptions, Format, OpenOptions, OutputOptions, convert_file};

use crate::util;

const SUBFORMATS: [&str; 4] = [
    "streamOptimized",
    "monolithicSparse",
    "monolithicFlat",
    "vmfs",
];

fn convert(src: &Path, dst: &Path, format: Format, options: &str) -> diskconv::Result<()> {
    let img = diskconv::open(src, &OpenOptions::default().format(Format::Raw))?;
    let out = OutputOptions::new(format).with_options(options)?;
    convert_file(&*img, dst, &out, &ConvertOptions::default(), None).map(|_| ())
}

/// The descriptor text: embedded (sparse) or the file itself (flat).
fn descriptor(path: &Path, subformat: &str) -> String {
    let bytes = std::fs::read(path).unwrap();
    let text = if subformat == "monolithicFlat" || subformat == "vmfs" {
        bytes
    } else {
        bytes[512..512 + 20 * 512].to_vec()
    };
    String::from_utf8(text)
        .unwrap()
        .trim_end_matches('\0')
        .to_string()
}

fn ddb(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("no {key} in descriptor:\n{text}"))
}

/// `qemu-img check`: passes, or (for flat extents) says the format does not support checks.
fn check(img: &Path, subformat: &str) {
    if subformat == "streamOptimized" || subformat == "monolithicSparse" {
        util::assert_qemu_check(img);
        return;
    }
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(img)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        assert!(
            all.contains("not support"),
            "qemu-img check {}: {all}",
            img.display()
        );
    } else {
        util::assert_qemu_check(img);
    }
}

#[test]
fn vmdk_write_subformats_and_adapters_pass_qemu_img() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    // Whole grains, and an odd size: a multiple of 512 but not of 64 KiB.
    for (i, size) in [4u64 << 20, (3 << 20) + 7 * 512].into_iter().enumerate() {
        let src = dir.path().join(format!("src{i}.raw"));
        util::make_raw(&src, size, 17 + i as u64);
        for sf in SUBFORMATS {
            for (adapter, heads) in [("lsilogic", "255"), ("ide", "16"), ("buslogic", "255")] {
                let name = format!("{sf}-{adapter}-{i}");
                let dst = dir.path().join(format!("{name}.vmdk"));
                convert(
                    &src,
                    &dst,
                    Format::Vmdk,
                    &format!("subformat={sf},adapter_type={adapter},hwversion=13"),
                )
                .unwrap_or_else(|e| panic!("{name}: {}", e.chain()));
                check(&dst, sf);
                assert!(
                    util::qemu_compare(&src, "raw", &dst, "vmdk"),
                    "{name}: qemu-img compare differs"
                );
                let info = util::qemu_info(&dst);
                assert_eq!(info["format"], "vmdk", "{name}");
                assert_eq!(info["virtual-size"].as_u64(), Some(size), "{name}");
                assert_eq!(
                    info["format-specific"]["data"]["create-type"], sf,
                    "{name}: {info}"
                );
                let d = descriptor(&dst, sf);
                assert_eq!(ddb(&d, "ddb.adapterType"), adapter, "{name}");
                assert_eq!(ddb(&d, "ddb.geometry.heads"), heads, "{name}");
                assert_eq!(ddb(&d, "ddb.geometry.sectors"), "63", "{name}");
                assert_eq!(ddb(&d, "ddb.virtualHWVersion"), "13", "{name}");
                assert_eq!(ddb(&d, "parentCID"), "ffffffff", "{name}");
                let sectors = size / 512;
                let h: u64 = heads.parse().unwrap();
                assert_eq!(
                    ddb(&d, "ddb.geometry.cylinders"),
                    (sectors / (h * 63)).max(1).to_string(),
                    "{name}"
                );
                match sf {
                    "monolithicFlat" | "vmfs" => {
                        let flat = dir.path().join(format!("{name}-flat.vmdk"));
                        assert_eq!(std::fs::metadata(&flat).unwrap().len(), size, "{name}");
                        let line = if sf == "vmfs" {
                            format!("RW {sectors} VMFS \"{name}-flat.vmdk\"")
                        } else {
                            format!("RW {sectors} FLAT \"{name}-flat.vmdk\" 0")
                        };
                        assert!(d.contains(&line), "{name}: {d}");
                        assert_eq!(
                            info["format-specific"]["data"]["extents"][0]["filename"]
                                .as_str()
                                .map(|f| f.ends_with(&format!("{name}-flat.vmdk"))),
                            Some(true),
                            "{name}: {info}"
                        );
                    }
                    _ => {
                        assert!(
                            d.contains(&format!("RW {sectors} SPARSE \"{name}.vmdk\"")),
                            "{name}: {d}"
                        );
                        assert_eq!(
                            info["format-specific"]["data"]["extents"][0]["compressed"]
                                .as_bool()
                                .unwrap_or(false),
                            sf == "streamOptimized",
                            "{name}: {info}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn vmdk_write_sparse_by_cli_round_trips_through_qemu_convert() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let src = dir.path().join("src.raw");
    // Spans several grain tables (32 MiB each), with a tail of 3 sectors.
    util::make_raw(&src, (70 << 20) + 1536, 5);
    // No -o: streamOptimized is the default.
    for (sf, opts) in [
        ("streamOptimized", None),
        ("monolithicSparse", Some("subformat=monolithicSparse")),
    ] {
        let dst = dir.path().join(format!("{sf}.vmdk"));
        let mut cmd = util::diskconv();
        cmd.args(["convert", "-f", "raw", "-O", "vmdk"]);
        if let Some(o) = opts {
            cmd.args(["-o", o]);
        }
        let out = cmd.arg(&src).arg(&dst).output().unwrap();
        assert!(
            out.status.success(),
            "{sf}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        util::assert_qemu_check(&dst);
        let back = dir.path().join(format!("{sf}.raw"));
        util::qemu_img(&[
            "convert",
            "-f",
            "vmdk",
            "-O",
            "raw",
            dst.to_str().unwrap(),
            back.to_str().unwrap(),
        ]);
        assert_eq!(util::sha256_file(&back), util::sha256_file(&src), "{sf}");
        let d = descriptor(&dst, sf);
        assert_eq!(ddb(&d, "createType"), sf);
        assert_eq!(ddb(&d, "ddb.adapterType"), "lsilogic");
        assert_eq!(ddb(&d, "ddb.virtualHWVersion"), "14");
        // Zero grains are not stored: the file is smaller than the disk.
        assert!(std::fs::metadata(&dst).unwrap().len() < (70 << 20), "{sf}");
    }
}

#[test]
fn vmdk_write_failure_leaves_no_files() {
    let dir = util::tmpdir();
    let src = dir.path().join("huge.raw");
    // 3 TiB: too large for a sparse extent (32-bit grain offsets); a sparse file costs nothing.
    std::fs::File::create(&src)
        .unwrap()
        .set_len(3 << 40)
        .unwrap();
    for (fmt, opts) in [
        (Format::Vmdk, ""),
        (Format::Vmdk, "subformat=monolithicSparse"),
        (Format::Ova, ""),
    ] {
        let dst = dir.path().join("out.x");
        let e = convert(&src, &dst, fmt, opts).unwrap_err();
        assert_eq!(e.kind(), diskconv::ErrorKind::Unsupported, "{}", e.chain());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["huge.raw".to_string()], "{fmt} {opts}");
    }
}

/// Runs python3 on `script` with `args`; returns stdout.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const OVF_SUMMARY: &str = r#"
import sys, xml.etree.ElementTree as ET
ovf = "{http://schemas.dmtf.org/ovf/envelope/1}"
rasd = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"
vssd = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData}"
vmw = "{http://www.vmware.com/schema/ovf}"
root = ET.parse(sys.argv[1]).getroot()
print("root", root.tag)
f = root.find(ovf + "References/" + ovf + "File")
print("href", f.get(ovf + "href"))
print("size", f.get(ovf + "size"))
d = root.find(ovf + "DiskSection/" + ovf + "Disk")
print("capacity", d.get(ovf + "capacity"), d.get(ovf + "capacityAllocationUnits"))
print("fileRef", d.get(ovf + "fileRef") == f.get(ovf + "id"))
print("format", d.get(ovf + "format"))
print("populated", d.get(ovf + "populatedSize"))
vs = root.find(ovf + "VirtualSystem")
print("name", vs.find(ovf + "Name").text)
print("os", vs.find(ovf + "OperatingSystemSection").get(vmw + "osType"))
hw = vs.find(ovf + "VirtualHardwareSection")
print("vsys", hw.find(ovf + "System/" + vssd + "VirtualSystemType").text)
items = {}
for it in hw.findall(ovf + "Item"):
    items[it.find(rasd + "InstanceID").text] = it
for iid, it in sorted(items.items()):
    rt = it.find(rasd + "ResourceType").text
    q = it.find(rasd + "VirtualQuantity")
    sub = it.find(rasd + "ResourceSubType")
    par = it.find(rasd + "Parent")
    host = it.find(rasd + "HostResource")
    print("item", rt, q.text if q is not None else "-", sub.text if sub is not None else "-",
          items[par.text].find(rasd + "ResourceType").text if par is not None else "-",
          host.text if host is not None else "-")
for c in hw.findall(vmw + "Config"):
    print("config", c.get(vmw + "key"), c.get(vmw + "value"))
"#;

#[test]
fn vmdk_write_ova_package_is_valid() {
    if !util::require("qemu-img")
        || !util::require("tar")
        || !util::require("python3")
        || !util::require("sha256sum")
    {
        return;
    }
    let dir = util::tmpdir();
    let size = (5 << 20) + 9 * 512;
    let src = dir.path().join("src.raw");
    util::make_raw(&src, size, 99);
    for (adapter, controller) in [
        ("lsilogic", "6 - lsilogic"),
        ("ide", "5 - -"),
        ("buslogic", "6 - buslogic"),
    ] {
        let ova = dir.path().join(format!("{adapter}.ova"));
        convert(
            &src,
            &ova,
            Format::Ova,
            &format!(
                "name=My-VM_1.x,cpus=3,memory=2048,os_type=ubuntu64Guest,firmware=efi,\
                 adapter_type={adapter},hwversion=15"
            ),
        )
        .unwrap_or_else(|e| panic!("{adapter}: {}", e.chain()));
        let base = "My-VM_1.x";
        let bytes = std::fs::read(&ova).unwrap();
        assert_eq!(&bytes[257..263], b"ustar\0", "USTAR magic");
        assert_eq!(&bytes[263..265], b"00", "USTAR version");
        let list = util::run(Command::new("tar").arg("-tf").arg(&ova));
        let members: Vec<String> = String::from_utf8_lossy(&list.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            members,
            [
                format!("{base}.ovf"),
                format!("{base}.mf"),
                format!("{base}-disk1.vmdk")
            ]
        );
        let x = dir.path().join(format!("x-{adapter}"));
        std::fs::create_dir(&x).unwrap();
        util::run(Command::new("tar").arg("-xf").arg(&ova).arg("-C").arg(&x));
        // Manifest: SHA256(name)= hex, checked with sha256sum.
        let mf = std::fs::read_to_string(x.join(format!("{base}.mf"))).unwrap();
        let mut checked = 0;
        for line in mf.lines() {
            let (name, hex) = line
                .strip_prefix("SHA256(")
                .and_then(|l| l.split_once(")= "))
                .unwrap_or_else(|| panic!("manifest line {line:?}"));
            let out = util::run(Command::new("sha256sum").arg(x.join(name)));
            let sum = String::from_utf8_lossy(&out.stdout);
            assert_eq!(sum.split_whitespace().next(), Some(hex), "{name}");
            checked += 1;
        }
        assert_eq!(checked, 2);
        let disk = x.join(format!("{base}-disk1.vmdk"));
        util::assert_qemu_check(&disk);
        assert!(util::qemu_compare(&src, "raw", &disk, "vmdk"), "{adapter}");
        let d = descriptor(&disk, "streamOptimized");
        assert_eq!(ddb(&d, "ddb.adapterType"), adapter);
        assert!(d.contains(&format!("SPARSE \"{base}-disk1.vmdk\"")), "{d}");

        let summary = python(
            OVF_SUMMARY,
            &[x.join(format!("{base}.ovf")).to_str().unwrap()],
        );
        let disk_len = std::fs::metadata(&disk).unwrap().len();
        let want = [
            "root {http://schemas.dmtf.org/ovf/envelope/1}Envelope".to_string(),
            format!("href {base}-disk1.vmdk"),
            format!("size {disk_len}"),
            format!("capacity {size} byte"),
            "fileRef True".into(),
            "format http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
                .into(),
        ];
        for w in &want {
            assert!(
                summary.lines().any(|l| l == w),
                "missing {w:?} in\n{summary}"
            );
        }
        let populated: u64 = summary
            .lines()
            .find_map(|l| l.strip_prefix("populated "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(populated > 0 && populated <= size, "{summary}");
        for w in [
            "name My-VM_1.x",
            "os ubuntu64Guest",
            "vsys vmx-15",
            "item 3 3 - - -",
            "item 4 2048 - - -",
            &format!("item {controller}"),
            "config firmware efi",
        ] {
            assert!(
                summary.lines().any(|l| l.starts_with(w)),
                "missing {w:?} in\n{summary}"
            );
        }
        let disk_item = format!("item 17 - - {} ovf:/disk/vmdisk1", &controller[..1]);
        assert!(
            summary.lines().any(|l| l == disk_item),
            "{disk_item} in\n{summary}"
        );
    }
    // No scratch file is left beside the packages.
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let n = e.unwrap().file_name().into_string().unwrap();
        assert!(!n.contains("scratch") && !n.contains(".tmp"), "{n}");
    }
}
