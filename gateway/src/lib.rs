//! The gateway: hearth's OpenAI-compatible HTTP API in front of the [`engine`], and the model-file lookup
//! the `hearth` binary uses.
//!
//! Layout, from the wire inwards:
//! - [`openai`]: the wire DTOs (requests as clients send them, responses in OpenAI's exact shapes).
//! - [`error`]: [`ApiError`], the one error type every route returns, in OpenAI's error shape, with the
//!   single `EngineError` → HTTP status mapping; and [`ApiJson`], the JSON extractor whose rejections use it.
//! - [`validation`]: DTOs become `Valid*` requests; nothing downstream takes an unvalidated DTO.
//! - [`access`]: the `Host` check (DNS rebinding), the console's credential, same-origin JSON for its calls.
//! - [`connections`]: the accept loop: connection cap, header-read and idle timeouts, TLS handshakes.
//! - [`tls`]: the listener's certificate and key (rustls), and reading a certificate's validity.
//! - [`admin`]: the admin API (bearer token): list models, switch the active one, reload skills, read the
//!   admin audit log ([`admin_log`]: who changed what, in SQLite).
//! - [`completions`]: the chat and legacy completion handlers, streaming (SSE) and not.
//! - [`generation`]: the one generation path (prompt bounds, tokenizing on the blocking pool, submit,
//!   collect) the completion handlers and the IM answers share.
//! - [`routing`]: the loaded models, which one takes a request (fallback on a slow queue), switching.
//! - [`console`]: the web console at `/` (chat, IM preview, status, admin), its assets embedded.
//! - [`server`]: [`app`] builds the router from an [`AppState`]; [`serve`] runs it with graceful shutdown.
//! - [`state`]: [`AppState`] and [`GatewayConfig`], below every handler that uses them; [`guards`]: the
//!   middleware applying [`access`]'s rules; [`secret`]: [`secret::Secret`].
//! - [`model_path`]: which GGUF to load (a path or a preset's name; the default preset when `--model` is
//!   absent), and fetching a preset's file.
//! - [`presets`]: the named models hearth can fetch (`hearth pull --list`).
//! - [`config`]: the TOML configuration file with its `HEARTH_<SECTION>__<KEY>` environment overrides.
//! - [`doctor`]: `hearth doctor`'s checks of the machine, the model files and the configuration.
//! - [`metrics`]: Prometheus metrics recorded where things happen, rendered by `GET /metrics`.
//! - [`im`]: the IM core every chat platform shares (outbox, routing, card streaming, fallback, retention),
//!   driving one adapter per platform: [`dingtalk`] and [`feishu`].
//! - [`store`], [`db`], [`sessions`], [`skills`], [`audit`], [`platform`]: what the IM core keeps and
//!   uses: the store (SQLite by default, or a PostgreSQL that several nodes share), the SQLite opener,
//!   conversation history, answers without the model, the audit log with its export, and each
//!   connector's health.
//! - `fuzzing` (hidden): what the fuzz targets in `fuzz/` run on arbitrary bytes (Stream frames, the card
//!   splitter), and the tests that replay their committed inputs.
//!
//! The binary (`src/main.rs` with its `cli` and `commands` modules) parses arguments, loads the engine and
//! runs `serve`, `generate` or `chat`.
//!
//! **Architecture invariant:** the gateway never names a candle type and never touches tensors; it talks
//! to the engine through `EngineHandle`, `GenerateRequest` and the `Event` stream only.
#![forbid(unsafe_code)]

pub mod access;
pub mod access_rules;
pub mod admin;
pub mod admin_log;
pub mod audit;
pub mod completions;
pub mod config;
pub mod connections;
pub mod console;
pub mod db;
pub mod dingtalk;
pub mod doctor;
pub mod error;
pub mod feishu;
#[doc(hidden)]
pub mod fuzzing;
pub mod generation;
pub mod guards;
pub mod im;
pub mod kb;
pub mod metrics;
pub mod model_path;
pub mod openai;
pub mod platform;
pub mod presets;
pub mod routing;
pub mod secret;
pub mod server;
pub mod sessions;
pub mod skills;
pub mod state;
pub mod store;
pub mod tls;
pub mod tools;
pub mod validation;
pub mod wecom;

pub use connections::ConnectionLimits;
pub use error::{ApiError, ApiJson, ErrorKind};
pub use server::{app, serve};
pub use state::{AppState, GatewayConfig};
