//! [`ImLink`]: an IM connector as the console and the admin API see it.

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::platform::PlatformHealth;
use crate::skills::SkillSet;

/// An IM connector running in this process, as the console and the admin API see it.
#[derive(Clone)]
pub struct ImLink {
    /// Its connection and permission health.
    pub health: Arc<PlatformHealth>,
    /// Its audit log (questions and answers stored masked).
    pub audit: AuditLog,
    /// Its live skills, reloaded by `POST /admin/skills/reload`.
    pub skills: Arc<SkillSet>,
}
