//! Index tree tests on an in-memory store that applies and checks fixups like a volume.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::node::*;
use super::*;
use crate::guest::ntfs::fixup;

/// An index in memory: the root value and fixed-up INDX blocks by VCN.
struct MemStore {
    bs: u32,
    per: u64,
    root: Vec<u8>,
    cap: usize,
    blocks: BTreeMap<u64, Vec<u8>>,
    next: u64,
    max_blocks: usize,
}

impl MemStore {
    fn new(bs: u32, cap: usize) -> MemStore {
        MemStore {
            bs,
            per: u64::from(bs / 512),
            root: new_root(bs, 1),
            cap,
            blocks: BTreeMap::new(),
            next: 0,
            max_blocks: usize::MAX,
        }
    }
}

impl IndexStore for MemStore {
    fn block_size(&self) -> u32 {
        self.bs
    }
    fn vcn_per_block(&self) -> u64 {
        self.per
    }
    fn root(&self) -> Result<Vec<u8>> {
        Ok(self.root.clone())
    }
    fn root_capacity(&self) -> Result<usize> {
        Ok(self.cap)
    }
    fn set_root(&mut self, value: &[u8]) -> Result<()> {
        assert!(
            value.len() <= self.cap,
            "root of {} > {}",
            value.len(),
            self.cap
        );
        self.root = value.to_vec();
        Ok(())
    }
    fn read_block(&self, vcn: u64) -> Result<Vec<u8>> {
        let mut b = self
            .blocks
            .get(&vcn)
            .cloned()
            .ok_or_else(|| NtfsError::corrupt("test index", vcn, "no such block"))?;
        fixup::remove(&mut b, "index block", vcn)?;
        Ok(b)
    }
    fn write_block(&mut self, vcn: u64, block: &[u8]) -> Result<()> {
        assert_eq!(block.len(), self.bs as usize);
        assert_eq!(&block[0..4], b"INDX");
        assert_eq!(
            u64::from_le_bytes(block[0x10..0x18].try_into().unwrap()),
            vcn
        );
        assert!(
            vcn < self.next && vcn % self.per == 0,
            "write to unallocated VCN {vcn}"
        );
        let mut b = block.to_vec();
        fixup::apply(&mut b, "index block", vcn)?;
        self.blocks.insert(vcn, b);
        Ok(())
    }
    fn allocate_block(&mut self) -> Result<u64> {
        if self.blocks.len() >= self.max_blocks
            || (self.next / self.per) as usize >= self.max_blocks
        {
            return Err(NtfsError::NoSpace {
                detail: "test store full".into(),
            }
            .into());
        }
        let v = self.next;
        self.next += self.per;
        Ok(v)
    }
}

fn w(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

/// A `$FILE_NAME` value: parent reference, four times, sizes, flags, name.
fn fn_key(name: &[u16], ns: u8) -> Vec<u8> {
    let mut k = vec![0u8; FN_NAME + 2 * name.len()];
    k[0..8].copy_from_slice(&(5u64 | 5 << 48).to_le_bytes()); // parent: root folder, seq 5
    k[0x30..0x38].copy_from_slice(&(name.len() as u64).to_le_bytes()); // real size (marker)
    k[FN_NAME_LEN] = name.len() as u8;
    k[FN_NAMESPACE] = ns;
    for (i, u) in name.iter().enumerate() {
        k[FN_NAME + 2 * i..FN_NAME + 2 * i + 2].copy_from_slice(&u.to_le_bytes());
    }
    k
}

fn entry(name: &[u16], r: u64) -> IndexEntry {
    IndexEntry {
        file_ref: r,
        key: fn_key(name, 1),
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random name: ASCII letters of both cases, digits, punctuation, Latin-1, Greek, Cyrillic,
/// CJK and (rarely) a surrogate pair.
fn random_name(rng: &mut Rng) -> Vec<u16> {
    random_name_upto(rng, 200)
}

fn random_name_upto(rng: &mut Rng, long: u64) -> Vec<u16> {
    let max = if rng.below(10) == 0 { long } else { 20 };
    let len = 1 + rng.below(max) as usize;
    let mut v = Vec::with_capacity(len + 1);
    while v.len() < len {
        let u = match rng.below(12) {
            0..=3 => b'a' as u16 + rng.below(26) as u16,
            4..=6 => b'A' as u16 + rng.below(26) as u16,
            7 => b'0' as u16 + rng.below(10) as u16,
            8 => [b'.', b'_', b'-', b' ', b'~', b'$'][rng.below(6) as usize] as u16,
            9 => 0xC0 + rng.below(0x40) as u16,
            10 => {
                [0x391, 0x3B1, 0x410, 0x430, 0x4E00][rng.below(5) as usize] + rng.below(24) as u16
            }
            _ => {
                v.push(0xD83D);
                0xDE00 + rng.below(0x40) as u16
            }
        };
        v.push(u);
    }
    v
}

/// Walks the whole tree checking the invariants; returns the names in order.
fn check_tree(s: &MemStore, up: &UpCase) -> Vec<Vec<u16>> {
    let (hdr, root) = parse_root(&s.root).unwrap();
    assert!(s.root.len() <= s.cap);
    let mut names = Vec::new();
    let mut leaf_depths = std::collections::BTreeSet::new();
    fn rec(
        s: &MemStore,
        bs: u32,
        node: &Node,
        depth: usize,
        names: &mut Vec<Vec<u16>>,
        leaves: &mut std::collections::BTreeSet<usize>,
    ) {
        let inner = node.end_child.is_some();
        assert!(
            node.entries.iter().all(|e| e.child.is_some() == inner),
            "mixed leaf/inner entries at depth {depth}"
        );
        if !inner {
            leaves.insert(depth);
        }
        let visit = |vcn: u64, names: &mut Vec<Vec<u16>>, leaves: &mut _| {
            let raw = s.read_block(vcn).unwrap();
            let (tmpl, child) = parse_block(&raw, bs, vcn).unwrap();
            assert!(child.entries_len() <= tmpl.capacity(bs));
            rec(s, bs, &child, depth + 1, names, leaves);
        };
        for e in &node.entries {
            if let Some(c) = e.child {
                visit(c, names, leaves);
            }
            names.push(key_name(&e.key).unwrap());
        }
        if let Some(c) = node.end_child {
            visit(c, names, leaves);
        }
    }
    rec(s, hdr.block_size, &root, 0, &mut names, &mut leaf_depths);
    assert_eq!(leaf_depths.len(), 1, "leaves at depths {leaf_depths:?}");
    for pair in names.windows(2) {
        assert_eq!(
            up.compare(&pair[0], &pair[1]),
            Ordering::Less,
            "{:?} before {:?}",
            String::from_utf16_lossy(&pair[0]),
            String::from_utf16_lossy(&pair[1])
        );
    }
    // entries() agrees with the walk.
    let listed: Vec<Vec<u16>> = entries(s)
        .unwrap()
        .iter()
        .map(|e| e.name().unwrap())
        .collect();
    assert_eq!(listed, names);
    names
}

fn flip_case(up: &UpCase, name: &[u16]) -> Vec<u16> {
    // Upper-case every unit (collation treats it as equal).
    name.iter().map(|&u| up.upcase(u)).collect()
}

#[test]
fn new_root_layout() {
    let r = new_root(4096, 1);
    // Root header: $FILE_NAME, COLLATION_FILE_NAME, 4096-byte blocks, 1 cluster per block.
    assert_eq!(
        &r[0..16],
        &[0x30, 0, 0, 0, 1, 0, 0, 0, 0, 0x10, 0, 0, 1, 0, 0, 0]
    );
    // Node header: entries at 0x10, 0x20 bytes used and allocated, no children.
    assert_eq!(
        &r[16..32],
        &[0x10, 0, 0, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0]
    );
    // End entry: no file, 0x10 bytes, no key, flag LAST.
    assert_eq!(
        &r[32..48],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 2, 0, 0, 0]
    );
    assert_eq!(r.len(), 48);
    let s = MemStore::new(4096, 1024);
    assert!(entries(&s).unwrap().is_empty());
    assert_eq!(lookup(&s, &UpCase::default_table(), &w("x")).unwrap(), None);
}

#[test]
fn parses_a_hand_built_block() {
    // A 4096-byte INDX block at VCN 8 holding "a" (leaf entry) and an end entry, built byte by
    // byte, fixups applied as on disk.
    let mut b = vec![0u8; 4096];
    b[0..4].copy_from_slice(b"INDX");
    b[4..6].copy_from_slice(&0x28u16.to_le_bytes()); // update sequence array offset
    b[6..8].copy_from_slice(&9u16.to_le_bytes()); // 1 + 8 strides
    b[0x10..0x18].copy_from_slice(&8u64.to_le_bytes()); // VCN
    let key = fn_key(&w("a"), 3);
    let elen = 0x10 + ((key.len() + 7) & !7);
    b[0x18..0x1C].copy_from_slice(&0x28u32.to_le_bytes()); // entries at 0x18 + 0x28 = 0x40
    b[0x1C..0x20].copy_from_slice(&((0x28 + elen + 0x10) as u32).to_le_bytes()); // in use
    b[0x20..0x24].copy_from_slice(&(4096u32 - 0x18).to_le_bytes()); // allocated
    let e = 0x40;
    b[e..e + 8].copy_from_slice(&(77u64 | 1 << 48).to_le_bytes()); // file reference
    b[e + 8..e + 10].copy_from_slice(&(elen as u16).to_le_bytes()); // entry length
    b[e + 10..e + 12].copy_from_slice(&(key.len() as u16).to_le_bytes()); // key length
    b[e + 16..e + 16 + key.len()].copy_from_slice(&key);
    let end = e + elen;
    b[end + 8] = 0x10; // end entry length
    b[end + 12] = 2; // LAST
    fixup::apply(&mut b, "t", 0).unwrap();
    fixup::remove(&mut b, "t", 0).unwrap();
    let (tmpl, node) = parse_block(&b, 4096, 8).unwrap();
    assert_eq!(tmpl.head.len(), 0x40);
    assert_eq!(node.entries.len(), 1);
    assert_eq!(node.entries[0].file_ref, 77 | 1 << 48);
    assert_eq!(key_name(&node.entries[0].key).unwrap(), w("a"));
    assert_eq!(node.end_child, None);
    // Serializing it again gives the same bytes.
    assert_eq!(block_bytes(&tmpl, 4096, &node).unwrap(), b);
    // Wrong VCN, size or signature are errors naming them.
    let err = parse_block(&b, 4096, 16).unwrap_err().to_string();
    assert!(
        err.contains("VCN 8") && err.contains("expected 16"),
        "{err}"
    );
    assert!(parse_block(&b[..2048], 4096, 8).is_err());
    let mut bad = b.clone();
    bad[0] = b'X';
    assert!(
        parse_block(&bad, 4096, 8)
            .unwrap_err()
            .to_string()
            .contains("INDX")
    );
}

fn fill(bs: u32, cap: usize, n: usize, seed: u64) -> (MemStore, Vec<Vec<u16>>) {
    // Names up to a quarter of a block, so that any node can split.
    let long = (u64::from(bs / 4 - 0x60) / 2).min(250);
    let up = UpCase::default_table();
    let mut s = MemStore::new(bs, cap);
    let mut rng = Rng(seed);
    let mut names: Vec<Vec<u16>> = Vec::new();
    let mut batch = 0;
    while names.len() < n {
        let name = random_name_upto(&mut rng, long);
        let dup = names.iter().any(|o| up.eq_ignore_case(o, &name));
        let r = insert(&mut s, &up, entry(&name, 100 + names.len() as u64));
        if dup {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("already has"), "{e}");
            continue;
        }
        r.unwrap();
        names.push(name);
        batch += 1;
        if batch % 250 == 0 {
            assert_eq!(check_tree(&s, &up).len(), names.len());
        }
    }
    let listed = check_tree(&s, &up);
    assert_eq!(listed.len(), names.len());
    (s, names)
}

#[test]
fn thousands_of_inserts_keep_the_tree_sound() {
    let up = UpCase::default_table();
    for (bs, cap, n) in [
        (4096u32, 900usize, 3000usize),
        (512, 400, 1500),
        (1024, 300, 1000),
    ] {
        let (s, names) = fill(bs, cap, n, 0x9E37_79B9_7F4A_7C15 ^ u64::from(bs));
        assert!(s.blocks.len() > 3, "{bs}: splits happened");
        for (i, name) in names.iter().enumerate() {
            let e = lookup(&s, &up, &flip_case(&up, name)).unwrap().unwrap();
            assert_eq!(e.name().unwrap(), *name);
            assert_eq!(e.file_ref, 100 + i as u64);
        }
        assert_eq!(lookup(&s, &up, &w("\u{FFFF}not there")).unwrap(), None);
        // Equal ignoring case: refused, tree unchanged.
        let before = (s.root.clone(), s.blocks.clone());
        let mut s2 = s;
        let e = insert(&mut s2, &up, entry(&flip_case(&up, &names[7]), 1)).unwrap_err();
        assert!(
            matches!(e.downcast_ref::<NtfsError>(), Some(NtfsError::Exists(_))),
            "{e}"
        );
        assert_eq!((s2.root, s2.blocks), before);
    }
}

#[test]
fn sorted_and_reverse_inserts_split_cleanly() {
    let up = UpCase::default_table();
    for rev in [false, true] {
        let mut s = MemStore::new(4096, 600);
        let mut v: Vec<u32> = (0..2000).collect();
        if rev {
            v.reverse();
        }
        for i in &v {
            insert(
                &mut s,
                &up,
                entry(&w(&format!("file{i:05}.txt")), u64::from(*i)),
            )
            .unwrap();
        }
        let names = check_tree(&s, &up);
        assert_eq!(names.len(), 2000);
        assert_eq!(names[0], w("file00000.txt"));
    }
}

#[test]
fn long_names_in_small_blocks() {
    // 255-unit names: about 600-byte entries, 6 per 4096-byte block; root holds one.
    let up = UpCase::default_table();
    let mut s = MemStore::new(4096, 700);
    let mut rng = Rng(7);
    for i in 0..300 {
        let mut n = random_name(&mut rng);
        n.resize(255, b'x' as u16);
        n[250..].copy_from_slice(&w(&format!("{i:05}")));
        insert(&mut s, &up, entry(&n, i)).unwrap();
    }
    assert_eq!(check_tree(&s, &up).len(), 300);
}

#[test]
fn root_too_small_for_one_entry_is_an_error() {
    let up = UpCase::default_table();
    // The empty root (48 bytes) fits, a root pointing to an index block (56) does not.
    let mut s = MemStore::new(4096, 50);
    let mut n = w("a");
    n.resize(200, b'b' as u16);
    let e = insert(&mut s, &up, entry(&n, 1)).unwrap_err().to_string();
    assert!(e.contains("index root"), "{e}");
}

#[test]
fn update_key_rewrites_one_entry() {
    let up = UpCase::default_table();
    let (mut s, names) = fill(1024, 400, 400, 99);
    for (i, name) in names.iter().enumerate().step_by(37) {
        let mut k = fn_key(name, 1);
        k[0x30..0x38].copy_from_slice(&0xABCDu64.to_le_bytes());
        let r = 100 + i as u64;
        assert!(update_key(&mut s, &up, name, r, &k).unwrap());
        assert_eq!(lookup(&s, &up, name).unwrap().unwrap().key, k);
        // Wrong reference: not found.
        assert!(!update_key(&mut s, &up, name, r + 1_000_000, &k).unwrap());
        // A different name in the key is refused.
        let other = fn_key(&w("zzz"), 1);
        assert!(update_key(&mut s, &up, name, r, &other).is_err());
    }
    assert!(!update_key(&mut s, &up, &w("missing"), 1, &fn_key(&w("missing"), 1)).unwrap());
    assert_eq!(check_tree(&s, &up).len(), names.len());
}

#[test]
fn lookup_prefers_the_win32_entry() {
    let up = UpCase::default_table();
    let mut s = MemStore::new(4096, 1024);
    insert(
        &mut s,
        &up,
        IndexEntry {
            file_ref: 40,
            key: fn_key(&w("PROGRA~1"), 2),
        },
    )
    .unwrap();
    insert(&mut s, &up, entry(&w("Program Files"), 40)).unwrap();
    let e = lookup(&s, &up, &w("progra~1")).unwrap().unwrap();
    assert_eq!(e.namespace().unwrap(), 2);
    let e = lookup(&s, &up, &w("PROGRAM FILES")).unwrap().unwrap();
    assert_eq!(e.namespace().unwrap(), 1);
    assert_eq!(e.name().unwrap(), w("Program Files"));
}

#[test]
fn child_cycle_is_an_error() {
    let up = UpCase::default_table();
    let (mut s, _) = fill(1024, 300, 200, 5);
    // Point the last entry of every block at block 0 (which is reachable already).
    let vcns: Vec<u64> = s.blocks.keys().copied().collect();
    for v in vcns {
        let raw = s.read_block(v).unwrap();
        let (tmpl, mut n) = parse_block(&raw, 1024, v).unwrap();
        if n.end_child.is_some() {
            n.end_child = Some(0);
            let b = block_bytes(&tmpl, 1024, &n).unwrap();
            s.write_block(v, &b).unwrap();
        }
    }
    let e = entries(&s).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    // insert and lookup must not loop either.
    for i in 0..50 {
        let _ = insert(&mut s, &up, entry(&w(&format!("n{i}")), 1));
        let _ = lookup(&s, &up, &w(&format!("n{i}")));
    }
}

#[test]
fn hostile_node_bytes_give_errors_not_panics() {
    let up = UpCase::default_table();
    let (base, names) = fill(1024, 300, 300, 11);
    let mut rng = Rng(0xDEAD_BEEF);
    for round in 0..3000 {
        let mut s = MemStore {
            bs: base.bs,
            per: base.per,
            root: base.root.clone(),
            cap: base.cap,
            blocks: base.blocks.clone(),
            next: base.next,
            max_blocks: usize::MAX,
        };
        let flips = 1 + rng.below(8);
        for _ in 0..flips {
            if round % 5 == 0 {
                let i = rng.below(s.root.len() as u64) as usize;
                s.root[i] = rng.next() as u8;
            } else {
                let v = rng.below(s.blocks.len() as u64) * s.per;
                // Corrupt after removing fixups, so the damage reaches the parser.
                let mut b = s.read_block(v).unwrap();
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next() as u8;
                if rng.below(3) == 0 {
                    // A plausible-looking length or offset.
                    let j = (rng.below(b.len() as u64 / 2) * 2) as usize;
                    b[j] = [0, 8, 0x10, 0x18, 0xFF][rng.below(5) as usize];
                }
                let mut b2 = b.clone();
                // A damaged update sequence header cannot be applied: store the bytes as they
                // are (the read then fails in the fixup check).
                let _ = fixup::apply(&mut b2, "t", 0);
                s.blocks.insert(v, b2);
            }
        }
        let _ = entries(&s);
        let name = &names[rng.below(names.len() as u64) as usize];
        let _ = lookup(&s, &up, name);
        let _ = update_key(&mut s, &up, name, 1, &fn_key(name, 1));
        let _ = insert(&mut s, &up, entry(&random_name(&mut rng), 5));
    }
}

#[test]
fn hostile_roots() {
    let mut r = new_root(4096, 1);
    r[0] = 0x80; // indexes $DATA, not $FILE_NAME
    let e = parse_root(&r).unwrap_err().to_string();
    assert!(e.contains("0x80"), "{e}");
    let mut r = new_root(4096, 1);
    r[8..12].copy_from_slice(&3000u32.to_le_bytes());
    assert!(parse_root(&r).unwrap_err().to_string().contains("3000"));
    let r = new_root(4096, 1);
    assert!(parse_root(&r[..20]).is_err());
    let mut r = new_root(4096, 1);
    r[0x14] = 0x40; // in-use size past the value
    assert!(parse_root(&r).is_err());
    let mut r = new_root(4096, 1);
    r[0x28] = 0x08; // end entry length 8 < 16
    assert!(
        parse_root(&r)
            .unwrap_err()
            .to_string()
            .contains("entry length")
    );
    let mut r = new_root(4096, 1);
    r[0x2C] = 0; // end entry loses its LAST flag: runs off the node
    let e = parse_root(&r).unwrap_err().to_string();
    assert!(
        e.contains("at 0x30") && e.contains("$FILE_NAME key of 0 bytes"),
        "{e}"
    );
    let mut r = new_root(4096, 1);
    r.truncate(0x30 - 8);
    r[0x14] = 0x10; // in use: just the node header, no room for any entry
    r[0x18] = 0x10;
    let e = parse_root(&r).unwrap_err().to_string();
    assert!(e.contains("no end entry"), "{e}");
}

#[test]
fn store_failure_during_split_is_reported() {
    let up = UpCase::default_table();
    let mut s = MemStore::new(1024, 300);
    s.max_blocks = 4;
    let mut err = None;
    for i in 0..500 {
        if let Err(e) = insert(&mut s, &up, entry(&w(&format!("name-{i:04}")), i)) {
            err = Some(e.to_string());
            break;
        }
    }
    assert!(err.unwrap().contains("full"));
}
