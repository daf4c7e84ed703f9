//! The commerce feature views (DESIGN §5.4).

use crate::contract::table::{float, int, text, SinkKind, TableSpec};

use super::Commerce;

/// Table indices, in the order of [`Commerce::table_specs`].
pub mod table {
    pub const SHOPPER: u8 = 0;
    pub const PRODUCT_STATS: u8 = 1;
}

impl Commerce {
    pub(super) fn table_specs(&self) -> Vec<TableSpec> {
        let spec = |ns, key, fields| TableSpec {
            ns,
            keys: vec![key],
            fields,
            version: 1,
            sink: SinkKind::Store,
        };
        vec![
            spec(
                "shopper",
                "user_id",
                vec![
                    int("views_10m"),
                    float("avg_view_price_10m"),
                    int("carts_30m"),
                    int("purchases_24h"),
                    text("top_category_30m"),
                ],
            ),
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
        ]
    }
}
