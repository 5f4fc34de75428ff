//! Damaged, truncated and full NTFS volumes: clear errors, no panic, and the image unchanged.
//!
//! Volumes are made by `mkntfs` (ntfs-3g) and opened through `ImageTx` + `NtfsVolume` as the
//! CLI does; every refusal is checked against the sha256 of the file before the attempt.

use std::path::Path;

use diskconv::OpenOptions;
use diskconv::guest::disk::ImageTx;
use diskconv::guest::ntfs::{NtfsOpenOptions, NtfsVolume};

use crate::ntfs_fixture as fx;
use crate::util::{Rng, require, sha256_file, tmpdir};

fn tools() -> bool {
    require("mkntfs") && require("ntfsfix") && require("ntfscat")
}

/// Opens the volume file `vol` as an image, then the NTFS volume in it (read-only or not),
/// runs `f` on it and commits when `f` succeeded. Errors come back as text.
fn with_volume(
    vol: &Path,
    read_only: bool,
    f: impl FnOnce(&mut NtfsVolume<&mut diskconv::guest::disk::TxDisk>) -> diskconv::Result<()>,
) -> Result<(), String> {
    let mut tx = ImageTx::open(vol, &OpenOptions::default()).map_err(|e| e.chain())?;
    {
        let mut v = NtfsVolume::open(&mut tx.disk, &NtfsOpenOptions { read_only })
            .map_err(|e| e.chain())?;
        f(&mut v).map_err(|e| e.chain())?;
        if !read_only {
            v.flush().map_err(|e| e.chain())?;
        }
    }
    if !read_only {
        tx.commit().map_err(|e| e.chain())?;
    }
    Ok(())
}

/// The boot sector's record size and the byte offset of MFT record `n` in `b`.
fn mft_record_offset(b: &[u8], n: usize) -> (usize, usize) {
    let bps = u16::from_le_bytes([b[11], b[12]]) as usize;
    let cluster = bps * b[13] as usize;
    let mft = u64::from_le_bytes(b[48..56].try_into().unwrap()) as usize * cluster;
    let rec_size = match b[64] as i8 {
        n if n < 0 => 1usize << (-n),
        n => n as usize * cluster,
    };
    (rec_size, mft + n * rec_size)
}

/// A change made to a copy of the volume's bytes.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

#[test]
fn ntfs_damaged_boot_sector_and_records_are_named_errors() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let vol = dir.path().join("v.ntfs");
    fx::mkntfs(&vol, 8 << 20, 4096, "Dmg", 0);
    let orig = std::fs::read(&vol).unwrap();

    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "bytes per sector 0",
            Box::new(|b: &mut Vec<u8>| b[11..13].copy_from_slice(&[0, 0])),
            "boot sector",
        ),
        (
            "not NTFS",
            Box::new(|b: &mut Vec<u8>| b[3..11].copy_from_slice(b"MSDOS5.0")),
            "",
        ),
        (
            "MFT outside the volume",
            Box::new(|b: &mut Vec<u8>| b[48..56].copy_from_slice(&u64::MAX.to_le_bytes())),
            "boot sector",
        ),
        (
            "torn root folder record",
            Box::new(|b: &mut Vec<u8>| {
                let (_, at) = mft_record_offset(b, 5);
                b[at + 510] ^= 0xff;
            }),
            "record",
        ),
        (
            "root folder record signature",
            Box::new(|b: &mut Vec<u8>| {
                let (_, at) = mft_record_offset(b, 5);
                b[at..at + 4].copy_from_slice(b"BAAD");
            }),
            "record",
        ),
        (
            "$MFT record with a huge attribute length",
            Box::new(|b: &mut Vec<u8>| {
                let (_, at) = mft_record_offset(b, 0);
                let first = u16::from_le_bytes([b[at + 0x14], b[at + 0x15]]) as usize;
                b[at + first + 4..at + first + 8].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
            }),
            "record 0",
        ),
    ];
    for (what, damage, needle) in cases {
        let mut b = orig.clone();
        damage(&mut b);
        std::fs::write(&vol, &b).unwrap();
        let sha = sha256_file(&vol);
        for read_only in [true, false] {
            let r = with_volume(&vol, read_only, |v| {
                v.read_dir("")?;
                if !v.state().dirty {
                    v.write_file("new.txt", b"x")?;
                }
                Ok(())
            });
            let err = r.expect_err(what);
            assert!(
                err.contains("NTFS") || err.contains("ntfs"),
                "{what}: the error does not say NTFS: {err}"
            );
            assert!(
                err.to_lowercase().contains(&needle.to_lowercase()),
                "{what}: expected {needle:?} in: {err}"
            );
            assert_eq!(sha256_file(&vol), sha, "{what}: the volume changed");
        }
    }
}

#[test]
fn ntfs_truncated_volume_is_an_error() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let vol = dir.path().join("t.ntfs");
    fx::mkntfs(&vol, 8 << 20, 4096, "Trunc", 0);
    for keep in [0u64, 300, 512, 4096, 1 << 20, 4 << 20] {
        let f = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
        f.set_len(keep).unwrap();
        drop(f);
        let sha = sha256_file(&vol);
        let r = with_volume(&vol, false, |v| {
            v.write_file("a.txt", b"abc")?;
            Ok(())
        });
        let err = r.expect_err("a truncated volume opened");
        assert!(!err.contains("panicked"), "{keep}: {err}");
        assert_eq!(sha256_file(&vol), sha, "{keep}: the volume changed");
    }
}

/// Random byte damage in the metadata area: every attempt either works (and then ntfs-3g
/// still accepts what was written only if the damage was harmless to it) or fails with an
/// error; never a panic, and a failed attempt leaves the bytes unchanged.
#[test]
fn ntfs_random_damage_never_panics() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let vol = dir.path().join("r.ntfs");
    fx::mkntfs(&vol, 4 << 20, 1024, "Rnd", 0);
    fx::ntfs_put(&vol, "/file.bin", &vec![0x5a; 50_000]);
    let orig = std::fs::read(&vol).unwrap();
    let (rec_size, mft) = mft_record_offset(&orig, 0);
    let mut rng = Rng::new(
        std::env::var("NTFS_DAMAGE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_4711),
    );
    let rounds = 120;
    let mut failed = 0;
    for round in 0..rounds {
        let mut b = orig.clone();
        for _ in 0..1 + rng.below(4) {
            // Mostly the boot sector and the first 16 MFT records, sometimes anywhere.
            let at = match rng.below(4) {
                0 => rng.below(512) as usize,
                1 | 2 => mft + rng.below(16 * rec_size as u64) as usize,
                _ => rng.below(b.len() as u64) as usize,
            };
            b[at] = rng.below(256) as u8;
        }
        std::fs::write(&vol, &b).unwrap();
        let sha = sha256_file(&vol);
        let r = std::panic::catch_unwind(|| {
            with_volume(&vol, false, |v| {
                for e in v.read_dir("")? {
                    if !e.is_dir {
                        let _ = v.read_file(&e.name, 1 << 20);
                    }
                }
                v.write_file(&format!("round-{round}.txt"), b"written after damage")?;
                Ok(())
            })
        });
        let r = r.unwrap_or_else(|_| panic!("round {round}: panic (NTFS_DAMAGE_SEED to replay)"));
        if r.is_err() {
            failed += 1;
            assert_eq!(
                sha256_file(&vol),
                sha,
                "round {round}: failed but changed the volume"
            );
        }
    }
    // Most damage lands in structures we check: the test must exercise the error paths.
    assert!(
        failed > rounds / 10,
        "only {failed} of {rounds} damaged volumes were refused"
    );
}

#[test]
fn ntfs_full_volume_is_refused_and_unchanged() {
    if !tools() {
        return;
    }
    let dir = tmpdir();
    let vol = dir.path().join("f.ntfs");
    fx::mkntfs(&vol, 4 << 20, 4096, "Full", 0);
    let sha = sha256_file(&vol);
    let big = vec![0xa5u8; 8 << 20];
    let err = with_volume(&vol, false, |v| {
        v.create_dir("Drivers")?;
        v.write_file("Drivers\\small.sys", b"fits")?;
        v.write_file("Drivers\\big.sys", &big)?;
        Ok(())
    })
    .expect_err("8 MiB written into a 4 MiB volume");
    assert!(err.contains("full"), "{err}");
    assert_eq!(
        sha256_file(&vol),
        sha,
        "a failed transaction changed the volume"
    );
    // Growing an existing file past the free space fails the same way.
    let err = with_volume(&vol, false, |v| {
        v.write_file("a.bin", b"start")?;
        v.set_len("a.bin", 64 << 20)?;
        Ok(())
    })
    .expect_err("a file grown past the free space");
    assert!(err.contains("full"), "{err}");
    assert_eq!(sha256_file(&vol), sha);
    fx::assert_ntfs_sound(&vol);
}
