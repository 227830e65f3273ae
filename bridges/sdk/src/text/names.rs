//! How people relayed from one platform are named on another, so that nobody can pass for an
//! agent (SPEC section 9): a person's name always carries their platform ("Alice (Discord)"),
//! and a name that reads like an agent's is marked as not being one.

/// The name shown for a person relayed from `platform` (its label, such as `Discord`).
///
/// `agents` are the configured agents as (id, display name). A person's name that equals one of
/// them, ignoring case, surrounding whitespace, anything before the first letter or digit (an
/// emoji avatar such as "🤖 ") and a trailing Telegram handle (" (@alice)"), is marked
/// `(Discord, not an agent)` instead of `(Discord)`.
pub fn person_name<'a>(
    name: &str,
    platform: &str,
    agents: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> String {
    let name = name.trim();
    if is_like_an_agent(name, agents) {
        format!("{name} ({platform}, not an agent)")
    } else {
        format!("{name} ({platform})")
    }
}

/// Whether a person's `name` reads like one of the `agents` (id, display name): equal ignoring
/// case, surrounding whitespace, anything before the first letter or digit (an emoji avatar) and
/// a trailing Telegram handle. Platforms that must shape the name themselves (Discord's username
/// rules) mark it with this.
pub fn is_like_an_agent<'a>(
    name: &str,
    agents: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> bool {
    let key = comparable(name);
    !key.is_empty()
        && agents.into_iter().any(|(id, display)| {
            comparable(id) == key || display.is_some_and(|display| comparable(display) == key)
        })
}

/// The part of a name that identifies it: lowercase, from the first letter or digit on, without
/// a trailing `(@handle)`.
fn comparable(name: &str) -> String {
    let name = name.trim();
    let name = match name.rfind(" (@") {
        Some(at) if name.ends_with(')') => &name[..at],
        _ => name,
    };
    name.trim_start_matches(|c: char| !c.is_alphanumeric())
        .trim()
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENTS: [(&str, Option<&str>); 2] = [
        ("backend-architect", Some("Backend Architect")),
        ("helper", None),
    ];

    #[test]
    fn people_carry_their_platform() {
        assert_eq!(person_name("Alice", "Discord", AGENTS), "Alice (Discord)");
        assert_eq!(
            person_name(" Alice Liddell (@alice) ", "Telegram", AGENTS),
            "Alice Liddell (@alice) (Telegram)"
        );
    }

    #[test]
    fn a_name_like_an_agents_is_marked() {
        for name in [
            "🤖 Backend Architect",
            "backend architect",
            "  BACKEND ARCHITECT ",
            "Backend-Architect",
            "🤖Helper",
            "Backend Architect (@ba)",
        ] {
            assert_eq!(
                person_name(name, "Discord", AGENTS),
                format!("{} (Discord, not an agent)", name.trim()),
                "{name}"
            );
        }
        assert_eq!(
            person_name("Backend Architecture", "Discord", AGENTS),
            "Backend Architecture (Discord)"
        );
        assert_eq!(person_name("🤖", "Discord", AGENTS), "🤖 (Discord)");
    }
}
