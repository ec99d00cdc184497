//! Connection URLs with their secrets kept out of `Debug`, `Display`, logs and errors.
//!
//! Two defences: a [`SecretUrl`] never prints its secrets, and text that came from elsewhere
//! (a client library's error, a server's message) goes through [`scrub`] before it is shown,
//! which removes the URL's password in every form, the userinfo of any URL in the text, and
//! every other secret this process was given (so code that does not hold the URL, like a
//! listener task, can still scrub what it logs).

use std::fmt;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// A connection URL whose password (and secret query parameters) never print.
///
/// `Display`, `Debug` and `Serialize` show the redacted form; only [`SecretUrl::expose`] gives
/// the real URL, to hand to a client library.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        remember(&url);
        SecretUrl(url)
    }

    /// The URL with its secrets, for the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with password and secret-looking query values replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

/// Redacts the password of a URL and any query value whose key looks secret. Text that does
/// not parse as a URL is hidden entirely except its scheme, since it may be a DSN with a
/// password in it.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            if url.query().is_some() {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = is_secret_key(&k);
                        (
                            k.into_owned(),
                            if secret { "***".into() } else { v.into_owned() },
                        )
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        Err(_) => match raw.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***"),
            None => "***".into(),
        },
    }
}

/// Removes `secret`'s password and secret query values from `text` (as written in the URL and
/// percent-decoded, the form client libraries print), then whatever `scrub_known` removes:
/// for error messages from client libraries and servers, which may echo either.
/// Used by the network providers (none is compiled in a build with only the in-memory one).
#[cfg_attr(
    not(any(feature = "pgmq", feature = "rabbitmq", feature = "nats")),
    allow(dead_code)
)]
pub fn scrub(text: &str, secret: &SecretUrl) -> String {
    let mut out = text.replace(secret.expose(), &secret.redacted());
    for value in secret_values(secret.expose()) {
        out = out.replace(&value, "***");
    }
    scrub_known(&out)
}

/// Removes the userinfo of every URL in `text` (`scheme://user:pw@host` becomes
/// `scheme://user:***@host`, `scheme://token@host` becomes `scheme://***@host`) and every
/// secret of the [`SecretUrl`]s made in this process, in both forms.
pub(crate) fn scrub_known(text: &str) -> String {
    let mut out = redact_userinfo(text);
    let known = KNOWN
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for value in known.iter() {
        if out.contains(value.as_str()) {
            out = out.replace(value.as_str(), "***");
        }
    }
    out
}

/// Secrets of every `SecretUrl` made so far (each in the forms [`secret_values`] gives).
static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Shorter values are not scrubbed from unrelated text: replacing every "pw" would garble
/// messages while hiding nothing a reader could not guess.
const MIN_KNOWN_LEN: usize = 4;

fn remember(url: &str) {
    let values: Vec<String> = secret_values(url)
        .into_iter()
        .filter(|v| v.len() >= MIN_KNOWN_LEN)
        .collect();
    if values.is_empty() {
        return;
    }
    let mut known = KNOWN
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for value in values {
        if !known.contains(&value) {
            known.push(value);
        }
    }
    // Longest first, so a secret containing another is removed whole.
    known.sort_by_key(|v| std::cmp::Reverse(v.len()));
}

/// The password and secret query values of `url`, each as written and percent-decoded. For
/// text that does not parse as a URL, the userinfo as written (it may still be a DSN whose
/// port or host is wrong).
fn secret_values(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    match url::Url::parse(url) {
        Ok(parsed) => {
            if let Some(password) = parsed.password() {
                out.push(password.to_owned());
                out.push(percent_decoded(password));
            }
            for (key, value) in parsed.query_pairs() {
                if is_secret_key(&key) && !value.is_empty() {
                    out.push(value.into_owned());
                }
            }
            if let Some(query) = parsed.query() {
                for pair in query.split('&') {
                    if let Some((key, value)) = pair.split_once('=') {
                        if is_secret_key(&percent_decoded(key)) && !value.is_empty() {
                            out.push(value.to_owned());
                        }
                    }
                }
            }
        }
        Err(_) => {
            if let Some((_, range)) = userinfo_spans(url).next() {
                let userinfo = &url[range];
                let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
                out.push(password.to_owned());
                out.push(percent_decoded(password));
            }
        }
    }
    out.retain(|v| !v.is_empty() && v != "***");
    out.sort();
    out.dedup();
    out
}

const SECRET_KEYS: [&str; 6] = ["password", "pass", "secret", "token", "key", "sslpassword"];

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| key.contains(s))
}

/// `s` with its `%XX` escapes decoded (as a URL's userinfo is, unlike a form, `+` stays `+`).
fn percent_decoded(s: &str) -> String {
    // form_urlencoded reads `+` as a space and `&`/`=` as separators: escape those three so
    // only the percent escapes change.
    let escaped = s
        .replace('+', "%2B")
        .replace('&', "%26")
        .replace('=', "%3D");
    url::form_urlencoded::parse(escaped.as_bytes())
        .next()
        .map_or_else(|| s.to_owned(), |(decoded, _)| decoded.into_owned())
}

/// For each `scheme://userinfo@` in `text`: where the scheme starts and the userinfo's range.
/// The authority ends at whitespace, a quote or a bracket; its last `@` ends the userinfo.
fn userinfo_spans(text: &str) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + '_ {
    text.match_indices("://").filter_map(move |(at, _)| {
        let scheme_start = text[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let scheme = &text[scheme_start..at];
        if !scheme.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return None;
        }
        let start = at + 3;
        let rest = &text[start..];
        let end = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(rest.len());
        let authority_end = rest[..end].find(['/', '?', '#']).unwrap_or(end);
        // A password may hold an unescaped `/`: look for the `@` up to the token's end when
        // the authority proper has none.
        let at_sign = rest[..authority_end]
            .rfind('@')
            .or_else(|| rest[..end].rfind('@'))?;
        Some((scheme_start, start..start + at_sign))
    })
}

/// `text` with the userinfo of every URL in it redacted.
fn redact_userinfo(text: &str) -> String {
    let spans: Vec<_> = userinfo_spans(text).map(|(_, r)| r).collect();
    if spans.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for range in spans {
        if range.start < from {
            continue;
        }
        out.push_str(&text[from..range.start]);
        match text[range.clone()].split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":***");
            }
            None => out.push_str("***"),
        }
        from = range.end;
    }
    out.push_str(&text[from..]);
    out
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SecretUrl::new(String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let url = SecretUrl::new("postgres://app:hunter2@db.example:5432/prod?sslmode=require");
        for shown in [
            url.to_string(),
            format!("{url:?}"),
            serde_json::to_string(&url).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("db.example"), "{shown}");
            assert!(shown.contains("sslmode=require"), "{shown}");
        }
        assert!(url.expose().contains("hunter2"));
    }

    #[test]
    fn secret_query_values_and_unparseable_dsns_are_hidden() {
        let r = redact_url("redis://h:6379/?token=abc&db=1");
        assert!(!r.contains("abc") && r.contains("db=1"), "{r}");
        assert_eq!(redact_url("host=db password=x"), "***");
        assert_eq!(redact_url("weird://user:pa ss@@"), "weird://***");
    }

    #[test]
    fn scrub_removes_the_password_from_library_errors() {
        let url = SecretUrl::new("amqp://guest:s3cret@127.0.0.1:5672/%2f");
        let msg = format!("failed to connect to {} (password s3cret)", url.expose());
        let clean = scrub(&msg, &url);
        assert!(!clean.contains("s3cret"), "{clean}");
    }

    #[test]
    fn scrub_removes_the_raw_form_of_an_encoded_password() {
        // What sqlx or lapin print after decoding the URL: `p#w/d@x+y`, not `p%23w%2Fd%40x+y`.
        let url = SecretUrl::new("postgres://app:p%23w%2Fd%40x+y@db:5432/prod?sslpassword=k%2By");
        let msg = "auth failed for app with p#w/d@x+y and p%23w%2Fd%40x+y; key k+y / k%2By";
        let clean = scrub(msg, &url);
        for secret in ["p#w/d@x+y", "p%23w%2Fd%40x+y", "k+y", "k%2By"] {
            assert!(!clean.contains(secret), "{secret} in {clean}");
        }
        assert!(clean.contains("auth failed for app"), "{clean}");
    }

    #[test]
    fn scrub_removes_the_userinfo_of_any_url() {
        let url = SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f");
        let msg = "tried postgres://bob:hunter22@db/x, then https://ghp_tok3n@example.com/r and \
                   \"redis://:p/ss@h:6379\"; amqp://127.0.0.1:5672/%2f has none";
        let clean = scrub(msg, &url);
        for secret in ["hunter22", "ghp_tok3n", "p/ss"] {
            assert!(!clean.contains(secret), "{secret} in {clean}");
        }
        assert!(clean.contains("postgres://bob:***@db/x"), "{clean}");
        assert!(clean.contains("https://***@example.com/r"), "{clean}");
        assert!(
            clean.contains("amqp://127.0.0.1:5672/%2f has none"),
            "{clean}"
        );
    }

    #[test]
    fn every_secret_made_in_the_process_is_scrubbed_without_its_url() {
        let _url: SecretUrl =
            serde_json::from_str("\"postgres://u:Kn0wn%21Only@127.0.0.1:1/db\"").unwrap();
        let clean = scrub_known("server said: bad password Kn0wn!Only (or Kn0wn%21Only)");
        assert!(!clean.contains("Kn0wn"), "{clean}");
        // Short passwords are not scrubbed from unrelated text.
        let _short = SecretUrl::new("postgres://u:ab@h/db");
        assert_eq!(scrub_known("table abc"), "table abc");
    }

    #[test]
    fn an_unparseable_url_still_registers_its_password() {
        let _url = SecretUrl::new("postgres://u:Unp%40rs3d@127.0.0.1:notaport/db");
        let clean = scrub_known("got Unp@rs3d");
        assert!(!clean.contains("Unp@rs3d"), "{clean}");
    }
}
