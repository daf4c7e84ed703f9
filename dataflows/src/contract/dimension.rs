//! Dimension tables (episode metadata, products, budgets): what a family reads and where
//! the rows come from. `operators::dimension` makes them live differential inputs.

/// A table the family reads, with the columns it needs (key columns first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DimensionSpec {
    pub table: String,
    pub columns: Vec<String>,
    /// `CREATE TABLE IF NOT EXISTS …`: the runtime creates a missing table empty.
    pub create: Option<String>,
}

/// One row, its columns as text in `DimensionSpec::columns` order (NULL as "").
pub type DimRow = Vec<String>;

/// Where a dimension's rows come from (the runtime reads Postgres).
pub trait TableSource {
    /// The current rows: the first call must return them; later calls return `None` when
    /// nothing new was read.
    fn snapshot(&mut self) -> Option<Vec<DimRow>>;
}
