//! OVA packages on the command line: the options that pick a disk and control the checks
//! (`--disk`, `-l N` on an OVA, `--no-verify-manifest`, `--allow-capacity-mismatch`), the
//! warnings a reader reports, the virtual machine `info` describes, and
//! `convert --all-disks`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use diskconv::detect::detect;
use diskconv::image::{ImageInfo, PackageInfo};
use diskconv::storage::FileStorage;
use diskconv::util::human_bytes;
use diskconv::{
    ConvertOptions, Error, Format, ImageReader, OpenOptions, ReferencePolicy, Result,
    convert_files, disk_output_path,
};

use crate::args::{ConvertArgs, Input, PackageArgs};

/// Sets the package options of `o` from the command line.
pub fn apply(args: &PackageArgs, o: &mut OpenOptions) {
    o.package.disk = args.disk;
    o.package.verify_manifest = !args.no_verify_manifest;
    o.package.allow_capacity_mismatch = args.allow_capacity_mismatch;
}

/// The open options of an input: format, snapshot, package options. `-l` on an OVA (which
/// has no internal snapshots) selects a disk by number, as `--disk` does.
pub fn input_options(path: &Path, input: &Input, policy: ReferencePolicy) -> Result<OpenOptions> {
    let mut o = crate::open_options(input.format.as_deref(), None, policy)?;
    apply(&input.package, &mut o);
    let Some(s) = input.snapshot.as_deref() else {
        return Ok(o);
    };
    let is_ova = match o.format {
        Some(f) => f == Format::Ova,
        None => {
            FileStorage::open_read_only(path)
                .ok()
                .and_then(|st| detect(&st).ok())
                == Some(Format::Ova)
        }
    };
    if !is_ova {
        let mut with = crate::open_options(input.format.as_deref(), Some(s), policy)?;
        with.package = o.package;
        return Ok(with);
    }
    let n: usize = s
        .trim()
        .strip_prefix("disk=")
        .unwrap_or(s.trim())
        .parse()
        .map_err(|_| {
            Error::InvalidArgument(format!(
                "-l '{s}': {} is an OVA, which has no internal snapshots; on an OVA -l takes a \
                 disk number, as --disk does",
                path.display()
            ))
        })?;
    if let Some(d) = o.package.disk.filter(|&d| d != n) {
        return Err(Error::InvalidArgument(format!(
            "-l {n} and --disk {d} name different disks"
        )));
    }
    o.package.disk = Some(n);
    Ok(o)
}

/// Prints what the reader noticed (`diskconv: warning: ...` on standard error), and that the
/// manifest was not checked when the caller turned the check off.
pub fn print_warnings(img: &dyn ImageReader, opts: &OpenOptions) {
    print_info_warnings(&img.info(), opts);
}

fn print_info_warnings(info: &ImageInfo, opts: &OpenOptions) {
    for w in &info.warnings {
        errln!("diskconv: warning: {w}");
    }
    manifest_note(info, opts);
}

fn manifest_note(info: &ImageInfo, opts: &OpenOptions) {
    if let Some(m) = info
        .package
        .as_ref()
        .and_then(|p| p.manifest.as_ref())
        .filter(|_| !opts.package.verify_manifest)
    {
        errln!(
            "diskconv: warning: the manifest {} was not checked (--no-verify-manifest): the \
             package's integrity is unknown",
            m.file
        );
    }
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// The package section of `diskconv info`.
pub fn print_package(p: &PackageInfo, out: &mut impl Write, indent: &str) -> std::io::Result<()> {
    let i2 = format!("{indent}    ");
    match &p.descriptor_version {
        Some(v) => writeln!(out, "{indent}virtual machine ({}, OVF {v}):", p.descriptor)?,
        None => writeln!(out, "{indent}virtual machine ({}):", p.descriptor)?,
    }
    writeln!(out, "{i2}name: {}", opt(&p.name))?;
    match p.cpus {
        Some(n) => writeln!(out, "{i2}CPUs: {n}")?,
        None => writeln!(out, "{i2}CPUs: -")?,
    }
    match p.memory_bytes {
        Some(n) => writeln!(out, "{i2}memory: {} ({n} bytes)", human_bytes(n))?,
        None => writeln!(out, "{i2}memory: -")?,
    }
    let mut os = opt(&p.os_type).to_string();
    if let Some(id) = &p.os_id {
        os.push_str(&format!(" (OVF id {id})"));
    }
    if let Some(d) = &p.os_description {
        os.push_str(&format!(": {d}"));
    }
    writeln!(out, "{i2}OS type: {os}")?;
    writeln!(
        out,
        "{i2}firmware: {}",
        p.firmware.as_deref().unwrap_or("not declared")
    )?;
    if let Some(h) = &p.hardware_family {
        writeln!(out, "{i2}hardware: {h}")?;
    }
    writeln!(out, "{i2}disks:")?;
    for d in &p.disks {
        let mark = if p.selected_disk == Some(d.index) {
            "*"
        } else {
            " "
        };
        let file = match (&d.file, d.file_size) {
            (Some(f), Some(n)) => format!("{f} ({} in the package)", human_bytes(n)),
            (Some(f), None) => format!("{f} (absent)"),
            (None, _) => "no file (blank disk)".into(),
        };
        let capacity = match d.capacity {
            Some(c) => format!("capacity {} ({c} bytes)", human_bytes(c)),
            None => format!("capacity {}", d.capacity_text),
        };
        writeln!(out, "{i2}{mark} {}: {file}, {capacity}", d.index)?;
        let mut facts = Vec::new();
        if let Some(f) = &d.image_format {
            facts.push(f.clone());
        }
        if let Some(v) = d.virtual_size {
            facts.push(format!("virtual size {} ({v} bytes)", human_bytes(v)));
        }
        if let Some(c) = &d.controller {
            facts.push(c.clone());
        }
        if !facts.is_empty() {
            writeln!(out, "{i2}     {}", facts.join(", "))?;
        }
    }
    if p.nics.is_empty() {
        writeln!(out, "{i2}network adapters: none")?;
    } else {
        writeln!(out, "{i2}network adapters:")?;
        for (i, n) in p.nics.iter().enumerate() {
            writeln!(
                out,
                "{i2}  {}: network {}, adapter {}{}",
                i + 1,
                opt(&n.network),
                opt(&n.adapter),
                n.name
                    .as_ref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            )?;
        }
    }
    match &p.manifest {
        None => writeln!(out, "{i2}manifest: none")?,
        Some(m) => {
            if let Some(e) = &m.error {
                writeln!(out, "{i2}manifest: {} (unusable: {e})", m.file)?;
            } else {
                let state = if m.verified.is_empty() {
                    "not verified (--verify-manifest checks it)".to_string()
                } else {
                    format!("verified: {}", m.verified.join(", "))
                };
                writeln!(
                    out,
                    "{i2}manifest: {} ({}, {} {}), {state}",
                    m.file,
                    m.algorithms.join(", "),
                    m.entries,
                    if m.entries == 1 { "entry" } else { "entries" }
                )?;
            }
            if !m.not_listed.is_empty() {
                writeln!(
                    out,
                    "{i2}not listed in the manifest: {}",
                    m.not_listed.join(", ")
                )?;
            }
            if !m.missing.is_empty() {
                writeln!(
                    out,
                    "{i2}listed but absent from the package: {}",
                    m.missing.join(", ")
                )?;
            }
        }
    }
    if let Some(c) = &p.certificate {
        writeln!(out, "{i2}signature: {c} (not checked)")?;
    }
    Ok(())
}

/// `diskconv convert --all-disks`: every disk of an OVA, each to its own file, all or nothing.
pub fn convert_all_disks(a: &ConvertArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let out = crate::output_options(a)?;
    if out.format == Format::Ova {
        return Err(Error::InvalidArgument(
            "--all-disks with -O ova would write one OVA per disk (the OVA writer takes one \
             disk): choose another output format, or one disk with --disk N"
                .into(),
        ));
    }
    if a.input.snapshot.is_some() {
        return Err(Error::InvalidArgument(
            "--all-disks reads every disk; drop -l".into(),
        ));
    }
    let opts = input_options(&a.src, &a.input, policy)?;
    let disks = diskconv::open_disks(&a.src, &opts)?;
    let single = match disks.as_slice() {
        [only] if only.format() != Format::Ova => Some(only),
        _ => None,
    };
    if let Some(only) = single {
        return Err(Error::InvalidArgument(format!(
            "--all-disks: {} is a {} image, which holds one disk; drop --all-disks",
            a.src.display(),
            only.format()
        )));
    }
    // The package's warnings are the same for every disk: print each once.
    let infos: Vec<ImageInfo> = disks.iter().map(|d| d.info()).collect();
    let mut warnings: Vec<&String> = Vec::new();
    for w in infos.iter().flat_map(|i| &i.warnings) {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    for w in warnings {
        errln!("diskconv: warning: {w}");
    }
    if let Some(first) = infos.first() {
        manifest_note(first, &opts);
    }
    let targets: Vec<PathBuf> = (1..=disks.len())
        .map(|i| disk_output_path(&a.dst, i))
        .collect();
    for t in &targets {
        if crate::same_file(&a.src, t) {
            return Err(Error::InvalidArgument(format!(
                "the output {} is the source itself; choose another name",
                t.display()
            )));
        }
    }
    let jobs: Vec<(&dyn ImageReader, &Path)> = disks
        .iter()
        .zip(&targets)
        .map(|(d, t)| (d.as_ref(), t.as_path()))
        .collect();
    let mut cb = crate::term::percent_lines(a.progress);
    let cancel = crate::term::cancel_on_signals()?;
    let opts = ConvertOptions {
        cancel: Some(cancel),
        ..ConvertOptions::default()
    };
    let stats = match convert_files(&jobs, &out, &opts, Some(&mut cb)) {
        Err(e) if e.kind() == diskconv::ErrorKind::Cancelled => {
            return Ok(crate::term::interrupted(&format!(
                "convert --all-disks of {} stopped; no disk was written (their temporary files \
                 were removed)",
                a.src.display()
            )));
        }
        r => r?,
    };
    for s in &stats {
        for p in &s.stale_temporaries_removed {
            errln!(
                "diskconv: removed a stale temporary left by an interrupted run: {}",
                p.display()
            );
        }
    }
    for (i, (t, s)) in targets.iter().zip(&stats).enumerate() {
        let mut line = format!(
            "disk {}: {} ({}) -> {}",
            i + 1,
            infos[i]
                .package
                .as_ref()
                .and_then(|p| p.disks.get(i).and_then(|d| d.file.clone()))
                .unwrap_or_default(),
            human_bytes(s.virtual_size),
            t.display()
        );
        if a.stats {
            line.push_str(&format!(
                " in {:.2} s: {} data, {} zeros",
                s.elapsed.as_secs_f64(),
                human_bytes(s.data_bytes),
                human_bytes(s.zero_bytes)
            ));
        }
        outln!("{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}
