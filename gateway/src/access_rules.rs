//! Who may talk to the assistant over IM, and with what role: the `[access]` section.
//!
//! Rules are per platform (`[access.dingtalk]`, `[access.feishu]`, `[access.wecom]`; a platform without a
//! section lets everyone in as a user). Each platform lists users, departments and groups to allow and to
//! deny, and the users and departments that are admins:
//!
//! - a deny entry always wins (a denied admin is refused too);
//! - with no allow entry at all, everyone not denied is let in; with any, a sender must match one of them
//!   (their user id, one of their departments, or the group the message came from); admins always match;
//! - admins get [`Role::Admin`], everyone else let in [`Role::User`].
//!
//! The role then decides which skills and models a sender may use: `admin_skills` and `admin_models` name
//! those reserved to admins (everything else is open to users). A refused sender gets
//! [`AccessConfig::refusal`] as their answer, and the refusal is audited like any answer.
//!
//! Departments come from the operator's directory (`[access] directory`, a TOML file mapping each
//! platform's user ids to their department names), since the platforms' messages carry no department; a
//! user missing from it has none.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A sender's role once let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    /// The role's name in config, audit rows and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }
}

/// Why a sender was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A deny entry matched: which list and which entry.
    Denied { list: DenyList, entry: String },
    /// Allow entries exist and none matched.
    NotAllowed,
    /// The sender may talk to the assistant, but not use this skill or model with their role.
    Reserved { what: Reserved, name: String },
}

/// The deny list that refused a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyList {
    Users,
    Departments,
    Groups,
}

/// What is reserved to admins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Skill,
    Model,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Denied { list, entry } => {
                let list = match list {
                    DenyList::Users => "deny_users",
                    DenyList::Departments => "deny_departments",
                    DenyList::Groups => "deny_groups",
                };
                write!(f, "denied by {list} ({entry})")
            }
            Self::NotAllowed => f.write_str("not in any allow list"),
            Self::Reserved { what, name } => {
                let what = match what {
                    Reserved::Skill => "skill",
                    Reserved::Model => "model",
                };
                write!(f, "the {what} {name:?} is reserved to admins")
            }
        }
    }
}

/// Who sent a message, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    /// The platform (`dingtalk`, `feishu`, `wecom`).
    pub platform: &'a str,
    /// The platform's user id (DingTalk staffId, Feishu open_id or user_id, WeCom userid).
    pub user: &'a str,
    /// The group the message came from; `None` in a 1:1 chat.
    pub group: Option<&'a str>,
}

/// Invalid `[access]` settings.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("access.{key}: {problem}")]
    Invalid { key: String, problem: String },
    #[error("access.directory: cannot read {path}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("access.directory: {path} is not a valid directory file: {message}")]
    DirectoryFormat { path: PathBuf, message: String },
}

/// `[access]`: the IM access rules of every platform.
/// Unknown keys holding a table are taken as platforms and refused by [`AccessConfig::validate`]; serde
/// cannot deny unknown fields beside a flattened map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessConfig {
    /// The answer a refused sender gets.
    pub refusal: String,
    /// The answer when a skill or model is reserved to admins.
    pub reserved: String,
    /// Skills only admins may use (by name, e.g. `status`).
    pub admin_skills: Vec<String>,
    /// Models only admins may use (by catalogue name).
    pub admin_models: Vec<String>,
    /// A TOML file mapping user ids to departments: `[dingtalk] "staff01" = ["Sales", "Beijing"]`.
    pub directory: Option<PathBuf>,
    /// The rules per platform.
    #[serde(flatten)]
    pub platforms: BTreeMap<String, PlatformAccess>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            refusal: "Sorry, you are not allowed to use this assistant. Please ask your IT team for access.".to_owned(),
            reserved: "Sorry, that is reserved to administrators.".to_owned(),
            admin_skills: Vec::new(),
            admin_models: Vec::new(),
            directory: None,
            platforms: BTreeMap::new(),
        }
    }
}

/// `[access.PLATFORM]`: one platform's allow and deny lists and its admins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformAccess {
    pub allow_users: Vec<String>,
    pub allow_departments: Vec<String>,
    pub allow_groups: Vec<String>,
    pub deny_users: Vec<String>,
    pub deny_departments: Vec<String>,
    pub deny_groups: Vec<String>,
    /// Users who are admins.
    pub admins: Vec<String>,
    /// Departments whose members are admins.
    pub admin_departments: Vec<String>,
}

/// The platforms `[access.NAME]` may name.
pub const PLATFORMS: [&str; 3] = ["dingtalk", "feishu", "wecom"];

impl AccessConfig {
    /// Refuse unknown platforms and empty entries, naming the key.
    pub fn validate(&self) -> Result<(), AccessError> {
        for (platform, rules) in &self.platforms {
            if !PLATFORMS.contains(&platform.as_str()) {
                return Err(AccessError::Invalid {
                    key: platform.clone(),
                    problem: format!("unknown platform (expected one of {})", PLATFORMS.join(", ")),
                });
            }
            for (name, list) in rules.lists() {
                if let Some(i) = list.iter().position(|entry| entry.trim().is_empty()) {
                    return Err(AccessError::Invalid {
                        key: format!("{platform}.{name}[{i}]"),
                        problem: "must not be empty".to_owned(),
                    });
                }
            }
        }
        for (name, list) in [
            ("admin_skills", &self.admin_skills),
            ("admin_models", &self.admin_models),
        ] {
            if let Some(i) = list.iter().position(|entry| entry.trim().is_empty()) {
                return Err(AccessError::Invalid {
                    key: format!("{name}[{i}]"),
                    problem: "must not be empty".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The rules, with the directory read (a missing or malformed directory file is an error).
    pub fn rules(&self) -> Result<AccessRules, AccessError> {
        self.validate()?;
        let directory = match &self.directory {
            Some(path) => Directory::read(path)?,
            None => Directory::default(),
        };
        Ok(AccessRules {
            config: self.clone(),
            directory,
        })
    }
}

impl PlatformAccess {
    fn lists(&self) -> [(&'static str, &Vec<String>); 8] {
        [
            ("allow_users", &self.allow_users),
            ("allow_departments", &self.allow_departments),
            ("allow_groups", &self.allow_groups),
            ("deny_users", &self.deny_users),
            ("deny_departments", &self.deny_departments),
            ("deny_groups", &self.deny_groups),
            ("admins", &self.admins),
            ("admin_departments", &self.admin_departments),
        ]
    }

    fn has_allow_entries(&self) -> bool {
        !(self.allow_users.is_empty() && self.allow_departments.is_empty() && self.allow_groups.is_empty())
    }
}

/// The operator's directory: each platform's user ids and their departments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directory {
    departments: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

/// The most bytes a directory file may have.
const MAX_DIRECTORY_BYTES: u64 = 64 << 20;

impl Directory {
    /// Read a directory file: one table per platform, mapping user ids to lists of department names.
    pub fn read(path: &Path) -> Result<Self, AccessError> {
        let io = |source| AccessError::Directory {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_DIRECTORY_BYTES {
            return Err(AccessError::DirectoryFormat {
                path: path.to_owned(),
                message: format!("{len} bytes, more than the {MAX_DIRECTORY_BYTES} allowed"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text).map_err(|message| AccessError::DirectoryFormat {
            path: path.to_owned(),
            message,
        })
    }

    /// Parse a directory from TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let departments: BTreeMap<String, BTreeMap<String, Vec<String>>> =
            toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(platform) = departments.keys().find(|p| !PLATFORMS.contains(&p.as_str())) {
            return Err(format!(
                "unknown platform [{platform}] (expected one of {})",
                PLATFORMS.join(", ")
            ));
        }
        Ok(Self { departments })
    }

    /// The departments of `user` on `platform` (none when the directory does not list them).
    pub fn departments(&self, platform: &str, user: &str) -> &[String] {
        self.departments
            .get(platform)
            .and_then(|users| users.get(user))
            .map_or(&[], Vec::as_slice)
    }
}

/// The access rules in force: [`AccessConfig`] with its directory read.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    config: AccessConfig,
    directory: Directory,
}

impl AccessRules {
    /// Let `sender` in with a role, or refuse them, per the module's rules.
    pub fn decide(&self, sender: &Sender<'_>) -> Result<Role, Refusal> {
        let Some(rules) = self.config.platforms.get(sender.platform) else {
            return Ok(Role::User);
        };
        let departments: HashSet<&str> = self
            .directory
            .departments(sender.platform, sender.user)
            .iter()
            .map(String::as_str)
            .collect();
        let denied = |list: DenyList, entries: &[String], value: &dyn Fn(&str) -> bool| {
            entries.iter().find(|e| value(e)).map(|entry| Refusal::Denied {
                list,
                entry: entry.clone(),
            })
        };
        let is_user = |e: &str| e == sender.user;
        let in_department = |e: &str| departments.contains(e);
        let in_group = |e: &str| sender.group == Some(e);
        if let Some(refusal) = denied(DenyList::Users, &rules.deny_users, &is_user)
            .or_else(|| denied(DenyList::Departments, &rules.deny_departments, &in_department))
            .or_else(|| denied(DenyList::Groups, &rules.deny_groups, &in_group))
        {
            return Err(refusal);
        }
        let admin = rules.admins.iter().any(|e| is_user(e)) || rules.admin_departments.iter().any(|e| in_department(e));
        if admin {
            return Ok(Role::Admin);
        }
        let allowed = !rules.has_allow_entries()
            || rules.allow_users.iter().any(|e| is_user(e))
            || rules.allow_departments.iter().any(|e| in_department(e))
            || rules.allow_groups.iter().any(|e| in_group(e));
        if allowed {
            Ok(Role::User)
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    /// The departments the directory lists for `sender`.
    pub fn departments(&self, sender: &Sender<'_>) -> &[String] {
        self.directory.departments(sender.platform, sender.user)
    }

    /// Whether `role` may use the skill `name`.
    pub fn may_use_skill(&self, role: Role, name: &str) -> Result<(), Refusal> {
        reserved(role, Reserved::Skill, name, &self.config.admin_skills)
    }

    /// Whether `role` may use the model `name`.
    pub fn may_use_model(&self, role: Role, name: &str) -> Result<(), Refusal> {
        reserved(role, Reserved::Model, name, &self.config.admin_models)
    }

    /// The answer a sender refused with `refusal` gets.
    pub fn answer(&self, refusal: &Refusal) -> &str {
        match refusal {
            Refusal::Reserved { .. } => &self.config.reserved,
            Refusal::Denied { .. } | Refusal::NotAllowed => &self.config.refusal,
        }
    }
}

fn reserved(role: Role, what: Reserved, name: &str, admin_only: &[String]) -> Result<(), Refusal> {
    if role == Role::Admin || !admin_only.iter().any(|n| n == name) {
        Ok(())
    } else {
        Err(Refusal::Reserved {
            what,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str, directory: &str) -> AccessRules {
        let config: AccessConfig = toml::from_str(toml_text).unwrap();
        AccessRules {
            config,
            directory: Directory::parse(directory).unwrap(),
        }
    }

    fn sender<'a>(user: &'a str, group: Option<&'a str>) -> Sender<'a> {
        Sender {
            platform: "dingtalk",
            user,
            group,
        }
    }

    #[test]
    fn no_rules_let_everyone_in_as_a_user() {
        let rules = rules("", "");
        assert_eq!(rules.decide(&sender("anyone", None)), Ok(Role::User));
        assert_eq!(rules.may_use_skill(Role::User, "status"), Ok(()));
    }

    #[test]
    fn deny_wins_over_allow_and_admin() {
        let rules = rules(
            r#"
            [dingtalk]
            allow_users = ["amy", "bob"]
            deny_users = ["bob"]
            deny_departments = ["Contractors"]
            admins = ["cat"]
            "#,
            r#"[dingtalk]
            cat = ["Contractors"]"#,
        );
        assert_eq!(rules.decide(&sender("amy", None)), Ok(Role::User));
        assert_eq!(
            rules.decide(&sender("bob", None)),
            Err(Refusal::Denied {
                list: DenyList::Users,
                entry: "bob".to_owned()
            })
        );
        assert_eq!(
            rules.decide(&sender("cat", None)),
            Err(Refusal::Denied {
                list: DenyList::Departments,
                entry: "Contractors".to_owned()
            })
        );
    }

    #[test]
    fn allow_lists_match_users_departments_or_groups_and_admins_always() {
        let rules = rules(
            r#"
            [dingtalk]
            allow_departments = ["Sales"]
            allow_groups = ["cidSupport"]
            deny_groups = ["cidPublic"]
            admins = ["root"]
            admin_departments = ["IT"]
            [feishu]
            deny_users = ["amy"]
            "#,
            r#"
            [dingtalk]
            amy = ["Sales", "Beijing"]
            ivan = ["IT"]
            "#,
        );
        assert_eq!(rules.decide(&sender("amy", None)), Ok(Role::User));
        assert_eq!(rules.decide(&sender("zed", None)), Err(Refusal::NotAllowed));
        assert_eq!(rules.decide(&sender("zed", Some("cidSupport"))), Ok(Role::User));
        assert_eq!(rules.decide(&sender("root", None)), Ok(Role::Admin));
        assert_eq!(rules.decide(&sender("ivan", None)), Ok(Role::Admin));
        assert!(matches!(
            rules.decide(&sender("amy", Some("cidPublic"))),
            Err(Refusal::Denied {
                list: DenyList::Groups,
                ..
            })
        ));
        // Rules are per platform: amy is denied on Feishu only, and WeCom has no rules.
        let feishu = Sender {
            platform: "feishu",
            ..sender("amy", None)
        };
        assert!(rules.decide(&feishu).is_err());
        let wecom = Sender {
            platform: "wecom",
            ..sender("zed", None)
        };
        assert_eq!(rules.decide(&wecom), Ok(Role::User));
    }

    #[test]
    fn admin_skills_and_models_are_reserved() {
        let rules = rules(
            r#"
            admin_skills = ["status"]
            admin_models = ["big"]
            "#,
            "",
        );
        let refused = rules.may_use_skill(Role::User, "status").unwrap_err();
        assert_eq!(refused.to_string(), "the skill \"status\" is reserved to admins");
        assert_eq!(rules.answer(&refused), AccessConfig::default().reserved);
        assert_eq!(rules.may_use_skill(Role::Admin, "status"), Ok(()));
        assert_eq!(rules.may_use_skill(Role::User, "help"), Ok(()));
        assert!(rules.may_use_model(Role::User, "big").is_err());
        assert_eq!(rules.may_use_model(Role::User, "small"), Ok(()));
        assert_eq!(rules.answer(&Refusal::NotAllowed), AccessConfig::default().refusal);
    }

    #[test]
    fn careless_configs_are_refused_naming_the_key() {
        let config: AccessConfig = toml::from_str("[slack]\nallow_users = [\"x\"]\n").unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("access.slack") && err.contains("unknown platform"),
            "{err}"
        );
        let config: AccessConfig = toml::from_str("[wecom]\nadmins = [\"ok\", \" \"]\n").unwrap();
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "access.wecom.admins[1]: must not be empty"
        );
        assert!(toml::from_str::<AccessConfig>("[dingtalk]\nallow = [\"x\"]\n").is_err());
        assert!(Directory::parse("[dingtalk]\namy = \"Sales\"\n").is_err());
        assert!(Directory::parse("[icq]\namy = [\"Sales\"]\n")
            .unwrap_err()
            .contains("unknown platform"));
        let missing = AccessConfig {
            directory: Some("/nonexistent/hearth-directory.toml".into()),
            ..AccessConfig::default()
        };
        let err = missing.rules().unwrap_err().to_string();
        assert!(
            err.starts_with("access.directory: cannot read /nonexistent/hearth-directory.toml"),
            "{err}"
        );
    }
}
