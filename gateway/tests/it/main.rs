//! Integration tests of the gateway against the real engine and the real SmolLM2-135M model.
//!
//! Most tests drive the router with `tower::ServiceExt::oneshot` (no socket); `disconnect`, `shutdown` and `tls`
//! run a real server on `127.0.0.1:0`. The engine is loaded once per binary (see `support`), except where a
//! test needs its own limits or stops its engine.

mod admin_audit;
mod chat;
mod completions;
mod console;
mod dingtalk;
mod dingtalk_conversations;
mod dingtalk_tenant;
mod disconnect;
mod doctor;
mod errors;
mod feishu;
mod feishu_faults;
mod feishu_scopes;
mod http_skills;
mod kb;
mod nodes;
mod overload;
mod presets;
mod routes;
mod security;
mod shutdown;
mod store;
mod store_support;
mod support;
mod switch;
mod tls;
mod wecom;
mod wecom_faults;
