//! Typed ids. Each id is its own protobuf message (`drover.v1.FrameworkId`, …), so the
//! Rust type system keeps them apart on the wire and in code alike.

use std::fmt;

pub use crate::pb::{AgentId, ExecutorId, FrameworkId, OfferId, TaskId};

macro_rules! typed_id {
    ($t:ident) => {
        impl $t {
            /// Wraps an existing id string.
            pub fn new(value: impl Into<String>) -> Self {
                Self {
                    value: value.into(),
                }
            }

            /// A fresh random (UUID v4) id.
            pub fn random() -> Self {
                Self::new(uuid::Uuid::new_v4().to_string())
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.value
            }

            /// True when the id is empty (unset on the wire).
            pub fn is_empty(&self) -> bool {
                self.value.is_empty()
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.value)
            }
        }

        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }

        impl From<String> for $t {
            fn from(s: String) -> Self {
                Self::new(s)
            }
        }
    };
}

typed_id!(FrameworkId);
typed_id!(AgentId);
typed_id!(OfferId);
typed_id!(TaskId);
typed_id!(ExecutorId);

/// Longest id the master accepts; longer ids are refused as invalid input.
pub const MAX_ID_LEN: usize = 256;

/// Checks that a framework-chosen id is usable: non-empty, bounded, and free of
/// characters that would be unsafe in a sandbox path.
pub fn validate_id(kind: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{kind} id is empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!("{kind} id is longer than {MAX_ID_LEN} bytes"));
    }
    if value == "." || value == ".." {
        return Err(format!("{kind} id '{value}' is not allowed"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')))
    {
        return Err(format!(
            "{kind} id '{value}' contains '{c}'; allowed are letters, digits and - _ . : @"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_and_validate() {
        let t = TaskId::new("task-1");
        assert_eq!(t.to_string(), "task-1");
        assert!(validate_id("task", "task-1").is_ok());
        assert!(validate_id("task", "").is_err());
        assert!(validate_id("task", "..").is_err());
        assert!(validate_id("task", "a/b").is_err());
        assert!(validate_id("task", &"x".repeat(300)).is_err());
        assert_ne!(FrameworkId::random(), FrameworkId::random());
    }
}
