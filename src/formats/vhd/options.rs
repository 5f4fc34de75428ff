//! The `-o key=value` options of a VHD output: their parser and their checks.

use crate::error::{Error, Result};
use crate::util::{human_bytes, parse_size};

use super::{VhdSubformat, VhdWriteOptions};

impl VhdWriteOptions {
    /// The option keys [`set`](Self::set) takes, for messages.
    pub const KEYS: &'static [&'static str] = &["subformat", "block_size", "round_to_mib"];

    /// Sets one `-o key=value` option; `Ok(false)` when `key` is not a VHD option.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "subformat" => {
                self.subformat = match value {
                    "dynamic" => VhdSubformat::Dynamic,
                    "fixed" => VhdSubformat::Fixed,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "subformat={other}: expected fixed or dynamic"
                        )));
                    }
                };
            }
            "block_size" => self.block_size = parse_block_size(value, 512 * 1024, 256 << 20)?,
            "round_to_mib" => self.round_to_mib = parse_on_off(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks combinations of options; `block_size_given`: whether `block_size` was set (the
    /// default block size of a fixed VHD is no option given).
    pub fn validate(&self, block_size_given: bool) -> Result<()> {
        // Options the writer would silently ignore are refused: they mean nothing with the others.
        if self.subformat == VhdSubformat::Fixed && block_size_given {
            return Err(Error::InvalidArgument(
                "option 'block_size' means nothing with subformat=fixed: a fixed VHD is one \
                 run of sectors with a footer, only a dynamic VHD is made of blocks; remove \
                 block_size or use subformat=dynamic"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A `block_size=` value: a power of two from `min` to `max` bytes.
fn parse_block_size(value: &str, min: u64, max: u64) -> Result<u32> {
    parse_size(value)
        .filter(|v| v.is_power_of_two() && (min..=max).contains(v))
        .map(|v| v as u32)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "block_size={value}: expected a power of two from {} to {}",
                human_bytes(min),
                human_bytes(max)
            ))
        })
}

fn parse_on_off(key: &str, value: &str) -> Result<bool> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        other => Err(Error::InvalidArgument(format!(
            "{key}={other}: expected on or off"
        ))),
    }
}
