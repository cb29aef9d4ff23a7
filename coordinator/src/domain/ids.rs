//! The coordinator's ids, as types: an agent's name, an execution's id, and
//! the id of one attempt of one child (what the agent calls its dispatch key;
//! the protocol's `DispatchId`, same fields).
//!
//! Each id is a string on the wire and in the store; in memory it is its own
//! type, so that an agent name cannot be passed where an execution id is
//! meant. `AgentId` and `ExecutionId` borrow as `str`, so maps keyed by them
//! are looked up with the `&str` a request carries.

use std::borrow::Borrow;
use std::fmt;

/// An agent's name: how it registered, and the key of its records.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(String);

/// An execution's id (a UUID, or the id a client chose).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutionId(String);

macro_rules! string_id {
    ($t:ident) => {
        impl $t {
            pub fn new(id: impl Into<String>) -> $t {
                $t(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $t {
            fn from(id: &str) -> $t {
                $t(id.to_string())
            }
        }

        impl From<String> for $t {
            fn from(id: String) -> $t {
                $t(id)
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

string_id!(AgentId);
string_id!(ExecutionId);

/// One attempt of one child: the idempotency key of its dispatch, and the
/// fence of every report about it. Its four fields are those of the
/// protocol's `DispatchId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DispatchId {
    pub execution_id: ExecutionId,
    /// Path of the task in the parent package that produced the child ("fan").
    pub task_path: String,
    /// Index of the item in a foreach (0 for a plain child task).
    pub item_index: u32,
    /// Attempt number, starting at 1. A new attempt gets a new number.
    pub attempt: u32,
}

/// `execution/task[index]#attempt`, as the protocol's `DispatchId` prints.
impl fmt::Display for DispatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}[{}]#{}",
            self.execution_id, self.task_path, self.item_index, self.attempt
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ids_are_looked_up_by_the_str_a_request_carries() {
        let mut agents = BTreeMap::new();
        agents.insert(AgentId::new("a1"), 1);
        assert_eq!(agents.get("a1"), Some(&1));
        assert_eq!(AgentId::from("a1").to_string(), "a1");
        let id = ExecutionId::from("e1");
        assert!(id == *"e1");
    }

    #[test]
    fn a_dispatch_id_prints_as_the_protocol_form_does() {
        let id = DispatchId {
            execution_id: ExecutionId::new("e1"),
            task_path: "fan".into(),
            item_index: 3,
            attempt: 2,
        };
        assert_eq!(id.to_string(), "e1/fan[3]#2");
    }
}
