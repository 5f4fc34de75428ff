//! Mapping pairs: the compressed run list of a non-resident attribute (VCN ranges mapped to
//! LCNs, or sparse).
//!
//! Each pair starts with a header byte: its low nibble is the byte count of the run length, its
//! high nibble the byte count of the LCN delta (0 for a sparse run). Both fields are
//! little-endian and signed; the delta is relative to the previous non-sparse run's LCN (0 for
//! the first). A zero header byte ends the list.

use super::NtfsError;

/// One run: `len` clusters from `vcn`, stored at `lcn` (or sparse when `lcn` is `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First virtual cluster of the run.
    pub vcn: u64,
    /// Clusters in the run (>= 1).
    pub len: u64,
    /// First logical cluster on the volume, `None` for a sparse (unallocated) run.
    pub lcn: Option<u64>,
}

/// Reads a little-endian signed integer of `bytes.len()` (1..=8) bytes.
fn read_signed(bytes: &[u8]) -> i64 {
    let mut v: i64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        v |= i64::from(b) << (8 * i);
    }
    let bits = 8 * bytes.len();
    if bits < 64 && bits > 0 {
        // Sign-extend from the field's top bit.
        let shift = 64 - bits;
        v = (v << shift) >> shift;
    }
    v
}

/// The fewest bytes that hold `v` as a signed little-endian integer.
fn signed_width(v: i64) -> usize {
    let mut n = 1;
    while n < 8 {
        let bits = 8 * n;
        let min = -(1i64 << (bits - 1));
        let max = (1i64 << (bits - 1)) - 1;
        if v >= min && v <= max {
            break;
        }
        n += 1;
    }
    n
}

/// Decodes mapping pairs starting at `first_vcn` (the attribute's lowest VCN). `offset` is the
/// absolute byte offset of `bytes`, for errors. Stops at the terminating zero byte; a missing
/// terminator, an LCN below 0 or past `total_clusters`, or a zero-length run is an error.
pub fn decode(
    bytes: &[u8],
    first_vcn: u64,
    total_clusters: u64,
    offset: u64,
) -> Result<Vec<Run>, NtfsError> {
    const WHAT: &str = "mapping pairs";
    let at = |pos: usize| offset.saturating_add(pos as u64);
    let mut runs = Vec::new();
    let mut pos = 0usize;
    let mut vcn = first_vcn;
    let mut lcn: i64 = 0;
    // Every pair takes at least two bytes, so the loop ends within bytes.len() / 2 + 1 turns.
    loop {
        let Some(&header) = bytes.get(pos) else {
            return Err(NtfsError::invalid(
                WHAT,
                at(pos),
                format!(
                    "run list ends after {} bytes without its terminating zero byte",
                    bytes.len()
                ),
            ));
        };
        if header == 0 {
            break;
        }
        let len_size = usize::from(header & 0x0F);
        let lcn_size = usize::from(header >> 4);
        if len_size == 0 || len_size > 8 || lcn_size > 8 {
            return Err(NtfsError::invalid(
                WHAT,
                at(pos),
                format!(
                    "pair header {header:#04x}: length field of {len_size} bytes and LCN field of \
                     {lcn_size} bytes (expected 1..=8 and 0..=8)"
                ),
            ));
        }
        let end = pos + 1 + len_size + lcn_size; // at most pos + 17, no overflow
        let Some(fields) = bytes.get(pos + 1..end) else {
            return Err(NtfsError::invalid(
                WHAT,
                at(pos),
                format!(
                    "pair header {header:#04x} needs {} more bytes, only {} left",
                    len_size + lcn_size,
                    bytes.len() - pos - 1
                ),
            ));
        };
        let len = read_signed(&fields[..len_size]);
        if len <= 0 {
            return Err(NtfsError::invalid(
                WHAT,
                at(pos),
                format!("run at VCN {vcn} has length {len}, expected at least 1 cluster"),
            ));
        }
        let len = len as u64; // positive, checked above
        let run_lcn = if lcn_size == 0 {
            None
        } else {
            let delta = read_signed(&fields[len_size..]);
            lcn = lcn.checked_add(delta).ok_or_else(|| {
                NtfsError::invalid(WHAT, at(pos), format!("LCN delta {delta} overflows"))
            })?;
            if lcn < 0 {
                return Err(NtfsError::invalid(
                    WHAT,
                    at(pos),
                    format!("run at VCN {vcn} starts at LCN {lcn}, below 0"),
                ));
            }
            let start = lcn as u64; // non-negative, checked above
            match start.checked_add(len) {
                Some(e) if e <= total_clusters => {}
                _ => {
                    return Err(NtfsError::invalid(
                        WHAT,
                        at(pos),
                        format!(
                            "run at VCN {vcn} covers LCN {start}..{} but the volume has {total_clusters} clusters",
                            start as u128 + len as u128
                        ),
                    ));
                }
            }
            Some(start)
        };
        runs.push(Run {
            vcn,
            len,
            lcn: run_lcn,
        });
        vcn = vcn.checked_add(len).ok_or_else(|| {
            NtfsError::invalid(
                WHAT,
                at(pos),
                format!("VCN overflows after a run of {len} clusters"),
            )
        })?;
        pos = end;
    }
    Ok(runs)
}

/// Encodes runs (contiguous in VCN, the first at the attribute's lowest VCN) as mapping pairs
/// with the terminating zero byte, in the smallest form (signed, minimal-width fields).
/// Zero-length runs are skipped.
pub fn encode(runs: &[Run]) -> Vec<u8> {
    let mut out = Vec::with_capacity(runs.len() * 4 + 1);
    let mut prev: i64 = 0;
    for r in runs.iter().filter(|r| r.len > 0) {
        // Lengths and LCNs on a real volume are far below 2^63; saturate rather than wrap.
        let len = i64::try_from(r.len).unwrap_or(i64::MAX);
        let len_size = signed_width(len);
        let start = out.len();
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes()[..len_size]);
        let mut lcn_size = 0;
        if let Some(lcn) = r.lcn {
            let lcn = i64::try_from(lcn).unwrap_or(i64::MAX);
            let delta = lcn.wrapping_sub(prev);
            lcn_size = signed_width(delta);
            out.extend_from_slice(&delta.to_le_bytes()[..lcn_size]);
            prev = lcn;
        }
        out[start] = (len_size as u8) | ((lcn_size as u8) << 4);
    }
    out.push(0);
    out
}

/// Converts `vcn` to an LCN through `runs`, or `None` when it is sparse or past the end.
pub fn vcn_to_lcn(runs: &[Run], vcn: u64) -> Option<u64> {
    let r = runs.iter().find(|r| vcn >= r.vcn && vcn - r.vcn < r.len)?;
    r.lcn.map(|l| l + (vcn - r.vcn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(vcn: u64, len: u64, lcn: Option<u64>) -> Run {
        Run { vcn, len, lcn }
    }

    #[test]
    fn decodes_a_hand_built_list() {
        let bytes = [
            0x21, 0x18, 0x34, 0x56, // 24 clusters at LCN 0x5634
            0x01, 0x08, // 8 sparse clusters
            0x31, 0x10, 0x00, 0xFF, 0xFF, // 16 clusters at 0x5634 - 0x100 (negative delta)
            0x00, // end
            0xAA, // ignored after the end
        ];
        let runs = decode(&bytes, 0, 0x10000, 0x1000).unwrap();
        assert_eq!(
            runs,
            vec![
                run(0, 24, Some(0x5634)),
                run(24, 8, None),
                run(32, 16, Some(0x5534)),
            ]
        );
        assert_eq!(vcn_to_lcn(&runs, 33), Some(0x5535));
        assert_eq!(vcn_to_lcn(&runs, 25), None);
        assert_eq!(vcn_to_lcn(&runs, 48), None);
    }

    #[test]
    fn encode_is_minimal_and_round_trips() {
        let runs = vec![
            run(5, 0x80, Some(0x7F)), // length 0x80 needs two signed bytes
            run(0x85, 3, None),
            run(0x88, 1, Some(0x10)), // delta -0x6F
            run(0x89, 0x1_0000_0000, Some(0x1_0000_0010)),
        ];
        let bytes = encode(&runs);
        assert_eq!(&bytes[..4], &[0x12, 0x80, 0x00, 0x7F][..]);
        assert_eq!(&bytes[4..6], &[0x01, 0x03]);
        assert_eq!(&bytes[6..9], &[0x11, 0x01, 0x91]);
        assert_eq!(*bytes.last().unwrap(), 0);
        assert_eq!(decode(&bytes, 5, u64::MAX >> 1, 0).unwrap(), runs);
        assert_eq!(encode(&[]), vec![0]);
    }

    #[test]
    fn random_lists_round_trip() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let n = (next() % 20) as usize;
            let mut vcn = next() % 1000;
            let first = vcn;
            let mut runs = Vec::new();
            for _ in 0..n {
                let len = 1 + next() % (1 << (next() % 40));
                let lcn = if next() % 4 == 0 {
                    None
                } else {
                    Some(next() % (1 << 40))
                };
                runs.push(run(vcn, len, lcn));
                vcn += len;
            }
            let bytes = encode(&runs);
            assert_eq!(decode(&bytes, first, 1 << 45, 0).unwrap(), runs);
        }
    }

    #[test]
    fn hostile_lists_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (&[], "terminating zero"),
            (&[0x11, 0x01, 0x02], "terminating zero"),
            (&[0x10, 0x01, 0x00], "length field of 0 bytes"),
            (&[0x19, 0x01], "length field of 9 bytes"),
            (&[0x91, 0x01], "LCN field of 9 bytes"),
            (&[0x21, 0x01, 0x02], "needs 3 more bytes"),
            (&[0x11, 0x00, 0x05, 0x00], "length 0"),
            (&[0x11, 0xFF, 0x05, 0x00], "length -1"),
            (&[0x11, 0x01, 0xFF, 0x00], "below 0"),
            (&[0x11, 0x10, 0x7F, 0x00], "volume has 100 clusters"),
            (
                &[
                    0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, // sparse 2^63-1
                    0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, // sparse 2^63-1
                    0x01, 0x01, 0x00, // one more cluster: past 2^64
                ],
                "VCN overflows",
            ),
        ];
        for (bytes, want) in cases {
            let e = decode(bytes, 1, 100, 0x4000).unwrap_err().to_string();
            assert!(e.contains(want), "{bytes:02x?}: {e}");
            assert!(e.contains("mapping pairs at 0x"), "{e}");
        }
    }

    #[test]
    fn fuzzed_bytes_never_panic() {
        let mut seed = 42u64;
        for _ in 0..20000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = (seed >> 59) as usize;
            let bytes: Vec<u8> = (0..n)
                .map(|i| (seed.rotate_left(i as u32 * 7) >> 13) as u8)
                .collect();
            let _ = decode(&bytes, seed % 7, seed % 100_000, 0);
        }
    }
}
