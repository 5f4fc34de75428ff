//! Reading VMDK and OVA: qemu-img makes the inputs, the corpus supplies real-world files.

use std::path::Path;

use diskconv::{ErrorKind, OpenOptions, ReferencePolicy, open};

use crate::contract::check_reader;
use crate::util::{corpus, qemu_img, qemu_io, require, sha256_image, tmpdir};

const SIZE: u64 = 5 << 20;

fn raw_source(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let raw = dir.join("src.raw");
    crate::util::make_raw(&raw, SIZE + 3 * 512, 7);
    let bytes = std::fs::read(&raw).unwrap();
    (raw, bytes)
}

fn check_file(p: &Path, expected: &[u8]) {
    let img = open(p, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("opening {}: {}", p.display(), e.chain()));
    assert_eq!(img.format(), diskconv::Format::Vmdk);
    check_reader(img.as_ref(), expected);
}

#[test]
fn vmdk_read_qemu_subformats() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let (raw, bytes) = raw_source(dir.path());
    for sub in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
    ] {
        for adapter in ["ide", "lsilogic"] {
            let out = dir.path().join(format!("{sub}-{adapter}.vmdk"));
            qemu_img(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub},adapter_type={adapter}"),
                raw.to_str().unwrap(),
                out.to_str().unwrap(),
            ]);
            check_file(&out, &bytes);
            let img = open(&out, &OpenOptions::default()).unwrap();
            let info = img.info();
            assert_eq!(info.subformat.as_deref(), Some(sub));
            assert!(
                info.flags
                    .iter()
                    .any(|f| f == &format!("adapter={adapter}")),
                "{:?}",
                info.flags
            );
        }
    }
    for opts in [
        "subformat=monolithicSparse,zeroed_grain=on",
        "subformat=monolithicSparse,adapter_type=buslogic",
        "subformat=monolithicFlat,adapter_type=legacyESX",
    ] {
        let out = dir.path().join("extra.vmdk");
        let _ = std::fs::remove_file(&out);
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            opts,
            raw.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        check_file(&out, &bytes);
    }
}

#[test]
fn vmdk_read_zeroed_grains_and_snapshot_chain() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let (raw, _) = raw_source(dir.path());
    let base = dir.path().join("base.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicSparse,zeroed_grain=on",
        raw.to_str().unwrap(),
        base.to_str().unwrap(),
    ]);
    let top = dir.path().join("top.vmdk");
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        top.to_str().unwrap(),
    ]);
    let t = top.to_str().unwrap();
    qemu_io(&["-f", "vmdk", "-c", "write -P 0x11 65536 131072", t]);
    qemu_io(&["-f", "vmdk", "-c", "write -P 0x22 1000 3000", t]);
    qemu_io(&["-f", "vmdk", "-c", "write -z 1048576 65536", t]);
    let expect = dir.path().join("expect.raw");
    qemu_img(&["convert", "-O", "raw", t, expect.to_str().unwrap()]);
    let bytes = std::fs::read(&expect).unwrap();
    let img = open(&top, &OpenOptions::default()).unwrap_or_else(|e| panic!("{}", e.chain()));
    check_reader(img.as_ref(), &bytes);
    let info = img.info();
    assert_eq!(info.backing_file.as_deref(), Some("base.vmdk"));
    assert!(info.backing.is_some());
    // Something must come from the parent, at depth 1.
    let e = img.map(4 << 20, 4096).unwrap();
    assert_eq!(e.depth, 1, "{e:?}");
    let e = img.map(65536, 4096).unwrap();
    assert_eq!(e.depth, 0, "{e:?}");

    // A parent whose CID changed (the descriptor is embedded in the sparse file).
    let mut f = std::fs::read(&top).unwrap();
    let pos = find(&f, b"parentCID=").expect("parentCID in the embedded descriptor");
    // qemu writes the CID without leading zeros: replace exactly the digits that are there.
    let end = pos + 10 + f[pos + 10..].iter().position(|&c| c == b'\n').unwrap();
    let fake = &b"12345678"[..end - pos - 10];
    assert_ne!(&f[pos + 10..end], fake, "pick another fake CID");
    f[pos + 10..end].copy_from_slice(fake);
    let fake = std::str::from_utf8(fake).unwrap();
    let bad = dir.path().join("bad.vmdk");
    std::fs::write(&bad, &f).unwrap();
    let e = open(&bad, &OpenOptions::default())
        .err()
        .expect("must fail");
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    let msg = e.chain();
    assert!(msg.contains(fake) && msg.contains("base.vmdk"), "{msg}");

    // A parent loop: a descriptor whose parent is itself.
    let lp = dir.path().join("loop.vmdk");
    std::fs::write(
        &lp,
        "# Disk DescriptorFile\nversion=1\nCID=00000001\nparentCID=00000001\n\
         createType=\"monolithicFlat\"\nparentFileNameHint=\"loop.vmdk\"\n\
         RW 8 FLAT \"src.raw\" 0\n",
    )
    .unwrap();
    let e = open(&lp, &OpenOptions::default()).err().expect("must fail");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.chain());
    assert!(e.chain().contains("loops"), "{}", e.chain());
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

const VMDK_RS_SHA: &str = "a3bcf05f07a1c06a3380eeca8571f0efb2b85afafa1e21662b8cad436d1f7727";

#[test]
fn vmdk_read_corpus() {
    let cases = [
        (
            "images/vmdk-rs/monolithicSparse.vmdk",
            VMDK_RS_SHA,
            "monolithicSparse",
        ),
        (
            "images/vmdk-rs/monolithicFlat.vmdk",
            VMDK_RS_SHA,
            "monolithicFlat",
        ),
        (
            "images/vmdk-rs/twoGbMaxExtentSparse.vmdk",
            VMDK_RS_SHA,
            "twoGbMaxExtentSparse",
        ),
        (
            "images/vmdk-rs/twoGbMaxExtentFlat.vmdk",
            VMDK_RS_SHA,
            "twoGbMaxExtentFlat",
        ),
        (
            "images/vmdk-rs/streamOptimized.vmdk",
            VMDK_RS_SHA,
            "streamOptimized",
        ),
        (
            "images/vmdk-rs/streamOptimizedWithMarkers.vmdk",
            "92c0f8b4280377437056f57c51ef51a5f8aeb1462ac630ef0633febcbfc3db4e",
            "streamOptimized",
        ),
        (
            "images/vmdk-rs/vmfs_thick.vmdk",
            "8d43c795d24bce01b49f92744f934c1072210dcac170bb1c83a5aa56df46ab7d",
            "vmfs",
        ),
    ];
    let mut reference: Option<Vec<u8>> = None;
    for (rel, sha, sub) in cases {
        let Some(p) = corpus(rel) else { return };
        let img =
            open(&p, &OpenOptions::default()).unwrap_or_else(|e| panic!("{rel}: {}", e.chain()));
        assert_eq!(sha256_image(img.as_ref()), sha, "{rel}");
        assert_eq!(img.info().subformat.as_deref(), Some(sub), "{rel}");
        let mut all = vec![0u8; img.virtual_size() as usize];
        img.read_at(&mut all, 0).unwrap();
        check_reader(img.as_ref(), &all);
        if sha == VMDK_RS_SHA {
            // Cross-check against the flat extent, the bytes themselves.
            let flat = reference.get_or_insert_with(|| {
                std::fs::read(corpus("images/vmdk-rs/monolithicFlat-flat.vmdk").unwrap()).unwrap()
            });
            assert!(all == *flat, "{rel}");
        }
    }
    // The ESXi snapshot whose delta extent is absent: an error naming it.
    let Some(p) = corpus("images/vmdk-rs/vmfs_thick-000001.vmdk") else {
        return;
    };
    let e = open(&p, &OpenOptions::default()).err().expect("must fail");
    assert!(
        e.chain().contains("vmfs_thick-000001-delta.vmdk"),
        "{}",
        e.chain()
    );
}

#[test]
fn vmdk_read_ova_corpus() {
    let Some(p) = corpus("images/cdi_fake_vmware_ovf.ova") else {
        return;
    };
    if !require("qemu-img") || !require("tar") {
        return;
    }
    let dir = tmpdir();
    crate::util::run(
        std::process::Command::new("tar")
            .arg("-xf")
            .arg(&p)
            .arg("-C")
            .arg(dir.path()),
    );
    let disk = dir.path().join("disk1.vmdk");
    let expect = dir.path().join("disk1.raw");
    qemu_img(&[
        "convert",
        "-f",
        "vmdk",
        "-O",
        "raw",
        disk.to_str().unwrap(),
        expect.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&expect).unwrap();
    // Its OVF declares 50 GiB for a 10 KiB stub: an error unless allowed (tests/integration/ova.rs).
    let opts = OpenOptions::default().allow_capacity_mismatch(true);
    let img = open(&p, &opts).unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(img.format(), diskconv::Format::Ova);
    check_reader(img.as_ref(), &bytes);
}

#[test]
fn vmdk_read_ova_made_with_tar() {
    if !require("qemu-img") || !require("tar") {
        return;
    }
    let dir = tmpdir();
    let (raw, bytes) = raw_source(dir.path());
    let disk = dir.path().join("vm-disk1.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        raw.to_str().unwrap(),
        disk.to_str().unwrap(),
    ]);
    std::fs::write(
        dir.path().join("vm.ovf"),
        "<?xml version=\"1.0\"?>\n<Envelope xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\">\n\
         <References><File ovf:href=\"vm-disk1.vmdk\" ovf:id=\"file1\"/></References>\n\
         <DiskSection><Disk ovf:capacity=\"5244416\" ovf:diskId=\"vmdisk1\" ovf:fileRef=\"file1\"/></DiskSection>\n\
         </Envelope>\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("vm.mf"),
        format!(
            "SHA256(vm-disk1.vmdk)= {}\n",
            crate::util::sha256_file(&disk)
        ),
    )
    .unwrap();
    let ova = dir.path().join("vm.ova");
    crate::util::run(
        std::process::Command::new("tar")
            .args(["--format=ustar", "-cf"])
            .arg(&ova)
            .arg("-C")
            .arg(dir.path())
            .args(["vm.ovf", "vm.mf", "vm-disk1.vmdk"]),
    );
    let img = open(&ova, &OpenOptions::default()).unwrap_or_else(|e| panic!("{}", e.chain()));
    check_reader(img.as_ref(), &bytes);
    // A truncated OVA is an error, not a panic.
    let all = std::fs::read(&ova).unwrap();
    let cut = dir.path().join("cut.ova");
    std::fs::write(&cut, &all[..all.len() / 2]).unwrap();
    assert!(open(&cut, &OpenOptions::default()).is_err());
}

#[test]
fn vmdk_read_bad_inputs() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let (raw, _) = raw_source(dir.path());
    let sparse = dir.path().join("s.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        raw.to_str().unwrap(),
        sparse.to_str().unwrap(),
    ]);
    let good = std::fs::read(&sparse).unwrap();
    let try_bytes = |name: &str, b: &[u8]| -> diskconv::Error {
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        match open(&p, &OpenOptions::default().format(diskconv::Format::Vmdk)) {
            Err(e) => e,
            Ok(img) => {
                // Opening may succeed; reading everything must then fail cleanly.
                let mut buf = vec![0u8; img.virtual_size() as usize];
                img.read_at(&mut buf, 0)
                    .err()
                    .unwrap_or_else(|| panic!("{name}: no error, size {}", buf.len()))
            }
        }
    };
    // Truncated files.
    for cut in [100, 600, 4096, good.len() / 2, good.len() - 70000] {
        eprintln!("cut {cut} of {}", good.len());
        let e = try_bytes("cut.vmdk", &good[..cut]);
        assert!(
            matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::InvalidFormat),
            "cut at {cut}: {}",
            e.chain()
        );
    }
    // A grain table entry past the end of the file.
    let gd = u64::from_le_bytes(good[56..64].try_into().unwrap()) as usize * 512;
    let gt = u32::from_le_bytes(good[gd..gd + 4].try_into().unwrap()) as usize * 512;
    let mut b = good.clone();
    b[gt..gt + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    let e = try_bytes("gte.vmdk", &b);
    assert!(
        e.chain().contains("entry 0") && e.chain().contains("grain table"),
        "{}",
        e.chain()
    );
    // Absurd capacity and grain size.
    let mut b = good.clone();
    b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(try_bytes("cap.vmdk", &b).chain().contains("capacity"));
    let mut b = good.clone();
    b[20..28].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(try_bytes("grain.vmdk", &b).chain().contains("grain size"));
    // Garbage descriptors.
    let e = try_bytes(
        "g1.vmdk",
        b"# Disk DescriptorFile\nversion=1\nRW 10 BOGUS \"x\"\n",
    );
    assert_eq!(e.kind(), ErrorKind::InvalidFormat);
    assert!(e.chain().contains("line 3"), "{}", e.chain());
    let e = try_bytes("g2.vmdk", &[0xffu8; 3000]);
    assert_eq!(e.kind(), ErrorKind::InvalidFormat, "{}", e.chain());
    // A missing extent names the file.
    let e = try_bytes(
        "missing.vmdk",
        b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 16 FLAT \"nowhere-flat.vmdk\" 0\n",
    );
    assert!(e.chain().contains("nowhere-flat.vmdk"), "{}", e.chain());
    // An extent shorter than the descriptor says.
    let e = try_bytes(
        "short.vmdk",
        b"# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 99999999 FLAT \"src.raw\" 0\n",
    );
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.chain());
    // An extent outside the folder is denied by the default policy, allowed by Anywhere.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let out = sub.join("out.vmdk");
    std::fs::write(
        &out,
        "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"../src.raw\" 0\n",
    )
    .unwrap();
    let e = open(&out, &OpenOptions::default())
        .err()
        .expect("must fail");
    assert_eq!(e.kind(), ErrorKind::ReferenceDenied, "{}", e.chain());
    let any = OpenOptions::default().references(ReferencePolicy::Anywhere);
    assert_eq!(open(&out, &any).unwrap().virtual_size(), 4096);
    // ZERO extents and VMFS offsets (VMware writes one; qemu refuses it).
    let z = dir.path().join("z.vmdk");
    std::fs::write(
        &z,
        "# Disk DescriptorFile\nversion=1\ncreateType=\"vmfs\"\nRW 8 VMFS \"src.raw\" 16\nRW 8 ZERO\n",
    )
    .unwrap();
    let img = open(&z, &OpenOptions::default()).unwrap();
    let mut want = std::fs::read(&raw).unwrap()[8192..12288].to_vec();
    want.extend_from_slice(&[0u8; 4096]);
    check_reader(img.as_ref(), &want);
}

/// A hand-made ESXi-style snapshot: a vmfsSparse (COWD) delta over a qemu-made flat base.
#[test]
fn vmdk_read_vmfs_sparse_snapshot() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let (raw, bytes) = raw_source(dir.path());
    let base = dir.path().join("base.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        raw.to_str().unwrap(),
        base.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&base).unwrap();
    let cid = text
        .lines()
        .find_map(|l| l.strip_prefix("CID="))
        .expect("CID in the base descriptor")
        .trim()
        .to_string();
    let sectors = bytes.len() as u64 / 512;
    // COWD: header in sector 0, GD (1 entry per 4096 grains of 1 sector) at sector 4, grain
    // tables from sector 8 (32 sectors each), grains after them.
    let gts = sectors.div_ceil(4096);
    let mut f = vec![0u8; 512];
    f[0..4].copy_from_slice(b"COWD");
    f[4..8].copy_from_slice(&1u32.to_le_bytes());
    f[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    f[16..20].copy_from_slice(&1u32.to_le_bytes());
    f[20..24].copy_from_slice(&4u32.to_le_bytes());
    f[24..28].copy_from_slice(&(gts as u32).to_le_bytes());
    let mut next = 8 + gts * 32;
    f.resize((next * 512) as usize, 0);
    let mut expected = bytes.clone();
    for g in 0..gts {
        f[2048 + g as usize * 4..2048 + g as usize * 4 + 4]
            .copy_from_slice(&((8 + g * 32) as u32).to_le_bytes());
    }
    for (i, lba) in [0u64, 1, 7, 4095, 4096, 5000, sectors - 1]
        .into_iter()
        .enumerate()
    {
        let gt = 8 + (lba / 4096) * 32;
        let at = (gt * 512 + (lba % 4096) * 4) as usize;
        f[at..at + 4].copy_from_slice(&(next as u32).to_le_bytes());
        let data = vec![0x40 + i as u8; 512];
        f.extend_from_slice(&data);
        expected[(lba * 512) as usize..(lba * 512 + 512) as usize].copy_from_slice(&data);
        next += 1;
    }
    std::fs::write(dir.path().join("top-delta.vmdk"), &f).unwrap();
    let top = dir.path().join("top.vmdk");
    std::fs::write(
        &top,
        format!(
            "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=0000abcd\nparentCID={cid}\n\
             createType=\"vmfsSparse\"\nparentFileNameHint=\"base.vmdk\"\n# Extent description\n\
             RW {sectors} VMFSSPARSE \"top-delta.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
             ddb.longContentID = \"4b98b55ba6a6bc2e8fd6eb368f67ca74\"\n"
        ),
    )
    .unwrap();
    let img = open(&top, &OpenOptions::default()).unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(img.info().subformat.as_deref(), Some("vmfsSparse"));
    check_reader(img.as_ref(), &expected);
    assert_eq!(img.map(512 * 2, 512).unwrap().depth, 1);
    assert_eq!(img.map(512 * 7, 512).unwrap().depth, 0);
    // A grain table entry past the end of the delta.
    let mut bad = f.clone();
    bad[8 * 512..8 * 512 + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    std::fs::write(dir.path().join("top-delta.vmdk"), &bad).unwrap();
    let img = open(&top, &OpenOptions::default()).unwrap();
    let mut b = [0u8; 512];
    let e = img.read_at(&mut b, 0).expect_err("GTE past the end");
    assert!(
        e.chain().contains("top-delta.vmdk") && e.chain().contains("entry 0"),
        "{}",
        e.chain()
    );
}

/// VMware's streamOptimized layout: header gdOffset all ones, the real one in the footer
/// (footer marker, header copy, end-of-stream marker at the end). Made from qemu's layout.
#[test]
fn vmdk_read_stream_gd_at_end() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let (raw, bytes) = raw_source(dir.path());
    let qemu = dir.path().join("q.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        raw.to_str().unwrap(),
        qemu.to_str().unwrap(),
    ]);
    let mut f = std::fs::read(&qemu).unwrap();
    let header = f[..512].to_vec();
    f[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut footer_marker = vec![0u8; 512];
    footer_marker[0..8].copy_from_slice(&1u64.to_le_bytes()); // numSectors
    footer_marker[12..16].copy_from_slice(&3u32.to_le_bytes()); // type: footer
    f.extend_from_slice(&footer_marker);
    f.extend_from_slice(&header);
    f.extend_from_slice(&[0u8; 512]); // end-of-stream marker (type 0)
    let p = dir.path().join("vmware-layout.vmdk");
    std::fs::write(&p, &f).unwrap();
    let img = open(&p, &OpenOptions::default()).unwrap_or_else(|e| panic!("{}", e.chain()));
    check_reader(img.as_ref(), &bytes);
    assert_eq!(img.info().compression.as_deref(), Some("deflate"));
    // Without the end-of-stream marker the footer is not where it must be.
    let cut = dir.path().join("no-eos.vmdk");
    std::fs::write(&cut, &f[..f.len() - 512]).unwrap();
    let e = open(&cut, &OpenOptions::default())
        .err()
        .expect("no footer");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.chain());
    assert!(e.chain().contains("marker"), "{}", e.chain());
}

/// A hand-made seSparse snapshot over a qemu-made flat base.
#[test]
fn vmdk_read_sesparse_snapshot() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let (raw, bytes) = raw_source(dir.path());
    let base = dir.path().join("base.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        raw.to_str().unwrap(),
        base.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&base).unwrap();
    let cid = text
        .lines()
        .find_map(|l| l.strip_prefix("CID="))
        .unwrap()
        .trim()
        .to_string();
    let sectors = bytes.len() as u64 / 512;
    let put = |f: &mut Vec<u8>, at: usize, v: u64| f[at..at + 8].copy_from_slice(&v.to_le_bytes());
    // Constant header @0, volatile header @1, GD @2, grain tables @8, grains @200.
    let mut f = vec![0u8; 200 * 512];
    put(&mut f, 0, 0xcafe_babe);
    put(&mut f, 8, 0x0000_0002_0000_0001);
    put(&mut f, 16, sectors);
    put(&mut f, 24, 8);
    put(&mut f, 32, 64);
    put(&mut f, 80, 1);
    put(&mut f, 88, 1);
    put(&mut f, 128, 2);
    put(&mut f, 136, 1);
    put(&mut f, 144, 8);
    put(&mut f, 192, 200);
    put(&mut f, 512, 0xcafe_cafe);
    put(&mut f, 1024, 0x1000_0000_0000_0000); // GD[0] -> grain table 0
    let gt = 8 * 512;
    put(&mut f, gt, 0x3000_0000_0000_0000); // grain 0 -> cluster 0
    put(&mut f, gt + 5 * 8, 0x3001_0000_0000_0000); // grain 5 -> cluster 1
    put(&mut f, gt + 6 * 8, 0x2000_0000_0000_0000); // grain 6 -> zero
    let mut expected = bytes.clone();
    for (grain, fill) in [(0usize, 0x61u8), (5, 0x62)] {
        f.extend_from_slice(&[fill; 4096]);
        expected[grain * 4096..grain * 4096 + 4096].fill(fill);
    }
    expected[6 * 4096..7 * 4096].fill(0);
    std::fs::write(dir.path().join("top-sesparse.vmdk"), &f).unwrap();
    let top = dir.path().join("top.vmdk");
    std::fs::write(
        &top,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=0000beef\nparentCID={cid}\n\
             createType=\"seSparse\"\nparentFileNameHint=\"base.vmdk\"\n\
             RW {sectors} SESPARSE \"top-sesparse.vmdk\"\n"
        ),
    )
    .unwrap();
    let img = open(&top, &OpenOptions::default()).unwrap_or_else(|e| panic!("{}", e.chain()));
    check_reader(img.as_ref(), &expected);
    assert_eq!(
        img.map(6 * 4096, 4096).unwrap().kind,
        diskconv::ExtentKind::Zero
    );
    assert_eq!(img.map(7 * 4096, 4096).unwrap().depth, 1);
}

/// twoGbMaxExtentSparse with an extent line claiming more sectors than its sparse file holds.
#[test]
fn vmdk_read_extent_capacity_mismatch() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let (raw, _) = raw_source(dir.path());
    let d = dir.path().join("two.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentSparse",
        raw.to_str().unwrap(),
        d.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&d).unwrap();
    let sectors = SIZE / 512 + 3;
    let bad = text.replace(
        &format!("RW {sectors} SPARSE"),
        &format!("RW {} SPARSE", sectors + 128),
    );
    assert_ne!(bad, text, "the extent line was found");
    std::fs::write(&d, bad).unwrap();
    let e = open(&d, &OpenOptions::default())
        .err()
        .expect("capacity mismatch");
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(
        e.chain().contains("two-s001.vmdk") && e.chain().contains("capacity"),
        "{}",
        e.chain()
    );
}

/// Zeroed-grain GTEs (value 1, flag bit 2) map as zero and read as zeros.
#[test]
fn vmdk_read_zeroed_grain_entries() {
    if !require("qemu-img") || !require("qemu-io") {
        return;
    }
    let dir = tmpdir();
    let (raw, _) = raw_source(dir.path());
    let img_path = dir.path().join("zg.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicSparse,zeroed_grain=on",
        raw.to_str().unwrap(),
        img_path.to_str().unwrap(),
    ]);
    let p = img_path.to_str().unwrap();
    qemu_io(&["-f", "vmdk", "-c", "write -z 0 131072", p]);
    let expect = dir.path().join("zg.raw");
    qemu_img(&["convert", "-O", "raw", p, expect.to_str().unwrap()]);
    let bytes = std::fs::read(&expect).unwrap();
    let img = open(&img_path, &OpenOptions::default()).unwrap();
    let e = img.map(0, u64::MAX).unwrap();
    assert_eq!(
        (e.kind, e.len),
        (diskconv::ExtentKind::Zero, 131072),
        "{e:?}"
    );
    check_reader(img.as_ref(), &bytes);
}

/// OVA packages whose OVF names a missing or compressed disk: clear errors.
#[test]
fn vmdk_read_ova_bad_packages() {
    if !require("tar") {
        return;
    }
    let dir = tmpdir();
    std::fs::write(dir.path().join("d.vmdk"), vec![0u8; 1024]).unwrap();
    let make = |name: &str, ovf: &str| -> diskconv::Error {
        std::fs::write(dir.path().join("p.ovf"), ovf).unwrap();
        let ova = dir.path().join(name);
        crate::util::run(
            std::process::Command::new("tar")
                .args(["--format=ustar", "-cf"])
                .arg(&ova)
                .arg("-C")
                .arg(dir.path())
                .args(["p.ovf", "d.vmdk"]),
        );
        open(&ova, &OpenOptions::default()).err().expect(name)
    };
    let files = |attrs: &str| {
        format!(
            "<Envelope xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\"><References><File ovf:href=\"{attrs}\" ovf:id=\"f1\"/></References>\
             <DiskSection><Disk ovf:capacity=\"1024\" ovf:diskId=\"d1\" ovf:fileRef=\"f1\"/></DiskSection></Envelope>"
        )
    };
    let e = make("missing.ova", &files("nope.vmdk"));
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.chain());
    assert!(
        e.chain().contains("nope.vmdk") && e.chain().contains("d.vmdk"),
        "{}",
        e.chain()
    );
    let e = make("gz.ova", &files("d.vmdk\" ovf:compression=\"gzip"));
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{}", e.chain());
    // The disk member exists but is not a VMDK.
    let e = make("junk.ova", &files("d.vmdk"));
    assert!(e.chain().contains("d.vmdk"), "{}", e.chain());
}

/// A KDMV file with capacity 0 whose embedded descriptor names other extents.
#[test]
fn vmdk_read_sparse_container_of_a_descriptor() {
    let dir = tmpdir();
    let (_, bytes) = raw_source(dir.path());
    let sectors = bytes.len() / 512;
    let mut f = vec![0u8; 512];
    f[0..4].copy_from_slice(b"KDMV"); // magic
    f[4..8].copy_from_slice(&1u32.to_le_bytes()); // version
    f[20..28].copy_from_slice(&128u64.to_le_bytes()); // grain size
    f[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptor offset (sectors)
    f[36..44].copy_from_slice(&2u64.to_le_bytes()); // descriptor size (sectors)
    f[44..48].copy_from_slice(&512u32.to_le_bytes()); // numGTEsPerGT
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\nRW {sectors} FLAT \"src.raw\" 0\n"
    );
    f.extend_from_slice(desc.as_bytes());
    f.resize(3 * 512, 0);
    let p = dir.path().join("container.vmdk");
    std::fs::write(&p, &f).unwrap();
    let img = open(&p, &OpenOptions::default()).unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(img.info().subformat.as_deref(), Some("monolithicFlat"));
    check_reader(img.as_ref(), &bytes);
}
