//! [`Engine`] and [`EngineHandle`]: loading a model, starting the step loop on its own OS thread, and the
//! cheap, cloneable handle callers submit requests through.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::grammar::GrammarCompiler;
use crate::step::{Command, EngineLoop, NewRequest};
use crate::{validate, AttentionPath, Device, EngineError, Event, GenerateRequest, Grammar, ResponseFormat, Tokenizer};

/// Engine settings. Defaults are documented on [`EngineConfig::new`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The GGUF file to load.
    pub model_path: PathBuf,
    /// Token budget of one step over all sequences (prefill chunks plus decode tokens).
    pub max_batch_tokens: usize,
    /// Sequences generating at once.
    pub max_running: usize,
    /// Requests that may wait for a slot; one more is refused with `Overloaded` at once.
    pub max_waiting: usize,
    /// Positions the KV cache holds over all sequences.
    pub kv_cache_tokens: usize,
    /// Positions per KV block; a multiple of 32 (so shared prefix blocks round alike in every prompt).
    pub block_size: usize,
    /// Cap on the context length; `None` uses the model's trained context.
    pub context_length: Option<usize>,
    /// Reuse KV blocks of identical prompt prefixes across requests.
    pub prefix_caching: bool,
    /// Where the model runs.
    pub device: Device,
    /// How attention reads the KV cache; `None` takes [`AttentionPath::default_for`] the device.
    /// [`AttentionPath::Kernel`] on CUDA is refused (the kernel reads host memory).
    pub attention: Option<AttentionPath>,
}

impl EngineConfig {
    /// Defaults: 512 tokens per step, 64 running, 256 waiting, a 16 384-position KV cache in blocks of 32,
    /// context capped at 8 192 positions, prefix caching on, on the CPU with its default attention path.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            max_batch_tokens: 512,
            max_running: 64,
            max_waiting: 256,
            kv_cache_tokens: 16_384,
            block_size: 32,
            context_length: Some(8192),
            prefix_caching: true,
            device: Device::Cpu,
            attention: None,
        }
    }
}

/// Facts about the loaded model, for `/v1/models`, `/health` and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// File stem of the GGUF, the default served model name.
    pub name: String,
    /// `general.architecture`.
    pub architecture: String,
    /// Usable context length (the model's, capped by the config and the KV cache).
    pub context_length: usize,
    /// Output vocabulary size.
    pub vocab_size: usize,
    /// The file's type (`general.file_type`), e.g. "Q4_K_M".
    pub quantization: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Where it runs.
    pub device: Device,
    /// How its attention reads the KV cache.
    pub attention: AttentionPath,
}

/// Counters and gauges of the engine, updated every step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Sequences generating now.
    pub running: usize,
    /// Requests waiting for a slot (submitted, not yet scheduled).
    pub waiting: usize,
    /// KV blocks in the pool.
    pub kv_blocks_total: usize,
    /// KV blocks held by sequences.
    pub kv_blocks_used: usize,
    /// Requests accepted since start.
    pub requests_total: u64,
    /// Requests that finished normally.
    pub requests_finished: u64,
    /// Requests whose stream was dropped before the end.
    pub requests_cancelled: u64,
    /// Requests that ended with an error.
    pub requests_failed: u64,
    /// Prompt tokens of accepted requests.
    pub prompt_tokens_total: u64,
    /// Tokens generated.
    pub generated_tokens_total: u64,
    /// Prompt tokens served from the prefix cache.
    pub prefix_cache_hit_tokens: u64,
    /// Preemptions (a sequence's blocks freed to be recomputed later).
    pub preemptions_total: u64,
    /// Steps run.
    pub steps_total: u64,
    /// When the longest-waiting request that has not been scheduled yet was submitted (as of the last step).
    pub oldest_waiting_since: Option<Instant>,
}

impl EngineStats {
    /// How long the longest-waiting unscheduled request has waited so far (zero when none waits).
    pub fn queue_wait(&self) -> Duration {
        self.oldest_waiting_since
            .map(|since| since.elapsed())
            .unwrap_or_default()
    }
}

/// State shared by the handle and the engine thread.
pub(crate) struct Shared {
    pub info: ModelInfo,
    pub tokenizer: Arc<Tokenizer>,
    pub stats: Mutex<EngineStats>,
    /// Submitted but not yet scheduled; admission control compares it with `max_waiting`.
    pub waiting: AtomicUsize,
    pub max_waiting: usize,
    pub commands: Mutex<Option<mpsc::Sender<Command>>>,
    pub thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub next_id: AtomicUsize,
    /// Built on the first `compile_grammar` (the vocabulary's trie); the error is kept too.
    pub grammars: OnceLock<Result<GrammarCompiler, EngineError>>,
}

/// The tokenizer and model of `path`, with every check a load makes: the header (`models::Gguf::open`), the
/// hyperparameters, every tensor's shape and values, and the tokenizer against the model (its ids must be
/// rows of the output). `Engine::load` runs it, and so does [`crate::check_model`] for `hearth doctor`, so
/// the two refuse the same files.
pub(crate) fn load_checked(
    path: &std::path::Path,
    device: &candle_core::Device,
    max_positions: usize,
) -> Result<(Tokenizer, Box<dyn models::CausalLm>), EngineError> {
    let load_err = |reason: String| EngineError::Load {
        path: path.display().to_string(),
        reason,
    };
    // One header parse serves both: the tokenizer reads the metadata, then the model takes the open file.
    let gguf = models::Gguf::open(path, device).map_err(|e| load_err(e.to_string()))?;
    let tokenizer = Tokenizer::from_gguf_metadata(gguf.metadata_map()).map_err(|err| match err {
        EngineError::Load { reason, .. } => load_err(reason),
        other => other,
    })?;
    let model = models::load_gguf(gguf, max_positions).map_err(|e| load_err(e.to_string()))?;
    let rows = model.spec().vocab_size;
    if tokenizer.vocab_size() > rows {
        return Err(load_err(format!(
            "the tokenizer has {} tokens (`tokenizer.ggml.tokens`), but the model's output has only {rows} rows \
             (`token_embd.weight`)",
            tokenizer.vocab_size()
        )));
    }
    Ok((tokenizer, model))
}

/// Refuse a KV cache of `tokens` tokens at `bytes_per_token` that would not fit in this machine's memory
/// (`MemTotal`; no check where it cannot be read).
fn check_kv_cache_fits(bytes_per_token: usize, tokens: usize) -> Result<(), EngineError> {
    let needed_bytes = (bytes_per_token as u64).saturating_mul(tokens as u64);
    match mem_total_bytes() {
        Some(memory_bytes) if needed_bytes > memory_bytes => Err(EngineError::KvCacheTooLarge {
            tokens,
            needed_bytes,
            memory_bytes,
        }),
        _ => Ok(()),
    }
}

fn mem_total_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Loads models and starts engines.
pub struct Engine;

impl Engine {
    /// Load the model, tokenizer and chat template from `config.model_path`, allocate the KV cache and start
    /// the step loop on a dedicated thread. Blocking; takes seconds for a large model.
    pub fn load(config: EngineConfig) -> Result<EngineHandle, EngineError> {
        let path = config.model_path.clone();
        let load_err = |reason: String| EngineError::Load {
            path: path.display().to_string(),
            reason,
        };
        if config.block_size == 0 || !config.block_size.is_multiple_of(32) {
            return Err(EngineError::InvalidParameter {
                name: "block_size",
                value: config.block_size.to_string(),
                expected: "a positive multiple of 32",
            });
        }
        for (name, v) in [
            ("max_batch_tokens", config.max_batch_tokens),
            ("max_running", config.max_running),
            ("kv_cache_tokens", config.kv_cache_tokens),
        ] {
            if v == 0 {
                return Err(EngineError::InvalidParameter {
                    name,
                    value: "0".into(),
                    expected: "at least 1",
                });
            }
        }
        let attention = config.attention.unwrap_or(AttentionPath::default_for(config.device));
        if attention == AttentionPath::Kernel && config.device != Device::Cpu {
            return Err(EngineError::InvalidParameter {
                name: "attention",
                value: format!("Kernel on {}", config.device),
                expected: "TensorOps on CUDA (the kernel reads host memory)",
            });
        }
        let device = crate::device::open(config.device, &path.display().to_string())?;
        let num_blocks = config.kv_cache_tokens.div_ceil(config.block_size);
        // Rotary tables for the context this engine can serve, not for whatever the file claims.
        let max_positions = config
            .context_length
            .unwrap_or(usize::MAX)
            .min(num_blocks.saturating_mul(config.block_size));
        let (tokenizer, model) = load_checked(&path, &device, max_positions)?;
        let spec = model.spec().clone();
        if device.is_cpu() {
            check_kv_cache_fits(spec.kv_layout().bytes_per_token(), num_blocks * config.block_size)?;
        }
        let cache = match attention {
            AttentionPath::Kernel => models::KvCache::new(spec.kv_layout(), num_blocks, config.block_size),
            AttentionPath::TensorOps => {
                // f16 halves the cache on the GPU; the CPU twin keeps f32 so it can be compared tightly.
                let dtype = if device.is_cpu() {
                    candle_core::DType::F32
                } else {
                    candle_core::DType::F16
                };
                models::KvCache::new_tensors(spec.kv_layout(), num_blocks, config.block_size, &device, dtype)
            }
        }
        .map_err(|e| load_err(format!("cannot allocate the KV cache on {}: {e}", config.device)))?;
        let context_length = spec
            .context_length
            .min(config.context_length.unwrap_or(usize::MAX))
            .min(num_blocks * config.block_size);
        let info = ModelInfo {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
            architecture: spec.architecture_name.clone(),
            context_length,
            vocab_size: spec.vocab_size,
            quantization: spec.quantization.clone(),
            path: path.clone(),
            device: config.device,
            attention,
        };
        tracing::info!(
            model = %info.name,
            context = context_length,
            kv_blocks = num_blocks,
            device = %config.device,
            attention = ?attention,
            kv_mib = cache.bytes() >> 20,
            "engine ready"
        );
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            info,
            tokenizer: Arc::new(tokenizer),
            stats: Mutex::new(EngineStats {
                kv_blocks_total: num_blocks,
                ..EngineStats::default()
            }),
            waiting: AtomicUsize::new(0),
            max_waiting: config.max_waiting,
            commands: Mutex::new(Some(tx)),
            thread: Mutex::new(None),
            next_id: AtomicUsize::new(1),
            grammars: OnceLock::new(),
        });
        let engine_loop = EngineLoop::new(model, cache, &config, shared.clone(), rx);
        let thread = std::thread::Builder::new()
            .name("hearth-engine".into())
            .spawn(move || models::run_pinned(move || engine_loop.run()))
            .map_err(|e| load_err(format!("cannot start the engine thread: {e}")))?;
        *shared.thread.lock().expect("engine thread slot") = Some(thread);
        Ok(EngineHandle { shared })
    }
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("model", &self.shared.info.name)
            .finish()
    }
}

impl EngineHandle {
    /// Facts about the loaded model.
    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// The model's tokenizer and chat template. Tokenizing is CPU work: call it off async executors.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// A snapshot of the engine's counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.shared.stats.lock().expect("engine stats").clone();
        s.waiting = self.shared.waiting.load(Ordering::Relaxed);
        s
    }

    /// Compile an output format into a [`Grammar`] for one request's [`GenerateRequest::grammar`]. CPU work
    /// (milliseconds; the first call also builds the vocabulary's trie): call it off async executors. A
    /// schema that cannot be enforced is [`EngineError::ResponseFormat`].
    pub fn compile_grammar(&self, format: &ResponseFormat) -> Result<Grammar, EngineError> {
        let compiler = self
            .shared
            .grammars
            .get_or_init(|| GrammarCompiler::new(&self.shared.tokenizer));
        match compiler {
            Ok(c) => c.compile(format),
            Err(e) => Err(e.clone()),
        }
    }

    /// Validate and queue a request. Fails at once with `Overloaded` when the waiting queue is full, and with
    /// `ContextTooLong`, `EmptyPrompt`, `InvalidToken` or `InvalidParameter` for bad input. The returned
    /// stream yields the output; dropping it cancels the request.
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestStream, EngineError> {
        validate(&req.sampling, &req.stop)?;
        if req.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let info = &self.shared.info;
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(EngineError::InvalidToken {
                token_id: bad,
                vocab_size: info.vocab_size,
            });
        }
        if req.prompt.len() >= info.context_length {
            return Err(EngineError::ContextTooLong {
                prompt_tokens: req.prompt.len(),
                context_length: info.context_length,
            });
        }
        if let Some(n) = req.logprobs {
            if n > 20 {
                return Err(EngineError::InvalidParameter {
                    name: "top_logprobs",
                    value: n.to_string(),
                    expected: "at most 20",
                });
            }
        }
        // Admission: reserve a waiting slot or refuse now.
        let limit = self.shared.max_waiting;
        let reserved = self
            .shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| (w < limit).then_some(w + 1));
        if let Err(waiting) = reserved {
            return Err(EngineError::Overloaded { waiting, limit });
        }
        // Unbounded is fine: `max_tokens` (at most the context length) bounds what one request can receive.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        let cmd = Command::Add(Box::new(NewRequest {
            id,
            req,
            events: tx,
            submitted: Instant::now(),
            span: tracing::Span::current(),
        }));
        let sent = self
            .shared
            .commands
            .lock()
            .expect("engine command sender")
            .as_ref()
            .map(|c| c.send(cmd).is_ok());
        if sent != Some(true) {
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::ShutDown);
        }
        Ok(RequestStream { rx, id })
    }

    /// Whether the engine takes requests: not shut down, and its thread has not exited (or panicked).
    pub fn is_running(&self) -> bool {
        let accepting = self.shared.commands.lock().expect("engine command sender").is_some();
        let alive = self
            .shared
            .thread
            .lock()
            .expect("engine thread slot")
            .as_ref()
            .is_some_and(|t| !t.is_finished());
        accepting && alive
    }

    /// Stop the engine: requests in flight end with `Event::Error(ShutDown)`, new ones are refused. Waits
    /// for the engine thread to exit. Idempotent.
    pub fn shutdown(&self) {
        if let Some(tx) = self.shared.commands.lock().expect("engine command sender").take() {
            let _ = tx.send(Command::Shutdown);
        }
        let thread = self.shared.thread.lock().expect("engine thread slot").take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

/// The output of one request. Dropping it cancels the request; the engine frees its KV blocks on its next
/// step.
#[derive(Debug)]
pub struct RequestStream {
    rx: UnboundedReceiver<Event>,
    id: u64,
}

impl RequestStream {
    /// The engine's id for this request (for logs).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next event; `None` after the final `Finished` or `Error`.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event, blocking the current thread (for CLI and tests outside async code).
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }
}

impl futures_core::Stream for RequestStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
