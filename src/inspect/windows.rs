//! Recognising an installed Windows from its SYSTEM and SOFTWARE hives.

use crate::error::Result;
use crate::inject::hive::Hive;

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
    pub fn virtio_os_dirs(&self) -> Vec<&'static str> {
        unimplemented!("WindowsInfo::virtio_os_dirs: helper D")
    }
}

/// Reads the version, edition and architecture from the SOFTWARE and SYSTEM hives.
pub fn windows_info(system: &Hive, software: &Hive, system_root: &str) -> Result<WindowsInfo> {
    let _ = (system, software, system_root);
    unimplemented!("windows_info: helper D")
}
