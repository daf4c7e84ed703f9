//! Which errors can never succeed by retrying: they end the run (or its start) with the
//! error and its fix, instead of being retried forever.
//!
//! A sink retries with backoff what may pass by itself (a store down or restarting, a
//! lost connection, a full or read-only server). What a store says about one entity's
//! data is handled per entity (see `store::Unstorable`). What is left here is about the
//! whole store and comes back at every attempt: the credentials or the database named
//! in the config, a table or column that is gone, a missing privilege, a request the
//! client itself refuses. Nothing is committed past such an error, so after the fix a
//! restart loses nothing.

/// An error this program knows can never succeed by retrying.
#[derive(Debug)]
pub struct Permanent(pub String);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Permanent {}

/// Whether any cause of `e` is one that retrying cannot fix.
pub fn is_permanent(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if cause.downcast_ref::<Permanent>().is_some() {
            return true;
        }
        if let Some(pe) = cause.downcast_ref::<postgres::Error>() {
            // 28: invalid authorization (password, role); 3D: no such database;
            // 42: syntax or access rule (a table or column that is gone, a privilege);
            // 0A: a feature the server does not have
            return pe
                .code()
                .is_some_and(|c| matches!(&c.code()[..2], "28" | "3D" | "42" | "0A"));
        }
        if let Some(re) = cause.downcast_ref::<redis::RedisError>() {
            use redis::ErrorKind as K;
            return matches!(
                re.kind(),
                K::Client | K::InvalidClientConfig | K::AuthenticationFailed
            ) || re
                .code()
                .is_some_and(|c| matches!(c, "NOAUTH" | "WRONGPASS" | "NOPERM"));
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_marked_error_is_permanent_through_its_context_and_others_are_not() {
        let e = Err::<(), _>(Permanent("no".into()))
            .context("writing")
            .unwrap_err();
        assert!(is_permanent(&e));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!is_permanent(&anyhow::Error::new(io).context("connecting")));
        let client: redis::RedisError = (redis::ErrorKind::Client, "empty command").into();
        assert!(is_permanent(&anyhow::Error::new(client)));
        let io: redis::RedisError = std::io::Error::from(std::io::ErrorKind::BrokenPipe).into();
        assert!(!is_permanent(&anyhow::Error::new(io)));
    }
}
