//! What an execution asks of placement: a strategy, label constraints, a pin
//! list, slots per child and an in-flight cap. Parsed from the forms the CLI
//! and the control API use (`spread:zone`, `zone=eu`), validated, and stored
//! on the execution record (every field has a serde default, so records
//! written before these fields existed still load).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most label constraints one execution may give.
pub const MAX_REQUIRE: usize = 32;
/// Most agents one pin list may name.
pub const MAX_PIN: usize = 256;
/// Most slots one child may ask for.
pub const MAX_SLOTS_PER_CHILD: u32 = 1024;
/// Longest label key, label value or agent name accepted here.
pub const MAX_NAME_LEN: usize = 128;

/// How placement chooses among the agents a child may go to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Strategy {
    /// The agent with the smallest share of its (weighted) slots in use.
    #[default]
    LeastLoaded,
    /// Agents in name order, one after the other, from a cursor the caller keeps.
    RoundRobin,
    /// The children of one task spread evenly over the values of a label.
    Spread(String),
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::LeastLoaded => f.write_str("least-loaded"),
            Strategy::RoundRobin => f.write_str("round-robin"),
            Strategy::Spread(label) => write!(f, "spread:{label}"),
        }
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "least-loaded" | "" => Ok(Strategy::LeastLoaded),
            "round-robin" => Ok(Strategy::RoundRobin),
            other => match other.strip_prefix("spread:") {
                Some(label) if valid_name(label) => Ok(Strategy::Spread(label.to_string())),
                Some(_) => Err(format!(
                    "'{other}': spread needs a label name (1-{MAX_NAME_LEN} characters, no '=' or ','), e.g. spread:zone"
                )),
                None => Err(format!(
                    "placement '{other}' is not one of least-loaded, round-robin, spread:LABEL"
                )),
            },
        }
    }
}

impl TryFrom<String> for Strategy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Strategy> for String {
    fn from(s: Strategy) -> String {
        s.to_string()
    }
}

/// Placement and admission settings of one execution (later also of one
/// foreach task, from the package). Empty means: the coordinator's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementPolicy {
    /// `None`: the coordinator's default strategy (`--placement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Agents must carry every one of these labels with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub require: BTreeMap<String, String>,
    /// When not empty, only these agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pin: Vec<String>,
    /// Slots each child occupies on its agent; 0 means 1.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slots_per_child: u32,
    /// Most children of the execution dispatched or running at once; 0: no cap.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_in_flight: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl PlacementPolicy {
    /// Slots one child needs (at least 1).
    pub fn slots(&self) -> u32 {
        self.slots_per_child.max(1)
    }

    /// Checks the limits; the error names the field and the limit.
    pub fn validate(&self) -> Result<(), String> {
        if self.require.len() > MAX_REQUIRE {
            return Err(format!(
                "{} label constraints; the limit is {MAX_REQUIRE}",
                self.require.len()
            ));
        }
        for (k, v) in &self.require {
            if !valid_name(k) || v.is_empty() || v.len() > MAX_NAME_LEN {
                return Err(format!(
                    "label constraint '{k}={v}': key and value must be 1-{MAX_NAME_LEN} characters, the key without '=' or ','"
                ));
            }
        }
        if self.pin.len() > MAX_PIN {
            return Err(format!(
                "{} pinned agents; the limit is {MAX_PIN}",
                self.pin.len()
            ));
        }
        if let Some(bad) = self.pin.iter().find(|n| !valid_name(n)) {
            return Err(format!(
                "pinned agent name '{bad}' must be 1-{MAX_NAME_LEN} characters without '=' or ','"
            ));
        }
        if self.slots_per_child > MAX_SLOTS_PER_CHILD {
            return Err(format!(
                "slots per child {} is over the limit of {MAX_SLOTS_PER_CHILD}",
                self.slots_per_child
            ));
        }
        Ok(())
    }

    /// Whether an agent with these labels satisfies every constraint.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.require
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }

    /// The constraints as `k=v,k=v` (for reasons and listings).
    pub fn require_text(&self) -> String {
        self.require
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses `KEY=VALUE` label constraints (repeated `--require`), refusing a key
/// given twice with different values.
pub fn parse_require<S: AsRef<str>>(items: &[S]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in items {
        let item = item.as_ref();
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("label constraint '{item}' is not KEY=VALUE"));
        };
        let (k, v) = (k.trim(), v.trim());
        if !valid_name(k) || v.is_empty() || v.len() > MAX_NAME_LEN {
            return Err(format!(
                "label constraint '{item}': key and value must be 1-{MAX_NAME_LEN} characters"
            ));
        }
        if let Some(prev) = out.insert(k.to_string(), v.to_string())
            && prev != v
        {
            return Err(format!(
                "label '{k}' is required twice with different values ('{prev}' and '{v}'): no agent can match"
            ));
        }
    }
    Ok(out)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && !s.contains(['=', ',']) && !s.trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_and_print() {
        for s in ["least-loaded", "round-robin", "spread:zone"] {
            assert_eq!(s.parse::<Strategy>().unwrap().to_string(), s);
        }
        assert!("spread:".parse::<Strategy>().is_err());
        assert!(
            "random"
                .parse::<Strategy>()
                .unwrap_err()
                .contains("not one of")
        );
        let json = serde_json::to_string(&Strategy::Spread("zone".into())).unwrap();
        assert_eq!(json, "\"spread:zone\"");
    }

    #[test]
    fn require_parses_and_refuses_contradictions() {
        let r = parse_require(&["zone=eu", "disk = ssd"]).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r["disk"], "ssd");
        assert!(parse_require(&["zone"]).is_err());
        assert!(
            parse_require(&["zone=a", "zone=b"])
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse_require(&["zone=a", "zone=a"]).is_ok());
    }

    #[test]
    fn old_records_load_and_empty_policy_is_invisible() {
        let p: PlacementPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, PlacementPolicy::default());
        assert_eq!(p.slots(), 1);
        assert_eq!(serde_json::to_string(&p).unwrap(), "{}");
        let bad = PlacementPolicy {
            slots_per_child: MAX_SLOTS_PER_CHILD + 1,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
