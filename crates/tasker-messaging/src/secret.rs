//! Connection URLs with their secrets kept out of `Debug`, `Display`, logs and errors.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A connection URL whose password (and secret query parameters) never print.
///
/// `Display`, `Debug` and `Serialize` show the redacted form; only [`SecretUrl::expose`] gives
/// the real URL, to hand to a client library.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
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
            let secret_keys = ["password", "pass", "secret", "token", "key", "sslpassword"];
            if url.query().is_some() {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = secret_keys
                            .iter()
                            .any(|s| k.to_ascii_lowercase().contains(s));
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

/// Replaces every occurrence of `secret`'s password in `text` (for error messages from client
/// libraries that echo the URL back).
pub fn scrub(text: &str, secret: &SecretUrl) -> String {
    let mut out = text.replace(secret.expose(), &secret.redacted());
    if let Ok(url) = url::Url::parse(secret.expose()) {
        if let Some(password) = url.password() {
            if !password.is_empty() {
                out = out.replace(password, "***");
            }
        }
    }
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
        Ok(SecretUrl(String::deserialize(d)?))
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
}
