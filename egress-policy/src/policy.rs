//! The validated policy: the middle layer between the YAML a human wrote
//! (`acl`) and the compiled artifact (`table`). Every value in here has
//! already been checked; logic uses only these types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pattern::HostPattern;

/// What a rule does with a host outside its `allowed_domains`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Allow everything.
    Open,
    /// Allow everything, flag what is outside the list (`enforce_would_deny`).
    Report,
    /// Allow only the list.
    Enforce,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 3] = [Action::Open, Action::Report, Action::Enforce];

    /// The ACL spelling: `open`, `report` or `enforce`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::Report => "report",
            Action::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `action` (or `--disable-acl-policy-action` value) that is not `open`,
/// `report` or `enforce`; carries the text given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?}: expected open, report or enforce")]
pub struct UnknownAction(pub String);

impl FromStr for Action {
    type Err = UnknownAction;

    /// Exact lower-case names, as Smokescreen: `Enforce` is not an action.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

/// A set of actions, used for `--disable-acl-policy-action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ActionSet(u8);

impl ActionSet {
    /// Adds `action` to the set.
    pub fn insert(&mut self, action: Action) {
        self.0 |= Self::bit(action);
    }

    /// Whether `action` is in the set.
    pub fn contains(self, action: Action) -> bool {
        self.0 & Self::bit(action) != 0
    }

    /// Whether no action is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The actions in the set, in [`Action::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    fn bit(action: Action) -> u8 {
        1 << (action as u8)
    }
}

impl FromIterator<Action> for ActionSet {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        let mut set = ActionSet::default();
        for action in iter {
            set.insert(action);
        }
        set
    }
}

impl fmt::Display for ActionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Action::as_str).collect();
        if names.is_empty() { f.write_str("none") } else { f.write_str(&names.join(", ")) }
    }
}

/// One rule: a service's own, or the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The role. Non-empty and unique among services; empty for the default rule.
    pub name: String,
    /// The owning project (free text, carried into logs as Smokescreen does).
    pub project: String,
    /// What the rule does with a host outside its `allowed_domains`.
    pub action: Action,
    /// Hosts the rule allows; checked before the global lists (see
    /// [`crate::decision`] for the order).
    pub allowed_domains: Vec<HostPattern>,
}

/// A whole ACL, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The `services` rules, in file order; their names are unique.
    pub services: Vec<Rule>,
    /// The `default` rule, for roles without a rule of their own.
    pub default: Option<Rule>,
    /// `global_allow_list`: hosts allowed for every role, after its
    /// `allowed_domains` and the global deny list.
    pub global_allow_list: Vec<HostPattern>,
    /// `global_deny_list`: hosts denied for every role unless its own
    /// `allowed_domains` matched.
    pub global_deny_list: Vec<HostPattern>,
}

impl Policy {
    /// Every rule (services, then the default) that uses one of `disabled`.
    pub fn rules_using(&self, disabled: ActionSet) -> impl Iterator<Item = &Rule> {
        self.services.iter().chain(self.default.iter()).filter(move |rule| disabled.contains(rule.action))
    }

    /// Total number of host patterns in every list.
    pub fn pattern_count(&self) -> usize {
        self.services.iter().chain(self.default.iter()).map(|r| r.allowed_domains.len()).sum::<usize>()
            + self.global_allow_list.len()
            + self.global_deny_list.len()
    }
}
