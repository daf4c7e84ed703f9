//! Secrets out of everything Tidemark prints: one redaction for every form a connection
//! string takes (URL user info, URL query parameters, libpq `key=value` pairs with or
//! without spaces or quotes), applied to the effective config (`config check`, the
//! start-up log) and to error messages that quote an address.

/// Keys whose values are secrets, matched case-insensitively as the end of a key
/// (`password`, `sslpassword`, `sasl.password`, `api_token`, `quality.alert.webhook`, …).
const SECRET_KEYS: [&str; 7] = [
    // a Slack webhook's URL is its credential
    "webhook",
    "password",
    "passwd",
    "secret",
    "token",
    "pwd",
    "secret_access_key",
];

/// What stands in for a secret.
pub const HIDDEN: &str = "***";

/// `text` with every secret it holds replaced by `***`.
pub fn redact(text: &str) -> String {
    hide_pairs(&hide_user_info(text))
}

/// `scheme://user:secret@host` → `scheme://user:***@host`; the secret runs to the last `@`
/// of the address (a password may hold a raw `@`).
fn hide_user_info(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // the address ends at whitespace or a quote
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let address = &tail[..end];
        match (address.rfind('@'), address.find(':')) {
            (Some(a), Some(c)) if c < a => {
                out.push_str(&address[..=c]);
                out.push_str(HIDDEN);
                out.push_str(&address[a..]);
            }
            _ => out.push_str(address),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `password=x`, `password = 'x y'`, `?password=x&…`, `PASSWORD\t=\t"x"` → the value
/// replaced by `***` (quotes and all).
fn hide_pairs(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'=' {
            i += 1;
            continue;
        }
        // the key before the `=`, past spaces
        let mut k_end = i;
        while k_end > 0 && matches!(bytes[k_end - 1], b' ' | b'\t') {
            k_end -= 1;
        }
        let mut k_start = k_end;
        while k_start > 0
            && (bytes[k_start - 1].is_ascii_alphanumeric()
                || matches!(bytes[k_start - 1], b'_' | b'.' | b'-'))
        {
            k_start -= 1;
        }
        let key = &lower[k_start..k_end];
        if key.is_empty() || !is_secret_key(key) {
            i += 1;
            continue;
        }
        // the value after the `=`, past spaces: quoted, or up to a separator
        let mut v_start = i + 1;
        while v_start < bytes.len() && matches!(bytes[v_start], b' ' | b'\t') {
            v_start += 1;
        }
        let v_end = match bytes.get(v_start) {
            Some(&q @ (b'\'' | b'"')) => {
                let mut j = v_start + 1;
                while j < bytes.len() && bytes[j] != q {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                (j + 1).min(bytes.len())
            }
            _ => {
                let mut j = v_start;
                while j < bytes.len()
                    && !bytes[j].is_ascii_whitespace()
                    && !matches!(bytes[j], b'&' | b';' | b',')
                {
                    j += 1;
                }
                j
            }
        };
        out.push_str(&text[copied..v_start]);
        out.push_str(HIDDEN);
        copied = v_end;
        i = v_end.max(i + 1);
    }
    out.push_str(&text[copied..]);
    out
}

/// Whether a value under `key` is a secret.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| key.ends_with(s))
}

/// Every string in `value` redacted, in place; a string under a secret's key hidden.
pub fn redact_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => *s = redact(s),
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_json),
        // a value under a secret's key (`archive.s3.secret_access_key`) whatever it holds
        serde_json::Value::Object(o) => o.iter_mut().for_each(|(k, v)| match v {
            serde_json::Value::String(s) if is_secret_key(k) => *s = HIDDEN.to_string(),
            _ => redact_json(v),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_secret_is_hidden() {
        for (input, want) in [
            (
                "postgresql://tm:s3cret@db:5432/tm?sslmode=require&password=other",
                "postgresql://tm:***@db:5432/tm?sslmode=require&password=***",
            ),
            (
                "host=db user=tm password=s3cret dbname=tm",
                "host=db user=tm password=*** dbname=tm",
            ),
            (
                "host=db password = s3cret dbname=tm",
                "host=db password = *** dbname=tm",
            ),
            (
                "host=db\tpassword=s3cret\tdbname=tm",
                "host=db\tpassword=***\tdbname=tm",
            ),
            (
                "host=db password='with spaces \\' and quote' dbname=tm",
                "host=db password=*** dbname=tm",
            ),
            (
                "host=db PASSWORD = \"a b\" dbname=tm",
                "host=db PASSWORD = *** dbname=tm",
            ),
            (
                "redis://default:p@ss@cache:6379/0",
                "redis://default:***@cache:6379/0",
            ),
            ("redis://:s3cret@cache/0", "redis://:***@cache/0"),
            (
                "redis://cache:6379/0?password=s3cret&protocol=resp3",
                "redis://cache:6379/0?password=***&protocol=resp3",
            ),
            (
                "sslpassword=k3y sasl.password=x",
                "sslpassword=*** sasl.password=***",
            ),
            (
                "redis://cache:6379/0 and host=db",
                "redis://cache:6379/0 and host=db",
            ),
        ] {
            let got = redact(input);
            assert_eq!(got, want, "{input}");
            for secret in ["s3cret", "p@ss", "with spaces", "a b", "k3y", "other"] {
                assert!(!got.contains(secret), "{secret} in {got}");
            }
        }
    }

    #[test]
    fn strings_in_a_config_are_redacted_wherever_they_are() {
        let mut v = serde_json::json!({"postgres": {"url": "password=x host=h"}, "list": ["redis://u:p@h/"]});
        redact_json(&mut v);
        assert_eq!(v["postgres"]["url"], "password=*** host=h");
        assert_eq!(v["list"][0], "redis://u:***@h/");
        let mut v = serde_json::json!({"archive": {"s3": {"secret_access_key": "abc", "access_key_id": "id"}}});
        redact_json(&mut v);
        assert_eq!(v["archive"]["s3"]["secret_access_key"], HIDDEN);
        assert_eq!(v["archive"]["s3"]["access_key_id"], "id");
    }
}
