//! `diskconv sync`: one incremental pass (the first is a full copy), or passes until the
//! changes converge. A killed run is resumed by the next one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use diskconv::sync::{PassReport, SyncOptions, sync_pass, sync_until_converged};
use diskconv::util::parse_size;
use diskconv::{
    ConvertOptions, Error, Format, OpenOptions, OutputOptions, ReferencePolicy, Result,
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
    /// Format of a new target (default: from its extension, raw when unknown).
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
    #[arg(long, value_name = "FILE", requires = "export_format")]
    pub export: Option<PathBuf>,
    /// Format of --export (as `convert -O`).
    #[arg(long = "export-format", value_name = "FMT", requires = "export")]
    pub export_format: Option<String>,
    /// Options of --export (as `convert -o`), e.g. `subformat=fixed` or `name=web01,cpus=4`.
    #[arg(long = "export-options", value_name = "LIST", requires = "export")]
    pub export_options: Option<String>,
    /// Compress --export (qcow2: `convert -c`).
    #[arg(long = "export-compressed", requires = "export")]
    pub export_compressed: bool,
    /// Disk selection and checks of an OVA source.
    #[command(flatten)]
    pub package: crate::args::PackageArgs,
}

/// Checks the --export options before any pass runs.
fn export_options(args: &SyncArgs) -> Result<Option<(PathBuf, OutputOptions)>> {
    let (Some(path), Some(fmt)) = (&args.export, &args.export_format) else {
        return Ok(None);
    };
    let mut o = OutputOptions::new(parse_format(fmt, "--export-format")?);
    if let Some(list) = &args.export_options {
        o = o.with_options(list)?;
    }
    o = o.compressed(args.export_compressed);
    o.validate()?;
    if path == &args.dst || path == &args.src {
        return Err(Error::InvalidArgument(format!(
            "--export {} must be a new file, not the sync source or target",
            path.display()
        )));
    }
    Ok(Some((path.clone(), o)))
}

/// The final step: the synced target converted into the export format (through a temporary
/// name renamed into place).
fn export(dst: &Path, out: &Path, o: &OutputOptions, policy: ReferencePolicy) -> Result<()> {
    let img = diskconv::open(dst, &OpenOptions::new().references(policy))?;
    convert_file(img.as_ref(), out, o, &ConvertOptions::default(), None)?;
    let bytes = std::fs::metadata(out)
        .map_err(|e| Error::io("reading the size of the export", e).in_file(out))?
        .len();
    eprintln!(
        "exported {} to {} ({}, {bytes} bytes)",
        dst.display(),
        out.display(),
        o.format.name(),
    );
    Ok(())
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
             written; {:.2} s, {:.1} MB/s",
            r.pass,
            r.source,
            r.blocks_scanned,
            r.blocks_changed,
            r.blocks_written,
            r.bytes_read,
            r.bytes_written,
            r.seconds,
            r.mb_per_s
        )
    };
    writeln!(out, "{line}").map_err(|e| Error::io("writing the report", e))
}

/// Runs `diskconv sync`.
pub fn run(args: SyncArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let block_size = match &args.block_size {
        None => None,
        Some(s) => Some(parse_size(s).ok_or_else(|| {
            Error::InvalidArgument(format!("--block-size '{s}' is not a size (e.g. 64k)"))
        })?),
    };
    let window_bytes = match &args.window {
        None => diskconv::sync::engine::DEFAULT_WINDOW_BYTES,
        Some(s) => parse_size(s).filter(|w| *w > 0).ok_or_else(|| {
            Error::InvalidArgument(format!("--window '{s}' is not a size (e.g. 256M)"))
        })?,
    };
    if !args.interval.is_finite() || args.interval < 0.0 || args.interval > 1e6 {
        return Err(Error::InvalidArgument(format!(
            "--interval {} must be a number of seconds between 0 and 1000000",
            args.interval
        )));
    }
    let export_to = export_options(&args)?;
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
        ..SyncOptions::default()
    };
    if !args.until_converged {
        let r = sync_pass(&args.src, &args.dst, &opts)?;
        print_pass(&r, args.json)?;
        if let Some((out, o)) = &export_to {
            export(&args.dst, out, o, policy)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut print_err = None;
    let c = sync_until_converged(
        &args.src,
        &args.dst,
        &opts,
        args.max_changed,
        Duration::from_secs_f64(args.interval),
        args.max_passes,
        |r| {
            if let Err(e) = print_pass(r, args.json)
                && print_err.is_none()
            {
                print_err = Some(e);
            }
        },
    )?;
    if let Some(e) = print_err {
        return Err(e);
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "converged": c.converged,
                "passes": c.passes.len(),
                "estimated_final_seconds": c.estimated_final_seconds,
            })
        );
    } else if c.converged {
        println!(
            "converged after {} passes (fewer than {} blocks changed); the final pass should take \
             about {:.2} s",
            c.passes.len(),
            args.max_changed,
            c.estimated_final_seconds
        );
    } else {
        println!(
            "not converged after {} passes; a final pass would take about {:.2} s",
            c.passes.len(),
            c.estimated_final_seconds
        );
    }
    if let Some((out, o)) = &export_to {
        export(&args.dst, out, o, policy)?;
    }
    Ok(ExitCode::SUCCESS)
}
