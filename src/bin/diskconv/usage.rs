//! What the command line alone says is wrong, checked before any file is opened: formats,
//! option lists, sizes, and options that mean nothing with the others. Such an error is a usage
//! error ([`crate::exit::USAGE`]); what goes wrong afterwards is a failure.

use std::path::Path;

use diskconv::{Error, Format, Result};

use crate::args::Command;
use crate::inject::InjectCommand;
use crate::ntfs::NtfsCommand;

/// Checks the command line; returns warnings about what is allowed but suspicious (an output
/// whose extension names another format than the one written).
pub fn check(cmd: &Command) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    match cmd {
        Command::Convert(a) => {
            format(a.input.format.as_deref(), "-f")?;
            // An upload URL (with its SAS) is checked by the upload itself, never echoed.
            if a.dst
                .to_str()
                .is_some_and(diskconv::cloud::azure::url::is_http_url)
            {
                return Ok(warnings);
            }
            let out = crate::output_options(a)?;
            if a.output_format.is_some() || a.target.is_some() {
                warnings.extend(mismatch(&a.dst, out.format, "-O"));
            }
            if let Some((t, to)) = crate::target_choice(a)? {
                warnings.extend(to.conflicts.iter().map(|c| format!("--target {t}: {c}")));
            }
            if let Some(m) = &a.boot_mode {
                m.parse::<diskconv::cloud::BootMode>()?;
            }
        }
        Command::Info(a) | Command::Map(a) => format(a.input.format.as_deref(), "-f")?,
        Command::Compare(a) => {
            format(a.format_a.as_deref(), "-f")?;
            format(a.format_b.as_deref(), "-F")?;
        }
        Command::Check(_) => {}
        Command::Serve(a) => crate::serve::check_usage(a)?,
        Command::Hive(a) => crate::hive::check_usage(a)?,
        Command::Sync(a) => {
            if let Some(f) = crate::sync::check_usage(a)? {
                warnings.extend(mismatch(&a.dst, f, "-O"));
            }
        }
        Command::Verify(a) => {
            format(a.format_src.as_deref(), "-f")?;
            format(a.format_dst.as_deref(), "-F")?;
            crate::verify::block_size(a)?;
        }
        Command::Inspect(a) => format(a.format.as_deref(), "-f")?,
        Command::Preflight(a) => {
            format(a.format.as_deref(), "-f")?;
            crate::preflight::check_usage(a)?;
        }
        Command::Inject(a) => match &a.command {
            InjectCommand::Windows(w) => crate::inject::check_usage(w)?,
            InjectCommand::Linux(l) => {
                format(l.format.as_deref(), "-f")?;
                l.target.parse::<diskconv::guest::kmod::ModuleTarget>()?;
            }
        },
        Command::Ntfs(a) => match &a.command {
            NtfsCommand::Info { target, .. }
            | NtfsCommand::Ls { target, .. }
            | NtfsCommand::Cat { target, .. }
            | NtfsCommand::Put { target, .. }
            | NtfsCommand::Mkdir { target, .. } => {
                crate::ntfs::open_options(target, target.refs.references)?;
            }
            NtfsCommand::Rollback { .. } => {}
        },
    }
    Ok(warnings)
}

/// A format name given with `flag`, if any, must be one we know.
fn format(name: Option<&str>, flag: &str) -> Result<()> {
    if let Some(n) = name {
        n.parse::<Format>()
            .map_err(|e| Error::InvalidArgument(format!("{flag} {n}: {e}")))?;
    }
    Ok(())
}

/// The warning for an output written in `format` (chosen with `flag`) whose extension names
/// another format.
fn mismatch(path: &Path, format: Format, flag: &str) -> Option<String> {
    Format::extension_mismatch(path, format).map(|named| {
        format!(
            "{}: writing a {format} image ({flag} {format}) into a file whose extension means \
             {named}; tools that go by the name will misread it",
            path.display()
        )
    })
}
