//! Windows guest adaptation: the registry edits that make a storage driver boot-critical.
//!
//! A Windows guest moved to a KVM cloud sees its disk behind a virtio controller (virtio-blk,
//! served by `viostor`, or virtio-scsi, served by `vioscsi`). Windows only loads a storage driver
//! at boot when its service is boot-start and the controller's PCI device id is already bound to
//! it; otherwise the boot ends in `INACCESSIBLE_BOOT_DEVICE` (stop 0x7B). This module makes those
//! edits in the offline SYSTEM hive (`Windows\System32\config\SYSTEM`):
//!
//! - the service key `ControlSet00N\Services\<drv>` (`Type`, `Start`, `ErrorControl`, `Group`,
//!   `ImagePath`), in the control set that `Select\Current` names (an offline hive has no
//!   `CurrentControlSet`: that link is made by the kernel at boot);
//! - the device binding: `ControlSet00N\Control\CriticalDeviceDatabase` entries on Windows 7 /
//!   2008 R2 and older, or, when the hive root has a `DriverDatabase` key (Windows 8 / 2012 and
//!   newer, where the CriticalDeviceDatabase is no longer read), the driver-store keys that
//!   `pnputil` would have made: `DriverInfFiles`, `DeviceIds`, `DriverPackages` (with its
//!   `Configurations` and `Descriptors`).
//!
//! Every edit is first planned ([`plan_boot_storage_driver`]) as a list of keys and values, then
//! applied ([`apply_plan`]); applying a plan twice leaves the hive content unchanged the second
//! time (values already equal are not rewritten). The [`EditReport`] lists every key created and
//! every value set. The driver file itself (`<drv>.sys` in `Windows\System32\drivers`) is copied
//! by the NTFS step, not here.
//!
//! ```no_run
//! use diskconv::guest::hive::{Hive, HiveOpenOptions};
//! use diskconv::inject::windows::{add_boot_storage_driver, BootStorageDriver};
//!
//! let mut hive = Hive::open("SYSTEM".as_ref(), &HiveOpenOptions::default())?;
//! let report = add_boot_storage_driver(&mut hive, &BootStorageDriver::viostor())?;
//! print!("{report}");
//! hive.save()?;
//! # Ok::<(), diskconv::Error>(())
//! ```

use std::fmt;

use crate::bytes::Guid;
use crate::error::Result;
use crate::guest::hive::{Hive, HiveError, RegData, RegType};
use crate::inspect::windows::{current_control_set, has_driver_database};

/// The setup class of SCSI and RAID controllers (`SCSIAdapter`), the class of `viostor` and
/// `vioscsi`.
pub const SCSI_ADAPTER_CLASS_GUID: &str = "{4D36E97B-E325-11CE-BFC1-08002BE10318}";

/// `Start` of a service loaded by the boot loader with the kernel (`SERVICE_BOOT_START`).
pub const SERVICE_BOOT_START: u32 = 0;
/// `Start` of a service that is never started (`SERVICE_DISABLED`).
pub const SERVICE_DISABLED: u32 = 4;
/// `Type` of a kernel-mode driver service (`SERVICE_KERNEL_DRIVER`).
pub const SERVICE_KERNEL_DRIVER: u32 = 1;
/// `ErrorControl`: log the error, show a message, continue the boot (`SERVICE_ERROR_NORMAL`).
pub const SERVICE_ERROR_NORMAL: u32 = 1;

/// The first 8 bytes of the `Version` value of a `DriverPackages\<label>` key as written for a
/// package staged offline (the driver date and version that follow the class GUID are left
/// zero).
const PACKAGE_VERSION_HEADER: [u8; 8] = [0x00, 0xff, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00];

/// The `DeviceIds\<id>` value data that ranks a package for a hardware id (`01 ff 00 00`: a
/// hardware-id match, as `pnputil` stores it for the ids listed in the INF's models section).
const DEVICE_ID_RANK: [u8; 4] = [0x01, 0xff, 0x00, 0x00];

/// A boot-critical storage driver to bind: the service and what its INF file declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootStorageDriver {
    /// The service name (`viostor`); also the base name of the `.sys` file.
    pub service: String,
    /// The INF file name as the driver store knows it (`viostor.inf`).
    pub inf: String,
    /// The INF install section that binds the devices (`rhelscsi_inst`), the package's
    /// configuration name in the `DriverDatabase`.
    pub config: String,
    /// The PCI hardware ids the driver serves (`PCI\VEN_1AF4&DEV_1001&REV_00`).
    pub device_ids: Vec<String>,
    /// The device setup class GUID, braces included, upper case.
    pub class_guid: String,
    /// The service's load-order group (`SCSI miniport`).
    pub group: String,
    /// The service's `ImagePath`, relative to the Windows folder
    /// (`system32\drivers\viostor.sys`).
    pub image_path: String,
    /// The processor architecture of the driver-store package label (`amd64`).
    pub arch: String,
}

impl BootStorageDriver {
    /// A driver for `service` with an INF of the same name, the SCSIAdapter class, group
    /// `SCSI miniport`, `ImagePath` `system32\drivers\<service>.sys`, architecture amd64.
    pub fn new(service: &str, config: &str, device_ids: &[&str]) -> BootStorageDriver {
        BootStorageDriver {
            service: service.to_string(),
            inf: format!("{service}.inf"),
            config: config.to_string(),
            device_ids: device_ids.iter().map(|s| s.to_string()).collect(),
            class_guid: SCSI_ADAPTER_CLASS_GUID.to_string(),
            group: "SCSI miniport".to_string(),
            image_path: format!("system32\\drivers\\{service}.sys"),
            arch: "amd64".to_string(),
        }
    }

    /// virtio-blk (`viostor`): PCI `1AF4:1001` (legacy, revision 0) and `1AF4:1042` (modern,
    /// revision 1), install section `rhelscsi_inst` of virtio-win's `viostor.inf`.
    pub fn viostor() -> BootStorageDriver {
        BootStorageDriver::new(
            "viostor",
            "rhelscsi_inst",
            &[
                "PCI\\VEN_1AF4&DEV_1001&REV_00",
                "PCI\\VEN_1AF4&DEV_1042&REV_01",
            ],
        )
    }

    /// virtio-scsi (`vioscsi`): PCI `1AF4:1004` (legacy, revision 0) and `1AF4:1048` (modern,
    /// revision 1), install section `vioscsi_inst` of virtio-win's `vioscsi.inf`.
    pub fn vioscsi() -> BootStorageDriver {
        BootStorageDriver::new(
            "vioscsi",
            "vioscsi_inst",
            &[
                "PCI\\VEN_1AF4&DEV_1004&REV_00",
                "PCI\\VEN_1AF4&DEV_1048&REV_01",
            ],
        )
    }

    /// The driver-store package label, `<inf>_<arch>_<16 hex digits>`
    /// (`viostor.inf_amd64_…`).
    ///
    /// Windows takes the 16 digits from the hash of the package's signed catalog; offline we
    /// have no catalog, so they are the FNV-1a 64-bit hash of the lower-cased INF name, service
    /// name and architecture. They depend only on the driver, so a rerun finds and reuses the
    /// same package key instead of adding a second one. The shape matters: `pnputil /e` skips a
    /// package whose label does not end in 16 hex digits.
    pub fn package_label(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let key = format!(
            "{}\0{}\0{}",
            self.inf.to_lowercase(),
            self.service.to_lowercase(),
            self.arch.to_lowercase()
        );
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{}_{}_{h:016x}", self.inf.to_lowercase(), self.arch)
    }

    /// The 48-byte `Version` value of the package key: `00 ff 09 00 00 00 00 00`, the class
    /// GUID in its binary form (`Data1`, `Data2`, `Data3` little endian, then the 8 bytes of
    /// `Data4`), then 24 zero bytes (driver date and version unknown).
    pub fn package_version(&self) -> Result<Vec<u8>> {
        let mut v = PACKAGE_VERSION_HEADER.to_vec();
        v.extend_from_slice(&guid_bytes(&self.class_guid)?);
        v.extend_from_slice(&[0u8; 24]);
        Ok(v)
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: &str| -> Result<()> {
            Err(HiveError::InvalidArgument(format!(
                "boot storage driver: invalid {what} '{v}' (it must be a non-empty name without \
                 a backslash)"
            ))
            .into())
        };
        for (what, v) in [
            ("service name", &self.service),
            ("INF name", &self.inf),
            ("configuration name", &self.config),
            ("architecture", &self.arch),
        ] {
            if v.is_empty() || v.contains('\\') {
                return bad(what, v);
            }
        }
        if self.device_ids.is_empty() {
            return Err(HiveError::InvalidArgument(
                "boot storage driver: no device id to bind".into(),
            )
            .into());
        }
        for id in &self.device_ids {
            let parts: Vec<&str> = id.split('\\').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(HiveError::InvalidArgument(format!(
                    "boot storage driver: device id '{id}' is not of the form BUS\\ID \
                     (e.g. PCI\\VEN_1AF4&DEV_1001&REV_00)"
                ))
                .into());
            }
        }
        guid_bytes(&self.class_guid)?;
        Ok(())
    }
}

/// The 16 bytes of a GUID written `{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}` as Windows stores it
/// (mixed-endian, see [`Guid`]); the braces are required.
fn guid_bytes(s: &str) -> Result<[u8; 16]> {
    s.strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .filter(|inner| inner.len() == 36)
        .and_then(Guid::parse)
        .map(Guid::to_bytes)
        .ok_or_else(|| {
            HiveError::InvalidArgument(format!(
                "'{s}' is not a GUID of the form {{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}}"
            ))
            .into()
        })
}

/// One key of an edit plan and the values to set in it (none: the key only has to exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedKey {
    /// Path from the hive root, components separated by `\`.
    pub path: String,
    /// Values to set: name ("" for the default value) and data.
    pub values: Vec<(String, RegData)>,
}

/// The keys and values an adaptation step sets, in the order they are applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EditPlan {
    /// The control set the plan edits (`ControlSet001`), when it edits one.
    pub control_set: Option<String>,
    /// The keys, parents before children.
    pub keys: Vec<PlannedKey>,
}

impl EditPlan {
    fn key(&mut self, path: String, values: Vec<(&str, RegData)>) {
        self.keys.push(PlannedKey {
            path,
            values: values
                .into_iter()
                .map(|(n, d)| (n.to_string(), d))
                .collect(),
        });
    }

    /// The plan as a `.reg` file (Windows Registry Editor Version 5.00, UTF-8 text), key paths
    /// prefixed with `prefix` (e.g. `HKEY_LOCAL_MACHINE\SYSTEM`; empty for none) and every value
    /// written as `hex(N):` so the text is exact for any tool that imports it.
    pub fn to_reg(&self, prefix: &str) -> String {
        let mut s = String::from("Windows Registry Editor Version 5.00\r\n");
        for k in &self.keys {
            let path = if prefix.is_empty() {
                k.path.clone()
            } else {
                format!("{prefix}\\{}", k.path)
            };
            s.push_str(&format!("\r\n[{path}]\r\n"));
            for (name, data) in &k.values {
                let lhs = if name.is_empty() {
                    "@".to_string()
                } else {
                    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
                };
                let bytes: Vec<String> = data.encode().iter().map(|b| format!("{b:02x}")).collect();
                s.push_str(&format!(
                    "{lhs}=hex({:x}):{}\r\n",
                    data.kind().0,
                    bytes.join(",")
                ));
            }
        }
        s
    }
}

/// One change an adaptation step made (or found already made).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// A key that did not exist was created.
    KeyCreated {
        /// Path from the hive root.
        path: String,
    },
    /// A value was set.
    ValueSet {
        /// Path of its key from the hive root.
        path: String,
        /// The value name ("" is the default value).
        name: String,
        /// The type written.
        kind: RegType,
        /// False when the value already had this type and data (nothing was written).
        changed: bool,
    },
}

/// What an adaptation step did: every key created and every value set, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EditReport {
    /// The control set edited (`ControlSet001`), when the step edits one.
    pub control_set: Option<String>,
    /// The changes, in the order they were made.
    pub edits: Vec<Edit>,
}

impl EditReport {
    /// Whether anything in the hive changed (a key created or a value given new data).
    pub fn changed(&self) -> bool {
        self.edits.iter().any(|e| match e {
            Edit::KeyCreated { .. } => true,
            Edit::ValueSet { changed, .. } => *changed,
        })
    }

    /// Appends the edits of `other`.
    pub fn extend(&mut self, other: EditReport) {
        if self.control_set.is_none() {
            self.control_set = other.control_set;
        }
        self.edits.extend(other.edits);
    }
}

impl fmt::Display for EditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(cs) = &self.control_set {
            writeln!(f, "control set: {cs}")?;
        }
        for e in &self.edits {
            match e {
                Edit::KeyCreated { path } => writeln!(f, "created key  {path}")?,
                Edit::ValueSet {
                    path,
                    name,
                    kind,
                    changed,
                } => {
                    let n = if name.is_empty() { "@" } else { name };
                    let note = if *changed { "" } else { " (unchanged)" };
                    writeln!(f, "set value    {path} : {n} ({kind}){note}")?
                }
            }
        }
        Ok(())
    }
}

/// Adds the `CriticalDeviceDatabase` binding of `service` to each device id (Windows 7 /
/// 2008 R2 and older, whose SYSTEM hive has no `DriverDatabase`).
fn plan_critical_device_database(
    plan: &mut EditPlan,
    cs: &str,
    service: &str,
    class_guid: &str,
    device_ids: &[String],
) {
    for id in device_ids {
        plan.key(
            format!(
                "{cs}\\Control\\CriticalDeviceDatabase\\{}",
                id.replace('\\', "#")
            ),
            vec![
                ("Service", RegData::Sz(service.to_string())),
                ("ClassGUID", RegData::Sz(class_guid.to_string())),
            ],
        );
    }
}

/// The edits [`add_boot_storage_driver`] makes, without making them.
///
/// - `<cs>\Services\<drv>`: `Type`=1 (kernel driver), `Start`=0 (boot start: loaded by the boot
///   loader with the kernel, which is what a driver for the boot disk needs), `ErrorControl`=1,
///   `Group`=`SCSI miniport` (load order among the boot drivers), `ImagePath`=EXPAND_SZ
///   `system32\drivers\<drv>.sys`.
/// - Without `DriverDatabase` (Windows 7 / 2008 R2 and older, whose PnP manager looks a new boot
///   device up in the CriticalDeviceDatabase to pick its service before any INF is processed):
///   `<cs>\Control\CriticalDeviceDatabase\<id with \ as #>` with `Service` and `ClassGUID` (SZ),
///   one key per device id.
/// - With `DriverDatabase` (Windows 8 and later, whose PnP manager matches devices against the
///   driver store database instead): `DriverInfFiles\<inf>` (default MULTI_SZ = label, `Active`
///   SZ = label, `Configurations` MULTI_SZ = configuration), `DeviceIds\<id>` value `<inf>`
///   BINARY `01 ff 00 00`, `DriverPackages\<label>` value `Version` BINARY (48 bytes, see
///   [`BootStorageDriver::package_version`]), `DriverPackages\<label>\Configurations\<conf>`
///   with `ConfigFlags`=DWORD 0 and `Service`=SZ, and
///   `DriverPackages\<label>\Descriptors\<id>` with `Configuration`=SZ `<conf>`.
pub fn plan_boot_storage_driver(hive: &Hive, drv: &BootStorageDriver) -> Result<EditPlan> {
    drv.validate()?;
    let cs = current_control_set(hive)?;
    let mut plan = EditPlan {
        control_set: Some(cs.clone()),
        keys: Vec::new(),
    };
    plan.key(
        format!("{cs}\\Services\\{}", drv.service),
        vec![
            ("Type", RegData::Dword(SERVICE_KERNEL_DRIVER)),
            ("Start", RegData::Dword(SERVICE_BOOT_START)),
            ("ErrorControl", RegData::Dword(SERVICE_ERROR_NORMAL)),
            ("Group", RegData::Sz(drv.group.clone())),
            ("ImagePath", RegData::ExpandSz(drv.image_path.clone())),
        ],
    );
    if !has_driver_database(hive)? {
        plan_critical_device_database(
            &mut plan,
            &cs,
            &drv.service,
            &drv.class_guid,
            &drv.device_ids,
        );
        return Ok(plan);
    }
    let label = drv.package_label();
    plan.key(
        format!("DriverDatabase\\DriverInfFiles\\{}", drv.inf),
        vec![
            ("", RegData::MultiSz(vec![label.clone()])),
            ("Active", RegData::Sz(label.clone())),
            ("Configurations", RegData::MultiSz(vec![drv.config.clone()])),
        ],
    );
    for id in &drv.device_ids {
        plan.key(
            format!("DriverDatabase\\DeviceIds\\{id}"),
            vec![(drv.inf.as_str(), RegData::Binary(DEVICE_ID_RANK.to_vec()))],
        );
    }
    let pkg = format!("DriverDatabase\\DriverPackages\\{label}");
    plan.key(
        pkg.clone(),
        vec![("Version", RegData::Binary(drv.package_version()?))],
    );
    plan.key(format!("{pkg}\\Configurations"), vec![]);
    plan.key(
        format!("{pkg}\\Configurations\\{}", drv.config),
        vec![
            ("ConfigFlags", RegData::Dword(0)),
            ("Service", RegData::Sz(drv.service.clone())),
        ],
    );
    plan.key(format!("{pkg}\\Descriptors"), vec![]);
    for id in &drv.device_ids {
        plan.key(
            format!("{pkg}\\Descriptors\\{id}"),
            vec![("Configuration", RegData::Sz(drv.config.clone()))],
        );
    }
    Ok(plan)
}

/// Applies `plan`: creates each key (and its missing parents; new keys take their parent's
/// security descriptor) and sets each value whose type or data differ. A value that already
/// holds exactly the planned type and data is left untouched, so applying a plan twice changes
/// nothing the second time.
pub fn apply_plan(hive: &mut Hive, plan: &EditPlan) -> Result<EditReport> {
    let mut report = EditReport {
        control_set: plan.control_set.clone(),
        edits: Vec::new(),
    };
    for k in &plan.keys {
        let mut prefix = String::new();
        let mut missing = false;
        for comp in k.path.split('\\').filter(|c| !c.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('\\');
            }
            prefix.push_str(comp);
            // Once one component is missing, all the ones below it are new too.
            if !missing && hive.open_key(&prefix)?.is_none() {
                missing = true;
            }
            if missing {
                report.edits.push(Edit::KeyCreated {
                    path: prefix.clone(),
                });
            }
        }
        let key = hive.create_key(&k.path)?;
        for (name, data) in &k.values {
            let kind = data.kind();
            let bytes = data.encode();
            let same = hive
                .value(key, name)?
                .is_some_and(|v| v.kind == kind && v.data == bytes);
            if !same {
                hive.set_value(key, name, kind, &bytes)?;
            }
            report.edits.push(Edit::ValueSet {
                path: k.path.clone(),
                name: name.clone(),
                kind,
                changed: !same,
            });
        }
    }
    Ok(report)
}

/// Makes `drv` a boot-start driver bound to its PCI device ids: the edits listed at
/// [`plan_boot_storage_driver`], in the control set `Select\Current` names. Idempotent: a
/// second run finds every key and value in place and changes nothing.
pub fn add_boot_storage_driver(hive: &mut Hive, drv: &BootStorageDriver) -> Result<EditReport> {
    let plan = plan_boot_storage_driver(hive, drv)?;
    apply_plan(hive, &plan)
}

fn service_key_path(hive: &Hive, service: &str) -> Result<(String, String)> {
    if service.is_empty() || service.contains('\\') {
        return Err(HiveError::InvalidArgument(format!(
            "invalid service name '{service}' (it must be a non-empty name without a backslash)"
        ))
        .into());
    }
    let cs = current_control_set(hive)?;
    let path = format!("{cs}\\Services\\{service}");
    if hive.open_key(&path)?.is_none() {
        return Err(HiveError::NotFound(format!(
            "service {service} does not exist (no key {path} in the SYSTEM hive)"
        ))
        .into());
    }
    Ok((cs, path))
}

/// Sets the `Start` DWORD of an existing service in the current control set: 0 boot (loaded by
/// the boot loader), 1 system (loaded during kernel initialisation), 2 automatic (started by
/// the service control manager), 3 on demand, 4 disabled. A service that does not exist is an
/// error rather than a new key: a service key without `ImagePath` and `Type` is a broken service.
pub fn set_service_start(hive: &mut Hive, service: &str, start: u32) -> Result<EditReport> {
    if start > SERVICE_DISABLED {
        return Err(HiveError::InvalidArgument(format!(
            "service start type {start} is not one of 0 (boot), 1 (system), 2 (automatic), \
             3 (demand), 4 (disabled)"
        ))
        .into());
    }
    let (cs, path) = service_key_path(hive, service)?;
    let mut plan = EditPlan {
        control_set: Some(cs),
        keys: Vec::new(),
    };
    plan.key(path, vec![("Start", RegData::Dword(start))]);
    apply_plan(hive, &plan)
}

/// Disables a service (`Start`=4): Windows' service control manager and the boot loader then
/// never load it. Used for the drivers and agents of the old hypervisor (VMware Tools, Hyper-V
/// integration services), which are kept rather than deleted so the change can be undone.
pub fn disable_service(hive: &mut Hive, service: &str) -> Result<EditReport> {
    set_service_start(hive, service, SERVICE_DISABLED)
}

/// Sets `<cs>\Control\CrashControl\AutoReboot` (DWORD 1 or 0). With 0 Windows stops on the
/// blue screen after a crash instead of rebooting, so a boot failure on the new platform stays
/// on the console where it can be read (a stop 0x7B from a missing storage driver otherwise
/// turns into a reboot loop).
pub fn set_crash_auto_reboot(hive: &mut Hive, enabled: bool) -> Result<EditReport> {
    let plan = plan_crash_auto_reboot(hive, enabled)?;
    apply_plan(hive, &plan)
}

/// The setup class of system devices (`System`), the class of the VMBus root device.
pub const SYSTEM_CLASS_GUID: &str = "{4D36E97D-E325-11CE-BFC1-08002BE10318}";

/// An inbox storage driver (its files ship with Windows in `System32\drivers`) that a cloud
/// platform boots from: only its service start type and its device bindings change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxDriver {
    /// The service name (`stornvme`).
    pub service: String,
    /// The inbox INF that binds it (`stornvme.inf`), as named under
    /// `DriverDatabase\DriverInfFiles`.
    pub inf: String,
    /// The INF install section, used when the driver store names none for the package.
    pub config: String,
    /// The device setup class GUID (braces, upper case).
    pub class_guid: String,
    /// The device ids to bind (hardware or compatible ids, `BUS\ID`).
    pub device_ids: Vec<String>,
    /// The Windows release that first shipped the driver, for the error when it is missing.
    pub since: String,
}

impl InboxDriver {
    fn new(
        service: &str,
        inf: &str,
        config: &str,
        class_guid: &str,
        ids: &[&str],
        since: &str,
    ) -> InboxDriver {
        InboxDriver {
            service: service.into(),
            inf: inf.into(),
            config: config.into(),
            class_guid: class_guid.into(),
            device_ids: ids.iter().map(|s| s.to_string()).collect(),
            since: since.into(),
        }
    }

    /// `stornvme`, Microsoft's NVMe driver (inbox since Windows 8.1 / 2012 R2, `stornvme.inf`,
    /// install section `Stornvme_Inst`, group `SCSI Miniport`, as a Windows 10 SYSTEM hive
    /// stores it), bound to the NVMe class code `PCI\CC_010802` (mass storage, non-volatile
    /// memory, NVM Express: any NVMe controller) and to `extra_ids`.
    pub fn stornvme(extra_ids: &[&str]) -> InboxDriver {
        let mut ids = vec!["PCI\\CC_010802"];
        ids.extend_from_slice(extra_ids);
        InboxDriver::new(
            "stornvme",
            "stornvme.inf",
            "Stornvme_Inst",
            SCSI_ADAPTER_CLASS_GUID,
            &ids,
            "Windows 8.1 / Server 2012 R2 (Windows 7 / 2008 R2 need update KB2990941)",
        )
    }

    /// `vmbus`, the Hyper-V VMBus (`wvmbus.inf`, install section `VMBus_Device_Child.NT`, class
    /// System, group `System Bus Extender`), bound to `ACPI\VMBus` and to `ACPI\MSFT1000`, the
    /// id newer Azure hosts present instead (Microsoft, "Windows Server 2012 R2 startup failure
    /// after Azure platform update": "ACPI\VMBus changes to ACPI\MSFT1000").
    pub fn vmbus() -> InboxDriver {
        InboxDriver::new(
            "vmbus",
            "wvmbus.inf",
            "VMBus_Device_Child.NT",
            SYSTEM_CLASS_GUID,
            &["ACPI\\VMBus", "ACPI\\MSFT1000"],
            "Windows Server 2008 R2 / Windows 7",
        )
    }

    /// `storvsc`, the Hyper-V synthetic SCSI controller (`wstorvsc.inf`, install section
    /// `storvscDriveInstall`, group `Base`), bound to the VMBus channel class of the synthetic
    /// SCSI controller `VMBUS\{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}`.
    pub fn storvsc() -> InboxDriver {
        InboxDriver::new(
            "storvsc",
            "wstorvsc.inf",
            "storvscDriveInstall",
            SCSI_ADAPTER_CLASS_GUID,
            &["VMBUS\\{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}"],
            "Windows Server 2008 R2 / Windows 7",
        )
    }
}

/// A SZ or MULTI_SZ value's strings (empty when missing or of another type).
fn strings(hive: &Hive, key: crate::guest::hive::KeyId, name: &str) -> Result<Vec<String>> {
    Ok(match hive.value(key, name)?.map(|v| v.decoded()) {
        Some(RegData::Sz(s)) | Some(RegData::ExpandSz(s)) => vec![s],
        Some(RegData::MultiSz(v)) => v,
        _ => Vec::new(),
    })
}

/// The edits that make the inbox driver `drv` boot-start and bind it to its device ids.
///
/// - `<cs>\Services\<svc>` must exist (the driver ships with this Windows): only `Start` is
///   set, to 0; the inbox `Type`, `Group`, `ImagePath` and `ErrorControl` stay.
/// - Without `DriverDatabase`: `<cs>\Control\CriticalDeviceDatabase\<id with \ as #>` with
///   `Service` and `ClassGUID`, for each id.
/// - With `DriverDatabase`: the inbox package stays the one bound. Its label is the `Active`
///   value of `DriverInfFiles\<inf>`; for each id, `DeviceIds\<id>` gets the value `<inf>`
///   (BINARY `01 ff 00 00`) and `DriverPackages\<label>\Descriptors\<id>` the value
///   `Configuration` only where they are missing. The configuration is the one an existing
///   descriptor of the package names (else the first of the INF's `Configurations`).
pub fn plan_inbox_driver(hive: &Hive, drv: &InboxDriver) -> Result<EditPlan> {
    let cs = current_control_set(hive)?;
    let svc = format!("{cs}\\Services\\{}", drv.service);
    if hive.open_key(&svc)?.is_none() {
        return Err(HiveError::NotFound(format!(
            "this Windows has no inbox {} driver (no key {svc} in the SYSTEM hive); it ships \
             with {}",
            drv.service, drv.since
        ))
        .into());
    }
    let mut plan = EditPlan {
        control_set: Some(cs.clone()),
        keys: Vec::new(),
    };
    plan.key(svc, vec![("Start", RegData::Dword(SERVICE_BOOT_START))]);
    if !has_driver_database(hive)? {
        plan_critical_device_database(
            &mut plan,
            &cs,
            &drv.service,
            &drv.class_guid,
            &drv.device_ids,
        );
        return Ok(plan);
    }
    let inf_path = format!("DriverDatabase\\DriverInfFiles\\{}", drv.inf);
    let inf_key = hive.open_key(&inf_path)?.ok_or_else(|| {
        HiveError::NotFound(format!(
            "the driver store has no inbox {} package (no key {inf_path} in the SYSTEM hive), \
             so the {} driver cannot be bound",
            drv.inf, drv.service
        ))
    })?;
    let label = strings(hive, inf_key, "Active")?
        .into_iter()
        .next()
        .filter(|l| !l.is_empty() && !l.contains('\\'))
        .ok_or_else(|| {
            HiveError::NotFound(format!(
                "{inf_path} has no Active value naming the installed {} package",
                drv.inf
            ))
        })?;
    let pkg = format!("DriverDatabase\\DriverPackages\\{label}");
    if hive.open_key(&pkg)?.is_none() {
        return Err(HiveError::NotFound(format!(
            "{inf_path} names the active package {label}, but there is no key {pkg}"
        ))
        .into());
    }
    // The configuration an existing descriptor of the package uses.
    let mut config = None;
    if let Some(desc) = hive.open_key(&format!("{pkg}\\Descriptors"))? {
        let mut stack = vec![(desc, 0u32)];
        let mut seen = 0u32;
        while let Some((k, depth)) = stack.pop() {
            seen += 1;
            if seen > 10_000 {
                break;
            }
            if let Some(c) = strings(hive, k, "Configuration")?.into_iter().next() {
                if !c.is_empty() {
                    config = Some(c);
                    break;
                }
            }
            if depth < 4 {
                for s in hive.subkeys(k)? {
                    stack.push((s, depth + 1));
                }
            }
        }
    }
    let config = match config {
        Some(c) => c,
        None => strings(hive, inf_key, "Configurations")?
            .into_iter()
            .find(|c| !c.is_empty())
            .unwrap_or_else(|| drv.config.clone()),
    };
    for id in &drv.device_ids {
        let ids_key = format!("DriverDatabase\\DeviceIds\\{id}");
        let present = match hive.open_key(&ids_key)? {
            Some(k) => hive.value(k, &drv.inf)?.is_some(),
            None => false,
        };
        if !present {
            plan.key(
                ids_key,
                vec![(drv.inf.as_str(), RegData::Binary(DEVICE_ID_RANK.to_vec()))],
            );
        }
        let desc_key = format!("{pkg}\\Descriptors\\{id}");
        let present = match hive.open_key(&desc_key)? {
            Some(k) => hive.value(k, "Configuration")?.is_some(),
            None => false,
        };
        if !present {
            plan.key(
                desc_key,
                vec![("Configuration", RegData::Sz(config.clone()))],
            );
        }
    }
    Ok(plan)
}

/// The staging folder of driver packages, as `DevicePath` and the first-boot script name it.
pub const STAGING_DIR_ENV: &str = "%SystemRoot%\\Drivers\\VirtIO";

/// Where `DevicePath` lives in the SOFTWARE hive.
pub const DEVICE_PATH_KEY: &str = "Microsoft\\Windows\\CurrentVersion";

/// The edit that appends `dir` to SOFTWARE `Microsoft\Windows\CurrentVersion\DevicePath`
/// (EXPAND_SZ, `;`-separated folders Plug and Play searches, with their subfolders, for INF
/// files when it meets a new device). Nothing is planned when `dir` is already listed
/// (compared without regard to case); a missing value starts from Windows' default
/// `%SystemRoot%\inf`.
pub fn plan_device_path(software: &Hive, dir: &str) -> Result<EditPlan> {
    let mut plan = EditPlan::default();
    let current = match software.open_key(DEVICE_PATH_KEY)? {
        Some(k) => strings(software, k, "DevicePath")?.into_iter().next(),
        None => None,
    };
    let current = current.unwrap_or_else(|| "%SystemRoot%\\inf".to_string());
    let listed = current
        .split(';')
        .any(|p| p.trim().trim_end_matches('\\').eq_ignore_ascii_case(dir));
    if !listed {
        let new = if current.trim().is_empty() {
            dir.to_string()
        } else {
            format!("{};{dir}", current.trim_end_matches(';'))
        };
        plan.key(
            DEVICE_PATH_KEY.to_string(),
            vec![("DevicePath", RegData::ExpandSz(new))],
        );
    }
    Ok(plan)
}

/// What [`plan_first_boot`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirstBoot {
    /// `Setup\CmdLine` runs the script at the next boot (`SetupType` = 2).
    Scheduled(EditPlan),
    /// diskconv's own hook from an earlier run is in place (`CmdLine` is what
    /// [`first_boot_cmd_line`] writes for this script and `SetupType` is not 0): the registry
    /// is left as it is; the caller rewrites the script for this run's drivers.
    EarlierRun {
        /// The `SetupType` found.
        setup_type: u32,
    },
    /// Windows setup is already pending (`SetupType` = `setup_type`, e.g. a sysprepped image):
    /// nothing is changed; setup finds the staged drivers through `DevicePath`.
    SetupPending {
        /// The `SetupType` found.
        setup_type: u32,
        /// The `CmdLine` found.
        cmd_line: String,
    },
}

/// The command line the first boot runs (`cmd.exe` expands `%SystemRoot%`).
pub fn first_boot_cmd_line(script: &str) -> String {
    format!("cmd.exe /c {script}")
}

/// Plans running `script` (a path with `%SystemRoot%`) once at the next boot through the
/// SYSTEM hive's `Setup` key: `CmdLine` = `cmd.exe /c <script>` and `SetupType` = 2. At boot,
/// Winlogon sees a non-zero `SetupType` and runs `CmdLine` as SYSTEM before anyone logs on
/// (the mechanism Windows setup itself uses, so no extra executable or service is needed); the
/// script sets `SetupType` back to 0 and `CmdLine` to "" when it is done, so it runs once.
/// When `SetupType` is already non-zero, nothing is planned: either `CmdLine` is this very
/// hook, from an earlier run ([`FirstBoot::EarlierRun`]), or Windows setup is pending (e.g.
/// after sysprep, [`FirstBoot::SetupPending`]).
pub fn plan_first_boot(system: &Hive, script: &str) -> Result<FirstBoot> {
    if let Some(k) = system.open_key("Setup")? {
        let cmd_line = strings(system, k, "CmdLine")?
            .into_iter()
            .next()
            .unwrap_or_default();
        if let Some(v) = system.value(k, "SetupType")? {
            if let RegData::Dword(t) = v.decoded() {
                if t != 0 && cmd_line.eq_ignore_ascii_case(&first_boot_cmd_line(script)) {
                    return Ok(FirstBoot::EarlierRun { setup_type: t });
                }
                if t != 0 {
                    return Ok(FirstBoot::SetupPending {
                        setup_type: t,
                        cmd_line,
                    });
                }
            }
        }
    }
    let mut plan = EditPlan::default();
    plan.key(
        "Setup".to_string(),
        vec![
            ("CmdLine", RegData::Sz(first_boot_cmd_line(script))),
            ("SetupType", RegData::Dword(2)),
        ],
    );
    Ok(FirstBoot::Scheduled(plan))
}

/// The first-boot script (CRLF lines): `pnputil -i -a` on each INF (paths relative to the
/// staging folder), each step logged to `firstboot.log` beside the script, then `SetupType`
/// back to 0 and `CmdLine` to "" with `reg.exe`.
pub fn first_boot_script(staging: &str, infs: &[String]) -> String {
    let mut lines = vec![
        "@echo off".to_string(),
        "rem Written by diskconv inject windows: installs the staged drivers once, at the \
         first boot."
            .to_string(),
        format!("set LOG={staging}\\firstboot.log"),
        "echo %DATE% %TIME% installing the staged drivers >> \"%LOG%\"".to_string(),
    ];
    for inf in infs {
        lines.push(format!(
            "pnputil -i -a \"{staging}\\{inf}\" >> \"%LOG%\" 2>&1"
        ));
        lines.push(format!(
            "echo pnputil {inf}: exit code %ERRORLEVEL% >> \"%LOG%\""
        ));
    }
    lines.push(
        "reg add \"HKLM\\SYSTEM\\Setup\" /v SetupType /t REG_DWORD /d 0 /f >> \"%LOG%\" 2>&1"
            .to_string(),
    );
    lines.push(
        "reg add \"HKLM\\SYSTEM\\Setup\" /v CmdLine /t REG_SZ /d \"\" /f >> \"%LOG%\" 2>&1"
            .to_string(),
    );
    lines.push("echo %DATE% %TIME% done >> \"%LOG%\"".to_string());
    let mut s = lines.join("\r\n");
    s.push_str("\r\n");
    s
}

/// The edit that sets `<cs>\Control\CrashControl\AutoReboot` (see [`set_crash_auto_reboot`]).
pub fn plan_crash_auto_reboot(hive: &Hive, enabled: bool) -> Result<EditPlan> {
    let cs = current_control_set(hive)?;
    let mut plan = EditPlan {
        control_set: Some(cs.clone()),
        keys: Vec::new(),
    };
    plan.key(
        format!("{cs}\\Control\\CrashControl"),
        vec![("AutoReboot", RegData::Dword(u32::from(enabled)))],
    );
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a rerun found diskconv's own hook and called it "Windows setup is already
    /// pending (e.g. a sysprepped image)".
    #[test]
    fn first_boot_recognises_its_own_hook() {
        let script = "%SystemRoot%\\Drivers\\VirtIO\\firstboot.cmd";
        let mut h = Hive::new("SYSTEM").unwrap();
        let FirstBoot::Scheduled(plan) = plan_first_boot(&h, script).unwrap() else {
            panic!("a hive without Setup gets the hook");
        };
        apply_plan(&mut h, &plan).unwrap();
        assert_eq!(
            plan_first_boot(&h, script).unwrap(),
            FirstBoot::EarlierRun { setup_type: 2 }
        );
        // Someone else's command line with a pending setup is left alone.
        let k = h.open_key("Setup").unwrap().unwrap();
        h.set_data(k, "CmdLine", &RegData::Sz("oobe\\windeploy.exe".into()))
            .unwrap();
        assert_eq!(
            plan_first_boot(&h, script).unwrap(),
            FirstBoot::SetupPending {
                setup_type: 2,
                cmd_line: "oobe\\windeploy.exe".into()
            }
        );
        // After the hook ran (SetupType 0), the next run schedules it again.
        h.set_data(k, "SetupType", &RegData::Dword(0)).unwrap();
        assert!(matches!(
            plan_first_boot(&h, script).unwrap(),
            FirstBoot::Scheduled(_)
        ));
    }

    #[test]
    fn guid_is_stored_mixed_endian() {
        // {4D36E97B-E325-11CE-BFC1-08002BE10318}: Data1 7b e9 36 4d, Data2 25 e3, Data3 ce 11,
        // Data4 bf c1 08 00 2b e1 03 18 (as in the Version value Windows wrote for stornvme in
        // a real SYSTEM hive).
        assert_eq!(
            guid_bytes(SCSI_ADAPTER_CLASS_GUID).unwrap(),
            [
                0x7b, 0xe9, 0x36, 0x4d, 0x25, 0xe3, 0xce, 0x11, 0xbf, 0xc1, 0x08, 0x00, 0x2b, 0xe1,
                0x03, 0x18
            ]
        );
        for bad in [
            "4D36E97B-E325-11CE-BFC1-08002BE10318",
            "{4D36E97B-E325-11CE-BFC1-08002BE1031}",
            "{4D36E97B-E325-11CE-BFC1-08002BE1031G}",
            "{4D36E97BE325-11CE-BFC1-08002BE103180}",
            "{}",
            "{é}",
        ] {
            assert!(guid_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn package_version_is_48_bytes() {
        let v = BootStorageDriver::viostor().package_version().unwrap();
        assert_eq!(v.len(), 48);
        assert_eq!(&v[..8], &[0, 0xff, 9, 0, 0, 0, 0, 0]);
        assert_eq!(&v[8..24], &guid_bytes(SCSI_ADAPTER_CLASS_GUID).unwrap());
        assert!(v[24..].iter().all(|&b| b == 0));
    }

    #[test]
    fn package_label_is_stable_and_well_formed() {
        for d in [BootStorageDriver::viostor(), BootStorageDriver::vioscsi()] {
            let l = d.package_label();
            let prefix = format!("{}_amd64_", d.inf);
            let digits = l.strip_prefix(&prefix).expect("label prefix");
            assert_eq!(digits.len(), 16, "{l}");
            assert!(digits.bytes().all(|b| b.is_ascii_hexdigit()), "{l}");
            assert_eq!(l, d.clone().package_label());
        }
        assert_ne!(
            BootStorageDriver::viostor().package_label(),
            BootStorageDriver::vioscsi().package_label()
        );
        // Pinned: a change would make reruns on already-adapted guests add a second package.
        assert_eq!(
            BootStorageDriver::viostor().package_label(),
            format!(
                "viostor.inf_amd64_{:016x}",
                fnv1a(b"viostor.inf\0viostor\0amd64")
            )
        );
    }

    fn fnv1a(b: &[u8]) -> u64 {
        b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(0x100000001b3)
        })
    }

    #[test]
    fn driver_validation() {
        let mut d = BootStorageDriver::viostor();
        d.device_ids = vec!["VEN_1AF4".into()];
        assert!(d.validate().is_err());
        let mut d = BootStorageDriver::viostor();
        d.service = "a\\b".into();
        assert!(d.validate().is_err());
        let mut d = BootStorageDriver::viostor();
        d.device_ids.clear();
        assert!(d.validate().is_err());
        assert!(BootStorageDriver::vioscsi().validate().is_ok());
    }

    #[test]
    fn reg_text_is_exact() {
        let plan = EditPlan {
            control_set: None,
            keys: vec![PlannedKey {
                path: "A\\B".into(),
                values: vec![
                    ("".into(), RegData::Sz("x".into())),
                    ("St\"art".into(), RegData::Dword(0x0102)),
                    ("Bin".into(), RegData::Binary(vec![1, 0xff])),
                ],
            }],
        };
        assert_eq!(
            plan.to_reg("HKEY_LOCAL_MACHINE\\SYSTEM"),
            "Windows Registry Editor Version 5.00\r\n\r\n\
             [HKEY_LOCAL_MACHINE\\SYSTEM\\A\\B]\r\n\
             @=hex(1):78,00,00,00\r\n\
             \"St\\\"art\"=hex(4):02,01,00,00\r\n\
             \"Bin\"=hex(3):01,ff\r\n"
        );
    }

    #[test]
    fn report_display_and_changed() {
        let mut r = EditReport {
            control_set: Some("ControlSet001".into()),
            edits: vec![Edit::ValueSet {
                path: "ControlSet001\\Services\\x".into(),
                name: "Start".into(),
                kind: RegType::DWORD,
                changed: false,
            }],
        };
        assert!(!r.changed());
        let text = r.to_string();
        assert!(text.contains("Start (REG_DWORD) (unchanged)"), "{text}");
        r.extend(EditReport {
            control_set: None,
            edits: vec![Edit::KeyCreated { path: "k".into() }],
        });
        assert!(r.changed());
        assert!(r.to_string().contains("created key  k"));
    }
}
