//! Marvin32, the keyed checksum Windows uses for the two hashes of a new-format (`HvLE`)
//! transaction-log entry.
//!
//! Written from the published description of the algorithm (Microsoft's Marvin32, as used by
//! the .NET runtime for randomized string hashing): two 32-bit state words seeded from a 64-bit
//! key, one mixing round per little-endian 32-bit word of input, the tail padded with a single
//! `0x80` byte, and two extra rounds. The 64-bit result is `hi << 32 | lo`.

/// The seed of the `HvLE` hashes (Suhanov, "Windows registry file format specification",
/// section "Log entries", note 3: bytes `82 EF 4D 88 7A 4E 55 C5`).
pub const HVLE_SEED: u64 = 0x82EF_4D88_7A4E_55C5;

/// One mixing round of Marvin32 on the state `(lo, hi)`.
fn mix(lo: &mut u32, hi: &mut u32) {
    *hi ^= *lo;
    *lo = lo.rotate_left(20).wrapping_add(*hi);
    *hi = hi.rotate_left(9) ^ *lo;
    *lo = lo.rotate_left(27).wrapping_add(*hi);
    *hi = hi.rotate_left(19);
}

/// The 64-bit Marvin32 hash of `data` with `seed`.
pub fn marvin32(seed: u64, data: &[u8]) -> u64 {
    let mut lo = seed as u32;
    let mut hi = (seed >> 32) as u32;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        lo = lo.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        mix(&mut lo, &mut hi);
    }
    // The 0..=3 remaining bytes, little-endian, followed by the 0x80 padding byte.
    let mut last = 0x80u32;
    for &b in words.remainder().iter().rev() {
        last = (last << 8) | u32::from(b);
    }
    lo = lo.wrapping_add(last);
    mix(&mut lo, &mut hi);
    mix(&mut lo, &mut hi);
    (u64::from(hi) << 32) | u64::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The published test vectors of the .NET runtime's Marvin tests (three seeds, inputs of
    /// 0 to 7 bytes, so every tail length and the empty input are covered).
    #[test]
    fn published_vectors() {
        const S1: u64 = 0x004F_B61A_001B_DBCC;
        const S2: u64 = 0x804F_B61A_001B_DBCC;
        const S3: u64 = 0x804F_B61A_801B_DBCC;
        let cases: &[(u64, &str, u64)] = &[
            (S1, "", 0x30ED_35C1_00CD_3C7D),
            (S1, "af", 0x48E7_3FC7_7D75_DDC1),
            (S1, "e70f", 0xB5F6_E1FC_485D_BFF8),
            (S1, "37f495", 0xF0B0_7C78_9B8C_F7E8),
            (S1, "8642dc59", 0x7008_F2E8_7E9C_F556),
            (S1, "153fb79826", 0xE6C0_8C6D_A2AF_A997),
            (S1, "0932e6246c47", 0x6F04_BF1A_5EA2_4060),
            (S1, "ab427ea8d10fc7", 0xE118_47E4_F067_8C41),
            (S2, "", 0x10A9_D5D3_996F_D65D),
            (S2, "af", 0x6820_1F91_960E_BF91),
            (S2, "e70f", 0x64B5_8163_1F6A_B378),
            (S2, "37f495", 0xE1F2_DFA6_E513_1408),
            (S2, "8642dc59", 0x3628_9D96_54FB_49F6),
            (S2, "153fb79826", 0x0A06_114B_1346_4DBD),
            (S2, "0932e6246c47", 0xD6DD_5E40_AD1B_C2ED),
            (S2, "ab427ea8d10fc7", 0xE203_987D_BA25_2FB3),
            (S3, "00", 0xA37F_B0DA_2ECA_E06C),
            (S3, "ff", 0xFECE_F370_701A_E054),
            (S3, "00ff", 0xA638_E757_0004_8880),
            (S3, "ff00", 0xBDFB_46D9_6973_0E2A),
            (S3, "ff00ff", 0x9D85_77C0_FE0D_30BF),
            (S3, "00ff00", 0x4F9F_BDDE_1509_9497),
            (S3, "00ff00ff", 0x24EA_A279_D9A5_29CA),
            (S3, "ff00ff00", 0xD3BE_C772_6B05_7943),
            (S3, "ff00ff00ff", 0x920B_62BB_CA3E_0B72),
            (S3, "00ff00ff00", 0x1D7D_DF9D_FDF3_C1BF),
            (S3, "00ff00ff00ff", 0xEC21_276A_17E8_21A5),
            (S3, "ff00ff00ff00", 0x6911_A53C_A8C1_2254),
            (S3, "ff00ff00ff00ff", 0xFDFD_187B_1D3C_E784),
            (S3, "00ff00ff00ff00", 0x7187_6F2E_FB1B_0EE8),
        ];
        for &(seed, data, want) in cases {
            assert_eq!(
                marvin32(seed, &unhex(data)),
                want,
                "seed {seed:#x} data {data}"
            );
        }
    }
}
