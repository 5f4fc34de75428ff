//! OVA packages as people receive them: manifests (checked against `sha1sum` / `sha256sum`),
//! OVF descriptors in VMware's and VirtualBox's styles, disk capacities, several disks.
//! The packages are made with GNU tar from disks qemu-img made; outputs are checked with
//! `qemu-img compare` against the disk images they came from.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diskconv::{ErrorKind, Format, OpenOptions, open, open_disks};

use crate::contract::check_reader;
use crate::util::{
    corpus, diskconv, make_raw, qemu_compare, qemu_img, require, run, sha256_file, tmpdir,
};

const STREAM: &str = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

fn tools() -> bool {
    require("qemu-img") && require("tar") && require("sha1sum") && require("sha256sum")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `tool FILE` (sha1sum, sha256sum): the hex digest.
fn digest(tool: &str, p: &Path) -> String {
    let out = run(Command::new(tool).arg(p));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A streamOptimized VMDK made by qemu-img from a raw image of `size` bytes.
fn stream_disk(dir: &Path, name: &str, size: u64, seed: u64) -> (PathBuf, PathBuf) {
    let raw = dir.join(format!("{name}.raw"));
    make_raw(&raw, size, seed);
    let vmdk = dir.join(name);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        s(&raw),
        s(&vmdk),
    ]);
    (raw, vmdk)
}

struct Disk<'a> {
    href: &'a str,
    file_size: u64,
    capacity: &'a str,
    units: &'a str,
}

/// An OVF 1.0 envelope as VMware's ovftool exports it: SCSI (lsilogic), VmxNet3, EFI.
fn vmware_ovf(disks: &[Disk<'_>]) -> String {
    let mut files = String::new();
    let mut section = String::new();
    let mut items = String::new();
    for (i, d) in disks.iter().enumerate() {
        let n = i + 1;
        files += &format!(
            "    <File ovf:href=\"{}\" ovf:id=\"file{n}\" ovf:size=\"{}\"/>\n",
            d.href, d.file_size
        );
        section += &format!(
            "    <Disk ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"{}\" ovf:diskId=\"vmdisk{n}\" ovf:fileRef=\"file{n}\" ovf:format=\"{STREAM}\"/>\n",
            d.capacity, d.units
        );
        items += &format!(
            "      <Item>\n        <rasd:AddressOnParent>{i}</rasd:AddressOnParent>\n        <rasd:ElementName>Hard disk {n}</rasd:ElementName>\n        <rasd:HostResource>ovf:/disk/vmdisk{n}</rasd:HostResource>\n        <rasd:InstanceID>{}</rasd:InstanceID>\n        <rasd:Parent>3</rasd:Parent>\n        <rasd:ResourceType>17</rasd:ResourceType>\n      </Item>\n",
            10 + n
        );
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-8169922" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
{files}  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{section}  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="web01">
    <Info>A virtual machine</Info>
    <Name>web01</Name>
    <OperatingSystemSection ovf:id="94" vmw:osType="ubuntu64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Ubuntu Linux (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>web01</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>4 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>4</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>8192MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>8192</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
{items}      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>20</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// An OVF 2.0 envelope as VirtualBox exports it: SATA (AHCI), StorageItem, EthernetPortItem,
/// the machine's configuration with `<Firmware type="EFI"/>`.
fn vbox_ovf(href: &str, capacity: u64) -> String {
    format!(
        r#"<?xml version="1.0"?>
<Envelope ovf:version="2.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine" xmlns:epasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData.xsd" xmlns:sasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData.xsd">
  <References>
    <File ovf:id="file1" ovf:href="{href}"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{STREAM}" vbox:uuid="4a1c3a4e-8a5b-4c7e-9f59-4c9a2b6c1d01"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT"><Description>Logical network used by this appliance.</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="db02">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="96">
      <Info>The kind of installed guest operating system</Info>
      <Description>Debian_64</Description>
      <vbox:OSType ovf:required="false">Debian_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>db02</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>2 virtual CPU</rasd:Caption>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:Caption>2048 MB of memory</rasd:Caption>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>sataController0</rasd:Caption>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <StorageItem>
        <sasd:AddressOnParent>0</sasd:AddressOnParent>
        <sasd:Caption>disk1</sasd:Caption>
        <sasd:HostResource>/disk/vmdisk1</sasd:HostResource>
        <sasd:InstanceID>8</sasd:InstanceID>
        <sasd:Parent>5</sasd:Parent>
        <sasd:ResourceType>17</sasd:ResourceType>
      </StorageItem>
      <EthernetPortItem>
        <epasd:AutomaticAllocation>true</epasd:AutomaticAllocation>
        <epasd:Caption>Ethernet adapter on 'NAT'</epasd:Caption>
        <epasd:Connection>NAT</epasd:Connection>
        <epasd:InstanceID>9</epasd:InstanceID>
        <epasd:ResourceSubType>virtio</epasd:ResourceSubType>
        <epasd:ResourceType>10</epasd:ResourceType>
      </EthernetPortItem>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.19-linux" uuid="{{9b3c1f0e-1111-4c2d-8e3f-0a1b2c3d4e5f}}" name="db02" OSType="Debian_64" snapshotFolder="Snapshots">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware>
        <CPU count="2"/>
        <Memory RAMSize="2048"/>
        <Firmware type="EFI"/>
      </Hardware>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// A manifest of `files` (in `dir`) with digests from `sha1sum`/`sha256sum`, in ovftool's
/// spelling (`SHA256(name)= hex`) or VirtualBox's (`SHA1 (name) = hex`).
fn write_manifest(dir: &Path, mf: &str, alg: &str, vbox: bool, files: &[&str]) {
    let tool = match alg {
        "SHA1" => "sha1sum",
        _ => "sha256sum",
    };
    let mut text = String::new();
    for f in files {
        let d = digest(tool, &dir.join(f));
        text += &if vbox {
            format!("{alg} ({f}) = {d}\n")
        } else {
            format!("{alg}({f})= {d}\n")
        };
    }
    std::fs::write(dir.join(mf), text).unwrap();
}

/// `tar --format=ustar -cf OVA -C DIR MEMBERS...` (GNU tar).
fn make_ova(dir: &Path, ova: &Path, members: &[&str]) {
    run(Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(ova)
        .arg("-C")
        .arg(dir)
        .args(members));
}

/// Offset and size of member `name` in the tar bytes (walking the 512-byte headers).
fn member(tar: &[u8], name: &str) -> (usize, usize) {
    let mut off = 0;
    while off + 512 <= tar.len() && tar[off] != 0 {
        let h = &tar[off..off + 512];
        let end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let n = std::str::from_utf8(&h[..end]).unwrap();
        let size_text = std::str::from_utf8(&h[124..136]).unwrap();
        let size =
            usize::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .unwrap();
        if n == name {
            return (off + 512, size);
        }
        off += 512 + size.div_ceil(512) * 512;
    }
    panic!("no member {name}");
}

fn dc(args: &[&str]) -> Output {
    diskconv().args(args).output().unwrap()
}

fn ok(o: &Output) -> (String, String) {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "failed ({}): {out} {err}", o.status);
    (out, err)
}

fn fails(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "expected exit 1: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

/// Files of `dir` whose name contains `part` (outputs and leftover temporary files).
fn files_with(dir: &Path, part: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(part))
        .collect()
}

/// Two disks (3 MiB and 5 MiB, streamOptimized by qemu-img), a VMware-style OVF and a SHA256
/// manifest of all three: (folder, ova, raw of disk 1, raw of disk 2).
struct TwoDisks {
    dir: tempfile::TempDir,
    ova: PathBuf,
    raw1: PathBuf,
    raw2: PathBuf,
}

fn two_disks(capacity2: u64) -> TwoDisks {
    let dir = tmpdir();
    let d = dir.path();
    let (raw1, v1) = stream_disk(d, "web01-disk1.vmdk", 3 << 20, 11);
    let (raw2, v2) = stream_disk(d, "web01-disk2.vmdk", 5 << 20, 22);
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    let cap1 = format!("{}", 3);
    let cap2 = format!("{}", capacity2 >> 20);
    let ovf = vmware_ovf(&[
        Disk {
            href: "web01-disk1.vmdk",
            file_size: len(&v1),
            capacity: &cap1,
            units: "byte * 2^20",
        },
        Disk {
            href: "web01-disk2.vmdk",
            file_size: len(&v2),
            capacity: &cap2,
            units: "byte * 2^20",
        },
    ]);
    std::fs::write(d.join("web01.ovf"), ovf).unwrap();
    let members = ["web01.ovf", "web01-disk1.vmdk", "web01-disk2.vmdk"];
    write_manifest(d, "web01.mf", "SHA256", false, &members);
    let ova = d.join("web01.ova");
    make_ova(
        d,
        &ova,
        &[
            "web01.ovf",
            "web01.mf",
            "web01-disk1.vmdk",
            "web01-disk2.vmdk",
        ],
    );
    TwoDisks {
        dir,
        ova,
        raw1,
        raw2,
    }
}

#[test]
fn ova_two_disks_library() {
    if !tools() {
        return;
    }
    let t = two_disks(5 << 20);
    // Default: disk 1, with a warning that there are two; the OVF and disk 1 were checked.
    let img = open(&t.ova, &OpenOptions::default()).unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(img.format(), Format::Ova);
    check_reader(img.as_ref(), &std::fs::read(&t.raw1).unwrap());
    let info = img.info();
    assert!(
        info.warnings.iter().any(|w| w.contains("holds 2 disks")),
        "{:?}",
        info.warnings
    );
    let p = info.package.expect("package description");
    assert_eq!(p.name.as_deref(), Some("web01"));
    assert_eq!((p.cpus, p.memory_bytes), (Some(4), Some(8 << 30)));
    assert_eq!(p.os_type.as_deref(), Some("ubuntu64Guest"));
    assert_eq!(p.firmware.as_deref(), Some("efi"));
    assert_eq!(p.selected_disk, Some(1));
    assert_eq!(p.disks.len(), 2);
    assert_eq!(p.disks[1].capacity, Some(5 << 20));
    assert_eq!(
        p.disks[1].controller.as_deref(),
        Some("SCSI controller 0 (lsilogic), unit 1")
    );
    assert_eq!(p.nics[0].adapter.as_deref(), Some("VmxNet3"));
    assert_eq!(p.nics[0].network.as_deref(), Some("VM Network"));
    let m = p.manifest.expect("manifest");
    assert_eq!(m.verified, ["web01.ovf", "web01-disk1.vmdk"]);
    assert!(m.not_listed.is_empty() && m.missing.is_empty(), "{m:?}");

    // Disk 2 by number.
    let img = open(&t.ova, &OpenOptions::default().disk(2)).unwrap();
    check_reader(img.as_ref(), &std::fs::read(&t.raw2).unwrap());
    assert!(img.info().warnings.is_empty(), "{:?}", img.info().warnings);
    let e = open(&t.ova, &OpenOptions::default().disk(3))
        .err()
        .expect("no disk 3");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", e.chain());

    // Every disk at once: both verified before either is opened.
    let all = open_disks(&t.ova, &OpenOptions::default()).unwrap();
    assert_eq!(all.len(), 2);
    check_reader(all[0].as_ref(), &std::fs::read(&t.raw1).unwrap());
    check_reader(all[1].as_ref(), &std::fs::read(&t.raw2).unwrap());
    let m = all[1].info().package.unwrap().manifest.unwrap();
    assert_eq!(
        m.verified,
        ["web01.ovf", "web01-disk1.vmdk", "web01-disk2.vmdk"]
    );
    // A plain image is one disk.
    assert_eq!(
        open_disks(&t.raw1, &OpenOptions::default()).unwrap().len(),
        1
    );
}

#[test]
fn ova_two_disks_cli() {
    if !tools() {
        return;
    }
    let t = two_disks(5 << 20);
    let d = t.dir.path();
    let ova = s(&t.ova);

    // info lists both disks, the VM and the (unchecked) manifest.
    let (out, _) = ok(&dc(&["info", ova]));
    for want in [
        "file format: ova",
        "name: web01",
        "CPUs: 4",
        "memory: 8 GiB",
        "OS type: ubuntu64Guest (OVF id 94): Ubuntu Linux (64-bit)",
        "firmware: efi",
        "* 1: web01-disk1.vmdk",
        "  2: web01-disk2.vmdk",
        "capacity 5 MiB (5242880 bytes)",
        "virtual size 5 MiB (5242880 bytes), SCSI controller 0 (lsilogic), unit 1",
        "network VM Network, adapter VmxNet3",
        "manifest: web01.mf (SHA256, 3 entries), not verified",
        "warning: the OVA holds 2 disks",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
    let (out, _) = ok(&dc(&[
        "info",
        "--json",
        "--disk",
        "2",
        "--verify-manifest",
        ova,
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["format"], "ova");
    assert_eq!(v["virtual_size"], 5 << 20);
    assert_eq!(v["package"]["selected_disk"], 2);
    assert_eq!(v["package"]["disks"][0]["virtual_size"], 3 << 20);
    assert_eq!(v["package"]["disks"][1]["file"], "web01-disk2.vmdk");
    assert_eq!(v["package"]["nics"][0]["adapter"], "VmxNet3");
    assert_eq!(
        v["package"]["manifest"]["verified"],
        serde_json::json!(["web01.ovf", "web01-disk2.vmdk"])
    );
    assert!(v.get("warnings").is_none(), "{out}");

    // --disk 2 and -l 2 convert the second disk.
    let q = d.join("second.qcow2");
    ok(&dc(&["convert", "--disk", "2", "-O", "qcow2", ova, s(&q)]));
    assert!(qemu_compare(&t.raw2, "raw", &q, "qcow2"));
    let r = d.join("second.raw");
    ok(&dc(&["convert", "-l", "2", ova, s(&r)]));
    assert!(qemu_compare(&t.raw2, "raw", &r, "raw"));
    // Without a choice: disk 1, and a warning.
    let q1 = d.join("first.qcow2");
    let (_, err) = ok(&dc(&["convert", "-O", "qcow2", ova, s(&q1)]));
    assert!(
        err.contains("warning: the OVA holds 2 disks; reading disk 1"),
        "{err}"
    );
    assert!(qemu_compare(&t.raw1, "raw", &q1, "qcow2"));
    // map and compare take --disk too.
    let (out, _) = ok(&dc(&["map", "--json", "--disk", "2", ova]));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    let end = m.as_array().unwrap().last().unwrap();
    assert_eq!(
        end["start"].as_u64().unwrap() + end["length"].as_u64().unwrap(),
        5 << 20
    );
    let (out, _) = ok(&dc(&["compare", "--disk", "2", ova, s(&t.raw2)]));
    assert!(out.contains("identical"), "{out}");
    // A sync pass from disk 2.
    let synced = d.join("synced.raw");
    ok(&dc(&["sync", "--disk", "2", ova, s(&synced)]));
    assert!(qemu_compare(&t.raw2, "raw", &synced, "raw"));

    // Every disk in one run, named after DST.
    let (out, _) = ok(&dc(&[
        "convert",
        "--all-disks",
        "-O",
        "qcow2",
        ova,
        s(&d.join("all.qcow2")),
    ]));
    assert!(
        out.contains("disk 2: web01-disk2.vmdk (5 MiB) -> "),
        "{out}"
    );
    assert!(qemu_compare(
        &t.raw1,
        "raw",
        &d.join("all-disk1.qcow2"),
        "qcow2"
    ));
    assert!(qemu_compare(
        &t.raw2,
        "raw",
        &d.join("all-disk2.qcow2"),
        "qcow2"
    ));

    // Wrong choices: clear errors.
    let e = fails(&dc(&["convert", "--disk", "3", ova, s(&d.join("x.raw"))]));
    assert!(e.contains("there is no disk 3"), "{e}");
    let e = fails(&dc(&["convert", "-l", "snap1", ova, s(&d.join("x.raw"))]));
    assert!(e.contains("-l 'snap1'") && e.contains("disk number"), "{e}");
    let e = fails(&dc(&[
        "convert",
        "-l",
        "1",
        "--disk",
        "2",
        ova,
        s(&d.join("x.raw")),
    ]));
    assert!(e.contains("name different disks"), "{e}");
    let e = fails(&dc(&[
        "convert",
        "--all-disks",
        "-O",
        "ova",
        ova,
        s(&d.join("x.ova")),
    ]));
    assert!(e.contains("one OVA per disk"), "{e}");
    let e = fails(&dc(&[
        "convert",
        "--all-disks",
        s(&t.raw1),
        s(&d.join("x.raw")),
    ]));
    assert!(e.contains("holds one disk"), "{e}");
    assert!(files_with(d, "x.").is_empty(), "{:?}", files_with(d, "x."));
}

/// `--all-disks` is all or nothing: a bad second disk leaves no first disk behind.
#[test]
fn ova_all_disks_is_all_or_nothing() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let (_, v1) = stream_disk(d, "a-disk1.vmdk", 2 << 20, 5);
    std::fs::write(d.join("a-disk2.vmdk"), vec![0x5au8; 4096]).unwrap();
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    let ovf = vmware_ovf(&[
        Disk {
            href: "a-disk1.vmdk",
            file_size: len(&v1),
            capacity: "2",
            units: "byte * 2^20",
        },
        Disk {
            href: "a-disk2.vmdk",
            file_size: 4096,
            capacity: "4096",
            units: "byte",
        },
    ]);
    std::fs::write(d.join("a.ovf"), ovf).unwrap();
    let ova = d.join("a.ova");
    make_ova(d, &ova, &["a.ovf", "a-disk1.vmdk", "a-disk2.vmdk"]);
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    let e = fails(&dc(&[
        "convert",
        "--all-disks",
        "-O",
        "qcow2",
        s(&ova),
        s(&out.join("vm.qcow2")),
    ]));
    assert!(e.contains("a-disk2.vmdk"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// VirtualBox's style: OVF 2.0, SATA, virtio, EFI in the machine section, a SHA1 manifest with
/// spaces (`SHA1 (name) = hex`).
#[test]
fn ova_virtualbox_style() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let (raw, _) = stream_disk(d, "db02-disk001.vmdk", 4 << 20, 7);
    std::fs::write(d.join("db02.ovf"), vbox_ovf("db02-disk001.vmdk", 4 << 20)).unwrap();
    write_manifest(
        d,
        "db02.mf",
        "SHA1",
        true,
        &["db02.ovf", "db02-disk001.vmdk"],
    );
    let ova = d.join("db02.ova");
    make_ova(d, &ova, &["db02.ovf", "db02.mf", "db02-disk001.vmdk"]);

    let img = open(&ova, &OpenOptions::default()).unwrap_or_else(|e| panic!("{}", e.chain()));
    check_reader(img.as_ref(), &std::fs::read(&raw).unwrap());
    let info = img.info();
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
    let p = info.package.unwrap();
    assert_eq!(p.descriptor_version.as_deref(), Some("2.x"));
    assert_eq!(p.name.as_deref(), Some("db02"));
    assert_eq!((p.cpus, p.memory_bytes), (Some(2), Some(2 << 30)));
    assert_eq!(p.os_type.as_deref(), Some("Debian_64"));
    assert_eq!(p.firmware.as_deref(), Some("efi"));
    assert_eq!(
        p.disks[0].controller.as_deref(),
        Some("SATA controller 0 (AHCI), unit 0")
    );
    assert_eq!(p.nics[0].adapter.as_deref(), Some("virtio"));
    let m = p.manifest.unwrap();
    assert_eq!(m.algorithms, ["SHA1"]);
    assert_eq!(m.verified, ["db02.ovf", "db02-disk001.vmdk"]);

    let vmdk = d.join("out.vmdk");
    ok(&dc(&["convert", "-O", "vmdk", s(&ova), s(&vmdk)]));
    assert!(qemu_compare(&raw, "raw", &vmdk, "vmdk"));
}

/// A flipped byte in a disk or in the OVF: an error naming the member and both digests, the
/// source untouched, no output; `--no-verify-manifest` reads it anyway, with a warning.
#[test]
fn ova_tampered_manifest() {
    if !tools() {
        return;
    }
    let t = two_disks(5 << 20);
    let d = t.dir.path();
    let good = std::fs::read(&t.ova).unwrap();

    // Disk 2: a byte in the unused tail of its sparse header (offset 400), so the disk still
    // reads the same and only the manifest can tell.
    let mut bad = good.clone();
    let (off, _) = member(&bad, "web01-disk2.vmdk");
    bad[off + 400] ^= 0x20;
    let ova = d.join("bad-disk.ova");
    std::fs::write(&ova, &bad).unwrap();
    let before = sha256_file(&ova);
    let tampered = d.join("tampered-disk2.vmdk");
    std::fs::write(
        &tampered,
        &bad[off..off + member(&bad, "web01-disk2.vmdk").1],
    )
    .unwrap();
    let want = digest("sha256sum", &d.join("web01-disk2.vmdk"));
    let found = digest("sha256sum", &tampered);

    let out = d.join("out.qcow2");
    let e = fails(&dc(&[
        "convert",
        "--disk",
        "2",
        "-O",
        "qcow2",
        s(&ova),
        s(&out),
    ]));
    assert!(
        e.contains("'web01-disk2.vmdk'") && e.contains("web01.mf"),
        "{e}"
    );
    assert!(e.contains(&want) && e.contains(&found), "{e}");
    assert_eq!(sha256_file(&ova), before, "the source changed");
    assert!(
        files_with(d, "out.qcow2").is_empty(),
        "{:?}",
        files_with(d, "out")
    );
    // Library: the same error kind.
    let err = open(&ova, &OpenOptions::default().disk(2)).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{}", err.chain());
    // Disk 1 is untouched: it converts (only what is used is checked).
    ok(&dc(&[
        "convert",
        "--disk",
        "1",
        s(&ova),
        s(&d.join("one.raw")),
    ]));
    // The override reads disk 2, warning that nothing was checked.
    let (_, err) = ok(&dc(&[
        "convert",
        "--disk",
        "2",
        "--no-verify-manifest",
        "-O",
        "qcow2",
        s(&ova),
        s(&out),
    ]));
    assert!(
        err.contains("was not checked (--no-verify-manifest)"),
        "{err}"
    );
    assert!(qemu_compare(&t.raw2, "raw", &out, "qcow2"));
    assert_eq!(sha256_file(&ova), before);

    // The OVF: one letter of its <Info> text.
    let mut bad = good.clone();
    let (off, size) = member(&bad, "web01.ovf");
    let text = String::from_utf8_lossy(&bad[off..off + size]).into_owned();
    let at = text.find("A virtual machine").unwrap() + 2;
    bad[off + at] = b'V';
    let ova = d.join("bad-ovf.ova");
    std::fs::write(&ova, &bad).unwrap();
    let e = fails(&dc(&["convert", s(&ova), s(&d.join("o.raw"))]));
    assert!(
        e.contains("'web01.ovf'") && e.contains("SHA256 recorded"),
        "{e}"
    );
    assert!(files_with(d, "o.raw").is_empty());
    let e = fails(&dc(&["info", "--verify-manifest", s(&ova)]));
    assert!(e.contains("'web01.ovf'"), "{e}");
    // info does not check by default, and says so.
    let (out, _) = ok(&dc(&["info", s(&ova)]));
    assert!(
        out.contains("not verified (--verify-manifest checks it)"),
        "{out}"
    );
    ok(&dc(&[
        "convert",
        "--no-verify-manifest",
        s(&ova),
        s(&d.join("o.raw")),
    ]));
    assert!(qemu_compare(&t.raw1, "raw", &d.join("o.raw"), "raw"));
}

/// A disk whose size differs from the OVF's capacity: a warning in info, an error in convert
/// unless --allow-capacity-mismatch.
#[test]
fn ova_capacity_mismatch() {
    if !tools() {
        return;
    }
    // The OVF says disk 2 has 6 MiB; it has 5.
    let t = two_disks(6 << 20);
    let d = t.dir.path();
    let ova = s(&t.ova);
    let (out, _) = ok(&dc(&["info", ova]));
    assert!(
        out.contains(
            "warning: OVA disk 2 ('web01-disk2.vmdk'): the OVF declares a capacity of 6291456 \
             bytes (6 x byte * 2^20) but the disk holds 5242880 bytes"
        ),
        "{out}"
    );
    let (out, _) = ok(&dc(&["info", "--json", ova]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("declares a capacity of 6291456")),
        "{out}"
    );
    // Disk 1 matches: converting it is fine.
    ok(&dc(&["convert", "--disk", "1", ova, s(&d.join("one.raw"))]));
    let out2 = d.join("two.raw");
    let e = fails(&dc(&["convert", "--disk", "2", ova, s(&out2)]));
    assert!(e.contains("declares a capacity of 6291456"), "{e}");
    assert!(e.contains("--allow-capacity-mismatch"), "{e}");
    assert!(files_with(d, "two.raw").is_empty());
    // --all-disks fails whole.
    let e = fails(&dc(&["convert", "--all-disks", ova, s(&d.join("all.raw"))]));
    assert!(e.contains("OVA disk 2"), "{e}");
    assert!(files_with(d, "all-disk").is_empty());
    let (_, err) = ok(&dc(&[
        "convert",
        "--disk",
        "2",
        "--allow-capacity-mismatch",
        ova,
        s(&out2),
    ]));
    assert!(err.contains("warning: OVA disk 2"), "{err}");
    assert!(qemu_compare(&t.raw2, "raw", &out2, "raw"));
    // Library.
    let e = open(&t.ova, &OpenOptions::default().disk(2)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(
        open(
            &t.ova,
            &OpenOptions::default().disk(2).allow_capacity_mismatch(true)
        )
        .is_ok()
    );
}

/// The corpus' VMware export whose 50 GiB disk was swapped for a 10 KiB stub: its SHA1
/// manifest (which does not list the OVF) verifies the stub, the capacity does not match.
#[test]
fn ova_corpus_vmware_export() {
    let Some(p) = corpus("images/cdi_fake_vmware_ovf.ova") else {
        return;
    };
    if !tools() {
        return;
    }
    let ova = s(&p);
    let (out, _) = ok(&dc(&["info", "--json", "--verify-manifest", ova]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pk = &v["package"];
    assert_eq!(pk["name"], "2K8R2EESP1_2_Medium");
    assert_eq!(pk["cpus"], 1);
    assert_eq!(pk["memory_bytes"], 1u64 << 30);
    assert_eq!(pk["os_type"], "windows7Server64Guest");
    assert_eq!(pk["firmware"], "efi");
    assert_eq!(pk["disks"][0]["capacity"], 50u64 << 30);
    assert_eq!(pk["disks"][0]["virtual_size"], 10240);
    assert_eq!(pk["nics"][0]["network"], "PG-VLAN60");
    assert_eq!(pk["nics"][0]["adapter"], "E1000");
    assert_eq!(pk["manifest"]["algorithms"], serde_json::json!(["SHA1"]));
    assert_eq!(
        pk["manifest"]["verified"],
        serde_json::json!(["disk1.vmdk"])
    );
    assert_eq!(
        pk["manifest"]["not_listed"],
        serde_json::json!(["fake.ovf"])
    );
    let warnings = v["warnings"].to_string();
    for want in [
        "does not list the OVF descriptor 'fake.ovf'",
        "declares a capacity of 53687091200",
        "a size of 7804077568 bytes but its member holds 65536 bytes",
    ] {
        assert!(warnings.contains(want), "{want}: {warnings}");
    }
    let dir = tmpdir();
    let out = dir.path().join("o.raw");
    let e = fails(&dc(&["convert", ova, s(&out)]));
    assert!(e.contains("declares a capacity"), "{e}");
    ok(&dc(&["convert", "--allow-capacity-mismatch", ova, s(&out)]));
    // The oracle: qemu-img's conversion of the extracted disk.
    run(Command::new("tar")
        .arg("-xf")
        .arg(&p)
        .arg("-C")
        .arg(dir.path()));
    assert!(qemu_compare(
        &dir.path().join("disk1.vmdk"),
        "vmdk",
        &out,
        "raw"
    ));
}

/// What our own OVA writer makes verifies: manifest, capacity, description.
#[test]
fn ova_written_by_us_verifies() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let raw = d.join("src.raw");
    make_raw(&raw, (3 << 20) + 4096, 3);
    let ova = d.join("vm.ova");
    ok(&dc(&[
        "convert",
        "-O",
        "ova",
        "-o",
        "name=app01,cpus=2,memory=2G,firmware=efi,os_type=ubuntu64Guest",
        s(&raw),
        s(&ova),
    ]));
    let (out, _) = ok(&dc(&["info", "--json", "--verify-manifest", s(&ova)]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.get("warnings").is_none(), "{out}");
    let pk = &v["package"];
    assert_eq!(pk["name"], "app01");
    assert_eq!(pk["memory_bytes"], 2u64 << 30);
    assert_eq!(pk["firmware"], "efi");
    assert_eq!(
        pk["manifest"]["verified"],
        serde_json::json!(["app01.ovf", "app01-disk1.vmdk"])
    );
    assert_eq!(pk["disks"][0]["virtual_size"], (3 << 20) + 4096);
    let back = d.join("back.raw");
    ok(&dc(&["convert", s(&ova), s(&back)]));
    assert!(qemu_compare(&raw, "raw", &back, "raw"));
}

/// Malformed and hostile packages through the command: one clear line, exit 1, no panic.
#[test]
fn ova_hostile_packages() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let d = dir.path();
    let (_, v) = stream_disk(d, "h-disk1.vmdk", 1 << 20, 9);
    let size = std::fs::metadata(&v).unwrap().len();
    let good_ovf = vmware_ovf(&[Disk {
        href: "h-disk1.vmdk",
        file_size: size,
        capacity: "1",
        units: "byte * 2^20",
    }]);
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        (
            "bomb",
            format!(
                "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">]>\n{}",
                good_ovf
                    .replace("<Name>web01</Name>", "<Name>&c;</Name>")
                    .trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
            ),
            None,
            "document type declaration",
        ),
        (
            "deep",
            good_ovf.replace(
                "<Name>web01</Name>",
                &format!("{}{}", "<x>".repeat(5000), "</x>".repeat(5000)),
            ),
            None,
            "nested more than 256 deep",
        ),
        (
            "broken",
            good_ovf.replace("</DiskSection>", ""),
            None,
            "not well-formed XML",
        ),
        (
            "badmf",
            good_ovf.clone(),
            Some("SHA256(h.ovf)= 00\n"),
            "h.mf line 1",
        ),
        (
            "absent",
            good_ovf.clone(),
            Some(
                "SHA256(h-disk2.vmdk)= 0000000000000000000000000000000000000000000000000000000000000000\n",
            ),
            "lists 'h-disk2.vmdk', which the OVA does not contain",
        ),
        (
            "blank",
            good_ovf.replace(" ovf:fileRef=\"file1\"", ""),
            None,
            "blank disk",
        ),
        (
            "gzip",
            good_ovf.replace(
                "ovf:id=\"file1\"",
                "ovf:id=\"file1\" ovf:compression=\"gzip\"",
            ),
            None,
            "compression 'gzip'",
        ),
    ];
    for (name, ovf, mf, want) in cases {
        std::fs::write(d.join("h.ovf"), ovf).unwrap();
        let mut members = vec!["h.ovf"];
        if let Some(mf) = mf {
            std::fs::write(d.join("h.mf"), mf).unwrap();
            members.push("h.mf");
        }
        members.push("h-disk1.vmdk");
        let ova = d.join(format!("{name}.ova"));
        make_ova(d, &ova, &members);
        let out = d.join(format!("{name}.raw"));
        let e = fails(&dc(&["convert", s(&ova), s(&out)]));
        assert!(e.contains(want), "{name}: {e}");
        assert!(!out.exists());
    }
}
