//! The `diskconv` command: a thin layer over the library.
//!
//! Every failure prints one line, `diskconv: <cause chain>`, and exits non-zero; a panic is a bug.
//! Exit codes: see [`exit`]. A closed standard output ends a command quietly with exit code 141;
//! a signal stops convert, sync, verify and serve cleanly with 128 + its number (see `term`).

#[macro_use]
mod term;

mod args;
#[cfg(feature = "cloud")]
mod azure;
mod exit;
mod hive;
mod inject;
mod inspect;
mod ntfs;
mod package;
mod preflight;
mod s3;
mod serve;
mod sync;
mod usage;
mod verify;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use diskconv::cloud::{Target, TargetOutput};
use diskconv::compare::{Comparison, compare};
use diskconv::error::ResultExt;
use diskconv::files::OutputTarget;
use diskconv::image::{ExtentKind, ImageInfo};
use diskconv::util::human_bytes;
use diskconv::util::same_file;
use diskconv::{
    ConvertOptions, Error, ErrorKind, Format, ImageReader, OpenOptions, OutputOptions, Progress,
    ReferencePolicy, Result,
};

use args::{Cli, Command, Input};

fn main() -> ExitCode {
    let cli = match args::parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with exit 0; usage errors get their own code (not
            // clap's 2, which `compare`, `verify` and the checks give a meaning).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    match usage::check(&cli.command) {
        Ok(warnings) => {
            for w in warnings {
                errln!("diskconv: warning: {w}");
            }
        }
        Err(e) => {
            errln!("diskconv: {}", term::message(&e));
            return ExitCode::from(exit::USAGE);
        }
    }
    if let Some(n) = cli.command.threads() {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            errln!("diskconv: setting up {n} threads: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    }
    // `compare` and `verify` report errors with exit code 2 (1 means "different").
    let error_code = match cli.command {
        Command::Compare(_) | Command::Verify(_) => exit::COMPARE_FAILURE,
        _ => exit::FAILURE,
    };
    match run(cli) {
        Ok(code) => code,
        // Standard output is a closed pipe (`diskconv ... | head -1`): end quietly.
        Err(_) if term::stdout_closed() => ExitCode::from(term::EXIT_CLOSED_PIPE),
        Err(e) => {
            errln!("diskconv: {}", term::message(&e));
            ExitCode::from(error_code)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let policy = cli.command.references();
    match cli.command {
        Command::Convert(a) => convert(a, policy),
        Command::Info(a) => info(a, policy),
        Command::Map(a) => map(a, policy),
        Command::Compare(a) => compare_cmd(a, policy),
        Command::Check(a) => check(a, policy),
        Command::Hive(a) => hive::run(a),
        Command::Sync(a) => sync::run(a, policy),
        Command::Verify(a) => verify::run(a, policy),
        Command::Inspect(a) => inspect::run(a, policy),
        Command::Preflight(a) => preflight::run(a, policy),
        Command::Inject(a) => inject::run(a, policy),
        Command::Ntfs(a) => ntfs::run(a, policy),
        Command::Serve(a) => serve::run(a, policy),
    }
}

pub(crate) fn open_options(
    format: Option<&str>,
    snapshot: Option<&str>,
    policy: ReferencePolicy,
) -> Result<OpenOptions> {
    let mut o = OpenOptions::new().references(policy);
    if let Some(f) = format {
        o = o.format(f.parse()?);
    }
    if let Some(s) = snapshot {
        // qemu-img spells it `snapshot.name=NAME` or `snapshot.id=ID`; a bare value is either.
        let s = s
            .strip_prefix("snapshot.name=")
            .or_else(|| s.strip_prefix("snapshot.id="))
            .unwrap_or(s);
        o = o.snapshot(s);
    }
    Ok(o)
}

pub(crate) fn open_input(
    path: &Path,
    input: &Input,
    policy: ReferencePolicy,
) -> Result<Box<dyn ImageReader>> {
    let opts = package::input_options(path, input, policy)?;
    let img = diskconv::open(path, &opts)?;
    package::print_warnings(img.as_ref(), &opts);
    Ok(img)
}

/// What `convert` writes: `-O`, else the format DST's extension names, else raw; with the
/// `-o` lists and `-c`, checked.
pub(crate) fn output_options(a: &args::ConvertArgs) -> Result<OutputOptions> {
    if let Some((_, to)) = target_choice(a)? {
        return Ok(to.options);
    }
    let explicit: Option<Format> = a.output_format.as_deref().map(str::parse).transpose()?;
    let format = Format::for_output(&a.dst, explicit);
    let mut out = OutputOptions::new(format).compressed(a.compress);
    for o in &a.options {
        out = out.with_options(o)?;
    }
    out.validate()?;
    Ok(out)
}

/// `convert --target`: the target and what it writes (`-O`, `-o` and `-c` applied on top).
pub(crate) fn target_choice(a: &args::ConvertArgs) -> Result<Option<(Target, TargetOutput)>> {
    let Some(t) = &a.target else {
        return Ok(None);
    };
    let t: Target = t.parse()?;
    let to = diskconv::cloud::target_output(t, a.output_format.as_deref(), &a.options, a.compress)?;
    Ok(Some((t, to)))
}

fn convert(a: args::ConvertArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    if a.dst.to_str().is_some_and(|d| d.starts_with("s3://")) {
        if a.all_disks {
            return Err(Error::InvalidArgument(
                "--all-disks writes several files; an s3:// output takes one disk (choose it \
                 with --disk)"
                    .into(),
            ));
        }
        if a.upload_threads.is_some() {
            return Err(Error::InvalidArgument(
                "--upload-threads applies to Azure page-blob uploads; an s3:// upload sends four \
                 parts at once"
                    .into(),
            ));
        }
        return s3::convert(&a, policy);
    }
    if let Some(url) = diskconv::cloud::azure::PageBlobUrl::detect(&a.dst)? {
        if a.all_disks {
            return Err(Error::InvalidArgument(
                "--all-disks writes several files; upload one disk at a time to a page blob \
                 (--disk N)"
                    .into(),
            ));
        }
        #[cfg(feature = "cloud")]
        return azure::convert(a, policy, url);
        #[cfg(not(feature = "cloud"))]
        return Err(Error::Unsupported(format!(
            "{url}: this build has no cloud support (cargo feature `cloud`)"
        )));
    }
    if a.resume || a.upload_threads.is_some() {
        return Err(Error::InvalidArgument(
            "--resume and --upload-threads apply to uploads (s3:// or an Azure page-blob URL); \
             a local output is written under a temporary name and needs no resume"
                .into(),
        ));
    }
    if a.all_disks {
        return package::convert_all_disks(&a, policy);
    }
    let out = output_options(&a)?;
    let format = out.format;
    if same_file(&a.src, &a.dst) {
        return Err(Error::InvalidArgument(format!(
            "the output {} is the source itself; choose another name",
            a.dst.display()
        )));
    }
    // Every output path is checked before the source is opened (the library checks again).
    let target = diskconv::output::check_output(&a.dst, &out).in_file(&a.dst)?;
    let src: std::sync::Arc<dyn ImageReader> = open_input(&a.src, &a.input, policy)?.into();
    let size = src.virtual_size();
    let target_out = target_choice(&a)?;
    if let Some((t, to)) = &target_out {
        if let Some(code) = preflight::before_convert(&a, *t, to, &src, policy)? {
            return Ok(code);
        }
    }
    if let OutputTarget::BlockDevice { path, size: dev } = &target {
        if *dev < size {
            return Err(Error::InvalidArgument(format!(
                "the block device holds {dev} bytes ({}), less than the {size} bytes ({}) of the \
                 source",
                human_bytes(*dev),
                human_bytes(size)
            ))
            .in_file(&a.dst));
        }
        errln!(
            "diskconv: writing {} ({size} bytes) in place to the block device {}",
            human_bytes(size),
            path.display()
        );
    }
    let cancel = term::cancel_on_signals()?;
    let opts = ConvertOptions {
        cancel: Some(cancel),
        ..ConvertOptions::default()
    };
    let start = Instant::now();

    let bar = (a.progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40.cyan/blue} {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut last_percent = None;
    let mut cb = |p: Progress| match &bar {
        Some(bar) => bar.set_position(p.done),
        None if a.progress => {
            // Not a terminal: one line per 10%, so logs stay readable.
            let pct = p.done.saturating_mul(10).checked_div(p.total).unwrap_or(10);
            if last_percent != Some(pct) {
                last_percent = Some(pct);
                errln!(
                    "diskconv: {}% ({} of {})",
                    pct * 10,
                    human_bytes(p.done),
                    human_bytes(p.total)
                );
            }
        }
        None => {}
    };
    // Errors name their file already: the source's reads name the source, the writer's the
    // output.
    let result = match &target_out {
        Some((_, to)) => {
            diskconv::cloud::convert_for_target(src.as_ref(), &a.dst, to, &opts, Some(&mut cb))
        }
        None => diskconv::convert_file(src.as_ref(), &a.dst, &out, &opts, Some(&mut cb)),
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let stats = match result {
        Err(e) if e.kind() == ErrorKind::Cancelled => {
            let what = match &target {
                OutputTarget::BlockDevice { path, .. } => format!(
                    "convert to the block device {} stopped; the device holds a partial copy: \
                     run the conversion again",
                    path.display()
                ),
                OutputTarget::Nbd { uri } => format!(
                    "convert to the NBD export {} stopped; the export holds a partial copy: \
                     run the conversion again",
                    uri.display()
                ),
                OutputTarget::File { path, exists } => format!(
                    "convert to {} stopped; its temporary files were removed{}",
                    a.dst.display(),
                    if *exists {
                        format!(", {} is as it was", path.display())
                    } else {
                        String::new()
                    }
                ),
            };
            return Ok(term::interrupted(&what));
        }
        r => r?,
    };
    for p in &stats.stale_temporaries_removed {
        errln!(
            "diskconv: removed a stale temporary left by an interrupted run: {}",
            p.display()
        );
    }
    if stats.untouched_tail > 0 {
        errln!(
            "diskconv: note: the target is {} bytes larger than the image; its last {} \
             bytes ({}) were left as they were",
            stats.untouched_tail,
            stats.untouched_tail,
            human_bytes(stats.untouched_tail)
        );
    }
    if stats.output_size != stats.virtual_size {
        errln!(
            "diskconv: note: the {format} output is {} bytes ({}), the source {} bytes: the size \
             was rounded up as the format requires; the extra tail reads as zeros",
            stats.output_size,
            human_bytes(stats.output_size),
            stats.virtual_size
        );
    }
    if a.stats || a.json {
        print_stats(&stats, start.elapsed().as_secs_f64(), a.json)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `convert --stats`: what was read, and what was written to the output by kind (the kinds
/// add up to the output's length). `--json`: the same as one JSON object.
fn print_stats(stats: &diskconv::ConvertStats, secs: f64, json: bool) -> Result<()> {
    let o = &stats.output;
    let mut stdout = std::io::stdout().lock();
    let r = if json {
        let v = serde_json::json!({
            "virtual_size": stats.virtual_size,
            "output_size": stats.output_size,
            "seconds": secs,
            "bytes_read": stats.bytes_read,
            "data_bytes": stats.data_bytes,
            "zero_bytes": stats.zero_bytes,
            "output": o,
        });
        serde_json::to_writer(&mut stdout, &v)
            .map_err(std::io::Error::other)
            .and_then(|_| writeln!(stdout))
    } else {
        let mbps = if secs > 0.0 {
            stats.virtual_size as f64 / secs / 1e6
        } else {
            0.0
        };
        let line = |out: &mut std::io::StdoutLock<'_>, what: &str, n: u64| {
            writeln!(out, "  {what:<20} {n:>16}  {}", human_bytes(n))
        };
        (|| {
            writeln!(
                stdout,
                "converted {} in {secs:.2} s ({mbps:.0} MB/s): {} data, {} zeros",
                human_bytes(stats.virtual_size),
                human_bytes(stats.data_bytes),
                human_bytes(stats.zero_bytes),
            )?;
            writeln!(stdout, "output, by kind (bytes):")?;
            line(&mut stdout, "compressed data", o.compressed)?;
            line(&mut stdout, "uncompressed data", o.data)?;
            line(&mut stdout, "zeros written", o.zeros)?;
            line(&mut stdout, "metadata", o.metadata)?;
            line(&mut stdout, "unwritten (holes)", o.unwritten)?;
            line(&mut stdout, "file length", o.file_length)?;
            if let Some(n) = o.allocated {
                line(&mut stdout, "allocated on disk", n)?;
            }
            Ok(())
        })()
    };
    r.map_err(term::stdout_error)
}

fn print_info(info: &ImageInfo, out: &mut impl Write, indent: &str) -> std::io::Result<()> {
    if let Some(f) = &info.filename {
        writeln!(out, "{indent}image: {f}")?;
    }
    writeln!(out, "{indent}file format: {}", info.format)?;
    if let Some(s) = &info.subformat {
        writeln!(out, "{indent}subformat: {s}")?;
    }
    writeln!(
        out,
        "{indent}virtual size: {} ({} bytes)",
        human_bytes(info.virtual_size),
        info.virtual_size
    )?;
    if let Some(n) = info.allocated_bytes {
        writeln!(out, "{indent}disk size: {}", human_bytes(n))?;
    }
    if let Some(n) = info.file_size {
        writeln!(out, "{indent}file length: {} ({n} bytes)", human_bytes(n))?;
    }
    if let Some(n) = info.cluster_size {
        writeln!(out, "{indent}cluster_size: {n}")?;
    }
    if let Some(c) = &info.compression {
        writeln!(out, "{indent}compression type: {c}")?;
    }
    if let Some(b) = &info.backing_file {
        match &info.backing_format {
            Some(f) => writeln!(out, "{indent}backing file: {b} (format {f})")?,
            None => writeln!(out, "{indent}backing file: {b}")?,
        }
    }
    if let Some(d) = &info.data_file {
        writeln!(out, "{indent}data file: {d}")?;
    }
    if !info.flags.is_empty() {
        writeln!(out, "{indent}flags: {}", info.flags.join(", "))?;
    }
    if !info.bitmaps.is_empty() {
        writeln!(out, "{indent}bitmaps:")?;
        for b in &info.bitmaps {
            writeln!(
                out,
                "{indent}    {} (granularity {}{}{})",
                b.name,
                b.granularity,
                if b.auto { ", auto" } else { "" },
                if b.in_use { ", in use" } else { "" }
            )?;
        }
    }
    if !info.snapshots.is_empty() {
        writeln!(out, "{indent}snapshots:")?;
        writeln!(
            out,
            "{indent}    {:<4} {:<24} {:>12} {:>12}",
            "ID", "TAG", "DISK SIZE", "VM SIZE"
        )?;
        for s in &info.snapshots {
            writeln!(
                out,
                "{indent}    {:<4} {:<24} {:>12} {:>12}",
                s.id,
                s.name,
                human_bytes(s.virtual_size),
                human_bytes(s.vm_state_size)
            )?;
        }
    }
    if let Some(b) = &info.backing {
        writeln!(out, "{indent}backing image:")?;
        print_info(b, out, &format!("{indent}    "))?;
    }
    if let Some(p) = &info.package {
        package::print_package(p, out, indent)?;
    }
    for w in &info.warnings {
        writeln!(out, "{indent}warning: {w}")?;
    }
    Ok(())
}

fn info(a: args::ImageArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    // An OVA: describe every disk; check the manifest only when asked (it reads the disk);
    // a capacity mismatch is a warning in the description.
    let mut opts = package::input_options(&a.image, &a.input, policy)?;
    opts.package.verify_manifest = a.verify_manifest;
    opts.package.allow_capacity_mismatch = true;
    opts.package.describe_all_disks = true;
    let img = diskconv::open(&a.image, &opts)?;
    let mut info = img.info();
    if info.filename.is_none() {
        info.filename = Some(a.image.display().to_string());
    }
    let mut stdout = std::io::stdout().lock();
    let r = if a.json {
        serde_json::to_writer_pretty(&mut stdout, &info)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(stdout))
    } else {
        print_info(&info, &mut stdout, "")
    };
    r.map_err(term::stdout_error)?;
    Ok(ExitCode::SUCCESS)
}

fn map(a: args::ImageArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let img = open_input(&a.image, &a.input, policy)?;
    let entries = diskconv::map::extent_map(img.as_ref()).map_err(|e| e.in_file(&a.image))?;
    let mut stdout = std::io::stdout().lock();
    let r = if a.json {
        serde_json::to_writer_pretty(&mut stdout, &entries)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(stdout))
    } else {
        (|| {
            writeln!(
                stdout,
                "{:<18} {:<18} {:<12} {:>5} {:<18}",
                "Offset", "Length", "Kind", "Depth", "Host offset"
            )?;
            for m in &entries {
                let kind = match m.kind {
                    ExtentKind::Data if m.compressed => "compressed",
                    ExtentKind::Data => "data",
                    ExtentKind::Zero => "zero",
                    ExtentKind::Unallocated => "unallocated",
                };
                writeln!(
                    stdout,
                    "{:<#18x} {:<#18x} {:<12} {:>5} {}",
                    m.start,
                    m.length,
                    kind,
                    m.depth,
                    m.offset
                        .map(|o| format!("{o:#x}"))
                        .unwrap_or_else(|| "-".into())
                )?;
            }
            Ok(())
        })()
    };
    r.map_err(term::stdout_error)?;
    Ok(ExitCode::SUCCESS)
}

fn compare_cmd(a: args::CompareArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let mut oa = open_options(a.format_a.as_deref(), None, policy)?;
    let mut ob = open_options(a.format_b.as_deref(), None, policy)?;
    package::apply(&a.package, &mut oa);
    package::apply(&a.package, &mut ob);
    let ia = diskconv::open(&a.a, &oa)?;
    package::print_warnings(ia.as_ref(), &oa);
    let ib = diskconv::open(&a.b, &ob)?;
    package::print_warnings(ib.as_ref(), &ob);
    if ia.virtual_size() != ib.virtual_size() && !a.strict {
        errln!(
            "Warning: image sizes differ: {} is {} bytes, {} is {} bytes",
            a.a.display(),
            ia.virtual_size(),
            a.b.display(),
            ib.virtual_size()
        );
    }
    match compare(ia.as_ref(), ib.as_ref(), a.strict)? {
        Comparison::Same => {
            outln!("Images are identical.")?;
            Ok(ExitCode::SUCCESS)
        }
        Comparison::Differ { offset } => {
            outln!("Content mismatch at offset {offset} ({offset:#x})!")?;
            Ok(ExitCode::from(1))
        }
        Comparison::SizeDiffers { a: sa, b: sb } => {
            outln!("Strict mode: image sizes differ ({sa} and {sb} bytes)")?;
            Ok(ExitCode::from(1))
        }
    }
}

fn check(a: args::CheckArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let opts = diskconv::check::CheckOptions {
        references: policy,
        deep: a.deep,
    };
    let report = diskconv::check::check_file(&a.image, &opts)?;
    let mut stdout = std::io::stdout().lock();
    let r = if a.json {
        serde_json::to_writer_pretty(&mut stdout, &report)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(stdout))
    } else {
        write!(stdout, "{report}")
    };
    r.map_err(term::stdout_error)?;
    // qemu-img check's codes: warnings alone leave the image clean.
    Ok(ExitCode::from(
        if report.corruptions > 0 || report.check_errors > 0 {
            2
        } else if report.leaks > 0 {
            3
        } else {
            0
        },
    ))
}
