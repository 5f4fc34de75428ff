//! The `.modinfo` section of a kernel module (an ELF relocatable object): NUL-separated
//! `key=value` strings (`vermagic=6.1.0-18-amd64 SMP preempt mod_unload modversions`,
//! `depends=`, `alias=`, ...), as `modinfo(8)` reads them. ELF32 and ELF64, either byte order
//! (the System V gABI, "ELF Header" and "Sections").

use crate::error::{Error, ErrorKind, Result, StructureError};

/// `\x7fELF` (gABI, `e_ident[EI_MAG0..3]`).
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// `e_ident[EI_CLASS]`: 32-bit objects.
const ELFCLASS32: u8 = 1;
/// `e_ident[EI_CLASS]`: 64-bit objects.
const ELFCLASS64: u8 = 2;
/// `e_ident[EI_DATA]`: little-endian.
const ELFDATA2LSB: u8 = 1;
/// `e_ident[EI_DATA]`: big-endian.
const ELFDATA2MSB: u8 = 2;
/// Most sections a module may have before we refuse it (a module has a few dozen to a few
/// thousand; the field is 16 bits anyway).
const MAX_SECTIONS: u64 = 65_535;

fn invalid(what: &str, offset: u64, detail: impl Into<String>) -> Error {
    Error::typed(
        ErrorKind::InvalidFormat,
        StructureError::invalid("ELF module", what, offset, detail),
    )
}

/// Reads the field of `len` (2, 4 or 8) bytes at `at` of `b`, in the object's byte order.
fn field(b: &[u8], at: usize, len: usize, big: bool, what: &str) -> Result<u64> {
    let bytes = at
        .checked_add(len)
        .and_then(|end| b.get(at..end))
        .ok_or_else(|| {
            invalid(
                what,
                at as u64,
                format!("the file ends at {:#x}, before this field", b.len()),
            )
        })?;
    let mut v = 0u64;
    for i in 0..len {
        let byte = if big { bytes[i] } else { bytes[len - 1 - i] };
        v = (v << 8) | u64::from(byte);
    }
    Ok(v)
}

/// The bytes of the `.modinfo` section of the module `elf` (uncompressed); `None` when it has
/// no such section.
pub fn modinfo_section(elf: &[u8]) -> Result<Option<&[u8]>> {
    if elf.len() < 16 || &elf[..4] != ELF_MAGIC {
        return Err(invalid(
            "header",
            0,
            format!(
                "expected the magic \\x7fELF, found {:02x?}",
                &elf[..elf.len().min(4)]
            ),
        ));
    }
    let wide = match elf[4] {
        ELFCLASS32 => false,
        ELFCLASS64 => true,
        c => {
            return Err(invalid(
                "header",
                4,
                format!("expected class 1 or 2, found {c}"),
            ));
        }
    };
    let big = match elf[5] {
        ELFDATA2LSB => false,
        ELFDATA2MSB => true,
        d => {
            return Err(invalid(
                "header",
                5,
                format!("expected data encoding 1 or 2, found {d}"),
            ));
        }
    };
    let word = if wide { 8 } else { 4 };
    // e_shoff, e_shentsize, e_shnum, e_shstrndx (gABI "ELF Header").
    let (shoff_at, rest) = if wide { (0x28, 0x3a) } else { (0x20, 0x2e) };
    let shoff = field(elf, shoff_at, word, big, "e_shoff")?;
    let shentsize = field(elf, rest, 2, big, "e_shentsize")?;
    let shnum = field(elf, rest + 2, 2, big, "e_shnum")?;
    let shstrndx = field(elf, rest + 4, 2, big, "e_shstrndx")?;
    let min_entry = if wide { 0x40 } else { 0x28 };
    if shnum == 0 {
        return Ok(None);
    }
    if shentsize < min_entry || shnum > MAX_SECTIONS || shstrndx >= shnum {
        return Err(invalid(
            "header",
            rest as u64,
            format!(
                "expected at least {min_entry}-byte section headers and a string table index \
                 below the section count, found e_shentsize {shentsize}, e_shnum {shnum}, \
                 e_shstrndx {shstrndx}"
            ),
        ));
    }
    // (offset, size, name) of section `i`.
    let section = |i: u64| -> Result<(u64, u64, u64)> {
        let at = i
            .checked_mul(shentsize)
            .and_then(|o| o.checked_add(shoff))
            .filter(|&o| o < elf.len() as u64)
            .ok_or_else(|| {
                invalid(
                    &format!("section header {i}"),
                    shoff,
                    format!("lies past the end of the file ({:#x} bytes)", elf.len()),
                )
            })? as usize;
        let what = format!("section header {i}");
        let name = field(elf, at, 4, big, &what)?;
        // sh_offset and sh_size follow sh_name, sh_type, sh_flags, sh_addr.
        let (off_at, size_at) = if wide { (0x18, 0x20) } else { (0x10, 0x14) };
        let off = field(elf, at + off_at, word, big, &what)?;
        let size = field(elf, at + size_at, word, big, &what)?;
        Ok((off, size, name))
    };
    let bytes_of = |i: u64, off: u64, size: u64| -> Result<&[u8]> {
        off.checked_add(size)
            .filter(|&end| end <= elf.len() as u64)
            .map(|end| &elf[off as usize..end as usize])
            .ok_or_else(|| {
                invalid(
                    &format!("section {i}"),
                    off,
                    format!(
                        "{size} bytes at {off:#x} run past the end of the file ({:#x} bytes)",
                        elf.len()
                    ),
                )
            })
    };
    let (str_off, str_size, _) = section(shstrndx)?;
    let strtab = bytes_of(shstrndx, str_off, str_size)?;
    for i in 0..shnum {
        let (off, size, name) = section(i)?;
        let Some(n) = strtab.get(name as usize..) else {
            continue;
        };
        let end = n.iter().position(|&b| b == 0).unwrap_or(n.len());
        if &n[..end] == b".modinfo" {
            return bytes_of(i, off, size).map(Some);
        }
    }
    Ok(None)
}

/// The `key=value` strings of a `.modinfo` section, in order (invalid UTF-8 replaced).
pub fn modinfo_entries(section: &[u8]) -> Vec<(String, String)> {
    section
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let t = String::from_utf8_lossy(s);
            t.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The `vermagic=` value of the module `elf`: `None` when it has no `.modinfo` or no
/// vermagic.
pub fn vermagic(elf: &[u8]) -> Result<Option<String>> {
    Ok(modinfo_section(elf)?.and_then(|s| {
        modinfo_entries(s)
            .into_iter()
            .find(|(k, _)| k == "vermagic")
            .map(|(_, v)| v)
    }))
}

/// The kernel release a vermagic names: its first word (`6.1.0-18-amd64 SMP preempt ...` →
/// `6.1.0-18-amd64`), as the kernel's `same_magic` splits it.
pub fn vermagic_release(vermagic: &str) -> &str {
    vermagic.split_ascii_whitespace().next().unwrap_or("")
}

/// Builds a minimal ELF relocatable object holding `modinfo` as its `.modinfo` section, for
/// tests: a null section, `.modinfo`, `.shstrtab`.
#[cfg(test)]
pub(crate) fn test_elf(modinfo: &[u8], wide: bool, big: bool) -> Vec<u8> {
    let put = |v: &mut Vec<u8>, at: usize, len: usize, x: u64| {
        for i in 0..len {
            let shift = if big { (len - 1 - i) * 8 } else { i * 8 };
            v[at + i] = (x >> shift) as u8;
        }
    };
    let ehsize = if wide { 0x40 } else { 0x34 };
    let shentsize = if wide { 0x40 } else { 0x28 };
    let shstrtab = b"\0.modinfo\0.shstrtab\0";
    let modinfo_off = ehsize;
    let str_off = modinfo_off + modinfo.len();
    let shoff = str_off + shstrtab.len();
    let mut v = vec![0u8; shoff + 3 * shentsize];
    v[..4].copy_from_slice(ELF_MAGIC);
    v[4] = if wide { ELFCLASS64 } else { ELFCLASS32 };
    v[5] = if big { ELFDATA2MSB } else { ELFDATA2LSB };
    v[6] = 1; // EI_VERSION
    put(&mut v, 0x10, 2, 1); // e_type ET_REL
    v[modinfo_off..str_off].copy_from_slice(modinfo);
    v[str_off..shoff].copy_from_slice(shstrtab);
    let (shoff_at, rest) = if wide { (0x28, 0x3a) } else { (0x20, 0x2e) };
    let word = if wide { 8 } else { 4 };
    put(&mut v, shoff_at, word, shoff as u64);
    put(&mut v, rest, 2, shentsize as u64);
    put(&mut v, rest + 2, 2, 3);
    put(&mut v, rest + 4, 2, 2);
    let (off_at, size_at) = if wide { (0x18, 0x20) } else { (0x10, 0x14) };
    for (i, (name, off, size)) in [
        (1u64, modinfo_off, modinfo.len()),
        (10, str_off, shstrtab.len()),
    ]
    .into_iter()
    .enumerate()
    {
        let at = shoff + (i + 1) * shentsize;
        put(&mut v, at, 4, name);
        put(&mut v, at + off_at, word, off as u64);
        put(&mut v, at + size_at, word, size as u64);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &[u8] =
        b"license=GPL\0depends=virtio,virtio_ring\0vermagic=6.1.0-18-amd64 SMP mod_unload \0";

    #[test]
    fn vermagic_of_every_class_and_order() {
        for wide in [false, true] {
            for big in [false, true] {
                let elf = test_elf(INFO, wide, big);
                let v = vermagic(&elf).unwrap().unwrap();
                assert_eq!(v, "6.1.0-18-amd64 SMP mod_unload ", "wide {wide} big {big}");
                assert_eq!(vermagic_release(&v), "6.1.0-18-amd64");
                let e = modinfo_entries(modinfo_section(&elf).unwrap().unwrap());
                assert_eq!(e[1], ("depends".into(), "virtio,virtio_ring".into()));
            }
        }
        assert_eq!(
            vermagic(&test_elf(b"license=GPL\0", true, false)).unwrap(),
            None
        );
    }

    #[test]
    fn bad_objects_are_errors_not_panics() {
        let e = vermagic(b"\x28\xb5\x2f\xfd compressed").unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
        let mut elf = test_elf(INFO, true, false);
        // A section offset far past the end.
        let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().unwrap()) as usize;
        elf[shoff + 0x40 + 0x18..shoff + 0x40 + 0x20].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = vermagic(&elf).unwrap_err();
        assert!(e.to_string().contains("section 1"), "{e}");
        // Every truncation of a valid object is an error or a clean answer.
        let elf = test_elf(INFO, false, true);
        for n in 0..elf.len() {
            let _ = vermagic(&elf[..n]);
        }
        // A string table index past the sections.
        let mut elf = test_elf(INFO, true, false);
        elf[0x3e] = 9;
        assert!(vermagic(&elf).is_err());
    }
}
