//! Allocation bitmaps (`$Bitmap` for clusters, `$MFT`'s `$BITMAP` for records) held in memory:
//! lookups and first-fit allocation preferring one contiguous extent. The volume writes the
//! changed bytes back through the bitmap's run list.

/// A bitmap of `bits` entries (bit set = in use).
#[derive(Debug, Clone)]
pub struct Bitmap {
    /// The bytes as on disk.
    pub bytes: Vec<u8>,
    /// Number of meaningful bits (entries past it count as used).
    pub bits: u64,
}

impl Bitmap {
    /// Whether entry `i` is in use (entries past the end are).
    pub fn get(&self, i: u64) -> bool {
        if i >= self.bits {
            return true;
        }
        match self.bytes.get((i / 8) as usize) {
            Some(b) => b & (1 << (i % 8)) != 0,
            None => true,
        }
    }

    /// Marks entries `start..start+len` used or free; returns the changed byte range.
    pub fn set_range(&mut self, start: u64, len: u64, used: bool) -> std::ops::Range<usize> {
        let end = start.saturating_add(len).min(self.bits);
        for i in start..end {
            let byte = (i / 8) as usize;
            if let Some(b) = self.bytes.get_mut(byte) {
                if used {
                    *b |= 1 << (i % 8);
                } else {
                    *b &= !(1 << (i % 8));
                }
            }
        }
        if end <= start {
            return 0..0;
        }
        (start / 8) as usize..(end.div_ceil(8)) as usize
    }

    /// Free entries.
    pub fn count_free(&self) -> u64 {
        let full = (self.bits / 8) as usize;
        let mut used: u64 = self
            .bytes
            .iter()
            .take(full)
            .map(|b| u64::from(b.count_ones()))
            .sum();
        for i in (full as u64 * 8)..self.bits {
            used += u64::from(self.get(i));
        }
        self.bits - used.min(self.bits)
    }

    /// The free extents from `from`, in order, as (start, len); stops once `enough` entries
    /// are collected.
    fn free_extents(&self, from: u64, enough: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut total = 0;
        let mut i = from;
        while i < self.bits {
            // Skip whole used bytes quickly.
            if i % 8 == 0 && self.bytes.get((i / 8) as usize) == Some(&0xFF) {
                i += 8;
                continue;
            }
            if self.get(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.bits && !self.get(i) {
                i += 1;
            }
            out.push((start, i - start));
            total += i - start;
            if total >= enough {
                break;
            }
        }
        out
    }

    /// The first free entry at or after `from`.
    pub fn first_free(&self, from: u64) -> Option<u64> {
        self.free_extents(from, 1).first().map(|e| e.0)
    }

    /// Chooses `n` free entries: one contiguous extent when there is one (the first fitting
    /// extent at or after `hint`, then from the start), else the first free extents in order.
    /// `None` when fewer than `n` are free. Nothing is marked.
    pub fn choose(&self, n: u64, hint: u64) -> Option<Vec<(u64, u64)>> {
        if n == 0 {
            return Some(Vec::new());
        }
        for from in [hint.min(self.bits), 0] {
            let mut i = from;
            while i < self.bits {
                let ext = self.free_extents(i, 1);
                let Some(&(s, l)) = ext.first() else { break };
                if l >= n {
                    return Some(vec![(s, n)]);
                }
                i = s + l;
            }
        }
        let mut out = Vec::new();
        let mut left = n;
        for (s, l) in self.free_extents(0, n) {
            let take = l.min(left);
            out.push((s, take));
            left -= take;
            if left == 0 {
                return Some(out);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_preferred_then_fragments() {
        // 0..4 used, 4..6 free, 6..8 used, 8..20 free, 20..24 used.
        let mut b = Bitmap {
            bytes: vec![0b1100_1111, 0x00, 0xF0],
            bits: 24,
        };
        assert_eq!(b.count_free(), 14);
        assert_eq!(b.choose(5, 0), Some(vec![(8, 5)]));
        assert_eq!(b.choose(2, 0), Some(vec![(4, 2)]));
        assert_eq!(b.choose(2, 10), Some(vec![(10, 2)]));
        assert_eq!(b.choose(13, 0), Some(vec![(4, 2), (8, 11)]));
        assert_eq!(b.choose(15, 0), None);
        let r = b.set_range(8, 12, true);
        assert_eq!(r, 1..3);
        assert_eq!(b.count_free(), 2);
        assert_eq!(b.first_free(0), Some(4));
        b.set_range(4, 2, true);
        assert_eq!(b.first_free(0), None);
    }

    #[test]
    fn bits_past_the_end_are_used() {
        let b = Bitmap {
            bytes: vec![0, 0],
            bits: 10,
        };
        assert_eq!(b.count_free(), 10);
        assert!(b.get(10));
        assert_eq!(b.choose(11, 0), None);
    }
}
