//! Recognising an installed Windows from its SYSTEM and SOFTWARE hives.

use crate::error::Result;
use crate::guest::hive::{Hive, HiveError, KeyId, RegData, RegType};

/// The control set an offline SYSTEM hive boots with: `ControlSet%03d` of the DWORD
/// `Select\Current`.
///
/// `CurrentControlSet` is not stored in the hive: at boot the kernel creates it as a symbolic
/// link to the control set that `Select\Current` numbers, so offline edits must go to that
/// control set. An error names what is missing or wrong: no `Select` key or `Current` value
/// (not a SYSTEM hive), a value that is not a DWORD, a number outside 1..=999, or a control set
/// that does not exist.
pub fn current_control_set(hive: &Hive) -> Result<String> {
    let select = hive.open_key("Select")?.ok_or_else(|| {
        HiveError::NotFound(
            "the hive has no Select key: it is not a SYSTEM hive (Select\\Current names the \
             control set to edit)"
                .into(),
        )
    })?;
    let at = 4096 + u64::from(select.0);
    let v = hive.value(select, "Current")?.ok_or_else(|| {
        HiveError::corrupt(
            "Select key",
            at,
            "expected a REG_DWORD value Current naming the control set, found none",
        )
    })?;
    let n = match (v.kind, v.data.as_slice()) {
        (RegType::DWORD, &[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => {
            return Err(HiveError::corrupt(
                "Select key",
                at,
                format!(
                    "expected Current to be a REG_DWORD of 4 bytes, found {} of {} bytes",
                    v.kind,
                    v.data.len()
                ),
            )
            .into());
        }
    };
    if !(1..=999).contains(&n) {
        return Err(HiveError::corrupt(
            "Select key",
            at,
            format!("expected Current between 1 and 999, found {n}"),
        )
        .into());
    }
    let name = format!("ControlSet{n:03}");
    match hive.open_key(&name)? {
        Some(k) => Ok(hive.key_name(k)?),
        None => Err(HiveError::corrupt(
            "Select key",
            at,
            format!("Current = {n} names {name}, which does not exist at the hive root"),
        )
        .into()),
    }
}

/// Whether the hive has the Windows 8 / 2012 and later driver store database (`DriverDatabase`
/// at the hive root), which replaced the `CriticalDeviceDatabase` for binding boot devices.
pub fn has_driver_database(hive: &Hive) -> Result<bool> {
    Ok(hive.open_key("DriverDatabase")?.is_some())
}

/// Processor architecture of a Windows installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WinArch {
    /// 32-bit x86.
    X86,
    /// x86-64.
    Amd64,
    /// 64-bit ARM.
    Arm64,
}

impl WinArch {
    /// The folder name virtio-win uses (`x86`, `amd64`, `ARM64`).
    pub fn virtio_dir(self) -> &'static str {
        match self {
            WinArch::X86 => "x86",
            WinArch::Amd64 => "amd64",
            WinArch::Arm64 => "ARM64",
        }
    }
}

/// What an installed Windows is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WindowsInfo {
    /// `ProductName`, e.g. "Windows Server 2019 Datacenter".
    pub product_name: String,
    /// Major version (6 for Windows 7 / 8 / 8.1, 10 for Windows 10 / 11 and Server 2016+).
    pub major: u32,
    /// Minor version (1 for Windows 7 / 2008 R2, 2 for 8 / 2012, 3 for 8.1 / 2012 R2, 0 for 10).
    pub minor: u32,
    /// Build number (`CurrentBuildNumber`), e.g. 17763.
    pub build: u32,
    /// `EditionID`, e.g. "ServerDatacenter".
    pub edition: String,
    /// `InstallationType`: "Client", "Server", "Server Core", ...
    pub installation_type: String,
    /// A server edition (from `InstallationType`, else `ProductName`).
    pub server: bool,
    /// Processor architecture (`PROCESSOR_ARCHITECTURE` in the session environment).
    pub arch: WinArch,
    /// The control set Windows boots with, e.g. "ControlSet001".
    pub current_control_set: String,
    /// The SYSTEM hive has a `DriverDatabase` key (Windows 8 / 2012 and newer).
    pub driver_database: bool,
    /// The Windows folder on its volume, e.g. "Windows".
    pub system_root: String,
}

impl WindowsInfo {
    /// The virtio-win folder names for this version, best match first (e.g. `["2k19"]`, or
    /// `["w11", "w10"]`).
    ///
    /// Windows 7 / 2008 R2 is 6.1, 8 / 2012 is 6.2, 8.1 / 2012 R2 is 6.3; Windows 10, 11 and
    /// Server 2016 and later all say 10.0 and differ by build: client builds from 22000 are
    /// Windows 11, servers are 2016 (14393), 2019 (17763), 2022 (20348) and 2025 (26100). A
    /// build between two known ones gets the older folder (a server build between 2019 and
    /// 2022 is an insider build of 2022's line, but its drivers are only known to work from
    /// the older folder up); a version older than 6.1 gets an empty list (virtio-win no longer
    /// ships drivers for it).
    pub fn virtio_os_dirs(&self) -> Vec<&'static str> {
        os_dirs(self.major, self.minor, self.build, self.server)
    }

    /// A one-line description: product, version, build and architecture.
    pub fn describe(&self) -> String {
        format!(
            "{} (version {}.{}, build {}, {})",
            if self.product_name.is_empty() {
                "Windows"
            } else {
                &self.product_name
            },
            self.major,
            self.minor,
            self.build,
            self.arch.virtio_dir()
        )
    }
}

fn os_dirs(major: u32, minor: u32, build: u32, server: bool) -> Vec<&'static str> {
    match (major, minor) {
        (6, 1) => vec![if server { "2k8R2" } else { "w7" }],
        (6, 2) => vec![if server { "2k12" } else { "w8" }],
        (6, 3) => vec![if server { "2k12R2" } else { "w8.1" }],
        (10, _) | (11.., _) => {
            if server {
                // Builds of the Server releases (Windows Server release information).
                const SERVERS: [(u32, &str); 4] = [
                    (26100, "2k25"),
                    (20348, "2k22"),
                    (17763, "2k19"),
                    (14393, "2k16"),
                ];
                let mut dirs: Vec<&'static str> = SERVERS
                    .iter()
                    .filter(|(b, _)| build >= *b)
                    .map(|(_, d)| *d)
                    .take(1)
                    .collect();
                if dirs.is_empty() {
                    // A 10.0 server older than 2016 (technical previews): 2016's drivers.
                    dirs.push("2k16");
                }
                dirs
            } else if build >= 22000 {
                vec!["w11", "w10"]
            } else {
                vec!["w10"]
            }
        }
        (6, m) if m > 3 => os_dirs(6, 3, build, server),
        (7..=9, _) => os_dirs(6, 3, build, server),
        _ => Vec::new(),
    }
}

/// A SZ (or EXPAND_SZ) value as text; `None` when the value is missing or of another type.
fn string_value(hive: &Hive, key: KeyId, name: &str) -> Result<Option<String>> {
    Ok(hive.value(key, name)?.and_then(|v| match v.decoded() {
        RegData::Sz(s) | RegData::ExpandSz(s) => Some(s.trim().to_string()),
        _ => None,
    }))
}

/// A DWORD value; `None` when the value is missing or of another type.
fn dword_value(hive: &Hive, key: KeyId, name: &str) -> Result<Option<u32>> {
    Ok(hive.value(key, name)?.and_then(|v| match v.decoded() {
        RegData::Dword(d) => Some(d),
        _ => None,
    }))
}

/// Where in the SOFTWARE hive the version is read.
pub const CURRENT_VERSION_KEY: &str = "Microsoft\\Windows NT\\CurrentVersion";

/// Reads the version, edition and architecture from the SOFTWARE and SYSTEM hives.
///
/// SOFTWARE `Microsoft\Windows NT\CurrentVersion`: `ProductName`, the version from
/// `CurrentMajorVersionNumber` / `CurrentMinorVersionNumber` (Windows 10 and later) or else
/// `CurrentVersion` ("6.1"; Windows 10 still writes "6.3" there for old programs, which is why
/// the numbers come first), the build from `CurrentBuildNumber` (else `CurrentBuild`),
/// `EditionID` and `InstallationType`. SYSTEM: the current control set (`Select\Current`),
/// `<cs>\Control\Session Manager\Environment\PROCESSOR_ARCHITECTURE` and whether a
/// `DriverDatabase` exists.
pub fn windows_info(system: &Hive, software: &Hive, system_root: &str) -> Result<WindowsInfo> {
    let cv = software.open_key(CURRENT_VERSION_KEY)?.ok_or_else(|| {
        HiveError::NotFound(format!(
            "the SOFTWARE hive has no key {CURRENT_VERSION_KEY} (is it a SOFTWARE hive?)"
        ))
    })?;
    let product_name = string_value(software, cv, "ProductName")?.unwrap_or_default();
    let (major, minor) = match (
        dword_value(software, cv, "CurrentMajorVersionNumber")?,
        dword_value(software, cv, "CurrentMinorVersionNumber")?,
    ) {
        (Some(a), b) => (a, b.unwrap_or(0)),
        (None, _) => {
            let text = string_value(software, cv, "CurrentVersion")?.ok_or_else(|| {
                HiveError::NotFound(format!(
                    "SOFTWARE {CURRENT_VERSION_KEY}: neither CurrentMajorVersionNumber (DWORD) \
                     nor CurrentVersion (SZ, e.g. \"6.1\") says which Windows version this is"
                ))
            })?;
            parse_version(&text).ok_or_else(|| {
                HiveError::InvalidArgument(format!(
                    "SOFTWARE {CURRENT_VERSION_KEY}: CurrentVersion is \"{text}\", expected \
                     MAJOR.MINOR such as \"6.1\""
                ))
            })?
        }
    };
    let build_text = match string_value(software, cv, "CurrentBuildNumber")? {
        Some(b) => b,
        None => string_value(software, cv, "CurrentBuild")?.unwrap_or_default(),
    };
    let build = if build_text.is_empty() {
        0
    } else {
        build_text.parse::<u32>().map_err(|_| {
            HiveError::InvalidArgument(format!(
                "SOFTWARE {CURRENT_VERSION_KEY}: CurrentBuildNumber is \"{build_text}\", \
                 expected a number such as \"17763\""
            ))
        })?
    };
    let edition = string_value(software, cv, "EditionID")?.unwrap_or_default();
    let installation_type = string_value(software, cv, "InstallationType")?.unwrap_or_default();
    let server = if installation_type.is_empty() {
        product_name.to_ascii_lowercase().contains("server")
            || edition.to_ascii_lowercase().starts_with("server")
    } else {
        installation_type.to_ascii_lowercase().contains("server")
    };

    let current_control_set = current_control_set(system)?;
    let env_path = format!("{current_control_set}\\{ENVIRONMENT_KEY}");
    let env = system.open_key(&env_path)?.ok_or_else(|| {
        HiveError::NotFound(format!(
            "the SYSTEM hive has no key {env_path} (PROCESSOR_ARCHITECTURE is read there)"
        ))
    })?;
    let arch_text = string_value(system, env, "PROCESSOR_ARCHITECTURE")?.ok_or_else(|| {
        HiveError::NotFound(format!(
            "SYSTEM {env_path}: no PROCESSOR_ARCHITECTURE string value"
        ))
    })?;
    let arch = match arch_text.to_ascii_uppercase().as_str() {
        "AMD64" => WinArch::Amd64,
        "X86" => WinArch::X86,
        "ARM64" => WinArch::Arm64,
        other => {
            return Err(HiveError::InvalidArgument(format!(
                "SYSTEM {env_path}: PROCESSOR_ARCHITECTURE is \"{other}\", expected AMD64, x86 \
                 or ARM64"
            ))
            .into());
        }
    };
    Ok(WindowsInfo {
        product_name,
        major,
        minor,
        build,
        edition,
        installation_type,
        server,
        arch,
        current_control_set,
        driver_database: has_driver_database(system)?,
        system_root: system_root.to_string(),
    })
}

/// Where the session environment lives below a control set.
const ENVIRONMENT_KEY: &str = "Control\\Session Manager\\Environment";

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.split_once('.')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: u32, minor: u32, build: u32, server: bool) -> Vec<&'static str> {
        os_dirs(major, minor, build, server)
    }

    #[test]
    fn os_folders() {
        assert_eq!(info(6, 1, 7601, false), ["w7"]);
        assert_eq!(info(6, 1, 7601, true), ["2k8R2"]);
        assert_eq!(info(6, 2, 9200, false), ["w8"]);
        assert_eq!(info(6, 2, 9200, true), ["2k12"]);
        assert_eq!(info(6, 3, 9600, false), ["w8.1"]);
        assert_eq!(info(6, 3, 9600, true), ["2k12R2"]);
        assert_eq!(info(10, 0, 19045, false), ["w10"]);
        assert_eq!(info(10, 0, 22000, false), ["w11", "w10"]);
        assert_eq!(info(10, 0, 26100, false), ["w11", "w10"]);
        assert_eq!(info(10, 0, 14393, true), ["2k16"]);
        assert_eq!(info(10, 0, 17763, true), ["2k19"]);
        assert_eq!(info(10, 0, 20348, true), ["2k22"]);
        assert_eq!(info(10, 0, 26100, true), ["2k25"]);
        // Unknown builds: the newest older folder.
        assert_eq!(info(10, 0, 19000, true), ["2k19"]);
        assert_eq!(info(10, 0, 30000, true), ["2k25"]);
        assert_eq!(info(10, 0, 10240, true), ["2k16"]);
        // Too old: unsupported.
        assert!(info(6, 0, 6002, false).is_empty());
        assert!(info(5, 2, 3790, true).is_empty());
        assert!(info(5, 1, 2600, false).is_empty());
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("6.1"), Some((6, 1)));
        assert_eq!(parse_version(" 10.0 "), Some((10, 0)));
        assert_eq!(parse_version("6"), None);
        assert_eq!(parse_version("a.b"), None);
    }

    fn hives(software_values: &[(&str, RegData)], arch: &str) -> (Hive, Hive) {
        let mut system = Hive::new("SYSTEM").unwrap();
        let sel = system.create_key("Select").unwrap();
        system.set_data(sel, "Current", &RegData::Dword(2)).unwrap();
        system.create_key("ControlSet002\\Services").unwrap();
        let env = system
            .create_key("ControlSet002\\Control\\Session Manager\\Environment")
            .unwrap();
        system
            .set_data(env, "PROCESSOR_ARCHITECTURE", &RegData::Sz(arch.into()))
            .unwrap();
        let mut software = Hive::new("SOFTWARE").unwrap();
        let cv = software.create_key(CURRENT_VERSION_KEY).unwrap();
        for (n, d) in software_values {
            software.set_data(cv, n, d).unwrap();
        }
        (system, software)
    }

    #[test]
    fn windows_10_server() {
        let (system, software) = hives(
            &[
                (
                    "ProductName",
                    RegData::Sz("Windows Server 2019 Datacenter".into()),
                ),
                ("CurrentVersion", RegData::Sz("6.3".into())),
                ("CurrentMajorVersionNumber", RegData::Dword(10)),
                ("CurrentMinorVersionNumber", RegData::Dword(0)),
                ("CurrentBuildNumber", RegData::Sz("17763".into())),
                ("EditionID", RegData::Sz("ServerDatacenter".into())),
                ("InstallationType", RegData::Sz("Server".into())),
            ],
            "AMD64",
        );
        let i = windows_info(&system, &software, "Windows").unwrap();
        assert_eq!((i.major, i.minor, i.build), (10, 0, 17763));
        assert!(i.server);
        assert_eq!(i.arch, WinArch::Amd64);
        assert_eq!(i.current_control_set, "ControlSet002");
        assert!(!i.driver_database);
        assert_eq!(i.virtio_os_dirs(), ["2k19"]);
        assert!(i.describe().contains("build 17763"), "{}", i.describe());
    }

    #[test]
    fn windows_7_from_current_version() {
        let (system, software) = hives(
            &[
                ("ProductName", RegData::Sz("Windows 7 Professional".into())),
                ("CurrentVersion", RegData::Sz("6.1".into())),
                ("CurrentBuild", RegData::Sz("7601".into())),
            ],
            "x86",
        );
        let i = windows_info(&system, &software, "Windows").unwrap();
        assert_eq!((i.major, i.minor, i.build), (6, 1, 7601));
        assert!(!i.server);
        assert_eq!(i.arch, WinArch::X86);
        assert_eq!(i.virtio_os_dirs(), ["w7"]);
    }

    #[test]
    fn bad_software_is_named() {
        let (system, software) = hives(&[("CurrentVersion", RegData::Sz("six".into()))], "AMD64");
        let e = windows_info(&system, &software, "Windows")
            .unwrap_err()
            .to_string();
        assert!(e.contains("CurrentVersion is \"six\""), "{e}");
        let (system, software) = hives(&[("CurrentVersion", RegData::Sz("6.1".into()))], "MIPS");
        let e = windows_info(&system, &software, "Windows")
            .unwrap_err()
            .to_string();
        assert!(e.contains("PROCESSOR_ARCHITECTURE is \"MIPS\""), "{e}");
        let empty = Hive::new("X").unwrap();
        let e = windows_info(&system, &empty, "Windows")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no key Microsoft\\Windows NT\\CurrentVersion"),
            "{e}"
        );
        let e = windows_info(&empty, &software, "Windows")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Select"), "{e}");
    }
}
