//! A model file through every check a load makes (`engine::fuzzing::model_file`): the GGUF header scan,
//! candle's parser, hyperparameters, tokenizer and chat template, tensor shapes and values. The API takes a
//! path, so each input is written to one scratch file (in /dev/shm when there is one).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() { shm } else { std::env::temp_dir() };
        dir.join(format!("hearth-fuzz-gguf-{}.gguf", std::process::id()))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("write the scratch model file");
    engine::fuzzing::model_file(path);
});
