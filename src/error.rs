//! The configuration error.

use std::error::Error as StdError;
use std::fmt;

/// What kind of problem a [`ConfigError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The configuration file could not be read.
    Io,
    /// The JSON is malformed, has a value of the wrong type, or an unknown
    /// field.
    Syntax,
    /// A value fails a check (zero window, bad header name, ...).
    Invalid,
    /// A name refers to nothing: an unknown tier or plan.
    Unknown,
}

/// A configuration was refused: says where (a dotted path into the
/// configuration, as in the JSON file), what is wrong, and what kind of
/// problem it is; the underlying error (I/O, JSON) is kept as the
/// [`source`](StdError::source).
///
/// ```
/// use tierlimit::{Config, ConfigErrorKind};
///
/// let err = Config::from_json(r#"{"tiers": {"a": {"limits": [
///     {"name": "m", "capacity": 5, "window": "0s"}]}}, "default_tier": "a"}"#)
///     .and_then(|c| c.build())
///     .unwrap_err();
/// assert_eq!(err.to_string(), "tiers.a.limits[0].window: must be greater than zero");
/// assert_eq!(err.kind(), ConfigErrorKind::Invalid);
/// assert_eq!(err.path(), "tiers.a.limits[0].window");
/// ```
///
/// `Display` is the path and the message; the underlying error, when there
/// is one, is only the `source()` (print the chain to see both, as
/// `anyhow` and `eyre` do). A JSON syntax or type error has no source: the
/// message is serde's description with its line and column.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(path, message))]
pub struct ConfigError {
    kind: ConfigErrorKind,
    path: String,
    message: String,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync>>,
}

fn render(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

impl ConfigError {
    pub(crate) fn new(
        kind: ConfigErrorKind,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            kind,
            path: path.into(),
            message: message.into(),
            source: None,
        }
    }

    /// An [`Invalid`](ConfigErrorKind::Invalid) value at `path`.
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ConfigErrorKind::Invalid, path, message)
    }

    /// An [`Unknown`](ConfigErrorKind::Unknown) name at `path`.
    pub(crate) fn unknown(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ConfigErrorKind::Unknown, path, message)
    }

    pub(crate) fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
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

/// An error and its sources, `: `-separated, for logs and messages that
/// must say the cause (`Display` of an error says only its own part).
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// At most the first 64 characters of `s` (then `…`): what an error
/// message quotes of a name it was given, so that no message echoes
/// unbounded input.
pub(crate) fn quoted(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => std::borrow::Cow::Borrowed(s),
        Some((at, _)) => std::borrow::Cow::Owned(format!("{}…", &s[..at])),
    }
}
