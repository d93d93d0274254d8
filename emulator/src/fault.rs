//! Fault-injection pieces every emulator shares.

use serde::Serialize;

/// A fault that fails a fraction of calls, deterministically: every call adds `fraction` to an
/// accumulator and fails when it reaches 1 (a fifth fails exactly every fifth call).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FractionFault {
    pub fraction: f64,
    /// The HTTP status a failed call gets (200 for faults that refuse no call, such as duplicate pushes).
    pub status: u16,
    #[serde(skip)]
    pub acc: f64,
}

impl FractionFault {
    /// A fault failing `fraction` of calls with `status`; `None` for a fraction of 0 (switched off).
    pub fn new(fraction: f64, status: u16) -> Option<Self> {
        (fraction > 0.0).then_some(Self {
            fraction,
            status,
            acc: 0.0,
        })
    }

    /// Like [`new`](Self::new), but an error naming the field for a fraction outside `0..=1`.
    pub fn checked(fraction: f64, status: u16) -> Result<Option<Self>, String> {
        if !valid_fraction(fraction) {
            return Err(format!("`fraction` must be in 0..=1, not {fraction}"));
        }
        Ok(Self::new(fraction, status))
    }

    /// Whether this call fails.
    pub fn hit(&mut self) -> bool {
        self.acc += self.fraction;
        if self.acc >= 1.0 - 1e-9 {
            self.acc -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether `fraction` is a valid fault fraction (0 to 1).
pub fn valid_fraction(fraction: f64) -> bool {
    (0.0..=1.0).contains(&fraction)
}
