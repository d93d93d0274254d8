//! The IM core: what every chat platform shares.

pub mod link;
