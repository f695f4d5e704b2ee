//! Hostnames and hostname patterns, normalised once at the edge of the model.
//!
//! A [`Hostname`] is a DNS name in canonical form: ASCII lower case, no
//! trailing dot, LDH labels of 1-63 bytes, at most 253 bytes. A-labels
//! (`xn--…`) are accepted as they are; U-labels are refused with a hint,
//! because a ClientHello's SNI always carries the A-label. A [`HostPattern`]
//! is either an exact name or `*.suffix`, where `*` matches exactly one
//! label. No I/O.

use std::fmt;

/// Longest DNS name in text form, without the trailing dot (RFC 1035: 255
/// octets on the wire, which is 253 characters of text).
pub const MAX_NAME_LEN: usize = 253;
/// Longest single label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a string is not a valid hostname.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("has an empty label")]
    EmptyLabel,
    #[error("has a label longer than {MAX_LABEL_LEN} bytes")]
    LabelTooLong,
    #[error("has a label that starts or ends with '-'")]
    HyphenAtLabelEdge,
    #[error("has non-ASCII characters; use the A-label (xn--) form")]
    NotAscii,
    #[error("has the character {0:?}; only letters, digits, '-' and '.' are allowed")]
    BadChar(char),
    #[error("needs at least two labels (a fully qualified name)")]
    SingleLabel,
    #[error("ends in an all-numeric label (looks like an IP address)")]
    NumericTld,
    #[error("has '*' somewhere other than as the whole left-most label")]
    MisplacedWildcard,
}

/// A validated, canonical DNS hostname.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(Box<str>);

impl Hostname {
    /// Parses and normalises `s` (case folded, one trailing dot dropped).
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if !s.is_ascii() {
            return Err(NameError::NotAscii);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let lower = s.to_ascii_lowercase();
        let mut labels = 0;
        let mut last = "";
        for label in lower.split('.') {
            check_label(label)?;
            labels += 1;
            last = label;
        }
        if labels < 2 {
            return Err(NameError::SingleLabel);
        }
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NameError::NumericTld);
        }
        Ok(Hostname(lower.into_boxed_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name without its left-most label (`a.b.c` -> `b.c`), if any.
    pub fn parent(&self) -> Option<&str> {
        self.0.split_once('.').map(|(_, rest)| rest)
    }
}

fn check_label(label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong);
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::HyphenAtLabelEdge);
    }
    match label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        Some('*') => Err(NameError::MisplacedWildcard),
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hostname({})", self.0)
    }
}

/// What a route's `hostname` matches. Exact beats wildcard at lookup; the
/// order of the variants encodes that precedence.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum HostPattern {
    /// Matches this one name.
    Exact(Hostname),
    /// `*.suffix`: matches any name with exactly one more label than `suffix`.
    Wildcard(Hostname),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match s.strip_prefix("*.") {
            Some(suffix) => Hostname::parse(suffix).map(HostPattern::Wildcard),
            None => Hostname::parse(s).map(HostPattern::Exact),
        }
    }

    /// True if `name` (already canonical) is matched by this pattern.
    pub fn matches(&self, name: &Hostname) -> bool {
        match self {
            HostPattern::Exact(h) => h == name,
            HostPattern::Wildcard(suffix) => name.parent() == Some(suffix.as_str()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => write!(f, "{h}"),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Canonicalises an SNI for lookup into `buf` without allocating: ASCII
/// lower case, one trailing dot dropped. Returns `None` for a name that can
/// never match a route (empty, too long, not ASCII). Lookups do not
/// re-validate labels: a malformed name simply matches nothing.
pub fn canonical_sni<'b>(sni: &str, buf: &'b mut [u8; MAX_NAME_LEN]) -> Option<&'b str> {
    let sni = sni.strip_suffix('.').unwrap_or(sni);
    if sni.is_empty() || sni.len() > MAX_NAME_LEN || !sni.is_ascii() {
        return None;
    }
    let out = &mut buf[..sni.len()];
    out.copy_from_slice(sni.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_trailing_dot() {
        let h = Hostname::parse("Shop.Example.COM.").unwrap();
        assert_eq!(h.as_str(), "shop.example.com");
    }

    #[test]
    fn accepts_a_labels_refuses_u_labels() {
        assert!(Hostname::parse("xn--bcher-kva.example").is_ok());
        assert_eq!(Hostname::parse("bücher.example"), Err(NameError::NotAscii));
    }

    #[test]
    fn refuses_invalid_names() {
        for (s, e) in [
            ("", NameError::Empty),
            (".", NameError::Empty),
            ("a..b", NameError::EmptyLabel),
            ("-a.example", NameError::HyphenAtLabelEdge),
            ("a_b.example", NameError::BadChar('_')),
            ("a b.example", NameError::BadChar(' ')),
            ("localhost", NameError::SingleLabel),
            ("1.2.3.4", NameError::NumericTld),
            ("a.*.example", NameError::MisplacedWildcard),
        ] {
            assert_eq!(Hostname::parse(s), Err(e), "{s:?}");
        }
        assert_eq!(
            Hostname::parse(&format!("{}.example", "a".repeat(64))),
            Err(NameError::LabelTooLong)
        );
        let long = vec!["abcdefghi"; 26].join(".");
        assert_eq!(Hostname::parse(&long), Err(NameError::TooLong));
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let p = HostPattern::parse("*.Example.com").unwrap();
        assert_eq!(p.to_string(), "*.example.com");
        let m = |s| p.matches(&Hostname::parse(s).unwrap());
        assert!(m("a.example.com"));
        assert!(!m("a.b.example.com"));
        assert!(!m("example.com"));
        assert!(HostPattern::parse("*.com").is_err());
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("a*.example.com").is_err());
    }

    #[test]
    fn exact_orders_before_wildcard() {
        let exact = HostPattern::parse("a.example.com").unwrap();
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(exact < wild);
    }

    #[test]
    fn canonical_sni_folds_without_allocating() {
        let mut buf = [0; MAX_NAME_LEN];
        assert_eq!(
            canonical_sni("A.Example.COM.", &mut buf),
            Some("a.example.com")
        );
        assert_eq!(canonical_sni("", &mut buf), None);
        assert_eq!(canonical_sni("é.example", &mut buf), None);
    }
}
