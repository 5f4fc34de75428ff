//! The `-o key=value` options of a VMDK output (`adapter_type` and `hwversion` are also an
//! OVA's, for the disk inside it): their parser.

use crate::error::{Error, Result};

use super::{AdapterType, VmdkSubformat, VmdkWriteOptions};

impl VmdkWriteOptions {
    /// The option keys [`set`](Self::set) takes, for messages.
    pub const KEYS: &'static [&'static str] = &["subformat", "adapter_type", "hwversion"];

    /// Sets one `-o key=value` option; `Ok(false)` when `key` is not a VMDK option.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "subformat" => {
                self.subformat = match value {
                    "streamOptimized" => VmdkSubformat::StreamOptimized,
                    "monolithicSparse" => VmdkSubformat::MonolithicSparse,
                    "monolithicFlat" => VmdkSubformat::MonolithicFlat,
                    "vmfs" => VmdkSubformat::Vmfs,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "subformat={other}: expected streamOptimized, monolithicSparse, \
                             monolithicFlat or vmfs"
                        )));
                    }
                };
            }
            "adapter_type" => {
                self.adapter_type = match value {
                    "lsilogic" => AdapterType::LsiLogic,
                    "ide" => AdapterType::Ide,
                    "buslogic" => AdapterType::BusLogic,
                    "legacyESX" => AdapterType::LegacyEsx,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "adapter_type={other}: expected lsilogic, ide, buslogic or legacyESX"
                        )));
                    }
                };
            }
            "hwversion" => {
                self.hw_version = value
                    .parse::<u32>()
                    .ok()
                    .filter(|v| (4..=99).contains(v))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "hwversion={value}: expected a virtual hardware version from 4 to 99"
                        ))
                    })?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}
