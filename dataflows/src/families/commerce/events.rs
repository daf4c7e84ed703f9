//! What the commerce topic carries, decoded: the events and the ids they name.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// A shopper. Ids are inline up to 24 bytes (`CompactString`): a shopper holds up to 50
/// recent products and its touches and carts, each naming a product, and a heap copy per
/// id was about a fifth of a shopper's memory (13,800 → 10,900 B in `bench commerce`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub CompactString);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProductId(pub CompactString);

/// A product's category, from the catalog (`products`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Category(pub CompactString);

/// A price in hundredths of the currency unit (rounded to the nearest), so sums are exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cents(pub i64);

/// What a shopper did (seed 003's `event_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    View,
    AddToCart,
    RemoveFromCart,
    Purchase,
    Click,
    Search,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::View,
        Action::AddToCart,
        Action::RemoveFromCart,
        Action::Purchase,
        Action::Click,
        Action::Search,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::AddToCart => "add_to_cart",
            Action::RemoveFromCart => "remove_from_cart",
            Action::Purchase => "purchase",
            Action::Click => "click",
            Action::Search => "search",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
    /// Whether the event is about one product (`properties.product_id` and `price` required).
    pub fn names_a_product(self) -> bool {
        matches!(
            self,
            Action::View | Action::AddToCart | Action::RemoveFromCart | Action::Purchase
        )
    }
}

/// The product an event is about, and its price then.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Item {
    pub product: ProductId,
    pub price: Cents,
}

/// The context fields a shopper's latest event shows (`device_type`, `last_referrer`,
/// `utm_source`); each absent when the event did not carry it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Context {
    /// `context.device.type`
    pub device: Option<String>,
    /// `context.page.referrer`
    pub referrer: Option<String>,
    /// `context.campaign.utm_source`
    pub utm_source: Option<String>,
}

/// A storefront event, reduced to what the features read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommerceEvent {
    pub user: UserId,
    pub action: Action,
    /// Present exactly when the action names a product (a click or search may carry one
    /// too: it is kept).
    pub item: Option<Item>,
    pub context: Context,
}
