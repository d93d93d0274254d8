//! Faults that fail a fraction of calls, shared by the emulators.

use serde::Serialize;

/// Fails a fraction of calls, deterministically: every call adds `fraction` to an accumulator and fails
/// when it reaches 1 (a fifth fails exactly every fifth call).
#[derive(Debug, Clone, Serialize)]
pub struct FractionFault {
    /// The fraction of calls that fail, in `0..=1`.
    pub fraction: f64,
    #[serde(skip)]
    acc: f64,
}

impl FractionFault {
    /// A fault failing `fraction` of calls; `None` for 0 (switched off); an error outside `0..=1`.
    pub(crate) fn new(fraction: f64) -> Result<Option<Self>, String> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!("`fraction` must be in 0..=1, not {fraction}"));
        }
        Ok((fraction > 0.0).then_some(Self { fraction, acc: 0.0 }))
    }

    /// Whether this call fails.
    pub(crate) fn hit(&mut self) -> bool {
        self.acc += self.fraction;
        if self.acc >= 1.0 - 1e-9 {
            self.acc -= 1.0;
            true
        } else {
            false
        }
    }
}
