//! `diskconv hive`: the registry hive commands.
//!
//! Reads go through [`Hive::open`] (which replays the transaction logs in memory when the hive
//! is dirty); edits write the hive in place through [`Hive::save`] (only the touched pages), or a
//! whole new file with `-o` through [`Hive::save_as`]. `check` judges the file's own bytes with
//! the independent walker of [`check_bytes`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use diskconv::error::ResultExt;
use diskconv::guest::hive::check::{CheckReport, check_bytes};
use diskconv::guest::hive::data::utf16_bytes;
use diskconv::guest::hive::{
    Hive, HiveError, HiveOpenOptions, KeyId, RegData, RegType, RegValue, SaveStats,
    filetime_to_iso8601, reg,
};
use diskconv::{Error, Result};

/// `diskconv hive`.
#[derive(Debug, Args)]
pub struct HiveArgs {
    /// The hive command.
    #[command(subcommand)]
    pub command: HiveCommand,
}

/// How a hive is opened: its transaction logs. A dirty hive whose logs are missing or unusable
/// is read as it is, with a warning that what it shows may be stale.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// A transaction log of the hive (repeatable). Default: HIVE.LOG, HIVE.LOG1 and HIVE.LOG2
    /// beside the hive, when the hive is dirty.
    #[arg(long = "log", value_name = "FILE")]
    pub logs: Vec<PathBuf>,
}

/// Where an edit is written.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// Write the edited hive to OUT (a whole new file) and leave HIVE unchanged; default: edit
    /// HIVE in place, writing only the pages that changed.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub logs: LogArgs,
    /// Edit a dirty hive whose logs are missing or unusable anyway, losing what the logs held.
    #[arg(long)]
    pub accept_data_loss: bool,
}

/// The hive subcommands.
#[derive(Debug, Subcommand)]
pub enum HiveCommand {
    /// List the subkeys and values of a key.
    Ls {
        /// The hive file.
        hive: PathBuf,
        /// The key (backslash-separated, case-insensitive; default: the root).
        #[arg(default_value = "")]
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        logs: LogArgs,
    },
    /// Print a value's data (or, without VALUE, what the key node says about the key).
    Get {
        /// The hive file.
        hive: PathBuf,
        /// The key.
        key: String,
        /// The value name; `@` or "" is the key's default value.
        value: Option<String>,
        /// Print JSON.
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// Write the value's raw data bytes to standard output.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        logs: LogArgs,
    },
    /// Set a value (creating the key and its missing parents).
    ///
    /// TYPE: sz, expand_sz, multi_sz, dword, dword_be, qword, binary, none, link, or a number.
    /// DATA: a string (multi_sz: one argument per string), a decimal or 0x number, or hex bytes.
    Set {
        /// The hive file.
        hive: PathBuf,
        /// The key.
        key: String,
        /// The value name (`@` or "": the default value).
        name: String,
        /// The value type.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// The data (put `--` before data that starts with `-`).
        #[arg(num_args = 0.., allow_negative_numbers = true)]
        data: Vec<String>,
        #[command(flatten)]
        edit: EditArgs,
    },
    /// Delete a value, or without VALUE a key with all its subkeys.
    Delete {
        /// The hive file.
        hive: PathBuf,
        /// The key.
        key: String,
        /// The value name (`@` or "": the default value).
        value: Option<String>,
        #[command(flatten)]
        edit: EditArgs,
    },
    /// Apply a .reg file (Windows Registry Editor 5.00 or REGEDIT4; UTF-16LE or UTF-8).
    Import {
        /// The hive file.
        hive: PathBuf,
        /// The .reg file.
        file: PathBuf,
        /// The prefix of the key paths in the file, removed from each (e.g.
        /// `HKEY_LOCAL_MACHINE\SYSTEM`); default: paths are relative to the root.
        #[arg(long, default_value = "")]
        prefix: String,
        /// The file is a fragment without the `Windows Registry Editor Version 5.00` header
        /// (as hivexregedit reads and writes them); read it as a version 5.00 file.
        #[arg(long)]
        fragment: bool,
        #[command(flatten)]
        edit: EditArgs,
    },
    /// Write a key and its subtree as a .reg file (Windows Registry Editor 5.00).
    Export {
        /// The hive file.
        hive: PathBuf,
        /// The key (default: the root).
        #[arg(default_value = "")]
        key: String,
        /// The file to write (default: standard output).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// The prefix put before every key path (e.g. `HKEY_LOCAL_MACHINE\SYSTEM`).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Encode as UTF-16LE with a byte order mark, as regedit does (default: UTF-8).
        #[arg(long)]
        utf16: bool,
        #[command(flatten)]
        logs: LogArgs,
    },
    /// Check the structure of a hive file. Exit 0: sound, 2: problems found, 1: the check could
    /// not run.
    #[command(after_help = crate::exit::HIVE_CHECK)]
    Check {
        /// The hive file.
        hive: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay the transaction logs of a dirty hive into a new file (HIVE is not modified).
    Replay {
        /// The hive file.
        hive: PathBuf,
        /// The recovered hive to write.
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: PathBuf,
        /// A transaction log (repeatable; default: HIVE.LOG, HIVE.LOG1, HIVE.LOG2 beside it).
        #[arg(long = "log", value_name = "FILE")]
        logs: Vec<PathBuf>,
    },
    /// Create a new empty hive.
    New {
        /// The hive file to create (must not exist).
        output: PathBuf,
        /// The name of the root key.
        #[arg(long, default_value = "ROOT")]
        root_name: String,
    },
}

/// Runs a hive command.
pub fn run(args: HiveArgs) -> Result<ExitCode> {
    match args.command {
        HiveCommand::Ls {
            hive,
            key,
            json,
            logs,
        } => ls(&hive, &key, json, &logs),
        HiveCommand::Get {
            hive,
            key,
            value,
            json,
            raw,
            logs,
        } => get(&hive, &key, value.as_deref(), json, raw, &logs),
        HiveCommand::Set {
            hive,
            key,
            name,
            kind,
            data,
            edit,
        } => set(&hive, &key, &name, &kind, &data, &edit),
        HiveCommand::Delete {
            hive,
            key,
            value,
            edit,
        } => delete(&hive, &key, value.as_deref(), &edit),
        HiveCommand::Import {
            hive,
            file,
            prefix,
            fragment,
            edit,
        } => import(&hive, &file, &prefix, fragment, &edit),
        HiveCommand::Export {
            hive,
            key,
            output,
            prefix,
            utf16,
            logs,
        } => export(&hive, &key, output.as_deref(), &prefix, utf16, &logs),
        HiveCommand::Check { hive, json } => check(&hive, json),
        HiveCommand::Replay { hive, output, logs } => replay(&hive, &output, logs),
        HiveCommand::New { output, root_name } => new(&output, &root_name),
    }
}

fn open(path: &Path, logs: &LogArgs, accept_data_loss: bool) -> Result<Hive> {
    let opts = HiveOpenOptions {
        logs: logs.logs.clone(),
        accept_data_loss,
    };
    Hive::open(path, &opts)
}

/// Opens a hive to edit: in place (no `-o`) with the file's lock held from before it is read
/// until it is saved.
fn open_to_edit(path: &Path, edit: &EditArgs) -> Result<Hive> {
    if edit.output.is_some() {
        return open(path, &edit.logs, edit.accept_data_loss);
    }
    let opts = HiveOpenOptions {
        logs: edit.logs.logs.clone(),
        accept_data_loss: edit.accept_data_loss,
    };
    Hive::open_for_edit(path, &opts)
}

/// Opens a hive to read it, warning on stderr when it is dirty and its logs were not replayed.
fn open_to_read(path: &Path, logs: &LogArgs) -> Result<Hive> {
    let hive = open(path, logs, false)?;
    if let Some(w) = hive.stale_warning() {
        errln!("diskconv: warning: {}: {w}", path.display());
    }
    Ok(hive)
}

/// `@` and "" name the default value.
fn value_name(name: &str) -> &str {
    if name == "@" { "" } else { name }
}

fn shown_name(name: &str) -> &str {
    if name.is_empty() { "@" } else { name }
}

fn find_key(hive: &Hive, path: &Path, key: &str) -> Result<KeyId> {
    hive.open_key(key)?
        .ok_or_else(|| HiveError::NotFound(format!("no key '{key}' in {}", path.display())).into())
}

fn stdout_error(e: std::io::Error) -> Error {
    crate::term::stdout_error(e)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The value's data as one line of text (a FILETIME value as its date).
fn value_text(v: &RegValue) -> String {
    match v.filetime() {
        Some(ft) => filetime_to_iso8601(ft),
        None => data_text(&v.decoded()),
    }
}

/// The decoded data as one line of text.
fn data_text(d: &RegData) -> String {
    match d {
        RegData::Sz(s) | RegData::ExpandSz(s) | RegData::Link(s) => format!("{s:?}"),
        RegData::MultiSz(v) => format!("{v:?}"),
        RegData::Dword(n) | RegData::DwordBigEndian(n) => format!("{n:#010x} ({n})"),
        RegData::Qword(n) => format!("{n:#018x} ({n})"),
        RegData::None(b) | RegData::Binary(b) | RegData::Other(_, b) => hex(b),
    }
}

/// The decoded data as JSON: strings, arrays of strings, numbers, or hex strings for bytes.
fn data_json(d: &RegData) -> serde_json::Value {
    use serde_json::Value;
    match d {
        RegData::Sz(s) | RegData::ExpandSz(s) | RegData::Link(s) => Value::from(s.as_str()),
        RegData::MultiSz(v) => Value::from(v.clone()),
        RegData::Dword(n) | RegData::DwordBigEndian(n) => Value::from(*n),
        RegData::Qword(n) => Value::from(*n),
        RegData::None(b) | RegData::Binary(b) | RegData::Other(_, b) => {
            Value::from(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        }
    }
}

fn value_json(v: &RegValue) -> serde_json::Value {
    let mut j = serde_json::json!({
        "name": v.name,
        "type": v.kind.name(),
        "type_code": v.kind.0,
        "size": v.data.len(),
        "data": data_json(&v.decoded()),
    });
    if let Some(ft) = v.filetime() {
        j["filetime"] = ft.into();
        j["date"] = filetime_to_iso8601(ft).into();
    }
    j
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)
        .map_err(std::io::Error::from)
        .and_then(|_| writeln!(out))
        .map_err(stdout_error)
}

fn ls(path: &Path, key: &str, json: bool, logs: &LogArgs) -> Result<ExitCode> {
    let hive = open_to_read(path, logs)?;
    let k = find_key(&hive, path, key)?;
    let mut names = Vec::new();
    for s in hive.subkeys(k)? {
        names.push(hive.key_name(s)?);
    }
    let values = hive.values(k)?;
    if json {
        print_json(&serde_json::json!({
            "key": hive.key_path(k)?,
            "subkeys": names,
            "values": values.iter().map(value_json).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let mut text = String::new();
    for n in &names {
        text.push_str(n);
        text.push_str("\\\n");
    }
    for v in &values {
        text.push_str(&format!(
            "{}\t{}\t{}\n",
            shown_name(&v.name),
            v.kind,
            value_text(v)
        ));
    }
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(ExitCode::SUCCESS)
}

fn get(
    path: &Path,
    key: &str,
    value: Option<&str>,
    json: bool,
    raw: bool,
    logs: &LogArgs,
) -> Result<ExitCode> {
    let hive = open_to_read(path, logs)?;
    let k = find_key(&hive, path, key)?;
    let Some(name) = value else {
        if raw {
            return Err(Error::InvalidArgument(
                "--raw needs a value name (`@` for the default value)".into(),
            ));
        }
        let info = hive.key_info(k)?;
        let sd = hive.security_descriptor(k)?;
        if json {
            print_json(&serde_json::json!({
                "path": hive.key_path(k)?,
                "name": info.name,
                "class": info.class,
                "last_written": info.last_written,
                "last_written_date": filetime_to_iso8601(info.last_written),
                "subkeys": info.subkey_count,
                "values": info.value_count,
                "flags": info.flags,
                "security_descriptor": hex(&sd).replace(' ', ""),
            }))?;
        } else {
            let text = format!(
                "name: {}\nclass: {}\nlast written: {}\nsubkeys: {}\nvalues: {}\n\
                 flags: {:#06x}\nsecurity descriptor: {} bytes\n",
                info.name,
                info.class.as_deref().unwrap_or("(none)"),
                filetime_to_iso8601(info.last_written),
                info.subkey_count,
                info.value_count,
                info.flags,
                sd.len()
            );
            std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .map_err(stdout_error)?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let name = value_name(name);
    let v = hive.value(k, name)?.ok_or_else(|| {
        HiveError::NotFound(format!(
            "no value '{}' in key '{key}' of {}",
            shown_name(name),
            path.display()
        ))
    })?;
    let mut out = std::io::stdout().lock();
    if raw {
        out.write_all(&v.data).map_err(stdout_error)?;
    } else if json {
        drop(out);
        print_json(&value_json(&v))?;
    } else if let Some(ft) = v.filetime() {
        writeln!(out, "{}", filetime_to_iso8601(ft)).map_err(stdout_error)?;
    } else {
        let text = match v.decoded() {
            RegData::Sz(s) | RegData::ExpandSz(s) | RegData::Link(s) => s,
            RegData::MultiSz(v) => v.join("\n"),
            RegData::Dword(n) | RegData::DwordBigEndian(n) => n.to_string(),
            RegData::Qword(n) => n.to_string(),
            RegData::None(b) | RegData::Binary(b) | RegData::Other(_, b) => hex(&b),
        };
        writeln!(out, "{text}").map_err(stdout_error)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes an edited hive (in place or to `-o`) and prints the one-line summary.
fn finish(hive: &mut Hive, path: &Path, edit: &EditArgs, what: &str) -> Result<ExitCode> {
    let (stats, target): (SaveStats, &Path) = match &edit.output {
        Some(out) => (hive.save_as(out).in_file(out)?, out),
        None => (hive.save().in_file(path)?, path),
    };
    errln!(
        "{what}; wrote {} bytes ({} pages and the base block) to {}",
        stats.bytes_written,
        stats.pages_written,
        target.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn set(
    path: &Path,
    key: &str,
    name: &str,
    kind: &str,
    data: &[String],
    edit: &EditArgs,
) -> Result<ExitCode> {
    // Parse everything before opening, so a bad argument never touches the hive.
    let kind = RegType::parse(kind)?;
    let data = RegData::from_args(kind, data)?;
    let name = value_name(name);
    let mut hive = open_to_edit(path, edit)?;
    let existed = hive.open_key(key)?.is_some();
    let k = hive.create_key(key)?;
    hive.set_data(k, name, &data)?;
    let what = format!(
        "set {}\\{} ({kind}, {} bytes){}",
        hive.key_path(k)?,
        shown_name(name),
        data.encode().len(),
        if existed { "" } else { " in a new key" }
    );
    finish(&mut hive, path, edit, &what)
}

fn delete(path: &Path, key: &str, value: Option<&str>, edit: &EditArgs) -> Result<ExitCode> {
    let mut hive = open_to_edit(path, edit)?;
    let k = find_key(&hive, path, key)?;
    let what = match value {
        Some(v) => {
            let v = value_name(v);
            if !hive.delete_value(k, v)? {
                return Err(HiveError::NotFound(format!(
                    "no value '{}' in key '{key}' of {}",
                    shown_name(v),
                    path.display()
                ))
                .into());
            }
            format!("deleted value {}\\{}", hive.key_path(k)?, shown_name(v))
        }
        None => {
            let full = hive.key_path(k)?;
            if !hive.delete_key(key)? {
                return Err(
                    HiveError::NotFound(format!("no key '{key}' in {}", path.display())).into(),
                );
            }
            format!("deleted key {full} and its subkeys")
        }
    };
    finish(&mut hive, path, edit, &what)
}

fn import(
    path: &Path,
    file: &Path,
    prefix: &str,
    fragment: bool,
    edit: &EditArgs,
) -> Result<ExitCode> {
    let bytes = std::fs::read(file)
        .map_err(|e| Error::io("reading the .reg file", e))
        .in_file(file)?;
    let lenient = reg::ParseOptions {
        require_header: false,
    };
    let ops = if fragment {
        reg::parse_with(&bytes, &lenient).in_file(file)?
    } else {
        match reg::parse(&bytes) {
            Ok(ops) => ops,
            // A file that reads fine without the header requirement is a fragment.
            Err(e) if reg::parse_with(&bytes, &lenient).is_ok() => {
                return Err(Error::InvalidFormat(format!(
                    "{}; it reads as a header-less fragment (hivexregedit's form): import it \
                     with --fragment",
                    e.chain()
                ))
                .in_file(file));
            }
            Err(e) => return Err(e.in_file(file)),
        }
    };
    let mut hive = open_to_edit(path, edit)?;
    let s = reg::import(&mut hive, &ops, prefix).in_file(file)?;
    let what = format!(
        "imported {}: {} keys created, {} keys deleted, {} values set, {} values deleted",
        file.display(),
        s.keys_created,
        s.keys_deleted,
        s.values_set,
        s.values_deleted
    );
    finish(&mut hive, path, edit, &what)
}

fn export(
    path: &Path,
    key: &str,
    output: Option<&Path>,
    prefix: &str,
    utf16: bool,
    logs: &LogArgs,
) -> Result<ExitCode> {
    let hive = open_to_read(path, logs)?;
    let k = find_key(&hive, path, key)?;
    let text = reg::export(&hive, k, prefix)?;
    let bytes = if utf16 {
        let mut b = vec![0xFF, 0xFE];
        b.extend(utf16_bytes(&text));
        b
    } else {
        text.into_bytes()
    };
    match output {
        Some(out) => diskconv::files::write_output(out, &bytes, ".reg file")?,
        None => std::io::stdout()
            .lock()
            .write_all(&bytes)
            .map_err(stdout_error)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn report_text(r: &CheckReport) -> String {
    let mut s = String::new();
    for i in &r.issues {
        s.push_str(&format!("problem: {i}\n"));
    }
    if r.issues_omitted > 0 {
        s.push_str(&format!("... and {} more problems\n", r.issues_omitted));
    }
    for l in &r.leaks {
        s.push_str(&format!("leak: {l}\n"));
    }
    if r.leaked_cells > r.leaks.len() as u64 {
        s.push_str(&format!(
            "... and {} more leaked cells\n",
            r.leaked_cells - r.leaks.len() as u64
        ));
    }
    s.push_str(&format!(
        "{} bins, {} keys, {} values, {} security cells; {} bytes allocated, {} free; \
         {} leaked cells ({} bytes)\n",
        r.bins,
        r.keys,
        r.values,
        r.security_cells,
        r.allocated_bytes,
        r.free_bytes,
        r.leaked_cells,
        r.leaked_bytes
    ));
    let problems = r.issues.len() as u64 + r.issues_omitted;
    if problems == 0 {
        s.push_str("No problems found.\n");
    } else {
        s.push_str(&format!("{problems} problems found.\n"));
    }
    s
}

fn check(path: &Path, json: bool) -> Result<ExitCode> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io("reading the hive", e))
        .in_file(path)?;
    let report = check_bytes(&bytes);
    if json {
        let v = serde_json::to_value(&report)
            .map_err(|e| Error::io("encoding JSON", std::io::Error::other(e)))?;
        print_json(&v)?;
    } else {
        std::io::stdout()
            .lock()
            .write_all(report_text(&report).as_bytes())
            .map_err(stdout_error)?;
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn replay(path: &Path, output: &Path, logs: Vec<PathBuf>) -> Result<ExitCode> {
    if same_file(path, output) {
        return Err(Error::InvalidArgument(format!(
            "the output {} is the hive itself; replay never modifies the hive",
            output.display()
        )));
    }
    let mut hive = Hive::open(
        path,
        &HiveOpenOptions {
            logs,
            accept_data_loss: false,
        },
    )?;
    let rec = hive.recovery().clone();
    if rec.was_dirty && rec.logs_used.is_empty() {
        return Err(HiveError::Dirty {
            detail: format!(
                "the hive {} is dirty and no usable transaction log was found ({})",
                path.display(),
                rec.notes.join("; ")
            ),
        }
        .into());
    }
    let stats = hive.save_as(output).in_file(output)?;
    let logs_used: Vec<String> = rec
        .logs_used
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if rec.was_dirty {
        errln!(
            "replayed {} log entries from {}{}; wrote {} bytes to {}",
            rec.entries_applied,
            logs_used.join(", "),
            if rec.base_block_from_log {
                " (base block taken from a log)"
            } else {
                ""
            },
            stats.bytes_written,
            output.display()
        );
    } else {
        errln!(
            "the hive is clean, nothing to replay; wrote {} bytes to {}",
            stats.bytes_written,
            output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn new(output: &Path, root_name: &str) -> Result<ExitCode> {
    if output.exists() {
        return Err(Error::InvalidArgument(format!(
            "{} already exists; `hive new` does not overwrite files",
            output.display()
        )));
    }
    let mut hive = Hive::new(root_name)?;
    let stats = hive.save_as(output).in_file(output)?;
    errln!(
        "created hive {} (root key '{root_name}', {} bytes)",
        output.display(),
        stats.bytes_written
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks what the command line alone says: value types and data, `--raw` without a value.
pub fn check_usage(args: &HiveArgs) -> Result<()> {
    match &args.command {
        HiveCommand::Set { kind, data, .. } => {
            let kind = RegType::parse(kind)?;
            RegData::from_args(kind, data)?;
        }
        HiveCommand::Get {
            value: None,
            raw: true,
            ..
        } => {
            return Err(Error::InvalidArgument(
                "--raw needs a value name (`@` for the default value)".into(),
            ));
        }
        _ => {}
    }
    Ok(())
}
