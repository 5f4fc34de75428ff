//! The `-o key=value` options of a qcow2 output: their parser and their checks.

use crate::error::{Error, Result};
use crate::formats::qcow2::header::{CompressionType, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};
use crate::formats::raw::Preallocation;
use crate::util::parse_size;

use super::Qcow2WriteOptions;

impl Qcow2WriteOptions {
    /// The option keys [`set`](Self::set) takes, for messages.
    pub const KEYS: &'static [&'static str] = &[
        "compat",
        "cluster_size",
        "compression_type",
        "preallocation",
    ];

    /// Sets one `-o key=value` option; `Ok(false)` when `key` is not a qcow2 option.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "compat" => {
                self.version = match value {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "compat={other}: expected 0.10 or 1.1"
                        )));
                    }
                };
            }
            "cluster_size" => {
                let bad = || {
                    Error::InvalidArgument(format!(
                        "cluster_size={value}: expected a power of two from 512 to 2M"
                    ))
                };
                let v = parse_size(value)
                    .filter(|v| v.is_power_of_two())
                    .ok_or_else(bad)?;
                let bits = v.trailing_zeros();
                if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
                    return Err(bad());
                }
                self.cluster_bits = bits;
            }
            "compression_type" => {
                self.compression_type = match value {
                    "zlib" => CompressionType::Zlib,
                    "zstd" => CompressionType::Zstd,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "compression_type={other}: expected zlib or zstd"
                        )));
                    }
                };
            }
            "preallocation" => self.preallocation = value.parse()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks combinations of options.
    pub fn validate(&self) -> Result<()> {
        if self.version == 2 && self.compression_type != CompressionType::Zlib {
            return Err(Error::InvalidArgument(
                "compression_type=zstd needs compat=1.1 (version 2 images have only zlib)".into(),
            ));
        }
        if self.compress && self.preallocation != Preallocation::Off {
            return Err(Error::InvalidArgument(
                "compressed images cannot be preallocated".into(),
            ));
        }
        Ok(())
    }
}
