//! Customer tiers and what they allow.

use std::fmt;
use std::str::FromStr;

/// A customer key's plan. Webhooks are "available to Basic tier and above" (seed page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Free,
    Basic,
    Pro,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Basic, Tier::Pro, Tier::Enterprise];

    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Basic => "basic",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }

    pub fn allows_webhooks(self) -> bool {
        self >= Tier::Basic
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not a tier name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier '{0}'; expected free, basic, pro or enterprise")]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTier(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_basic_and_above_may_use_webhooks() {
        assert!(!Tier::Free.allows_webhooks());
        assert!(Tier::Basic.allows_webhooks());
        assert!(Tier::Pro.allows_webhooks());
        assert!(Tier::Enterprise.allows_webhooks());
    }

    #[test]
    fn tiers_parse_from_their_names_only() {
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>(), Ok(t));
        }
        assert!("gold".parse::<Tier>().is_err());
        assert!("Basic".parse::<Tier>().is_err());
    }
}
