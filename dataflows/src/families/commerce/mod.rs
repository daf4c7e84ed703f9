//! E-commerce behaviour (DESIGN §5.4, seed 003): a storefront's click stream turned into
//! short-window shopper features and product statistics.
//!
//! Seed 003's schema decoded exactly (bad records to the DLQ); the shopper's 10-minute
//! views and mean viewed price, 30-minute carts, 24-hour purchases and the category of
//! most interactions in 30 minutes (through the catalog, a live input), and each
//! product's 1-hour and 24-hour views, carts and purchases with smoothed rates — windowed
//! sums of `operators::window_sums` (`views`). The shopper's latest event, recent
//! products, top category and patterns come from the shopper operator (`operator`), which
//! keeps each shopper as a few compact parts (`shoppers`, `patterns`); they join the
//! shopper's row as derived sums, and leave as the `user_recent` list and the pattern
//! topic.

pub mod decode;
mod events;
pub mod generate;
mod operator;
mod patterns;
mod shoppers;
mod tables;
mod views;

pub use events::*;
pub use patterns::{Pattern, PatternKind};
pub use shoppers::{Counts, Latest, Shopper, Shown};
pub use tables::*;
pub use views::*;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::Filter;

use crate::contract::dataflow::{Dataflow, GenerateSpec, Produced};
use crate::contract::dimension::{DimRow, DimensionSpec};
use crate::contract::event::{Rejection, Timed};
use crate::contract::quality::{CheckName, ExpectSpec};
use crate::contract::record::{DecodeError, RecordRef};
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, TableSpec};
use crate::contract::time::{Tick, Window};
use crate::operators::window_sums::window_rows;
use crate::operators::windowed::with_expiries;

/// `[dataflows.commerce]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommerceConfig {
    pub topic: String,
    /// The Postgres catalog `products(product_id, category, …)`, read as a live input.
    pub catalog_table: String,
    /// Smoothing prior of the product rates: `(hits + alpha) / (trials + alpha + beta)`.
    pub alpha: f64,
    pub beta: f64,
    /// The Kafka topic of the patterns (a changelog keyed `user|pattern|product|mark`).
    pub patterns_topic: String,
    /// How many distinct products `user_recent:{user_id}` holds (seed 003: 50).
    pub recent_products: usize,
    /// The Redis key of a shopper's hash: `<prefix>:{user_id}` (seed 003 reads
    /// `user_features:{user_id}`).
    pub shopper_key: String,
}

impl Default for CommerceConfig {
    fn default() -> Self {
        CommerceConfig {
            topic: "commerce-events".into(),
            catalog_table: "products".into(),
            alpha: 1.0,
            beta: 20.0,
            patterns_topic: "commerce-patterns".into(),
            recent_products: 50,
            shopper_key: SHOPPER_KEY.into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Commerce {
    config: CommerceConfig,
}

impl Dataflow for Commerce {
    type Event = CommerceEvent;
    type Config = CommerceConfig;
    const NAME: &'static str = "commerce";

    fn new(config: CommerceConfig) -> Self {
        Commerce { config }
    }
    fn config(&self) -> &CommerceConfig {
        &self.config
    }
    fn check(&self) -> Result<(), String> {
        let c = &self.config;
        if !(c.alpha >= 0.0 && c.beta >= 0.0 && c.alpha + c.beta > 0.0) {
            return Err(format!(
                "dataflows.commerce.alpha = {} and beta = {}: both must be ≥ 0 and not both 0 (e.g. alpha = 1, beta = 20)",
                c.alpha, c.beta
            ));
        }
        if c.recent_products == 0 || c.recent_products > 10_000 {
            return Err(format!(
                "dataflows.commerce.recent_products = {}: must be 1 to 10000 (seed 003 reads 50)",
                c.recent_products
            ));
        }
        self.check_shopper_key()?;
        if c.patterns_topic.trim().is_empty() {
            return Err("dataflows.commerce.patterns_topic is empty: name the Kafka topic of the patterns (e.g. commerce-patterns)".into());
        }
        Ok(())
    }
    fn topics(&self) -> Vec<String> {
        vec![self.config.topic.clone()]
    }
    /// Its ranges, checked on every change (`[quality]`, issue #22).
    fn expectations(&self) -> Vec<ExpectSpec> {
        vec![ExpectSpec::new(
            "avg_view_price_10m not negative",
            "feature:shopper.avg_view_price_10m",
            CheckName::Between,
        )
        .bounds(Some(0.0), None)]
    }
    fn tables(&self) -> Vec<TableSpec> {
        self.table_specs()
    }
    fn horizon(&self) -> Window {
        ONE_DAY
    }
    fn dimensions(&self) -> Vec<DimensionSpec> {
        vec![DimensionSpec {
            table: self.config.catalog_table.clone(),
            columns: vec!["product_id".into(), "category".into()],
            create: Some(format!(
                "CREATE TABLE IF NOT EXISTS {} (product_id text PRIMARY KEY, category text NOT NULL)",
                self.config.catalog_table
            )),
        }]
    }
    fn dimension_rows(&self, _spec: &GenerateSpec) -> Vec<(DimensionSpec, Vec<DimRow>)> {
        vec![(self.dimensions().remove(0), generate::catalog())]
    }
    fn decode(&self, record: &RecordRef<'_>) -> Result<Timed<CommerceEvent>, DecodeError> {
        decode::decode(record.payload)
    }
    fn keys(&self, event: &CommerceEvent, visit: &mut dyn FnMut(&'static str, &str)) {
        visit("user_id", &event.user.0);
        if let Some(item) = &event.item {
            visit("product_id", &item.product.0);
        }
        // kept with each event for a day and written to the shopper's hash: as bounded
        // as a key
        let c = &event.context;
        for (field, value) in [
            ("context.device.type", &c.device),
            ("context.page.referrer", &c.referrer),
            ("context.campaign.utm_source", &c.utm_source),
        ] {
            if let Some(v) = value {
                visit(field, v);
            }
        }
    }
    fn build<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<CommerceEvent>>,
        dimensions: Vec<VecCollection<'s, Tick, DimRow>>,
        _rejected: VecCollection<'s, Tick, Rejection>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        let this = self.clone();
        let durable = with_expiries(events.clone(), move |e| this.contributions_of(e));
        // a row without a category (NULL, read as "") puts its product in none; a product
        // the table repeats (a view or a table without its key) is in its smallest category
        let catalog = dimensions[0]
            .clone()
            .filter(|row| !row[1].is_empty())
            .map(|row| {
                (
                    ProductId(row[0].as_str().into()),
                    Category(row[1].as_str().into()),
                )
            })
            .reduce_named("Catalog", |_, categories, out| {
                out.push((categories[0].0.clone(), 1))
            });
        let length = self.config.recent_products;
        let shoppers = operator::shoppers(state, events, catalog, length, Box::new(shopper_rows));
        let this = self.clone();
        // the products' windowed counts; the shoppers' come from the shopper operator
        let products = window_rows(
            "commerce",
            state,
            durable.clone(),
            // nothing derived: a stream that carries nothing
            Filter::filter(durable, |_| false),
            move |product, sums, out| out.extend(this.product_row(product, sums)),
        );
        products.concat(shoppers)
    }
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        Box::new(generate::CommerceTraffic::new(
            self.config.topic.clone(),
            spec.clone(),
        ))
    }
}
