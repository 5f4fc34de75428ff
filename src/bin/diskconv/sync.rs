//! `diskconv sync`: one incremental pass (the first is a full copy), or passes until the
//! changes converge. A killed run is resumed by the next one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use diskconv::error::ResultExt;
use diskconv::files::OutputTarget;
use diskconv::output::check_output;
use diskconv::sync::state::{StatePlace, SyncState, fp_path};
use diskconv::sync::{
    PassReport, SyncOptions, SyncSource, SyncTarget, state_place, sync_pass_to,
    sync_until_converged_to,
};
use diskconv::util::parse_size;
use diskconv::{
    ConvertOptions, Error, ErrorKind, Format, OpenOptions, OutputOptions, ReferencePolicy, Result,
    convert_file,
};

/// `diskconv sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The source image (any readable format, or a block device).
    pub src: PathBuf,
    /// The target image, created by the first run and updated in place afterwards.
    pub dst: PathBuf,
    /// Source format (detected when omitted).
    #[arg(short = 'f', long = "format")]
    pub format: Option<String>,
    /// Format of a new target: raw, qcow2, vpc, vhdx, vdi or vmdk (monolithicSparse). Default:
    /// the one DST's extension names (.qcow2, .vmdk, .vhd/.vpc, .vhdx, .vdi, .raw), else raw. A name or
    /// format that cannot be updated in place (.ova) is refused: use --export for it.
    #[arg(short = 'O', long = "output-format")]
    pub output_format: Option<String>,
    /// State file (default: DST.dcsync; fingerprints go to STATE.fp).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Block size, a power of two from 4k to 64M (default 64k, or the state's).
    #[arg(long = "block-size")]
    pub block_size: Option<String>,
    /// Candidate bytes per crash-safety window (default 256M): progress is committed after
    /// each; a killed run makes the next one rewrite at most one window's changed candidates.
    #[arg(long)]
    pub window: Option<String>,
    /// Take the changed blocks from this persistent dirty bitmap of a qcow2 source.
    #[arg(long)]
    pub bitmap: Option<String>,
    /// One JSON object per pass on standard output.
    #[arg(long)]
    pub json: bool,
    /// On a damaged or mismatched state (or a target without one), discard it and compare
    /// every block of the source with the target.
    #[arg(long)]
    pub rescan: bool,
    /// Repeat passes until one changes fewer than --max-changed blocks.
    #[arg(long = "until-converged")]
    pub until_converged: bool,
    /// Convergence threshold in blocks.
    #[arg(
        long = "max-changed",
        default_value_t = 16,
        requires = "until_converged"
    )]
    pub max_changed: u64,
    /// Seconds to wait between passes.
    #[arg(long, default_value_t = 5.0, requires = "until_converged")]
    pub interval: f64,
    /// At most this many passes.
    #[arg(
        long = "max-passes",
        default_value_t = 10,
        requires = "until_converged"
    )]
    pub max_passes: u64,
    /// After the pass(es), write the synced target as FILE in a format that cannot be updated in
    /// place (streamOptimized VMDK, OVA, compressed qcow2, ...): the final step of a migration.
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
    /// Write --export as TARGET imports it (aws, azure, gcp, alibaba, huawei, openstack,
    /// vsphere, hyperv, kvm; as `convert --target`): its format and options, unless
    /// --export-format / --export-options say otherwise.
    #[arg(long, value_name = "TARGET", requires = "export")]
    pub target: Option<String>,
    /// Format of --export (as `convert -O`).
    #[arg(long = "export-format", value_name = "FMT", requires = "export")]
    pub export_format: Option<String>,
    /// Options of --export (as `convert -o`), e.g. `subformat=fixed` or `name=web01,cpus=4`.
    #[arg(long = "export-options", value_name = "LIST", requires = "export")]
    pub export_options: Option<String>,
    /// Compress --export (qcow2: `convert -c`).
    #[arg(long = "export-compressed", requires = "export")]
    pub export_compressed: bool,
    #[command(flatten)]
    pub refs: crate::args::RefArgs,
    #[command(flatten)]
    pub nbd_tls: crate::args::NbdTlsArgs,
    #[command(flatten)]
    pub threads: crate::args::ThreadArgs,
    /// Disk selection and checks of an OVA source.
    #[command(flatten)]
    pub package: crate::args::PackageArgs,
}

/// Checks the --export options before any pass runs.
/// `check_paths`: also check the paths the export will write (the file system, not the command
/// line: a failure there is not a usage error).
fn export_options(args: &SyncArgs, check_paths: bool) -> Result<Option<(PathBuf, Export)>> {
    let Some(path) = &args.export else {
        return Ok(None);
    };
    let (o, target) = match (&args.target, &args.export_format) {
        (Some(t), fmt) => {
            if let Some(f) = fmt {
                parse_format(f, "--export-format")?;
            }
            let lists: Vec<String> = args.export_options.iter().cloned().collect();
            let to = diskconv::cloud::target_output(
                t.parse()?,
                fmt.as_deref(),
                &lists,
                args.export_compressed,
            )?;
            (to.options.clone(), Some(to))
        }
        (None, Some(fmt)) => {
            let mut o = OutputOptions::new(parse_format(fmt, "--export-format")?);
            if let Some(list) = &args.export_options {
                o = o.with_options(list)?;
            }
            o = o.compressed(args.export_compressed);
            o.validate()?;
            (o, None)
        }
        (None, None) => {
            return Err(Error::InvalidArgument(
                "--export needs --export-format FMT or --target TARGET to say what to write".into(),
            ));
        }
    };
    let o = Export { options: o, target };
    if path == &args.dst || path == &args.src || crate::same_file(path, &args.dst) {
        return Err(Error::InvalidArgument(format!(
            "--export {} must be a new file, not the sync source or target",
            path.display()
        )));
    }
    // Every path the export writes is checked before the first pass reads anything.
    if !check_paths {
        return Ok(Some((path.clone(), o)));
    }
    if let OutputTarget::BlockDevice { .. } = check_output(path, &o.options).in_file(path)? {
        return Err(Error::InvalidArgument(
            "is a block device; --export writes a file (sync to the device instead)".into(),
        )
        .in_file(path));
    }
    Ok(Some((path.clone(), o)))
}

/// What `--export` writes: the format and options, and the target whose size rules apply.
struct Export {
    options: OutputOptions,
    target: Option<diskconv::cloud::TargetOutput>,
}

/// The final step: the synced target converted into the export format (through a temporary
/// name renamed into place). `Ok(false)`: interrupted (the temporaries are removed).
fn export(
    dst: &Path,
    out: &Path,
    export: &Export,
    policy: ReferencePolicy,
    cancel: &Arc<AtomicBool>,
) -> Result<Option<ExitCode>> {
    let img = diskconv::open(dst, &OpenOptions::new().references(policy))?;
    let opts = ConvertOptions {
        cancel: Some(cancel.clone()),
        ..ConvertOptions::default()
    };
    let o = &export.options;
    let result = match &export.target {
        Some(to) => diskconv::cloud::convert_for_target(img.as_ref(), out, to, &opts, None),
        None => convert_file(img.as_ref(), out, o, &opts, None),
    };
    let stats = match result {
        Err(e) if e.kind() == ErrorKind::Cancelled => {
            return Ok(Some(crate::term::interrupted(&format!(
                "the export to {} stopped; its temporary files were removed (the synced target \
                 {} is complete: run the export again, or `diskconv convert` it)",
                out.display(),
                dst.display()
            ))));
        }
        r => r?,
    };
    for p in &stats.stale_temporaries_removed {
        errln!(
            "diskconv: removed a stale temporary left by an interrupted run: {}",
            p.display()
        );
    }
    let bytes = std::fs::metadata(out)
        .map_err(|e| Error::io("reading the size of the export", e).in_file(out))?
        .len();
    errln!(
        "exported {} to {} ({}, {bytes} bytes)",
        dst.display(),
        out.display(),
        o.format.name(),
    );
    Ok(None)
}

/// The line printed when a pass is interrupted: where it stopped, from the state file.
fn interrupted_pass(state: &Path, dst: &Path) -> ExitCode {
    let what = match SyncState::load(state) {
        Ok(Some(st)) => match &st.running {
            Some(run) if run.pending.0 != run.pending.1 => format!(
                "sync pass {} to {} stopped in the window of blocks {}..{} (of {}); its position \
                 is recorded in {}: the next run rewrites that window and resumes the pass",
                st.passes + 1,
                dst.display(),
                run.pending.0,
                run.pending.1,
                st.blocks,
                state.display()
            ),
            Some(run) => format!(
                "sync pass {} to {} stopped at block {} of {}; the position is recorded in {}: \
                 the next run resumes the pass there",
                st.passes + 1,
                dst.display(),
                run.position,
                st.blocks,
                state.display()
            ),
            None => format!(
                "sync to {} stopped between passes; {} pass(es) recorded in {}: the next run \
                 starts a new pass",
                dst.display(),
                st.passes,
                state.display()
            ),
        },
        _ => format!(
            "sync to {} stopped before its state was written; the next run starts over",
            dst.display()
        ),
    };
    crate::term::interrupted(&what)
}

fn parse_format(s: &str, what: &str) -> Result<Format> {
    s.parse()
        .map_err(|e: Error| Error::InvalidArgument(format!("{what} '{s}': {e}")))
}

fn print_pass(r: &PassReport, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let line = if json {
        serde_json::to_string(r)
            .map_err(|e| Error::InvalidArgument(format!("encoding the report: {e}")))?
    } else {
        format!(
            "pass {} ({}): {} blocks scanned, {} changed, {} written; {} bytes read, {} bytes \
             written ({} as data, {} as zeroes), {} bytes of the target checked; {:.2} s, \
             {:.1} MB/s",
            r.pass,
            r.source,
            r.blocks_scanned,
            r.blocks_changed,
            r.blocks_written,
            r.bytes_read,
            r.bytes_written,
            r.bytes_written_data,
            r.bytes_written_zeroes,
            r.target_bytes_checked,
            r.seconds,
            r.mb_per_s
        )
    };
    writeln!(out, "{line}").map_err(crate::term::stdout_error)
}

fn block_size(args: &SyncArgs) -> Result<Option<u64>> {
    let Some(s) = &args.block_size else {
        return Ok(None);
    };
    let bs = parse_size(s).ok_or_else(|| {
        Error::InvalidArgument(format!("--block-size '{s}' is not a size (e.g. 64k)"))
    })?;
    diskconv::verify::check_block_size(bs, diskconv::verify::BlockSizes::PowersOfTwo)
        .map_err(|e| Error::InvalidArgument(format!("--block-size {s}: {e}")))?;
    Ok(Some(bs))
}

fn window(args: &SyncArgs) -> Result<u64> {
    match &args.window {
        None => Ok(diskconv::sync::engine::DEFAULT_WINDOW_BYTES),
        Some(s) => parse_size(s).filter(|w| *w > 0).ok_or_else(|| {
            Error::InvalidArgument(format!("--window '{s}' is not a size (e.g. 256M)"))
        }),
    }
}

fn check_interval(args: &SyncArgs) -> Result<()> {
    if !args.interval.is_finite() || args.interval < 0.0 || args.interval > 1e6 {
        return Err(Error::InvalidArgument(format!(
            "--interval {} must be a number of seconds between 0 and 1000000",
            args.interval
        )));
    }
    Ok(())
}

/// Checks what the command line alone says (before any file is opened); returns the explicit
/// output format. A target whose name or `-O` asks for a format that cannot be updated in place
/// (`x.ova`) is refused, pointing at `--export`.
pub fn check_usage(args: &SyncArgs) -> Result<Option<Format>> {
    if let Some(f) = &args.format {
        parse_format(f, "-f")?;
    }
    let explicit = args
        .output_format
        .as_deref()
        .map(|s| parse_format(s, "-O"))
        .transpose()?;
    let target = diskconv::sync::engine::target_format(&args.dst, explicit);
    if diskconv::sync::engine::check_updatable(target).is_err() {
        let asked = match explicit {
            Some(f) => format!("-O {f} asks"),
            None => format!("the name {} asks", args.dst.display()),
        };
        return Err(Error::InvalidArgument(format!(
            "{asked} for the {target} format, which cannot be a sync target (it cannot be \
             updated in place): sync to an image that can (raw, qcow2, vpc, vhdx, vdi or vmdk, e.g. \
             {}) and make the {target} from it at the end with --export {} --export-format \
             {target}",
            args.dst.with_extension("qcow2").display(),
            args.dst.display()
        )));
    }
    block_size(args)?;
    window(args)?;
    check_interval(args)?;
    export_options(args, false)?;
    Ok(explicit)
}

/// What the user is told when the state of a sync to `target` goes to the current folder (a
/// block device or a remote disk, without `--state`).
fn state_note(target: &SyncTarget, place: &StatePlace) -> String {
    let what = match target {
        SyncTarget::Path(_) => "a block device",
        SyncTarget::Storage { .. } => "a remote disk",
    };
    format!(
        "diskconv: {} is {what}: the sync state is kept in the current folder as {} (and {}); \
         run later passes from this folder, or choose a place with --state",
        target.name(),
        place.path.display(),
        fp_path(&place.path).display()
    )
}

/// Runs `diskconv sync`.
pub fn run(args: SyncArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let block_size = block_size(&args)?;
    let window_bytes = window(&args)?;
    check_interval(&args)?;
    let export_to = export_options(&args, true)?;
    let target = SyncTarget::for_path(&args.dst)?;
    let source = SyncSource::Path(args.src.clone());
    let place = state_place(&target, args.state.as_deref())?;
    if place.in_current_folder {
        errln!("{}", state_note(&target, &place));
    }
    let cancel = crate::term::cancel_on_signals()?;
    let opts = SyncOptions {
        block_size,
        state_path: args.state.clone(),
        source_format: args
            .format
            .as_deref()
            .map(|s| parse_format(s, "-f"))
            .transpose()?,
        references: policy,
        source_package: {
            let mut o = OpenOptions::new();
            crate::package::apply(&args.package, &mut o);
            o.package
        },
        output_format: args
            .output_format
            .as_deref()
            .map(|s| parse_format(s, "-O"))
            .transpose()?,
        bitmap: args.bitmap.clone(),
        rescan_on_bad_state: args.rescan,
        window_bytes,
        cancel: Some(cancel.clone()),
        ..SyncOptions::default()
    };
    let state = place.path;
    if !args.until_converged {
        let r = match sync_pass_to(&source, &target, &opts) {
            Err(e) if e.kind() == ErrorKind::Cancelled => {
                return Ok(interrupted_pass(&state, &args.dst));
            }
            r => r?,
        };
        print_pass(&r, args.json)?;
        if let Some((out, o)) = &export_to {
            if let Some(code) = export(&args.dst, out, o, policy, &cancel)? {
                return Ok(code);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut print_err = None;
    let c = match sync_until_converged_to(
        &source,
        &target,
        &opts,
        args.max_changed,
        Duration::from_secs_f64(args.interval),
        args.max_passes,
        |r| {
            // Every pass is printed; the first printing error is kept.
            if let Err(e) = print_pass(r, args.json) {
                if print_err.is_none() {
                    print_err = Some(e);
                }
            }
        },
    ) {
        Err(e) if e.kind() == ErrorKind::Cancelled => {
            return Ok(interrupted_pass(&state, &args.dst));
        }
        r => r?,
    };
    if let Some(e) = print_err {
        return Err(e);
    }
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "converged": c.converged,
                "passes": c.passes.len(),
                "estimated_final_seconds": c.estimated_final_seconds,
            })
        )?;
    } else if c.converged {
        outln!(
            "converged after {} passes (fewer than {} blocks changed); the final pass should take \
             about {:.2} s",
            c.passes.len(),
            args.max_changed,
            c.estimated_final_seconds
        )?;
    } else {
        outln!(
            "not converged after {} passes; a final pass would take about {:.2} s",
            c.passes.len(),
            c.estimated_final_seconds
        )?;
    }
    if let Some((out, o)) = &export_to {
        if let Some(code) = export(&args.dst, out, o, policy, &cancel)? {
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}
