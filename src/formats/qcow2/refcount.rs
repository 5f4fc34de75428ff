//! Refcount tables and blocks (qcow2.txt, "Cluster refcounts").
//!
//! A refcount block is one cluster of big-endian refcounts of `1 << refcount_order` bits each;
//! the refcount table is an array of big-endian u64 offsets of refcount blocks.

/// Bits of a refcount table entry that must be zero (0-8).
pub const REFTABLE_RESERVED: u64 = 0x1ff;

/// Number of refcounts in one refcount block.
pub fn entries_per_block(cluster_bits: u32, refcount_order: u32) -> u64 {
    ((1u64 << cluster_bits) * 8) >> refcount_order
}

/// Reads refcount `index` from a refcount block of the given width.
/// The caller guarantees `index < entries_per_block`.
pub fn get(block: &[u8], index: u64, refcount_order: u32) -> u64 {
    let bits = 1u32 << refcount_order;
    match bits {
        8 => u64::from(block[index as usize]),
        16 => {
            let i = index as usize * 2;
            u64::from(u16::from_be_bytes([block[i], block[i + 1]]))
        }
        32 => {
            let i = index as usize * 4;
            u64::from(u32::from_be_bytes([
                block[i],
                block[i + 1],
                block[i + 2],
                block[i + 3],
            ]))
        }
        64 => {
            let i = index as usize * 8;
            let mut a = [0u8; 8];
            a.copy_from_slice(&block[i..i + 8]);
            u64::from_be_bytes(a)
        }
        _ => {
            // 1, 2 or 4 bits: packed, lowest-order bits first within each byte.
            let per_byte = 8 / bits as u64;
            let byte = block[(index / per_byte) as usize];
            let shift = (index % per_byte) as u32 * bits;
            u64::from(byte >> shift) & ((1u64 << bits) - 1)
        }
    }
}

/// Writes refcount `index` into a refcount block. `value` must fit the width.
pub fn set(block: &mut [u8], index: u64, refcount_order: u32, value: u64) {
    let bits = 1u32 << refcount_order;
    match bits {
        8 => block[index as usize] = value as u8,
        16 => {
            let i = index as usize * 2;
            block[i..i + 2].copy_from_slice(&(value as u16).to_be_bytes());
        }
        32 => {
            let i = index as usize * 4;
            block[i..i + 4].copy_from_slice(&(value as u32).to_be_bytes());
        }
        64 => {
            let i = index as usize * 8;
            block[i..i + 8].copy_from_slice(&value.to_be_bytes());
        }
        _ => {
            let per_byte = 8 / bits as u64;
            let b = &mut block[(index / per_byte) as usize];
            let shift = (index % per_byte) as u32 * bits;
            let mask = (((1u32 << bits) - 1) << shift) as u8;
            *b = (*b & !mask) | (((value as u8) << shift) & mask);
        }
    }
}

/// Largest refcount the width can hold.
pub fn max_value(refcount_order: u32) -> u64 {
    if refcount_order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << refcount_order)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_round_trips() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let n = entries_per_block(9, order);
            assert_eq!(n * (1 << order), 4096);
            let max = max_value(order);
            for i in 0..n {
                set(&mut block, i, order, (i * 7) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get(&block, i, order),
                    (i * 7) & max,
                    "order {order} index {i}"
                );
            }
        }
        let mut b = vec![0u8; 2];
        set(&mut b, 0, 4, 1);
        assert_eq!(b, [0, 1]);
    }
}
