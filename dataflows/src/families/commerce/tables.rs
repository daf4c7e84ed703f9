//! The commerce feature views (DESIGN §5.4).

use crate::contract::table::{float, int, list, text, SinkKind, TableSpec};

use super::Commerce;

/// Table indices, in the order of [`Commerce::table_specs`].
pub mod table {
    pub const SHOPPER: u8 = 0;
    pub const PRODUCT_STATS: u8 = 1;
    pub const USER_RECENT: u8 = 2;
    pub const PATTERNS: u8 = 3;
}

impl Commerce {
    pub(super) fn table_specs(&self) -> Vec<TableSpec> {
        let spec = |ns, key, fields| TableSpec {
            ns,
            keys: vec![key],
            fields,
            version: 1,
            sink: SinkKind::Store,
            redis_prefix: None,
        };
        let mut shopper = spec(
            "shopper",
            "user_id",
            vec![
                int("views_10m"),
                float("avg_view_price_10m"),
                int("carts_30m"),
                int("purchases_24h"),
                text("top_category_30m"),
                int("last_event_ts"),
                text("device_type"),
                text("last_referrer"),
                text("utm_source"),
                text("pattern_detected"),
            ],
        );
        shopper.redis_prefix = self.shopper_prefix();
        vec![
            shopper,
            spec(
                "product_stats",
                "product_id",
                vec![
                    int("views_1h"),
                    int("carts_1h"),
                    int("purchases_1h"),
                    int("views_24h"),
                    int("carts_24h"),
                    int("purchases_24h"),
                    float("view_to_cart_24h"),
                    float("cart_to_purchase_24h"),
                ],
            ),
            TableSpec {
                ns: "user_recent",
                keys: vec!["user_id"],
                fields: vec![list("product_ids")],
                version: 1,
                sink: SinkKind::List,
                redis_prefix: None,
            },
            TableSpec {
                ns: "commerce_patterns",
                keys: vec!["user_id", "pattern", "product_id", "mark"],
                fields: vec![int("started_ts"), text("category"), list("product_ids")],
                version: 1,
                sink: SinkKind::Topic(self.config.patterns_topic.clone()),
                redis_prefix: None,
            },
        ]
    }
}

/// The default `shopper_key`: the hash every store view has, `feat:{ns}:{key}`.
pub const SHOPPER_KEY: &str = "feat:shopper:{user_id}";

impl Commerce {
    /// The Redis key of a shopper before `:{user_id}`, when `shopper_key` is not the
    /// default.
    fn shopper_prefix(&self) -> Option<String> {
        let key = &self.config.shopper_key;
        (key != SHOPPER_KEY).then(|| key.trim_end_matches(":{user_id}").to_string())
    }

    /// `shopper_key` is `<prefix>:{user_id}`, the prefix of letters, digits and `_-.:`, and
    /// in no other view's key space: not the engine's bookkeeping (`tidemark…`), not
    /// `feat…` but the default (every family's views), not this family's list.
    pub(super) fn check_shopper_key(&self) -> Result<(), String> {
        let key = &self.config.shopper_key;
        if key == SHOPPER_KEY {
            return Ok(());
        }
        let prefix = key.strip_suffix(":{user_id}").unwrap_or("");
        let fine = |c: char| c.is_ascii_alphanumeric() || "_-.:".contains(c);
        let first = prefix.split(':').next().unwrap_or("");
        let taken =
            ["tidemark", "feat", "user_recent"].contains(&first) || first.starts_with("tidemark");
        if taken {
            return Err(format!(
                "dataflows.commerce.shopper_key = {key:?}: '{first}:' keys belong to other views \
                 or to the engine; choose another prefix (e.g. seed 003's \"user_features:{{user_id}}\")"
            ));
        }
        if prefix.is_empty() || !prefix.chars().all(fine) || prefix.ends_with(':') {
            return Err(format!(
                "dataflows.commerce.shopper_key = {key:?}: must be a prefix of letters, digits and _-.: \
                 followed by :{{user_id}} (e.g. {SHOPPER_KEY:?}, or seed 003's \"user_features:{{user_id}}\")"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::dataflow::Dataflow;
    use crate::families::commerce::CommerceConfig;

    fn with_key(key: &str) -> Result<(), String> {
        let config = CommerceConfig {
            shopper_key: key.into(),
            ..CommerceConfig::default()
        };
        Commerce::new(config).check()
    }

    #[test]
    fn a_shopper_key_outside_other_views_is_taken_and_others_are_named() {
        assert!(with_key(SHOPPER_KEY).is_ok());
        assert!(with_key("user_features:{user_id}").is_ok());
        assert!(with_key("shop:v2:{user_id}").is_ok());
        for bad in [
            "tidemark:{user_id}",
            "tidemark_x:{user_id}",
            "feat:{user_id}",
            "feat:product_stats:{user_id}",
            "user_recent:{user_id}",
            "user features:{user_id}",
            "{user_id}",
            "user_features:{id}",
            "user_features::{user_id}",
        ] {
            let e = with_key(bad).unwrap_err();
            assert!(e.contains("dataflows.commerce.shopper_key"), "{bad}: {e}");
        }
    }
}
