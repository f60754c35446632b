//! What must never be shown: redaction of requests and messages by position (the
//! query value, the URL's credentials, the header value), never by searching text for a
//! secret's characters, which turns `api_secret = "s"` into `http***://…`.

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Deserializer};
use std::fmt;

/// A value that must never be shown: its `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for comparing or keying; never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Configured secrets shorter than this are refused at config load: no real API key
/// is this short, and a short one would be found inside ordinary words.
pub const MIN_SECRET_CHARS: usize = 8;

/// Words that make a query parameter or header name a secret's (`X-Api-Key`,
/// `api_secret`, `access_token`, `X-Hub-Signature-256`, `Authorization`).
const SECRET_WORDS: &[&str] = &[
    "token",
    "key",
    "apikey",
    "secret",
    "sig",
    "signature",
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "jwt",
];

/// Endings of run-together words that are secrets' (`accesstoken`, `clientsecret`).
const SECRET_ENDINGS: &[&str] = &["token", "secret", "password", "apikey", "passwd"];

/// Names that contain a secret-looking word but carry nothing secret.
const NOT_SECRET_NAMES: &[&str] = &[
    "idempotency-key",
    "x-playrelay-batch-id",
    "x-playrelay-signature",
];

/// Whether a query parameter or header of this name holds a secret: one of its words
/// (split at `-`, `_`, `.` and lower-to-upper case changes) is a secret's word
/// (`token`, `key`, `secret`, `signature`, `auth`, …) or ends like one
/// (`accesstoken`). `X-Keyword` or `X-Author` are not secrets.
pub fn is_secret_name(name: &str) -> bool {
    if NOT_SECRET_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
        return false;
    }
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            words.push(std::mem::take(&mut word));
            previous_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && previous_lower {
            words.push(std::mem::take(&mut word));
        }
        previous_lower = c.is_ascii_lowercase();
        word.push(c.to_ascii_lowercase());
    }
    words.push(word);
    words.iter().filter(|w| !w.is_empty()).any(|w| {
        SECRET_WORDS.contains(&w.as_str()) || SECRET_ENDINGS.iter().any(|e| w.ends_with(e))
    })
}

/// The secrets a URL carries in itself: the password (or a lone user name, which
/// services use for tokens) and the values of secret-named query parameters, both as
/// written and percent-decoded.
pub fn url_secrets(url: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let parts = UrlParts::split(url);
    if let Some(userinfo) = parts.userinfo {
        match userinfo.split_once(':') {
            Some((_, password)) if !password.is_empty() => {
                out.push(("password".to_string(), password.to_string()));
            }
            Some(_) => {}
            None => out.push(("user".to_string(), userinfo.to_string())),
        }
    }
    if let Some(query) = parts.query {
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name);
            if is_secret_name(&name) && !value.is_empty() {
                out.push((name, value.to_string()));
            }
        }
    }
    let mut decoded = Vec::new();
    for (name, value) in &out {
        let plain = decode(value);
        if plain != *value {
            decoded.push((name.clone(), plain));
        }
    }
    out.extend(decoded);
    out
}

fn decode(text: &str) -> String {
    percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// A URL cut at its delimiters, without judging the parts.
struct UrlParts<'a> {
    /// `https://`
    scheme: &'a str,
    userinfo: Option<&'a str>,
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

impl<'a> UrlParts<'a> {
    fn split(url: &'a str) -> UrlParts<'a> {
        let (scheme, rest) = match url.find("://") {
            Some(i) => (&url[..i + 3], &url[i + 3..]),
            None => ("", url),
        };
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = if scheme.is_empty() {
            ("", rest)
        } else {
            match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            }
        };
        let (userinfo, host) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        UrlParts {
            scheme,
            userinfo,
            host,
            path,
            query,
            fragment,
        }
    }
}

/// The URL with its credentials, secret-named query values, and any query value or
/// path segment that is exactly a configured secret, each replaced by `***`.
pub fn redact_url(url: &str, secrets: &[String]) -> String {
    let parts = UrlParts::split(url);
    let is_secret = |raw: &str| {
        !raw.is_empty()
            && secrets
                .iter()
                .any(|s| !s.is_empty() && (s == raw || *s == decode(raw)))
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(parts.scheme);
    if let Some(userinfo) = parts.userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":***@");
            }
            None => out.push_str("***@"),
        }
    }
    out.push_str(parts.host);
    let segments: Vec<&str> = parts
        .path
        .split('/')
        .map(|segment| if is_secret(segment) { "***" } else { segment })
        .collect();
    out.push_str(&segments.join("/"));
    if let Some(query) = parts.query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value))
                    if !value.is_empty() && (is_secret_name(&decode(name)) || is_secret(value)) =>
                {
                    format!("{name}=***")
                }
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if let Some(fragment) = parts.fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// A header value as it may be shown: `***` when the header is marked sensitive, is
/// named like a secret, or holds a configured secret (alone or after a scheme such as
/// `Bearer`); otherwise as it is.
pub fn redact_header(name: &str, value: &http::HeaderValue, secrets: &[String]) -> String {
    let text = String::from_utf8_lossy(value.as_bytes());
    let holds_secret = secrets.iter().any(|s| {
        !s.is_empty()
            && (text == s.as_str()
                || text
                    .split_once(' ')
                    .is_some_and(|(_, token)| token.trim() == s))
    });
    if value.is_sensitive() || is_secret_name(name) || holds_secret {
        "***".to_string()
    } else {
        text.into_owned()
    }
}

/// A JSON body with every string value that is exactly a configured secret replaced
/// by `"***"`. Translators put no secret in bodies; this guards the rule.
pub fn redact_json_strings(body: &str, secrets: &[String]) -> String {
    let mut out = body.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if let Ok(quoted) = serde_json::to_string(secret) {
            out = out.replace(&quoted, "\"***\"");
        }
    }
    out
}

/// Free text (an error chain, a vendor's answer, a refusal detail): every URL in it
/// is redacted as [`redact_url`] does, then any configured secret of at least
/// [`MIN_SECRET_CHARS`] characters that the text still quotes. Shorter secrets are
/// refused at config load, so they are never searched for.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_url(rest) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')' | '`'))
            .unwrap_or(tail.len());
        out.push_str(&redact_url(&tail[..end], secrets));
        rest = &tail[end..];
    }
    out.push_str(rest);
    for secret in secrets
        .iter()
        .filter(|s| s.chars().count() >= MIN_SECRET_CHARS)
    {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

fn find_url(text: &str) -> Option<usize> {
    let http = text.find("http://");
    let https = text.find("https://");
    match (http, https) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
    }

    #[test]
    fn a_short_secret_does_not_mangle_the_url() {
        let secrets = vec!["s".to_string()];
        assert_eq!(
            redact(
                "https://www.google-analytics.com/mp/collect?measurement_id=G-1&api_secret=s",
                &secrets
            ),
            "https://www.google-analytics.com/mp/collect?measurement_id=G-1&api_secret=***"
        );
    }

    #[test]
    fn credentials_and_secret_named_query_values_are_secrets() {
        let url = "https://user:pa%20ss@hooks.example.com/in/T0KEN-IN-PATH?token=abc%2Fdef&plain=1&X-Api-Key=k#frag";
        let secrets = vec!["T0KEN-IN-PATH".to_string()];
        assert_eq!(
            redact_url(url, &secrets),
            "https://user:***@hooks.example.com/in/***?token=***&plain=1&X-Api-Key=***#frag"
        );
        let found = url_secrets(url);
        let values: Vec<&str> = found.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, ["pa%20ss", "abc%2Fdef", "k", "pa ss", "abc/def"]);
        assert_eq!(
            redact_url("https://tok3n@example.com/", &[]),
            "https://***@example.com/"
        );
    }

    #[test]
    fn free_text_redacts_urls_in_place_and_long_secrets_anywhere() {
        let secrets = vec!["key".to_string(), "long-secret-value".to_string()];
        let text = "error sending request for url (http://127.0.0.1:9/x?key=key): keyboard long-secret-value";
        assert_eq!(
            redact(text, &secrets),
            "error sending request for url (http://127.0.0.1:9/x?key=***): keyboard ***"
        );
    }

    #[test]
    fn secret_names_are_judged_by_their_words() {
        for name in [
            "Authorization",
            "X-Api-Key",
            "api_secret",
            "access_token",
            "accessToken",
            "X-Hub-Signature-256",
            "sig",
            "apikey",
            "X-Auth-Token",
            "client_secret",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "X-Keyword",
            "X-Author",
            "team",
            "measurement_id",
            "Idempotency-Key",
            "monkey",
            "design",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn headers_are_judged_by_name_and_whole_value() {
        let secrets = vec!["abcdefgh12".to_string()];
        let plain = http::HeaderValue::from_static("application/json");
        assert_eq!(
            redact_header("content-type", &plain, &secrets),
            "application/json"
        );
        let bearer = http::HeaderValue::from_static("Bearer abcdefgh12");
        assert_eq!(redact_header("x-custom", &bearer, &secrets), "***");
        assert_eq!(redact_header("X-Api-Key", &plain, &[]), "***");
        assert_eq!(
            redact_header("idempotency-key", &plain, &secrets),
            "application/json"
        );
    }
}
