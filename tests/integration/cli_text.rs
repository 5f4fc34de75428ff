//! What the command line says and how it ends: the one extension rule of `convert` and `sync`,
//! exit codes (usage errors apart from results), `--help` texts, options refused where they mean
//! nothing, dates and warnings of `diskconv hive`, and the sample image's documented layout.
//! Oracles: qemu-img (formats written), tar (OVA members), sfdisk (partition extents), hivexget
//! and hivexregedit (hive contents), regipy and Python's datetime (FILETIME dates).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::{self, corpus, diskconv, require, sha256_file, tmpdir};

/// Exit code of a usage error.
const USAGE: i32 = 64;

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("images/sample.raw")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn dc(args: &[&str]) -> Output {
    diskconv().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts the exit code, no panic, and returns stderr.
#[track_caller]
fn code(o: &Output, want: i32) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(want),
        "stdout: {}\nstderr: {err}",
        stdout(o)
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The folder's entries, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Regression: `sync SRC x.ova` silently made a raw image named x.ova while `-O ova` was
/// refused. Now both are refused by the extension rule `convert` uses too, pointing at
/// `--export`, and nothing is created.
#[test]
fn sync_refuses_a_target_named_like_an_ova() {
    let dir = tmpdir();
    let src = sample();
    let ova = dir.path().join("web01.ova");
    for extra in [&[][..], &["-O", "ova"]] {
        let mut a = vec!["sync", s(&src), s(&ova)];
        a.extend_from_slice(extra);
        let err = code(&dc(&a), USAGE);
        assert!(
            err.contains("cannot be a sync target")
                && err.contains("--export")
                && err.contains(&format!("--export {}", ova.display())),
            "{extra:?}: {err}"
        );
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }
    // A name that asks for an updatable format makes that format (qemu-img says which).
    if !require("qemu-img") {
        return;
    }
    let vhd = dir.path().join("t.vhd");
    code(&dc(&["sync", s(&sample()), s(&vhd)]), 0);
    assert_eq!(util::qemu_info(&vhd)["format"], "vpc");
    // -O on a later pass that differs from the target's format would be ignored: refused.
    let err = code(&dc(&["sync", s(&sample()), s(&vhd), "-O", "qcow2"]), 1);
    assert!(err.contains("applies only to a new target"), "{err}");
    code(&dc(&["sync", s(&sample()), s(&vhd), "-O", "vpc"]), 0);
    // An explicit -O that contradicts the name is allowed, with a warning.
    let q = dir.path().join("x.qcow2");
    let err = code(&dc(&["sync", s(&sample()), s(&q), "-O", "raw"]), 0);
    assert!(
        err.contains("warning") && err.contains("means qcow2"),
        "{err}"
    );
    assert_eq!(util::qemu_info(&q)["format"], "raw");
}

/// `convert` without -O takes the format DST's extension names (the same rule as sync), raw
/// for other names; -O against the extension warns.
#[test]
fn convert_takes_the_format_from_the_extension() {
    if !require("qemu-img") || !require("tar") {
        return;
    }
    let dir = tmpdir();
    let src = sample();
    for (name, want) in [
        ("a.qcow2", "qcow2"),
        ("a.vmdk", "vmdk"),
        ("a.vhd", "vpc"),
        ("a.vhdx", "vhdx"),
        ("a.img", "raw"),
        ("a", "raw"),
    ] {
        let out = dir.path().join(name);
        let err = code(&dc(&["convert", s(&src), s(&out)]), 0);
        assert!(!err.contains("warning"), "{name}: {err}");
        assert_eq!(util::qemu_info(&out)["format"], want, "{name}");
        assert!(
            util::qemu_compare(&src, "raw", &out, want),
            "{name}: content differs"
        );
    }
    // x.ova is an OVA package: a tar with the OVF descriptor, the manifest and the disk.
    let ova = dir.path().join("web01.ova");
    code(&dc(&["convert", s(&src), s(&ova)]), 0);
    let list = util::run(Command::new("tar").arg("tf").arg(&ova));
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains(".ovf") && list.contains(".mf") && list.contains(".vmdk"),
        "{list}"
    );
    // An explicit -O wins, and a contradicting extension is warned about.
    let q = dir.path().join("b.qcow2");
    let err = code(&dc(&["convert", "-O", "raw", s(&src), s(&q)]), 0);
    assert!(
        err.contains("warning") && err.contains("b.qcow2") && err.contains("means qcow2"),
        "{err}"
    );
    assert_eq!(util::qemu_info(&q)["format"], "raw");
    // Options are checked against the format the name implies.
    let v = dir.path().join("c.vhd");
    let err = code(
        &dc(&[
            "convert",
            "-o",
            "subformat=fixed,block_size=2M",
            s(&src),
            s(&v),
        ]),
        USAGE,
    );
    assert!(
        err.contains("'block_size' means nothing with subformat=fixed"),
        "{err}"
    );
    assert!(!v.exists());
}

/// Usage errors exit 64, whoever finds them (clap or our own checks), before anything is
/// written; 1, 2 and 3 keep their meanings for compare, verify, check and hive check.
#[test]
fn usage_errors_exit_64_and_results_keep_their_codes() {
    let dir = tmpdir();
    let src = sample();
    let a = dir.path().join("a.raw");
    std::fs::copy(&src, &a).unwrap();
    let out = dir.path().join("out.qcow2");
    let hive = dir.path().join("h.hive");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "Usage"),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (vec!["convert", s(&a)], "required"),
        (vec!["convert", "--bogus", s(&a), s(&out)], "--bogus"),
        (
            vec!["convert", "-O", "nope", s(&a), s(&out)],
            "unknown format",
        ),
        (
            vec!["convert", "-f", "nope", s(&a), s(&out)],
            "unknown format",
        ),
        (
            vec![
                "convert",
                "-O",
                "qcow2",
                "-o",
                "cluster_size=3k",
                s(&a),
                s(&out),
            ],
            "cluster_size",
        ),
        (
            vec![
                "convert",
                "-O",
                "raw",
                "-o",
                "preallocation=metadata",
                s(&a),
                s(&out),
            ],
            "means nothing for raw",
        ),
        (vec!["convert", "-O", "vmdk", "-c", s(&a), s(&out)], "-c"),
        (
            vec!["convert", "--references", "sometimes", s(&a), s(&out)],
            "reference policy",
        ),
        (vec!["convert", "-m", "0", s(&a), s(&out)], "0"),
        (
            vec!["compare", "-f", "nope", s(&a), s(&a)],
            "unknown format",
        ),
        (vec!["verify", "--block-size", "1000", s(&a), s(&a)], "1000"),
        (
            vec!["verify", "--json", "--max-ranges", "3", s(&a), s(&a)],
            "--max-ranges",
        ),
        (vec!["sync", "--window", "lots", s(&a), s(&out)], "--window"),
        (vec!["sync", "--block-size", "3000", s(&a), s(&out)], "3000"),
        (
            vec!["sync", "--export-format", "ova", s(&a), s(&out)],
            "--export",
        ),
        (vec!["hive", "new", "--threads", "4", s(&hive)], "--threads"),
        (
            vec!["hive", "ls", "--accept-data-loss", s(&hive)],
            "accept-data-loss",
        ),
        (
            vec!["hive", "set", s(&hive), "K", "V", "dword", "lots"],
            "lots",
        ),
        (
            vec!["hive", "set", s(&hive), "K", "V", "nosuchtype", "1"],
            "nosuchtype",
        ),
        (vec!["hive", "get", "--raw", s(&hive), "K"], "--raw"),
        (
            vec![
                "inject",
                "windows",
                s(&a),
                "--block-driver",
                "vioscsi",
                "--target",
                "azure",
            ],
            "--block-driver vioscsi means nothing without --drivers",
        ),
        (vec!["inject", "windows", s(&a)], "nothing to inject"),
        (vec!["inject", "windows", s(&a), "--target", "mars"], "mars"),
        (vec!["ntfs", "ls", "-f", "nope", s(&a)], "nope"),
    ];
    let before = sha256_file(&a);
    for (args, needle) in &cases {
        let err = code(&dc(args), USAGE);
        assert!(
            err.contains(needle),
            "{args:?}: expected '{needle}' in {err}"
        );
        assert_eq!(
            names(dir.path()),
            ["a.raw"],
            "{args:?} left something behind"
        );
    }
    assert_eq!(sha256_file(&a), before);
    // Results keep their codes: compare 0 same / 1 different / 2 failure; verify the same.
    let b = dir.path().join("b.raw");
    let mut bytes = std::fs::read(&a).unwrap();
    bytes[4096] ^= 1;
    std::fs::write(&b, &bytes).unwrap();
    code(&dc(&["compare", s(&a), s(&a)]), 0);
    code(&dc(&["compare", s(&a), s(&b)]), 1);
    code(&dc(&["compare", s(&a), "/nonexistent/x.raw"]), 2);
    code(&dc(&["verify", s(&a), s(&b)]), 1);
    code(&dc(&["verify", s(&a), "/nonexistent/x.raw"]), 2);
    // check: 1 when it cannot run; hive check: 2 for problems.
    code(&dc(&["check", s(&a)]), 1);
    std::fs::write(&hive, vec![0u8; 8192]).unwrap();
    code(&dc(&["hive", "check", s(&hive)]), 2);
    // Help and version are no errors.
    code(&dc(&["--help"]), 0);
    code(&dc(&["--version"]), 0);
}

/// `--references` and `-m` belong to the commands they affect; written before the command name
/// (where they used to be global) they still work for those commands.
#[test]
fn former_global_options_are_taken_where_they_mean_something() {
    let dir = tmpdir();
    let src = sample();
    code(&dc(&["--references", "anywhere", "info", s(&src)]), 0);
    code(&dc(&["--references=deny", "map", s(&src)]), 0);
    let out = dir.path().join("o.raw");
    code(&dc(&["-m", "2", "convert", s(&src), s(&out)]), 0);
    code(&dc(&["-m2", "compare", s(&src), s(&out)]), 0);
    code(&dc(&["--threads", "1", "verify", s(&src), s(&out)]), 0);
    code(
        &dc(&["--references", "folder", "ntfs", "ls", s(&src)]),
        1, // no NTFS volume in the sample: a failure, not a usage error
    );
    // On commands they do not affect they are refused, in either place, and nothing is made.
    let h = dir.path().join("new.hive");
    for args in [
        vec!["-m", "2", "hive", "new", s(&h)],
        vec!["hive", "new", "-m", "2", s(&h)],
        vec!["--references", "anywhere", "hive", "new", s(&h)],
        vec!["check", "-m", "2", s(&src)],
        vec!["--threads", "2", "info", s(&src)],
        vec!["ntfs", "rollback", "--references", "anywhere", s(&src)],
    ] {
        code(&dc(&args), USAGE);
        assert!(!h.exists(), "{args:?}");
    }
}

/// The help of every command lists its exit codes; the texts name today's formats and options.
#[test]
fn help_lists_exit_codes_and_current_formats() {
    let top = stdout(&dc(&["--help"]));
    assert!(!top.contains("to come"), "{top}");
    for needle in [
        "VHD",
        "VHDX",
        "Exit codes:",
        "64",
        "130",
        "141",
        "143",
        "129",
    ] {
        assert!(top.contains(needle), "--help lacks {needle}:\n{top}");
    }
    let commands = [
        "convert",
        "info",
        "map",
        "compare",
        "check",
        "hive",
        "sync",
        "verify",
        "inspect",
        "inject",
        "ntfs",
        "serve",
        "preflight",
    ];
    let nested: &[(&str, &[&str])] = &[
        (
            "hive",
            &[
                "ls", "get", "set", "delete", "import", "export", "check", "replay", "new",
            ],
        ),
        ("inject", &["windows"]),
        ("ntfs", &["info", "ls", "cat", "put", "mkdir", "rollback"]),
    ];
    let mut all: Vec<Vec<&str>> = commands.iter().map(|c| vec![*c]).collect();
    for (parent, subs) in nested {
        all.extend(subs.iter().map(|s| vec![*parent, *s]));
    }
    for c in &all {
        let mut args = c.clone();
        args.push("--help");
        let o = dc(&args);
        code(&o, 0);
        let h = stdout(&o);
        assert!(
            h.contains("Exit codes:") && h.contains("64   usage error"),
            "{c:?}:\n{h}"
        );
        // Options appear only where they mean something.
        let refs = h.contains("--references");
        let threads = h.contains("--threads");
        let opens_images = !matches!(
            c.as_slice(),
            ["hive", ..] | ["ntfs", "rollback"] | ["ntfs"] | ["inject"]
        );
        assert_eq!(refs, opens_images, "{c:?} --references");
        let parallel = matches!(c.as_slice(), ["convert" | "compare" | "sync" | "verify"]);
        assert_eq!(threads, parallel, "{c:?} --threads");
    }
    let special = [
        (vec!["compare", "--help"], "1    they differ"),
        (vec!["verify", "--help"], "2    failure"),
        (vec!["check", "--help"], "3    leaks only"),
        (vec!["hive", "check", "--help"], "2    problems found"),
        (vec!["preflight", "--help"], "3    a check failed"),
        (
            vec!["convert", "--help"],
            "3    --target: the preflight failed",
        ),
    ];
    for (args, needle) in special {
        let h = stdout(&dc(&args));
        assert!(h.contains(needle), "{args:?}:\n{h}");
    }
    let conv = stdout(&dc(&["convert", "--help"]));
    for needle in [
        "vpc",
        "vhdx",
        "block_size=",
        "round_to_mib=",
        "logical_sector_size=",
        "physical_sector_size=",
        "subformat=dynamic|fixed",
        "extension",
    ] {
        assert!(
            conv.contains(needle),
            "convert --help lacks {needle}:\n{conv}"
        );
    }
    let sync = stdout(&dc(&["sync", "--help"]));
    assert!(
        sync.contains("extension") && sync.contains(".ova"),
        "{sync}"
    );
}

/// The README's exit-code table says what the commands do.
#[test]
fn readme_documents_exit_codes_and_the_extension_rule() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("### Exit codes")
        .nth(1)
        .expect("README has an exit codes section");
    for needle in [
        "| 64 |",
        "| 130, 143, 129 |",
        "| 141 |",
        "compare",
        "verify",
        "`check`",
        "`hive check`",
    ] {
        assert!(section.contains(needle), "README exit codes lack {needle}");
    }
    assert!(readme.contains("### Output format from the file name"));
}

/// Regression: images/README.md gave partition 2 as 64 KiB (768 - 832 KiB); the table now
/// matches what sfdisk reads from the image, and its zero and 0xff rows match the bytes.
#[test]
fn images_readme_layout_matches_the_image() {
    if !require("sfdisk") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("images/README.md")).unwrap();
    let dump = util::run(Command::new("sfdisk").arg("-d").arg(sample()));
    let dump = String::from_utf8_lossy(&dump.stdout);
    // "sample.raw2 : start=        1536, size=         512, type=da"
    let mut parts = Vec::new();
    for line in dump.lines().filter(|l| l.contains("start=")) {
        let field = |name: &str| -> u64 {
            let rest = line.split(name).nth(1).unwrap();
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        parts.push((field("start=") * 512, field("size=") * 512));
    }
    assert_eq!(parts.len(), 2, "{dump}");
    let bytes = std::fs::read(sample()).unwrap();
    let size = |t: &str| -> u64 {
        let t = t.trim();
        if let Some(n) = t.strip_suffix(" KiB") {
            n.parse::<u64>().unwrap() << 10
        } else if let Some(n) = t.strip_suffix(" MiB") {
            n.parse::<u64>().unwrap() << 20
        } else {
            t.parse().unwrap()
        }
    };
    let mut seen = 0;
    for row in text
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(" – "))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (a, b) = cells[1].split_once(" – ").unwrap();
        let (start, end) = (size(a), size(b));
        let what = cells[2];
        for (n, (ps, plen)) in parts.iter().enumerate() {
            if what.starts_with(&format!("partition {}", n + 1)) {
                assert_eq!((start, end), (*ps, ps + plen), "row: {row}");
                seen += 1;
            }
        }
        let span = &bytes[start as usize..end as usize];
        if what.starts_with("zeros") {
            assert!(span.iter().all(|&x| x == 0), "not zeros: {row}");
        }
        if what.contains("of `0xff`") {
            assert!(span.iter().all(|&x| x == 0xff), "not 0xff: {row}");
        }
    }
    assert_eq!(seen, 2, "both partitions have a row");
}

/// Key times (and device properties of type FILETIME) print as dates, as regipy and Python's
/// datetime read them; JSON keeps the number beside the date.
#[test]
fn hive_get_prints_dates() {
    let Some(security) = corpus("hives/regipy/SECURITY") else {
        return;
    };
    let o = dc(&["hive", "get", s(&security), "Policy"]);
    code(&o, 0);
    let text = stdout(&o);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("last written: "))
        .expect("a last written line");
    assert_eq!(line, "2021-08-05T10:46:11.6524365Z");
    let j: serde_json::Value =
        serde_json::from_slice(&dc(&["hive", "get", "--json", s(&security), "Policy"]).stdout)
            .unwrap();
    assert_eq!(j["last_written"], 132_726_339_716_524_365u64);
    assert_eq!(j["last_written_date"], "2021-08-05T10:46:11.6524365Z");
    if util::require_regipy() {
        let script = "import sys\nfrom regipy.registry import RegistryHive\n\
                      from regipy.utils import convert_wintime\n\
                      k = RegistryHive(sys.argv[1]).get_key('\\\\Policy')\n\
                      print(convert_wintime(k.header.last_modified).strftime('%Y-%m-%dT%H:%M:%S.%f'))";
        let o = util::run(Command::new("python3").args(["-c", script]).arg(&security));
        // regipy has microseconds; we print the 100 ns digit too.
        let want = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(line.starts_with(&want), "{line} vs regipy {want}");
    }
    // A DEVPROP_TYPE_FILETIME device property in a Windows 10 SYSTEM hive.
    let Some(system) = corpus("hives/regipy/SYSTEM_B") else {
        return;
    };
    if !require("hivexregedit") || !require("python3") {
        return;
    }
    let key = "ControlSet001\\Control\\DeviceContainers\\{056018f3-ea11-de01-11c1-516050c076bc}\\\
               Properties\\{3464f7a4-2444-40b1-980a-e0903cb6d912}\\0007";
    // hivex reads the hive file as it is (no log replay); this key is the same in both.
    let export = util::run(
        Command::new("hivexregedit")
            .arg("--export")
            .arg(&system)
            .arg(key),
    );
    let export = String::from_utf8_lossy(&export.stdout);
    let hexbytes = export
        .lines()
        .find_map(|l| l.strip_prefix("@=hex(ffff0010):"))
        .expect("the default value is a FILETIME property");
    let ft = u64::from_le_bytes(
        hexbytes
            .split(',')
            .map(|h| u8::from_str_radix(h.trim(), 16).unwrap())
            .collect::<Vec<u8>>()
            .try_into()
            .unwrap(),
    );
    let py = format!(
        "import datetime\nd = datetime.datetime(1601, 1, 1) + \
         datetime.timedelta(microseconds={ft} // 10)\nprint(d.strftime('%Y-%m-%dT%H:%M:%S.%f'))"
    );
    let o = util::run(Command::new("python3").args(["-c", &py]));
    let want = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let o = dc(&["hive", "get", s(&system), key, "@"]);
    code(&o, 0);
    let got = stdout(&o).trim().to_string();
    assert!(
        got.ends_with('Z') && want.starts_with(got.trim_end_matches('Z')),
        "{got} vs Python {want}"
    );
    let ls = stdout(&dc(&["hive", "ls", s(&system), key]));
    assert!(ls.contains(&got), "{ls}");
    let j: serde_json::Value =
        serde_json::from_slice(&dc(&["hive", "get", "--json", s(&system), key, "@"]).stdout)
            .unwrap();
    assert_eq!(j["filetime"], ft);
    assert_eq!(j["date"], got.as_str());
}

/// Reading a dirty hive without its logs warns that the data may be stale and names the logs
/// looked for; a clean hive, and a dirty one whose logs are replayed, read without a warning.
#[test]
fn dirty_hive_reads_warn_that_data_may_be_stale() {
    let (Some(security), Some(new_dirty)) = (
        corpus("hives/regipy/SECURITY"),
        corpus("hives/yarp/NewDirtyHive1/NewDirtyHive"),
    ) else {
        return;
    };
    let dir = tmpdir();
    let sec = dir.path().join("SECURITY");
    std::fs::copy(&security, &sec).unwrap();
    let before = sha256_file(&sec);
    for args in [
        vec!["hive", "ls", s(&sec)],
        vec!["hive", "get", s(&sec), "Policy"],
        vec!["hive", "export", s(&sec), "Policy"],
    ] {
        let err = code(&dc(&args), 0);
        assert!(
            err.contains("warning")
                && err.contains("may be stale")
                && err.contains("sequence numbers 107 and 106")
                && err.contains(&format!("{}.LOG1", sec.display())),
            "{args:?}: {err}"
        );
    }
    assert_eq!(sha256_file(&sec), before, "reading changed the hive");
    // The same dirty hive with its logs beside it: replayed, no warning; without: a warning.
    let nd = dir.path().join("NewDirtyHive");
    std::fs::copy(&new_dirty, &nd).unwrap();
    let err = code(&dc(&["hive", "ls", s(&nd)]), 0);
    assert!(err.contains("may be stale"), "{err}");
    for ext in ["LOG1", "LOG2"] {
        std::fs::copy(
            new_dirty.with_file_name(format!("NewDirtyHive.{ext}")),
            dir.path().join(format!("NewDirtyHive.{ext}")),
        )
        .unwrap();
    }
    let err = code(&dc(&["hive", "ls", s(&nd)]), 0);
    assert!(!err.contains("warning"), "{err}");
    // A clean hive.
    let Some(bcd) = corpus("hives/regipy/BCD") else {
        return;
    };
    let err = code(&dc(&["hive", "ls", s(&bcd)]), 0);
    assert!(err.is_empty(), "{err}");
}

/// `hive import --fragment` takes header-less `.reg` files (hivexregedit's form); without the
/// option such a file is refused with the hint, the hive untouched.
#[test]
fn hive_import_takes_fragments_with_the_option() {
    let Some(frag) = corpus("hives/virt-v2v/windows-system.reg") else {
        return;
    };
    if !require("hivexget") {
        return;
    }
    let dir = tmpdir();
    let h = dir.path().join("SYSTEM");
    code(&dc(&["hive", "new", s(&h)]), 0);
    let before = sha256_file(&h);
    let prefix = "HKEY_LOCAL_MACHINE\\SYSTEM";
    let err = code(
        &dc(&["hive", "import", s(&h), s(&frag), "--prefix", prefix]),
        1,
    );
    assert!(
        err.contains("missing header") && err.contains("--fragment"),
        "{err}"
    );
    assert_eq!(sha256_file(&h), before);
    code(
        &dc(&[
            "hive",
            "import",
            s(&h),
            s(&frag),
            "--prefix",
            prefix,
            "--fragment",
        ]),
        0,
    );
    let get = |key: &str, value: &str| {
        let o = util::run(Command::new("hivexget").arg(&h).arg(key).arg(value));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(get("Select", "Current"), "1");
    assert_eq!(get("Select", "LastKnownGood"), "2");
    assert_eq!(
        get("ControlSet001\\Services\\Tcpip\\Parameters", "Hostname"),
        "windows.invalid"
    );
}

/// Regression: `inject` on a streamOptimized VMDK said "cannot be updated in place" twice and
/// advised `sync`; it now says it once and advises a conversion. The image is untouched.
#[test]
fn inject_on_a_stream_optimized_vmdk_advises_a_conversion() {
    let dir = tmpdir();
    let vmdk = dir.path().join("s.vmdk");
    code(&dc(&["convert", s(&sample()), s(&vmdk)]), 0);
    let before = sha256_file(&vmdk);
    let err = code(
        &dc(&["inject", "windows", s(&vmdk), "--target", "azure"]),
        1,
    );
    assert_eq!(
        err.matches("cannot be updated in place").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("streamOptimized") && err.contains("convert it to a writable image"),
        "{err}"
    );
    assert!(!err.contains("sync"), "{err}");
    assert_eq!(sha256_file(&vmdk), before);
    assert_eq!(names(dir.path()), ["s.vmdk"]);
}
