//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// Whether we run in CI, where a missing oracle is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `name` (a tool, Python module or condition of tests/oracles/tools.txt) is usable
/// here. In CI a missing one panics; elsewhere the caller skips. A name the list lacks panics
/// everywhere: add it to the list, so that .ci/run installs it and README.md names it.
pub fn require(name: &str) -> bool {
    let o = crate::oracles::get(name);
    match crate::oracles::check(o) {
        Ok(()) => true,
        Err(why) => {
            if in_ci() {
                panic!(
                    "{name} is required in CI (CI=true) but {why} ({})",
                    o.remedy()
                );
            }
            eprintln!("skipping: {name} {why} ({})", o.remedy());
            false
        }
    }
}

/// Where the real-world corpus is looked for when `DISKCONV_TEST_CORPUS` is not set, relative
/// to the project root.
pub const DEFAULT_CORPUS: &str = "../shared/corpus";

/// The folder of the real-world corpus: `$DISKCONV_TEST_CORPUS`, else [`DEFAULT_CORPUS`].
pub fn corpus_root() -> PathBuf {
    match std::env::var_os("DISKCONV_TEST_CORPUS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CORPUS),
    }
}

/// A file of the shared real-world corpus, or `None` (with a printed reason) when the corpus is
/// absent. In CI the corpus must be there.
pub fn corpus(rel: &str) -> Option<PathBuf> {
    let p = corpus_root().join(rel);
    if p.exists() {
        Some(p)
    } else {
        if in_ci() {
            panic!("corpus file {} is missing in CI", p.display());
        }
        eprintln!("skipping: corpus file {} is absent", p.display());
        None
    }
}

/// A fresh temporary folder.
pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary folder")
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs `qemu-img ARGS` and returns its stdout.
pub fn qemu_img(args: &[&str]) -> String {
    let out = run(Command::new("qemu-img").args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `qemu-io ARGS` (writes patterns into test images).
pub fn qemu_io(args: &[&str]) -> String {
    let out = run(Command::new("qemu-io").args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img compare` of two images (formats given explicitly); true when equal.
pub fn qemu_compare(a: &Path, fa: &str, b: &Path, fb: &str) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", fa, "-F", fb])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img compare");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "qemu-img compare failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `qemu-img check` passes with no errors and no leaks.
pub fn assert_qemu_check(img: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(img)
        .output()
        .expect("qemu-img check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check {} failed: {text} {}",
        img.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("check json");
    for key in ["corruptions", "leaks", "check-errors"] {
        let n = v.get(key).and_then(|x| x.as_u64()).unwrap_or(0);
        assert_eq!(
            n,
            0,
            "qemu-img check {}: {key} = {n}: {text}",
            img.display()
        );
    }
}

/// `qemu-img info --output=json` parsed.
pub fn qemu_info(img: &Path) -> serde_json::Value {
    let out = qemu_img(&["info", "--output=json", img.to_str().unwrap()]);
    serde_json::from_str(&out).expect("info json")
}

/// SHA-256 of a file, hex.
pub fn sha256_file(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    std::io::copy(&mut f, &mut h).unwrap();
    hex(&h.finalize())
}

/// SHA-256 of the whole virtual disk of an image read through diskconv.
pub fn sha256_image(img: &dyn diskconv::ImageReader) -> String {
    let mut h = Sha256::new();
    let size = img.virtual_size();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        img.read_at(&mut buf[..n], off).unwrap();
        h.update(&buf[..n]);
        off += n as u64;
    }
    hex(&h.finalize())
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The diskconv binary built for these tests.
pub fn diskconv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diskconv"))
}

/// Writes a deterministic pseudo-random, partly zero, partly repetitive raw image.
pub fn make_raw(path: &Path, size: u64, seed: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let mut state = seed | 1;
    let mut buf = vec![0u8; 65536];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        let block = off / 65536;
        match block % 4 {
            0 | 3 => {
                for b in buf[..n].iter_mut() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *b = state as u8;
                }
            }
            1 => buf[..n].fill(0),
            _ => {
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    *b = (i % 64) as u8;
                }
            }
        }
        if block % 4 == 1 {
            // Leave a hole.
            f.set_len(off + n as u64).unwrap();
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(off + n as u64)).unwrap();
        } else {
            f.write_all(&buf[..n]).unwrap();
        }
        off += n as u64;
    }
    f.set_len(size).unwrap();
}

/// Whether python3 can import regipy (the second independent hive reader). In CI a missing
/// regipy panics; elsewhere the caller skips.
pub fn require_regipy() -> bool {
    require("regipy")
}

/// `hivexregedit --export HIVE '\'`: the whole hive as `.reg` text as hivex reads it (every
/// value in `hex(N):` form, so the text is exact). Panics when hivex cannot read the hive.
pub fn hivex_export(hive: &Path) -> String {
    let out = run(Command::new("hivexregedit")
        .arg("--export")
        .arg(hive)
        .arg("\\"));
    assert!(
        out.status.success(),
        "hivexregedit --export {} failed: {}",
        hive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `hivexsh` on `hive` with the commands of `script` (one per line) and returns stdout.
/// Panics when hivexsh fails.
pub fn hivexsh(hive: &Path, script: &str) -> String {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(script.as_bytes()).expect("write script");
    let out = run(Command::new("hivexsh").arg("-f").arg(f.path()).arg(hive));
    assert!(
        out.status.success(),
        "hivexsh on {} failed: {}",
        hive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The whole hive as regipy reads it (tests/oracles/regipy_dump.py: one `[path]` line per key,
/// one `  name = TYPE: value` line per value). Panics when regipy cannot read the hive.
pub fn regipy_dump(hive: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/regipy_dump.py");
    let out = run(Command::new("python3").arg(script).arg(hive));
    assert!(
        out.status.success(),
        "regipy_dump {} failed: {}",
        hive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that hive bytes pass our structural check (`check_bytes`: checksums, bins, cells,
/// sorted lists and hashes, counts, maxima, security ring and reference counts). Leaks (allocated
/// cells nothing points at) are reported separately by the check and are not failures.
pub fn assert_hive_sound(bytes: &[u8], what: &str) {
    let report = diskconv::guest::hive::check::check_bytes(bytes);
    assert!(
        report.issues.is_empty(),
        "{what}: structural check found {} issue(s), first: {:?}",
        report.issues.len(),
        &report.issues[..report.issues.len().min(5)]
    );
}

/// A small seeded pseudo-random generator (xorshift64) for test data and random edit sequences;
/// print the seed on failure so a run can be replayed. The seed must not be 0 ([`Rng::new`]
/// makes sure).
pub struct Rng(pub u64);

impl Rng {
    /// A generator with `seed` (0 becomes 1).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
