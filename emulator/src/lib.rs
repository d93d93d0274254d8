//! Local emulators of the IM platforms hearth talks to, speaking their real wire protocols on loopback.
//!
//! They are a product feature, not test doubles: `hearth emulate dingtalk` runs one for trying a connector
//! without a tenant, and the connector tests run against the same code. Each emulator also has a control
//! surface (simulated users, fault injection, read-back, an HTML page) that the real platform lacks.
//!
//! - [`dingtalk`]: DingTalk Stream mode, access tokens, AI cards, robot sends and sessionWebhooks, as
//!   described in `shared/protocols/dingtalk.md`.
//! - [`feishu`]: Feishu (Lark) endpoint discovery, the protobuf long connection, tenant tokens, IM messages
//!   and CardKit streaming cards, as described in `shared/protocols/feishu.md`.
//! - [`wecom`]: the WeCom intelligent robot, long connection and encrypted URL callback, as described in
//!   `shared/protocols/wecom.md`; its callback crypto is [`wecom::crypto`].
//!
//! Emulator-wide pieces, one of each for all three: `watched` (the state lock with a change counter),
//! `control` (the change feed, page and fault answers of the control API), `server` (listen, serve until
//! stopped), `ids` (clock and random ids), `fault` (fraction faults) and [`EmulatorError`].
//!
//! **Architecture invariant:** emulators know nothing of the engine or the gateway; they depend only on
//! the wire protocol.
#![forbid(unsafe_code)]

pub mod dingtalk;
pub mod feishu;
pub mod wecom;

pub use error::EmulatorError;

mod control;
mod error;
mod fault;
mod ids;
mod server;
mod watched;
