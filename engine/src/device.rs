//! [`Device`] and [`AttentionPath`]: where the engine runs the model, and how attention reads the KV cache.
//!
//! These are the engine's own types (its public API names no candle type); `Engine::load` turns them into a
//! candle device and a KV cache of the matching kind.

use std::fmt;
use std::str::FromStr;

use crate::EngineError;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU: weights in host memory, our own bit-exact kernels.
    #[default]
    Cpu,
    /// NVIDIA GPU number `n` through candle's CUDA backend; needs a build with the `cuda` feature.
    Cuda(usize),
}

impl Device {
    /// Whether this build can run on CUDA devices (the `cuda` cargo feature).
    pub const CUDA_BUILT: bool = cfg!(feature = "cuda");
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A device name that is neither `cpu`, `cuda` nor `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}`: expected `cpu`, `cuda` or `cuda:N` (N: the GPU's number, from 0)")]
pub struct ParseDeviceError(String);

impl FromStr for Device {
    type Err = ParseDeviceError;

    /// `cpu`, `cuda` (GPU 0) or `cuda:N`, case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| ParseDeviceError(s.to_string())),
        }
    }
}

/// How attention reads the paged KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    /// The CPU kernel over an f32 host cache: rounds exactly as the reference model does, so greedy output is
    /// bit-identical to it and independent of batching. CPU only.
    Kernel,
    /// candle ops over a cache of tensors (f16 on CUDA, f32 on the CPU): the only path on CUDA. On the CPU it
    /// exists so that tests cover what CUDA runs; its output agrees with the kernel's within float tolerance.
    TensorOps,
}

impl AttentionPath {
    /// The path `device` runs when the config leaves it open: the kernel on the CPU, tensor ops on CUDA.
    pub fn default_for(device: Device) -> Self {
        match device {
            Device::Cpu => Self::Kernel,
            Device::Cuda(_) => Self::TensorOps,
        }
    }
}

/// The candle device for `device`, or a load error that says why it is not available.
pub(crate) fn open(device: Device, model: &str) -> Result<candle_core::Device, EngineError> {
    let unavailable = |reason: String| EngineError::Load {
        path: model.to_string(),
        reason,
    };
    match device {
        Device::Cpu => Ok(candle_core::Device::Cpu),
        Device::Cuda(_) if !Device::CUDA_BUILT => Err(unavailable(format!(
            "cannot use device {device}: this hearth was built without CUDA; build it with `--features cuda` \
             (scripts/build-cuda.sh) or use `--device cpu`"
        ))),
        Device::Cuda(n) => candle_core::Device::new_cuda(n).map_err(|e| {
            unavailable(format!(
                "cannot open CUDA device {n} (is there an NVIDIA GPU and driver?): {e}"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        for (text, want) in [
            ("cpu", Device::Cpu),
            ("CPU", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:1", Device::Cuda(1)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(want), "{text}");
        }
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        assert_eq!(Device::Cuda(2).to_string().parse::<Device>(), Ok(Device::Cuda(2)));
    }

    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let result = open(Device::Cuda(0), "m.gguf");
        if Device::CUDA_BUILT {
            // With the feature, the error (if any) is about the GPU, not the build.
            if let Err(e) = result {
                assert!(e.to_string().contains("cannot open CUDA device 0"), "{e}");
            }
        } else {
            let e = result.expect_err("a CPU-only build cannot open CUDA");
            assert!(e.to_string().contains("built without CUDA"), "{e}");
        }
    }
}
