//! The NTFS boot sector (BIOS parameter block): geometry of the volume and where `$MFT` is.

use super::NtfsError;
use crate::bytes::{le16, le64};

/// OEM id of an NTFS volume (bytes 3..11): ASCII "NTFS    ".
pub const OEM_NTFS: &[u8; 8] = b"NTFS    ";
/// OEM id of a BitLocker-encrypted volume: ASCII "-FVE-FS-".
pub const OEM_BITLOCKER: &[u8; 8] = b"-FVE-FS-";
/// Boot sector signature at bytes 510..512.
pub const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xAA];

/// The validated geometry of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// Bytes per sector (256..=4096).
    pub bytes_per_sector: u32,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Sectors of the volume (the backup boot sector follows them).
    pub total_sectors: u64,
    /// Clusters of the volume.
    pub total_clusters: u64,
    /// First cluster of `$MFT`.
    pub mft_lcn: u64,
    /// First cluster of `$MFTMirr`.
    pub mftmirr_lcn: u64,
    /// Bytes per MFT record.
    pub record_size: u32,
    /// Bytes per index block.
    pub index_block_size: u32,
    /// Volume serial number.
    pub serial: u64,
}

/// Decodes a "clusters per record / index block" byte: positive = clusters, negative = 2^-n
/// bytes.
fn size_field(raw: u8, cluster_size: u64, what: &str, at: usize) -> Result<u32, NtfsError> {
    let signed = raw as i8;
    let bytes: u64 = if signed > 0 {
        u64::from(signed as u8) * cluster_size
    } else {
        let shift = u32::from(signed.unsigned_abs());
        if signed == 0 || !(9..=16).contains(&shift) {
            return Err(NtfsError::invalid(
                "boot sector",
                at as u64,
                format!(
                    "{what} field {raw:#04x} is neither clusters (1..127) nor 2^-n bytes with n in 9..16"
                ),
            ));
        }
        1u64 << shift
    };
    if !bytes.is_power_of_two() || !(512..=65536).contains(&bytes) {
        return Err(NtfsError::invalid(
            "boot sector",
            at as u64,
            format!(
                "{what} of {bytes} bytes (field {raw:#04x}): expected a power of two from 512 to 65536"
            ),
        ));
    }
    Ok(bytes as u32)
}

impl Boot {
    /// Parses and validates the first 512 bytes of a volume of `disk_len` bytes. A BitLocker
    /// volume is [`NtfsError::NotWritable`] naming BitLocker.
    pub fn parse(b: &[u8], disk_len: u64) -> Result<Boot, NtfsError> {
        if b.len() < 512 {
            return Err(NtfsError::invalid(
                "boot sector",
                0,
                format!("need 512 bytes, the volume has {}", b.len()),
            ));
        }
        if &b[3..11] == OEM_BITLOCKER {
            return Err(NtfsError::NotWritable {
                reason: "the volume is BitLocker-encrypted (boot sector OEM id \"-FVE-FS-\"); \
                         decrypt it in Windows (manage-bde -off) first"
                    .into(),
            });
        }
        if &b[3..11] != OEM_NTFS {
            return Err(NtfsError::invalid(
                "boot sector",
                3,
                format!(
                    "OEM id must be \"NTFS    \", found {:?}",
                    String::from_utf8_lossy(&b[3..11])
                ),
            ));
        }
        if b[510..512] != BOOT_SIGNATURE {
            return Err(NtfsError::invalid(
                "boot sector",
                510,
                format!(
                    "signature must be 55 aa, found {:02x} {:02x}",
                    b[510], b[511]
                ),
            ));
        }
        let bps = u32::from(le16(b, 0x0B));
        if !bps.is_power_of_two() || !(256..=4096).contains(&bps) {
            return Err(NtfsError::invalid(
                "boot sector",
                0x0B,
                format!("bytes per sector {bps}: expected a power of two from 256 to 4096"),
            ));
        }
        let spc_raw = b[0x0D];
        let spc: u64 = match spc_raw {
            0 => 0,
            1..=0x80 => u64::from(spc_raw),
            // 2^-n encoding for clusters over 64 KiB: 0xF4 = 2^12 sectors, ...
            _ => {
                let shift = 256 - u32::from(spc_raw);
                if shift > 20 { 0 } else { 1u64 << shift }
            }
        };
        if spc == 0 || !spc.is_power_of_two() {
            return Err(NtfsError::invalid(
                "boot sector",
                0x0D,
                format!("sectors per cluster field {spc_raw:#04x} is not a power of two"),
            ));
        }
        let cluster_size = spc * u64::from(bps);
        if cluster_size > 2 * 1024 * 1024 {
            return Err(NtfsError::invalid(
                "boot sector",
                0x0D,
                format!("cluster size {cluster_size} bytes is over the 2 MiB NTFS maximum"),
            ));
        }
        let total_sectors = le64(b, 0x28);
        let total_clusters = total_sectors / spc;
        if total_clusters < 16 {
            return Err(NtfsError::invalid(
                "boot sector",
                0x28,
                format!("total sectors {total_sectors} make only {total_clusters} clusters"),
            ));
        }
        let vol_bytes = total_sectors
            .checked_mul(u64::from(bps))
            .ok_or_else(|| NtfsError::invalid("boot sector", 0x28, "total sectors overflow"))?;
        if vol_bytes > disk_len {
            return Err(NtfsError::invalid(
                "boot sector",
                0x28,
                format!(
                    "the volume is truncated: the boot sector says {vol_bytes} bytes \
                     ({total_sectors} sectors of {bps}), the disk holds only {disk_len}"
                ),
            ));
        }
        let mft_lcn = le64(b, 0x30);
        let mftmirr_lcn = le64(b, 0x38);
        for (v, at, what) in [(mft_lcn, 0x30, "$MFT"), (mftmirr_lcn, 0x38, "$MFTMirr")] {
            if v == 0 || v >= total_clusters {
                return Err(NtfsError::invalid(
                    "boot sector",
                    at,
                    format!("{what} cluster {v} is outside the volume (1..{total_clusters})"),
                ));
            }
        }
        let record_size = size_field(b[0x40], cluster_size, "MFT record size", 0x40)?;
        if !(1024..=4096).contains(&record_size) {
            return Err(NtfsError::invalid(
                "boot sector",
                0x40,
                format!("MFT record size {record_size}: expected 1024 to 4096 bytes"),
            ));
        }
        let index_block_size = size_field(b[0x44], cluster_size, "index block size", 0x44)?;
        Ok(Boot {
            bytes_per_sector: bps,
            cluster_size,
            total_sectors,
            total_clusters,
            mft_lcn,
            mftmirr_lcn,
            record_size,
            index_block_size,
            serial: le64(b, 0x48),
        })
    }

    /// The "clusters per index block" byte of an `$INDEX_ROOT` header: clusters when a block
    /// holds at least one cluster, else 512-byte units.
    pub fn clusters_per_index_block(&self) -> u8 {
        let v = if u64::from(self.index_block_size) >= self.cluster_size {
            u64::from(self.index_block_size) / self.cluster_size
        } else {
            u64::from(self.index_block_size) / 512
        };
        v.min(255) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot sector like mkntfs writes for 8 MiB with 4 KiB clusters.
    pub(crate) fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[3..11].copy_from_slice(OEM_NTFS);
        b[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes()); // bytes per sector
        b[0x0D] = 8; // sectors per cluster
        b[0x28..0x30].copy_from_slice(&16383u64.to_le_bytes()); // total sectors
        b[0x30..0x38].copy_from_slice(&4u64.to_le_bytes()); // $MFT LCN
        b[0x38..0x40].copy_from_slice(&1023u64.to_le_bytes()); // $MFTMirr LCN
        b[0x40] = 0xF6; // 2^10 = 1024-byte records
        b[0x44] = 1; // one cluster per index block
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn parses_geometry() {
        let g = Boot::parse(&sample(), 8 << 20).unwrap();
        assert_eq!(g.cluster_size, 4096);
        assert_eq!(g.total_clusters, 2047);
        assert_eq!(g.record_size, 1024);
        assert_eq!(g.index_block_size, 4096);
        assert_eq!(g.clusters_per_index_block(), 1);
    }

    #[test]
    fn negative_cluster_encoding() {
        let mut b = sample();
        b[0x0D] = 0xF9; // 2^7 sectors = 64 KiB clusters
        b[0x28..0x30].copy_from_slice(&(128u64 * 100).to_le_bytes());
        b[0x38..0x40].copy_from_slice(&50u64.to_le_bytes());
        let g = Boot::parse(&b, 8 << 20).unwrap();
        assert_eq!(g.cluster_size, 65536);
        assert_eq!(g.clusters_per_index_block(), 1);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut b = sample();
        b[0x0B] = 3;
        let e = Boot::parse(&b, 8 << 20).unwrap_err().to_string();
        assert!(e.contains("bytes per sector"), "{e}");
        let mut b = sample();
        b[0x40] = 0;
        assert!(Boot::parse(&b, 8 << 20).is_err());
        let e = Boot::parse(&sample(), 1 << 20).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut b = sample();
        b[3..11].copy_from_slice(OEM_BITLOCKER);
        let e = Boot::parse(&b, 8 << 20).unwrap_err().to_string();
        assert!(e.contains("BitLocker"), "{e}");
        assert!(Boot::parse(&b[..100], 8 << 20).is_err());
    }
}
