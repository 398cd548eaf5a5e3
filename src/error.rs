//! The configuration error.

use std::fmt;

/// A configuration was refused: says where (a dotted path into the
/// configuration, as in the JSON file) and what is wrong.
///
/// ```
/// let err = tierlimit::Config::from_json(r#"{"tiers": {"a": {"limits": [
///     {"name": "m", "capacity": 5, "window": "0s"}]}}, "default_tier": "a"}"#)
///     .unwrap_err();
/// assert_eq!(err.to_string(), "tiers.a.limits[0].window: must be greater than zero");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Where the problem is, e.g. `tiers.premium.limits[1].window`; empty for
    /// the document as a whole.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, e.g. `must be greater than zero`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
