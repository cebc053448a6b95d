//! `--kv-memory`: the KV cache budget of a backbone server, in bytes (`512M`, `2G`,
//! `1073741824`) or as a fraction of the memory the device offers (`0.25`).
//!
//! wgpu does not report a GPU's memory, so fractions are resolved on CPU devices (lavapipe,
//! SwiftShader: the system's available memory is theirs) and refused on GPUs, which take
//! bytes. Left unset, the budget is a quarter of the device's memory where it is known, and
//! 2 GiB elsewhere, and never more than every session at its longest.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// A KV budget as given.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum KvMemory {
    /// A quarter of the device's memory where known, else [`KvMemory::FALLBACK`] bytes.
    #[default]
    Auto,
    Bytes(u64),
    /// A fraction (0, 1] of the device's memory.
    Fraction(f64),
}

impl KvMemory {
    /// Bytes of an automatic budget on a device whose memory is unknown.
    pub const FALLBACK: u64 = 2 << 30;

    /// The budget in bytes on `gpu`.
    pub fn resolve(self, gpu: &Gpu) -> Result<u64> {
        let memory = device_memory(gpu);
        match (self, memory) {
            (KvMemory::Bytes(b), _) => Ok(b),
            (KvMemory::Fraction(f), Some(m)) => Ok((m as f64 * f) as u64),
            (KvMemory::Fraction(f), None) => Err(Error::InvalidRequest(format!(
                "--kv-memory {f}: `{}` does not report its memory through wgpu; give the budget \
                 in bytes (e.g. 8G)",
                gpu.adapter_name()
            ))),
            (KvMemory::Auto, Some(m)) => Ok(m / 4),
            (KvMemory::Auto, None) => Ok(Self::FALLBACK),
        }
    }
}

impl FromStr for KvMemory {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let bad = || {
            Error::InvalidRequest(format!(
                "--kv-memory `{s}`: expected bytes (512M, 2G, 1073741824) or a fraction of the \
                 device's memory in (0, 1]"
            ))
        };
        if t.contains('.') {
            let f: f64 = t.parse().map_err(|_| bad())?;
            return if f > 0.0 && f <= 1.0 {
                Ok(KvMemory::Fraction(f))
            } else {
                Err(bad())
            };
        }
        let upper = t.to_ascii_uppercase();
        let digits = upper.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit: u64 = match &upper[digits.len()..] {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            "T" | "TB" | "TIB" => 1 << 40,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        match n.checked_mul(unit) {
            Some(b) if b > 0 => Ok(KvMemory::Bytes(b)),
            _ => Err(bad()),
        }
    }
}

/// The memory a device offers, where known: the system's available memory for CPU devices.
fn device_memory(gpu: &Gpu) -> Option<u64> {
    if !gpu.is_cpu() {
        return None;
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse() {
        assert_eq!(
            "512M".parse::<KvMemory>().unwrap(),
            KvMemory::Bytes(512 << 20)
        );
        assert_eq!("2g".parse::<KvMemory>().unwrap(), KvMemory::Bytes(2 << 30));
        assert_eq!(
            "64MiB".parse::<KvMemory>().unwrap(),
            KvMemory::Bytes(64 << 20)
        );
        assert_eq!("1000".parse::<KvMemory>().unwrap(), KvMemory::Bytes(1000));
        assert_eq!(
            "0.25".parse::<KvMemory>().unwrap(),
            KvMemory::Fraction(0.25)
        );
        for bad in ["", "0", "1.5", "0.0", "-1", "12X", "M", "99999999999T"] {
            let e = bad.parse::<KvMemory>().unwrap_err().to_string();
            assert!(e.contains("--kv-memory"), "{bad}: {e}");
        }
    }
}
