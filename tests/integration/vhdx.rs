//! VHDX: qemu-img makes images that diskconv must read equal; everything diskconv writes must
//! pass `qemu-img check` and compare equal; 4 KiB-sector output (qemu cannot read it) is checked
//! field by field; corpus files (Hyper-V made, dirty log) read to their known contents and are
//! never modified.

use std::path::Path;
use std::process::Command;

use diskconv::files::OutputFiles;
use diskconv::formats::vhdx::writer::create;
use diskconv::formats::vhdx::{VhdxSubformat, VhdxWriteOptions};
use diskconv::{ErrorKind, Format, ImageReader, OpenOptions};

use crate::{contract, util};

fn open(p: &Path) -> diskconv::Result<Box<dyn ImageReader>> {
    diskconv::open(p, &OpenOptions::default().format(Format::Vhdx))
}

/// Copies `src` into a new VHDX at `dst` through the writer (extents in ascending order).
fn write_vhdx(src: &dyn ImageReader, dst: &Path, opts: &VhdxWriteOptions) {
    let mut files = OutputFiles::new(dst);
    let mut w = create(&mut files, src.virtual_size(), opts).unwrap();
    let size = src.virtual_size();
    let mut pos = 0;
    let mut buf = vec![0u8; 1 << 20];
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        src.read_at(&mut buf[..n], pos).unwrap();
        if buf[..n].iter().all(|&b| b == 0) {
            w.write_zeroes(pos, n as u64).unwrap();
        } else {
            w.write_at(&buf[..n], pos).unwrap();
        }
        pos += n as u64;
    }
    w.finish().unwrap();
    files.commit().unwrap();
}

fn raw_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn vhdx_reads_qemu_images() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let raw = dir.path().join("src.raw");
    util::make_raw(&raw, 20 << 20, 7);
    let expected = raw_bytes(&raw);
    for sub in ["dynamic", "fixed"] {
        for bs in ["1M", "8M", "32M"] {
            let v = dir.path().join(format!("{sub}-{bs}.vhdx"));
            util::qemu_img(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vhdx",
                "-o",
                &format!("subformat={sub},block_size={bs}"),
                raw.to_str().unwrap(),
                v.to_str().unwrap(),
            ]);
            let img = open(&v).unwrap();
            assert_eq!(img.virtual_size(), 20 << 20);
            contract::check_reader(&*img, &expected);
            assert_eq!(
                util::sha256_image(&*img),
                util::sha256_file(&raw),
                "{sub} {bs}"
            );
        }
    }
}

#[test]
fn vhdx_written_images_pass_qemu_check() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let raw = dir.path().join("src.raw");
    // Not a multiple of the block size; crosses a sector bitmap boundary with 1 MiB blocks? no
    // (4096 blocks per chunk), but exercises a partial last block.
    util::make_raw(&raw, (40 << 20) + 512 * 3, 11);
    let src = diskconv::open(&raw, &OpenOptions::default().format(Format::Raw)).unwrap();
    for sub in [VhdxSubformat::Dynamic, VhdxSubformat::Fixed] {
        for bs in [1u32 << 20, 8 << 20, 32 << 20] {
            let out = dir.path().join(format!("{sub:?}-{bs}.vhdx"));
            let opts = VhdxWriteOptions {
                subformat: sub,
                block_size: bs,
                logical_sector_size: 512,
                physical_sector_size: 4096,
            };
            write_vhdx(&*src, &out, &opts);
            util::assert_qemu_check(&out);
            assert!(
                util::qemu_compare(&raw, "raw", &out, "vhdx"),
                "{sub:?} {bs}"
            );
            let info = util::qemu_info(&out);
            assert_eq!(info["format"], "vhdx");
            assert_eq!(info["virtual-size"], (40 << 20) + 512 * 3);
            let img = open(&out).unwrap();
            contract::check_reader(&*img, &raw_bytes(&raw));
        }
    }
}

/// 4 KiB logical sectors: qemu cannot read them, so every structure is parsed by hand here.
#[test]
fn vhdx_4k_sector_output_field_by_field() {
    let dir = util::tmpdir();
    let raw = dir.path().join("src.raw");
    util::make_raw(&raw, 12 << 20, 3);
    let src = diskconv::open(&raw, &OpenOptions::default().format(Format::Raw)).unwrap();
    for sub in [VhdxSubformat::Dynamic, VhdxSubformat::Fixed] {
        let out = dir.path().join(format!("4k-{sub:?}.vhdx"));
        let opts = VhdxWriteOptions {
            subformat: sub,
            block_size: 4 << 20,
            logical_sector_size: 4096,
            physical_sector_size: 4096,
        };
        write_vhdx(&*src, &out, &opts);
        let f = std::fs::read(&out).unwrap();
        let u16_ = |o: usize| u16::from_le_bytes(f[o..o + 2].try_into().unwrap());
        let u32_ = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
        let u64_ = |o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap());
        let crc = |o: usize, len: usize| {
            let mut b = f[o..o + len].to_vec();
            b[4..8].fill(0);
            crc32c::crc32c(&b)
        };
        assert_eq!(&f[0..8], b"vhdxfile");
        for (o, seq) in [(0x10000, 0), (0x20000, 1)] {
            assert_eq!(&f[o..o + 4], b"head");
            assert_eq!(u32_(o + 4), crc(o, 4096), "header checksum");
            assert_eq!(u64_(o + 8), seq, "sequence number");
            assert_eq!(&f[o + 48..o + 64], &[0u8; 16], "log guid");
            assert_eq!(u16_(o + 64), 0, "log version");
            assert_eq!(u16_(o + 66), 1, "version");
            assert_eq!(u32_(o + 68), 1 << 20, "log length");
            assert_eq!(u64_(o + 72), 1 << 20, "log offset");
        }
        let mut bat_at = 0;
        let mut meta_at = 0;
        for o in [0x30000, 0x40000] {
            assert_eq!(&f[o..o + 4], b"regi");
            assert_eq!(u32_(o + 4), crc(o, 65536), "region checksum");
            assert_eq!(u32_(o + 8), 2, "region entries");
            for e in 0..2 {
                let at = o + 16 + 32 * e;
                assert_eq!(u32_(at + 28), 1, "required");
                match &f[at..at + 4] {
                    [0x66, 0x77, 0xc2, 0x2d] => bat_at = u64_(at + 16) as usize,
                    [0x06, 0xa2, 0x7c, 0x8b] => meta_at = u64_(at + 16) as usize,
                    other => panic!("region {other:02x?}"),
                }
                assert_eq!(u64_(at + 16) % (1 << 20), 0, "region aligned");
            }
        }
        assert_eq!((meta_at, bat_at), (2 << 20, 3 << 20));
        assert_eq!(&f[meta_at..meta_at + 8], b"metadata");
        assert_eq!(u16_(meta_at + 10), 5, "metadata entries");
        let mut items = std::collections::HashMap::new();
        for e in 0..5 {
            let at = meta_at + 32 + 32 * e;
            let off = meta_at + u32_(at + 16) as usize;
            items.insert(f[at..at + 4].to_vec(), (off, u32_(at + 20), u32_(at + 24)));
        }
        let fp = items[&vec![0x37, 0x67, 0xa1, 0xca]];
        assert_eq!(u32_(fp.0), 4 << 20, "block size");
        assert_eq!(
            u32_(fp.0 + 4),
            u32::from(sub == VhdxSubformat::Fixed),
            "file parameter flags"
        );
        assert_eq!(fp.2 & 4, 4, "file parameters required");
        let vds = items[&vec![0x24, 0x42, 0xa5, 0x2f]];
        assert_eq!(u64_(vds.0), 12 << 20, "virtual disk size");
        assert_eq!(vds.2, 6, "virtual disk size flags");
        assert_eq!(
            u32_(items[&vec![0x1d, 0xbf, 0x41, 0x81]].0),
            4096,
            "logical sector size"
        );
        assert_eq!(
            u32_(items[&vec![0xc7, 0x48, 0xa3, 0xcd]].0),
            4096,
            "physical sector size"
        );
        assert_eq!(items[&vec![0xab, 0x12, 0xca, 0xbe]].1, 16, "page 83 length");
        // BAT: 3 payload blocks, chunk ratio 2^23*4096/4 MiB = 8192, so no bitmap entry.
        let data = raw_bytes(&raw);
        for b in 0..3usize {
            let e = u64_(bat_at + 8 * b);
            let host = ((e >> 20) << 20) as usize;
            let block = &data[b << 22..(b + 1) << 22];
            if sub == VhdxSubformat::Dynamic && block.iter().all(|&x| x == 0) {
                assert_eq!(e & 7, 0);
                continue;
            }
            assert_eq!(e & 7, 6, "block {b} state");
            assert_eq!(host % (1 << 20), 0);
            assert_eq!(&f[host..host + (4 << 20)], block, "block {b} contents");
        }
        assert_eq!(u64_(bat_at + 24), 0, "no further entries");
        let img = open(&out).unwrap();
        contract::check_reader(&*img, &data);
    }
}

/// A fixed VHDX of a mostly empty disk is a sparse file: zeros are never written.
#[test]
fn vhdx_fixed_output_is_sparse() {
    let dir = util::tmpdir();
    let raw = dir.path().join("z.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(256 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 4096], 100 << 20).unwrap();
    let src = diskconv::open(&raw, &OpenOptions::default().format(Format::Raw)).unwrap();
    let out = dir.path().join("fixed.vhdx");
    let opts = VhdxWriteOptions {
        subformat: VhdxSubformat::Fixed,
        ..Default::default()
    };
    write_vhdx(&*src, &out, &opts);
    let meta = std::fs::metadata(&out).unwrap();
    assert!(meta.len() >= (256 + 4) << 20);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 16 << 20,
        "not sparse"
    );
    let img = open(&out).unwrap();
    assert_eq!(util::sha256_image(&*img), util::sha256_file(&raw));
    if util::require("qemu-img") {
        util::assert_qemu_check(&out);
        assert!(util::qemu_compare(&raw, "raw", &out, "vhdx"));
    }
}

#[test]
fn vhdx_corpus_hyperv_dynamic() {
    let Some(p) = util::corpus("images/dissect_hyperv_dynamic.vhdx") else {
        return;
    };
    let before = util::sha256_file(&p);
    let img = open(&p).unwrap();
    assert_eq!(img.virtual_size(), 10 << 20);
    assert_eq!(
        util::sha256_image(&*img),
        "8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac"
    );
    if util::require("qemu-img") {
        let dir = util::tmpdir();
        let raw = dir.path().join("d.raw");
        util::qemu_img(&[
            "convert",
            "-O",
            "raw",
            p.to_str().unwrap(),
            raw.to_str().unwrap(),
        ]);
        contract::check_reader(&*img, &raw_bytes(&raw));
    }
    assert_eq!(util::sha256_file(&p), before);
}

#[test]
fn vhdx_corpus_windows8_dynamic_bz2() {
    let Some(p) = util::corpus("images/qemu_samples/iotest-dynamic-1G.vhdx.bz2") else {
        return;
    };
    let dir = util::tmpdir();
    let out = dir.path().join("d.vhdx");
    let st = Command::new("python3")
        .args([
            "-c",
            "import bz2,sys; open(sys.argv[2],'wb').write(bz2.open(sys.argv[1]).read())",
            p.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        util::sha256_file(&out),
        "a4fb24fa51fb4852d5a6bdc2b390a91b0a4e19b47696edc5a00c816067257402"
    );
    let img = open(&out).unwrap();
    assert_eq!(img.virtual_size(), 1 << 30);
    assert_eq!(
        util::sha256_image(&*img),
        "d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478"
    );
}

/// The dirty log is replayed in memory: the result equals what `qemu-img check -r all` makes
/// of a copy, and the corpus file is unchanged.
#[test]
fn vhdx_corpus_dirty_log_replayed_in_memory() {
    let Some(p) = util::corpus("images/qemu_samples/iotest-dirtylog-10G-4M.vhdx") else {
        return;
    };
    let before = util::sha256_file(&p);
    let img = open(&p).unwrap();
    assert_eq!(img.virtual_size(), 10 << 30);
    assert!(
        img.info()
            .flags
            .iter()
            .any(|f| f.starts_with("log_replayed_in_memory="))
    );
    // qemu iotest 070: the 0xa5 pattern covers the first 18 MiB after replay.
    let mut buf = vec![0u8; 18 << 20];
    img.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0xa5));
    assert_eq!(
        util::sha256_file(&p),
        before,
        "the corpus file must not change"
    );
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let copy = dir.path().join("copy.vhdx");
    std::fs::copy(&p, &copy).unwrap();
    let _ = Command::new("qemu-img")
        .args(["check", "-r", "all", copy.to_str().unwrap()])
        .output()
        .unwrap();
    let raw = dir.path().join("copy.raw");
    util::qemu_img(&[
        "convert",
        "-O",
        "raw",
        copy.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let f = std::fs::File::open(&raw).unwrap();
    let n = 200usize << 20;
    let mut want = vec![0u8; n];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut want, 0).unwrap();
    let mut got = vec![0u8; n];
    img.read_at(&mut got, 0).unwrap();
    assert!(got == want, "first 200 MiB differ from qemu's replay");
}

/// A written image with `patch` applied, opened from memory.
fn open_patched(patch: impl Fn(&mut Vec<u8>)) -> diskconv::Result<Box<dyn ImageReader>> {
    let dir = util::tmpdir();
    let raw = dir.path().join("s.raw");
    util::make_raw(&raw, 4 << 20, 5);
    let src = diskconv::open(&raw, &OpenOptions::default().format(Format::Raw)).unwrap();
    let out = dir.path().join("p.vhdx");
    write_vhdx(
        &*src,
        &out,
        &VhdxWriteOptions {
            block_size: 1 << 20,
            ..Default::default()
        },
    );
    let mut b = std::fs::read(&out).unwrap();
    patch(&mut b);
    let s = std::sync::Arc::new(diskconv::storage::MemStorage::from_vec(b));
    diskconv::open_storage(s, &OpenOptions::default().format(Format::Vhdx))
}

fn fix_crc(b: &mut [u8], at: usize, len: usize) {
    b[at + 4..at + 8].fill(0);
    let c = crc32c::crc32c(&b[at..at + len]);
    b[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn vhdx_bad_input_gives_clear_errors() {
    let err = |r: diskconv::Result<Box<dyn ImageReader>>| {
        r.err()
            .map(|e| (e.kind(), format!("{e:#}")))
            .expect("an error")
    };
    assert!(open_patched(|_| {}).is_ok());
    // Truncated.
    let (k, m) = err(open_patched(|b| b.truncate(0x30000)));
    assert_eq!(k, ErrorKind::InvalidFormat, "{m}");
    // Both headers with bad checksums.
    let (_, m) = err(open_patched(|b| {
        b[0x10000 + 100] ^= 1;
        b[0x20000 + 100] ^= 1;
    }));
    assert!(m.contains("checksum"), "{m}");
    // One bad header: the other is used.
    assert!(open_patched(|b| b[0x20000 + 100] ^= 1).is_ok());
    // BAT entry past the end of the file.
    let (k, m) = err(open_patched(|b| {
        b[0x300000..0x300008].copy_from_slice(&((4096u64 << 20) | 6).to_le_bytes());
    }));
    assert_eq!(k, ErrorKind::Corrupt);
    assert!(
        m.contains("BAT at 0x300000") && m.contains("outside the file"),
        "{m}"
    );
    // Two BAT entries at the same place.
    let (_, m) = err(open_patched(|b| {
        let e0: [u8; 8] = b[0x300000..0x300008].try_into().unwrap();
        b[0x300008..0x300010].copy_from_slice(&e0);
    }));
    assert!(m.contains("overlaps"), "{m}");
    // A BAT entry pointing into the metadata region.
    let (_, m) = err(open_patched(|b| {
        b[0x300000..0x300008].copy_from_slice(&((2u64 << 20) | 6).to_le_bytes())
    }));
    assert!(m.contains("overlaps the metadata region"), "{m}");
    // Overlapping regions (metadata moved onto the BAT), checksums fixed.
    let (_, m) = err(open_patched(|b| {
        for o in [0x30000, 0x40000] {
            for e in 0..2 {
                let at = o + 16 + 32 * e;
                b[at + 16..at + 24].copy_from_slice(&(3u64 << 20).to_le_bytes());
            }
            fix_crc(b, o, 65536);
        }
    }));
    assert!(m.contains("overlaps"), "{m}");
    // Unknown required metadata item.
    let (k, m) = err(open_patched(|b| {
        let at = 0x200000 + 32 + 32 * 5;
        b[at..at + 16].copy_from_slice(&[0x42; 16]);
        b[at + 16..at + 20].copy_from_slice(&0x20000u32.to_le_bytes());
        b[at + 20..at + 24].copy_from_slice(&8u32.to_le_bytes());
        b[at + 24..at + 28].copy_from_slice(&4u32.to_le_bytes());
        b[0x20000a] = 6;
    }));
    assert_eq!(k, ErrorKind::Unsupported, "{m}");
    // A corrupt log entry (valid checksum, bad data sector) referenced by the header.
    let (_, m) = err(open_patched(|b| {
        let guid = diskconv::bytes::Guid::from_bytes([0x11u8; 16]);
        let mut e = diskconv::formats::vhdx::log::build_entry(
            &guid,
            1,
            0,
            &[(0x300000, Some(&[0u8; 4096]))],
        );
        e[4096] = b'X';
        let n = e.len();
        fix_crc(&mut e, 0, n);
        b[0x100000..0x100000 + e.len()].copy_from_slice(&e);
        for o in [0x10000, 0x20000] {
            b[o + 48..o + 64].copy_from_slice(&guid.to_bytes());
            fix_crc(b, o, 4096);
        }
    }));
    assert!(m.contains("log entry at 0x100000"), "{m}");
    // Garbage never panics.
    for len in [0usize, 8, 0x50000, 0x100000] {
        let mut g = vec![0x5au8; len];
        if len >= 8 {
            g[..8].copy_from_slice(b"vhdxfile");
        }
        let s = std::sync::Arc::new(diskconv::storage::MemStorage::from_vec(g));
        assert!(diskconv::open_storage(s, &OpenOptions::default().format(Format::Vhdx)).is_err());
    }
}

/// Turns the dynamic VHDX at `child` (1 MiB blocks, 512-byte sectors, 4 MiB) into a
/// differencing disk of `parent_name` with `linkage`: block 0 not present (parent), block 1
/// partially present (its first 8 sectors here), block 2 zero, block 3 as written.
fn make_child(child: &Path, parent_name: &str, linkage: &str) {
    use diskconv::formats::vhdx::metadata;
    let mut b = std::fs::read(child).unwrap();
    let mut m = metadata::parse(&b[0x200000..0x300000], 0x200000).unwrap();
    m.has_parent = true;
    m.parent_locator = Some(vec![
        ("parent_linkage".into(), linkage.into()),
        ("relative_path".into(), format!(".\\{parent_name}")),
        (
            "absolute_win32_path".into(),
            format!("C:\\nowhere\\{parent_name}"),
        ),
    ]);
    b[0x200000..0x300000].copy_from_slice(&metadata::to_bytes(&m, 1 << 20));
    let entry = |b: &[u8], i: usize| {
        u64::from_le_bytes(b[0x300000 + 8 * i..0x300008 + 8 * i].try_into().unwrap())
    };
    let set = |b: &mut Vec<u8>, i: usize, v: u64| {
        b[0x300000 + 8 * i..0x300008 + 8 * i].copy_from_slice(&v.to_le_bytes())
    };
    assert_eq!(entry(&b, 0) & 7, 0);
    let e1 = entry(&b, 1);
    assert_eq!(e1 & 7, 6);
    set(&mut b, 1, (e1 & !7) | 7);
    set(&mut b, 2, 2);
    // Sector bitmap block for chunk 0 (entry 4096), appended at the end of the file.
    let bm = b.len();
    b.resize(bm + (1 << 20), 0);
    b[bm + 2048 / 8] = 0xff; // block 1 starts at bit 2048: its first 8 sectors
    set(&mut b, 4096, bm as u64 | 6);
    std::fs::write(child, b).unwrap();
}

#[test]
fn vhdx_differencing_reads_through_parent() {
    let dir = util::tmpdir();
    let praw = dir.path().join("p.raw");
    util::make_raw(&praw, 4 << 20, 21);
    let psrc = diskconv::open(&praw, &OpenOptions::default().format(Format::Raw)).unwrap();
    let opts = VhdxWriteOptions {
        block_size: 1 << 20,
        ..Default::default()
    };
    let parent = dir.path().join("base.vhdx");
    write_vhdx(&*psrc, &parent, &opts);
    let pb = std::fs::read(&parent).unwrap();
    let dwg = diskconv::bytes::Guid::read(&pb, 0x10000 + 32);
    let linkage = format!("{{{dwg}}}");

    let mut craw = vec![0u8; 4 << 20];
    craw[1 << 20..2 << 20].fill(0x77);
    craw[3 << 20..].fill(0x88);
    let crawp = dir.path().join("c.raw");
    std::fs::write(&crawp, &craw).unwrap();
    let csrc = diskconv::open(&crawp, &OpenOptions::default().format(Format::Raw)).unwrap();
    let child = dir.path().join("child.avhdx");
    write_vhdx(&*csrc, &child, &opts);
    make_child(&child, "base.vhdx", &linkage);

    let mut expected = std::fs::read(&praw).unwrap();
    expected[1 << 20..(1 << 20) + 4096].fill(0x77);
    expected[2 << 20..3 << 20].fill(0);
    expected[3 << 20..].fill(0x88);
    let img = open(&child).unwrap();
    contract::check_reader(&*img, &expected);
    let info = img.info();
    assert_eq!(info.subformat.as_deref(), Some("differencing"));
    assert_eq!(info.backing_file.as_deref(), Some("base.vhdx"));

    // Wrong linkage: the parent changed after the child was made.
    write_vhdx(&*csrc, &child, &opts);
    make_child(
        &child,
        "base.vhdx",
        "{00000000-1111-2222-3333-444444444444}",
    );
    let e = open(&child).err().unwrap();
    let m = chain(&e);
    assert!(m.contains("parent_linkage"), "{m}");

    // A parent outside the image's folder is refused by the default policy.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let child2 = sub.join("child.avhdx");
    write_vhdx(&*csrc, &child2, &opts);
    make_child(&child2, "..\\base.vhdx", &linkage);
    let e = open(&child2).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::ReferenceDenied, "{e:#}");
    let any = diskconv::open(
        &child2,
        &OpenOptions::default()
            .format(Format::Vhdx)
            .references(diskconv::ReferencePolicy::Anywhere),
    )
    .unwrap();
    let mut buf = vec![0u8; 4 << 20];
    any.read_at(&mut buf, 0).unwrap();
    assert!(buf == expected);
}

/// The error and all its causes, joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
