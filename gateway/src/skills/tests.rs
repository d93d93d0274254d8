use super::*;

fn custom(name: &str, trigger: TriggerKind, patterns: &[&str], reply: &str, priority: i32) -> CustomSkill {
    CustomSkill {
        name: name.to_owned(),
        description: String::new(),
        trigger,
        patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
        reply: reply.to_owned(),
        priority,
    }
}

fn registry(custom: Vec<CustomSkill>) -> SkillRegistry {
    SkillRegistry::from_config(&SkillsConfig {
        custom,
        escalate_to: "boss".to_owned(),
        ..SkillsConfig::default()
    })
    .unwrap()
}

fn found(registry: &SkillRegistry, text: &str) -> Option<String> {
    registry.find(text).map(|m| m.skill.name().to_owned())
}

#[test]
fn commands_beat_keywords_beat_regexes_and_priority_breaks_ties() {
    let registry = registry(vec![
        custom("weather-regex", TriggerKind::Regex, &["(?i)weather"], "regex", 0),
        custom("weather-word", TriggerKind::Keyword, &["Weather"], "word", 0),
        custom("weather-cmd", TriggerKind::Command, &["weather"], "cmd {args}", 0),
        custom("low", TriggerKind::Regex, &["tie"], "low", 1),
        custom("high", TriggerKind::Regex, &["tie"], "high", 5),
    ]);
    assert_eq!(
        found(&registry, "weather").as_deref(),
        Some("weather-word"),
        "an exact keyword beats a regex"
    );
    assert_eq!(
        found(&registry, "what is the weather like").as_deref(),
        Some("weather-regex")
    );
    assert_eq!(found(&registry, "/weather Hangzhou").as_deref(), Some("weather-cmd"));
    let matched = registry.find("/WEATHER  Hangzhou ").unwrap();
    assert_eq!(matched.args, "Hangzhou");
    assert_eq!(
        found(&registry, "a tie here").as_deref(),
        Some("high"),
        "ties go to the higher priority"
    );
    assert_eq!(
        found(&registry, "/weatherman").as_deref(),
        Some("weather-regex"),
        "a command is a whole word"
    );
    assert_eq!(found(&registry, "tell me a story"), None, "unmatched goes to the model");
    assert_eq!(found(&registry, "/new").as_deref(), Some("new"));
    assert_eq!(found(&registry, "Help").as_deref(), Some("help"));
    assert_eq!(found(&registry, "I want a human please").as_deref(), Some("escalate"));
    assert_eq!(found(&registry, "请帮我转人工").as_deref(), Some("escalate"));
}

#[test]
fn bad_config_is_an_error_naming_the_skill() {
    let bad = SkillsConfig {
        custom: vec![custom("broken", TriggerKind::Regex, &["("], "x", 0)],
        ..SkillsConfig::default()
    };
    let err = SkillRegistry::from_config(&bad).err().unwrap().to_string();
    assert!(err.contains("broken"), "{err}");
    let dup = SkillsConfig {
        custom: vec![custom("help", TriggerKind::Keyword, &["x"], "x", 0)],
        ..SkillsConfig::default()
    };
    assert!(SkillRegistry::from_config(&dup).is_err());
    let off = SkillRegistry::from_config(&SkillsConfig {
        enabled: false,
        ..SkillsConfig::default()
    })
    .unwrap();
    assert_eq!(found(&off, "/help"), None);
}
