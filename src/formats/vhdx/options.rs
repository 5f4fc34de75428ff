//! The `-o key=value` options of a VHDX output: their parser.

use crate::error::{Error, Result};
use crate::util::{human_bytes, parse_size};

use super::{VhdxSubformat, VhdxWriteOptions};

impl VhdxWriteOptions {
    /// The option keys [`set`](Self::set) takes, for messages.
    pub const KEYS: &'static [&'static str] = &[
        "subformat",
        "block_size",
        "logical_sector_size",
        "physical_sector_size",
    ];

    /// Sets one `-o key=value` option; `Ok(false)` when `key` is not a VHDX option.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "subformat" => {
                self.subformat = match value {
                    "dynamic" => VhdxSubformat::Dynamic,
                    "fixed" => VhdxSubformat::Fixed,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "subformat={other}: expected fixed or dynamic"
                        )));
                    }
                };
            }
            "block_size" => {
                let (min, max) = (1 << 20, 256 << 20);
                self.block_size = parse_size(value)
                    .filter(|v| v.is_power_of_two() && (min..=max).contains(v))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "block_size={value}: expected a power of two from {} to {}",
                            human_bytes(min),
                            human_bytes(max)
                        ))
                    })? as u32;
            }
            "logical_sector_size" | "physical_sector_size" => {
                let v = match value {
                    "512" => 512,
                    "4096" | "4k" | "4K" => 4096,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "{key}={other}: expected 512 or 4096"
                        )));
                    }
                };
                if key == "logical_sector_size" {
                    self.logical_sector_size = v;
                } else {
                    self.physical_sector_size = v;
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}
