//! The `-o key=value` options of an OVA output (the virtual machine its OVF describes): their
//! parser. The disk inside takes the VMDK's `adapter_type` and `hwversion`.

use crate::error::{Error, Result};
use crate::util::parse_size;

use super::{Firmware, OvaOptions};

impl OvaOptions {
    /// The option keys [`set`](Self::set) takes, for messages.
    pub const KEYS: &'static [&'static str] = &["name", "cpus", "memory", "os_type", "firmware"];

    /// Sets one `-o key=value` option; `Ok(false)` when `key` is not an OVA option.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "name" => {
                if value.is_empty()
                    || !value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(Error::InvalidArgument(format!(
                        "name={value}: use letters, digits, '-', '_' and '.' only"
                    )));
                }
                self.vm_name = value.to_string();
            }
            "cpus" => {
                self.cpus = value
                    .parse::<u32>()
                    .ok()
                    .filter(|v| (1..=768).contains(v))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("cpus={value}: expected 1 to 768"))
                    })?;
            }
            "memory" => {
                // A plain number is MiB (as in VMware's memsize); a suffix gives the unit.
                let mib = if value.chars().all(|c| c.is_ascii_digit()) {
                    value.parse::<u64>().ok()
                } else {
                    parse_size(value).map(|b| b >> 20)
                };
                self.memory_mib = mib.filter(|&m| m >= 4).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "memory={value}: expected MiB (4096) or a size with a unit (4G)"
                    ))
                })?;
            }
            "os_type" => {
                if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(Error::InvalidArgument(format!(
                        "os_type={value}: expected a VMware guest id such as otherGuest64 or \
                         windows2019srv_64Guest"
                    )));
                }
                self.os_type = value.to_string();
            }
            "firmware" => {
                self.firmware = match value {
                    "bios" => Firmware::Bios,
                    "efi" | "uefi" => Firmware::Efi,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "firmware={other}: expected bios or efi"
                        )));
                    }
                };
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}
