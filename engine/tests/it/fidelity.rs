//! Greedy output of the engine against candle-transformers' single-sequence reference models on the same GGUF.
//!
//! The requests run concurrently through the engine (batched, prompts chunked by a small step budget), so
//! this also checks that batching and chunking do not change results. A divergence is accepted only at a
//! near-tie of the reference (top-2 logit gap < 0.01 at the first differing token).

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};
use engine::{Event, GenerateRequest};

use crate::{chat_prompts, chat_tokens, engine, model_path, QWEN_1_5B, SMOLLM2};

enum Reference {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
}

impl Reference {
    fn load(file: &str) -> Self {
        let path = model_path(file);
        let mut f = std::fs::File::open(path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        let arch = content.metadata["general.architecture"].to_string().unwrap().clone();
        match arch.as_str() {
            "llama" => Self::Llama(quantized_llama::ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap()),
            "qwen2" => Self::Qwen2(quantized_qwen2::ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap()),
            other => panic!("no reference model for {other}"),
        }
    }

    fn forward(&mut self, tokens: &[u32], pos: usize) -> Vec<f32> {
        let x = Tensor::new(tokens, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = match self {
            Self::Llama(m) => m.forward(&x, pos),
            Self::Qwen2(m) => m.forward(&x, pos),
        };
        logits.unwrap().squeeze(0).unwrap().to_vec1().unwrap()
    }

    /// Greedy tokens (ignoring EOS) and the logits each was chosen from.
    fn generate(&mut self, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
        match self {
            Self::Llama(m) => m.clear_kv_cache(),
            Self::Qwen2(m) => m.clear_kv_cache(),
        }
        let mut logits = self.forward(prompt, 0);
        let (mut out, mut all) = (Vec::new(), Vec::new());
        for i in 0..n {
            let next = argmax(&logits);
            out.push(next);
            let following = if i + 1 < n {
                self.forward(&[next], prompt.len() + i)
            } else {
                Vec::new()
            };
            all.push(std::mem::replace(&mut logits, following));
        }
        (out, all)
    }
}

fn argmax(xs: &[f32]) -> u32 {
    xs.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
        )
        .0 as u32
}

fn top2_gap(xs: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in xs {
        if x > a {
            (a, b) = (x, a);
        } else if x > b {
            b = x;
        }
    }
    a - b
}

fn check(file: &str, n: usize) {
    // A small step budget chunks every prompt over several steps, mixed with other requests' decoding.
    let engine = engine(file, |c| c.max_batch_tokens = 24);
    let prompts: Vec<Vec<u32>> = chat_prompts().iter().map(|p| chat_tokens(&engine, p)).collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            let mut req = GenerateRequest::greedy(p.clone(), n);
            req.stop.ignore_eos = true;
            engine.submit(req).unwrap()
        })
        .collect();
    let ours: Vec<Vec<u32>> = streams
        .into_iter()
        .map(|mut s| {
            let mut ids = Vec::new();
            while let Some(ev) = s.blocking_next() {
                match ev {
                    Event::Token(t) => ids.push(t.token_id),
                    Event::Finished(_) => break,
                    Event::Error(e) => panic!("{e}"),
                }
            }
            ids
        })
        .collect();
    engine.shutdown();
    let mut reference = Reference::load(file);
    let mut exact = 0;
    for (i, prompt) in prompts.iter().enumerate() {
        let (want, logits) = reference.generate(prompt, n);
        assert_eq!(ours[i].len(), n);
        match want.iter().zip(&ours[i]).position(|(a, b)| a != b) {
            None => exact += 1,
            Some(d) => {
                let gap = top2_gap(&logits[d]);
                assert!(
                    gap < 0.01,
                    "{file} prompt {i}: token {d} differs ({} vs {}) with top-2 gap {gap}",
                    want[d],
                    ours[i][d]
                );
                eprintln!("{file} prompt {i}: near-tie divergence at token {d} (gap {gap})");
            }
        }
    }
    eprintln!(
        "{file}: {exact}/{} prompts token-for-token identical over {n} tokens",
        prompts.len()
    );
}

#[test]
fn smollm2_greedy_matches_the_reference() {
    check(SMOLLM2, 64);
}

#[test]
fn qwen2_5_coder_1_5b_greedy_matches_the_reference() {
    check(QWEN_1_5B, 64);
}
