//! E-commerce behaviour (DESIGN §5.4, seed 003): a storefront's click stream turned into
//! short-window shopper features and product statistics.
//!
//! This is the family's first part (#19): decoding seed 003's schema exactly (bad records
//! to the DLQ), the shopper's 10-minute views and mean viewed price, 30-minute carts,
//! 24-hour purchases and the category of most interactions in 30 minutes (through the
//! catalog, a live input), and each product's 1-hour and 24-hour views, carts and
//! purchases with smoothed view→cart and cart→purchase rates — all windowed sums of
//! `operators::window_sums`. The patterns, the recent-products list and the pattern topic
//! are still to come (README, the commerce section).

pub mod decode;
mod events;
pub mod generate;
mod tables;
mod views;

pub use events::*;
pub use tables::*;
pub use views::*;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::contract::dataflow::{Dataflow, GenerateSpec, Produced};
use crate::contract::dimension::{DimRow, DimensionSpec};
use crate::contract::event::{Rejection, Timed};
use crate::contract::record::{DecodeError, RecordRef};
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, TableSpec};
use crate::contract::time::{Tick, Window};
use crate::operators::window_sums::window_rows;
use crate::operators::windowed::{intervals, with_expiries};

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
}

impl Default for CommerceConfig {
    fn default() -> Self {
        CommerceConfig {
            topic: "commerce-events".into(),
            catalog_table: "products".into(),
            alpha: 1.0,
            beta: 20.0,
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
        Ok(())
    }
    fn topics(&self) -> Vec<String> {
        vec![self.config.topic.clone()]
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
        // every interaction with a product, kept for its 30 minutes (checkpointed), meets
        // the catalog: a product re-categorised moves its interactions at once
        let interactions = intervals(state, events, |e: &Timed<CommerceEvent>| {
            let until = Some(THIRTY_MINUTES.expiry(e.ts));
            let item = e.event.item.as_ref();
            item.map(|i| ((i.product.clone(), e.event.user.clone()), 1, 0, until))
        });
        // a row without a category (NULL, read as "") puts its product in none
        let catalog = dimensions[0]
            .clone()
            .filter(|row| !row[1].is_empty())
            .map(|row| (ProductId(row[0].clone()), Category(row[1].clone())));
        // each categorised interaction counts while it is there: its input retracts it
        let derived = interactions
            .join_map(catalog, |_, user, category| {
                let m = Measure::Category(category.clone());
                (Entity::Shopper(user.clone()), m)
            })
            .inner;
        let this = self.clone();
        window_rows(
            "commerce",
            state,
            durable,
            derived,
            move |entity, sums, out| out.extend(this.row(entity, sums)),
        )
    }
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        Box::new(generate::CommerceTraffic::new(
            self.config.topic.clone(),
            spec.clone(),
        ))
    }
}
