//! Route rules: method set + path pattern → tier or exempt.
//!
//! Patterns are matched segment by segment against the request path:
//!
//! | pattern segment | matches |
//! | --- | --- |
//! | `reloads` | exactly that segment |
//! | `{id}` | any one segment |
//! | `*` | any one segment |
//! | `**` (last only) | the rest of the path, zero or more segments |
//!
//! Before matching, the request path is normalised so that spellings of one
//! resource cannot dodge a rule: empty segments (`//`, a trailing `/`) are
//! dropped, `.` and `..` segments are resolved, and percent-escapes are
//! decoded (an invalid escape is kept as written). The query string is
//! ignored. Matching is case-sensitive, like HTTP paths.
//!
//! # Other spellings never reach lighter rules
//!
//! The service behind the layer routes the path as it was sent, and most
//! routers (axum's among them) do not normalise it: `//health` or
//! `/%68ealth` goes to a wildcard route or the fallback, not to the
//! `/health` handler. So a path that is not in its canonical spelling (an
//! empty segment or a trailing `/`, a `.` or `..` segment, a
//! percent-escape) is checked twice: against the rule its normalised form
//! matches *and* against the rule its literal spelling matches (segments
//! as written, empty ones kept, nothing decoded; usually no rule, so the
//! default tier). It is exempt only when both rules are exempt, and
//! otherwise counted in both tiers. Re-spelling an exempt or lightly
//! limited path therefore never reaches any handler with less limiting
//! than its canonical path, whatever the router does with it; a canonical
//! path is checked once, as before.
//!
//! Patterns match the path the layer sees. Put the layer on the outermost
//! router: inside axum's `nest("/api", ..)` a layer sees the path with the
//! prefix stripped, so its patterns must be written without it, and a
//! fallback of the outer router is only limited by a layer on the outer
//! router. A layer placed after something that rewrites the path (such
//! as `tower-http`'s `NormalizePath`, which trims a trailing `/`) sees the
//! rewritten path: the spellings it made canonical are checked once.

use std::borrow::Cow;

use http::Method;

/// One segment of a compiled path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(String),
    One,
    Rest,
}

/// A compiled path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PathPattern {
    segs: Vec<Seg>,
}

impl PathPattern {
    /// Parses a pattern such as `/api/v1/{id}/items/**`.
    ///
    /// # Errors
    ///
    /// A message naming the problem: not starting with `/`, `**` not last,
    /// an unclosed `{`, or a segment mixing `{param}` with text.
    pub(crate) fn parse(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("path pattern `{pattern}` must start with `/`"));
        }
        let parts: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let seg = match *p {
                "**" if i + 1 == parts.len() => Seg::Rest,
                "**" => return Err(format!("`**` must be the last segment of `{pattern}`")),
                "*" => Seg::One,
                s if s.starts_with('{') => {
                    if !s.ends_with('}') || s.len() < 3 || s[1..s.len() - 1].contains(['{', '}']) {
                        return Err(format!(
                            "segment `{s}` of `{pattern}` is not a `{{name}}` parameter"
                        ));
                    }
                    Seg::One
                }
                s if s.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "segment `{s}` of `{pattern}` mixes text with `{{}}` or `*`"
                    ))
                }
                s => Seg::Lit(percent_decode(s).into_owned()),
            };
            segs.push(seg);
        }
        Ok(PathPattern { segs })
    }

    /// Whether the normalised segments of a request path match.
    pub(crate) fn matches<S: AsRef<str>>(&self, path: &[S]) -> bool {
        let mut i = 0;
        for seg in &self.segs {
            match seg {
                Seg::Rest => return true,
                Seg::One => {
                    if i >= path.len() {
                        return false;
                    }
                }
                Seg::Lit(l) => {
                    if path.get(i).map(|s| s.as_ref()) != Some(l.as_str()) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == path.len()
    }
}

/// Most segments the allocation-free fast path of [`with_segments`] takes.
const FAST_SEGMENTS: usize = 16;

/// Calls `f` with the normalised segments of `path` and whether `path` is
/// spelled canonically. A path with nothing to normalise (no `%`, no `.`
/// or empty segments, at most 16 segments) is split on the stack; any
/// other goes through [`normalise`].
pub(crate) fn with_segments<R>(path: &str, f: impl FnOnce(&[&str], bool) -> R) -> R {
    let end = path
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    let path = &path[..end];
    let mut buf = [""; FAST_SEGMENTS];
    let mut n = 0;
    let mut clean = true;
    let mut start = usize::from(path.starts_with('/'));
    let bytes = path.as_bytes();
    while start <= bytes.len() && clean {
        let stop = bytes[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(bytes.len(), |p| start + p);
        let seg = &path[start..stop];
        if seg.is_empty() {
            // Only a path that is empty or "/" may end here cleanly.
            clean = stop == bytes.len() && n == 0;
            break;
        }
        if n == FAST_SEGMENTS || seg == "." || seg == ".." || seg.contains('%') {
            clean = false;
            break;
        }
        buf[n] = seg;
        n += 1;
        start = stop + 1;
    }
    if clean {
        return f(&buf[..n], true);
    }
    let owned = normalise(path);
    let segs: Vec<&str> = owned.iter().map(|c| c.as_ref()).collect();
    // More than 16 plain segments is canonical too, only long.
    let canonical = segs.len() == literal_segments(path).len()
        && segs
            .iter()
            .zip(literal_segments(path))
            .all(|(a, b)| *a == b);
    f(&segs, canonical)
}

/// The segments of `path` as a router that does not normalise sees them:
/// split on `/` after the leading one, empty segments kept, `.` and `..`
/// and percent-escapes left as written; the query is ignored.
pub(crate) fn literal_segments(path: &str) -> Vec<&str> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.strip_prefix('/').unwrap_or(path);
    if path.is_empty() {
        return Vec::new();
    }
    path.split('/').collect()
}

/// Splits a request path into normalised segments (see the module docs).
pub(crate) fn normalise(path: &str) -> Vec<Cow<'_, str>> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut out: Vec<Cow<'_, str>> = Vec::new();
    for raw in path.split('/') {
        let seg = percent_decode(raw);
        match seg.as_ref() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    out
}

/// Decodes percent-escapes; escapes that decode to invalid UTF-8 are
/// matched as written, and a `%` without two hex digits stays as it is.
fn percent_decode(s: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .unwrap_or(Cow::Borrowed(s))
}

/// What a matching route rule sends the request to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteTarget {
    /// Check the tier with this index.
    Tier(usize),
    /// Neither counted nor given headers.
    Exempt,
}

/// A compiled route rule.
#[derive(Clone, Debug)]
pub(crate) struct RouteRule {
    pub(crate) methods: Option<Vec<Method>>,
    pub(crate) pattern: PathPattern,
    pub(crate) target: RouteTarget,
}

/// Parses a method list: empty, or containing `*`, means any method.
pub(crate) fn parse_methods(methods: &[String]) -> Result<Option<Vec<Method>>, (usize, String)> {
    let mut set = Vec::new();
    let mut any = methods.is_empty();
    for (i, m) in methods.iter().enumerate() {
        if m == "*" {
            any = true;
            continue;
        }
        let upper = m.to_ascii_uppercase();
        let parsed = Method::from_bytes(upper.as_bytes())
            .map_err(|_| (i, format!("`{m}` is not an HTTP method")))?;
        set.push(parsed);
    }
    Ok(if any { None } else { Some(set) })
}

impl RouteRule {
    /// Whether this rule takes a request with `method` and normalised `path`.
    pub(crate) fn matches<S: AsRef<str>>(&self, method: &Method, path: &[S]) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(method)) && self.pattern.matches(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern)
            .unwrap()
            .matches(&normalise(path))
    }

    #[test]
    fn patterns() {
        assert!(m("/api/v1/reloads", "/api/v1/reloads"));
        assert!(m("/api/v1/reloads", "/api/v1/reloads/"));
        assert!(m("/api/v1/reloads", "//api/./v1/x/../reloads?x=1"));
        assert!(m("/api/v1/reloads", "/api/v1/%72eloads"));
        assert!(!m("/api/v1/reloads", "/api/v1/reloads/1"));
        assert!(m("/items/{id}", "/items/42"));
        assert!(!m("/items/{id}", "/items"));
        assert!(m("/items/*/x", "/items/42/x"));
        assert!(m("/v2/publish/**", "/v2/publish"));
        assert!(m("/v2/publish/**", "/v2/publish/a/b/c"));
        assert!(!m("/v2/publish/**", "/v2/publishx"));
        assert!(m("/**", "/anything/at/all"));
        assert!(m("/", "/"));
        assert!(m("/x", "/x/%zz/.."));
        assert!(!m("/x", "/x/%ff"));
        assert!(m("/a/**", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t"));
        assert!(!m("/a/*", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t"));
        assert!(m("/a/{x}", "/a/b/"));
        assert!(!m("/a", ""));
        assert!(m("/", ""));
    }

    proptest::proptest! {
        #[test]
        fn the_fast_path_agrees_with_normalising(path in "[/a-c.%2fF?]{0,40}") {
            for pattern in ["/", "/a", "/a/b", "/a/*", "/a/{x}/c", "/**", "/a/**", "/*/b/**"] {
                let p = PathPattern::parse(pattern).unwrap();
                let slow = p.matches(&normalise(&path));
                let fast = with_segments(&path, |segs, _| p.matches(segs));
                proptest::prop_assert_eq!(slow, fast, "{} on {}", pattern, path);
                // Canonical: the literal segments are the normalised ones.
                let canonical = with_segments(&path, |_, c| c);
                let literal = p.matches(&literal_segments(&path));
                if canonical {
                    proptest::prop_assert_eq!(slow, literal, "{} on {}", pattern, path);
                }
            }
        }
    }

    #[test]
    fn other_spellings_are_not_canonical() {
        for path in [
            "/health",
            "/a/b",
            "/",
            "",
            "/a?x=//",
            "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r",
        ] {
            assert!(with_segments(path, |_, c| c), "{path}");
        }
        for path in [
            "//health",
            "/health/",
            "/health/.",
            "/./health",
            "/%68ealth",
            "/x/../health",
            "/auth//token",
            "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q//r",
        ] {
            assert!(!with_segments(path, |_, c| c), "{path}");
        }
        assert_eq!(literal_segments("//health/?q"), ["", "health", ""]);
        assert_eq!(literal_segments("/%68ealth"), ["%68ealth"]);
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(PathPattern::parse("api").is_err());
        assert!(PathPattern::parse("/**/x").is_err());
        assert!(PathPattern::parse("/{id").is_err());
        assert!(PathPattern::parse("/a{id}").is_err());
        assert!(parse_methods(&["GE T".into()]).is_err());
        assert_eq!(parse_methods(&["get".into(), "*".into()]), Ok(None));
    }
}
