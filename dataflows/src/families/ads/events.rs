//! What the ads topics carry, decoded: the events and the ids they name.

use ordered_float::OrderedFloat;
use serde::{Deserialize, Serialize};

use crate::contract::event::EventId;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CampaignId(pub String);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProductId(pub String);

/// `advertiser_id`: a campaign without a budget row is shown with its clicks' advertiser.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AdvertiserId(pub String);

/// Where on the site an ad was shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Placement {
    Home,
    Category,
    ProductDetail,
    Search,
}

impl Placement {
    pub const ALL: [Placement; 4] = [
        Placement::Home,
        Placement::Category,
        Placement::ProductDetail,
        Placement::Search,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Home => "HOME",
            Placement::Category => "CATEGORY",
            Placement::ProductDetail => "PRODUCT_DETAIL",
            Placement::Search => "SEARCH",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What the performance windows group by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Slot {
    pub campaign: CampaignId,
    pub placement: Placement,
    pub category: String,
}

/// A device's view of one ad: the attribution join key, hashed so open clicks stay small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceAd {
    pub device: u64,
    pub ad: u64,
}

impl DeviceAd {
    pub fn of(device: &str, ad: &str) -> Self {
        DeviceAd {
            device: xxhash_rust::xxh3::xxh3_64(device.as_bytes()),
            ad: xxhash_rust::xxh3::xxh3_64(ad.as_bytes()),
        }
    }
}

/// A new quality score for a product, in force from `effective_from`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QualityUpdate {
    pub product: ProductId,
    pub effective_from: u64,
    pub score: OrderedFloat<f64>,
    /// As the scoring system reported it.
    pub previous: Option<OrderedFloat<f64>>,
    pub category: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AdEvent {
    Impression(Slot),
    Click {
        slot: Slot,
        pair: DeviceAd,
        price: i64,
        advertiser: AdvertiserId,
    },
    Conversion {
        slot: Slot,
        pair: DeviceAd,
        revenue: i64,
    },
    Quality(QualityUpdate),
}

/// A click as attribution sees it: of several, the latest by `(ts, id)` wins (`id` is the
/// high half of its [`EventId`], which orders like the whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClickRef {
    pub ts: u64,
    pub id: u64,
    pub placement: Placement,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConversionRef {
    pub ts: u64,
    pub id: EventId,
    pub campaign: CampaignId,
    pub category: String,
    pub revenue: i64,
}

/// A conversion and the click it is attributed to, if any.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attribution {
    pub conversion: ConversionRef,
    pub click: Option<ClickRef>,
}
