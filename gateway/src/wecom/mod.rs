//! The WeCom (企业微信) intelligent-robot adapter of the IM core, on either transport: the WebSocket long
//! connection (`bot_id` and `secret`), or URL mode (encrypted callbacks to `/im/wecom/callback` on this
//! server, `token` and `encoding_aes_key`). Answers are WeCom streams (full snapshots, coalesced under the
//! core's budget, at least one a minute, finished before the message's deadline); later text and
//! failures go out with `aibot_send_msg` or the message's `response_url`.
//!
//! Everything platform-independent (the outbox and its dedupe on `msgid`, routing, skills, sessions, the
//! model, pacing and roll-over, the fallback, audit, retention) is the core's (`crate::im`); this module
//! is what only WeCom has:
//! - `adapter`: [`WeCom`], the [`Adapter`](crate::im::adapter::Adapter): the stream table both transports
//!   share, the deadline, [`WeComError`].
//! - `longconn`: the long connection (subscribe, heartbeats, reconnects, takeovers, acknowledged requests).
//! - `callback`: URL mode (verification, passive replies, stream refreshes).
//! - `config`: [`WeComConfig`], the `[wecom]` section; `message`: the inbound body and the frames.
//!
//! The wire reference is `shared/protocols/wecom.md`; `hearth emulate wecom` runs a local platform. The
//! callback crypto is `emulator::wecom::crypto` (the gateway links the emulator crate anyway, for
//! `hearth emulate`).

pub mod adapter;
pub mod callback;
pub mod config;
mod longconn;
pub mod message;
mod streams;

use crate::im::connector::ImConnector;

pub use adapter::{WeCom, WeComError};
pub use callback::Callback;
pub use config::{ConfigError, Mode, WeComConfig};
pub use message::WeComMessage;

/// A running WeCom connector: the IM core driving the [`WeCom`] adapter.
pub type WeComConnector = ImConnector<WeCom>;

/// Why the WeCom connector could not start.
pub type StartError = crate::im::start::StartError<WeComError>;
