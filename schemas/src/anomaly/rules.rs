//! The `[anomalies]` rules: bucket size, baseline reach, thresholds and volume floors, with the
//! start-up check that names a bad key and its fix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, SkuIdx};
use crate::money::Quantity;
use crate::time::{EventTime, Span};

pub(crate) const DAY_MS: i64 = 86_400_000;

/// The `[anomalies]` section of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyRules {
    /// Off: no usage buckets and no anomalies are computed.
    pub enabled: bool,
    /// Bucket length; must divide a day (5m, 15m, 1h, 2h, ...).
    pub bucket: Span,
    /// Weeks of history in the weekly baseline (1 to 8).
    pub weeks: u32,
    /// Robust score (in spreads) at which a spike or drop is reported.
    pub threshold: f64,
    /// The smallest relative deviation that counts: the score's scale is at least this fraction
    /// of the expected value.
    pub relative_floor: f64,
    /// Usage per bucket below which nobody is paged: a spike must reach it, a drop or a silence
    /// must expect it.
    #[serde(with = "quantity_text")]
    pub min_volume: Quantity,
    /// `min_volume` for particular SKUs, by SKU id.
    #[serde(with = "quantity_map")]
    pub min_volume_by_sku: BTreeMap<String, Quantity>,
    /// Buckets in a row without events that make a silent meter.
    pub silent_after: u32,
    /// Events per bucket the baseline must usually hold (its median): a meter with fewer at that
    /// time of day is too sparse to judge bucket by bucket (use a longer bucket for it).
    pub min_events: u32,
    /// Cost anomalies: the gross margin (percent of what usage bills) below which a customer's
    /// SKU in a period is reported, where the rate card gives a `unit_cost`.
    pub min_margin_percent: u8,
    /// Cost (in the rate card's currency) below which a low margin pages nobody.
    #[serde(with = "quantity_text")]
    pub min_cost: Quantity,
}

impl Default for AnomalyRules {
    fn default() -> Self {
        AnomalyRules {
            enabled: true,
            bucket: Span::hours(1),
            weeks: 4,
            threshold: 6.0,
            relative_floor: 0.15,
            min_volume: Quantity::from_units(100),
            min_volume_by_sku: BTreeMap::new(),
            silent_after: 3,
            min_events: 5,
            min_margin_percent: 20,
            min_cost: Quantity::from_units(10),
        }
    }
}

impl AnomalyRules {
    /// The first problem with the rules, as (key, fix).
    pub fn check(&self) -> Result<(), (String, String)> {
        let b = self.bucket.millis();
        if b < 60_000 || DAY_MS % b != 0 {
            return Err((
                format!("anomalies.bucket: `{}` does not divide a day into whole buckets of at least a minute", self.bucket),
                "use a bucket such as 5m, 15m, 30m, 1h, 2h, 6h or 1d".into(),
            ));
        }
        if !(1..=8).contains(&self.weeks) {
            return Err((
                format!("anomalies.weeks: {} is out of range", self.weeks),
                "use 1 to 8 weeks of weekly baseline".into(),
            ));
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err((
                format!(
                    "anomalies.threshold: {} is not a positive score",
                    self.threshold
                ),
                "use a robust score such as 6".into(),
            ));
        }
        if !(self.relative_floor.is_finite() && self.relative_floor >= 0.0) {
            return Err((
                format!(
                    "anomalies.relative_floor: {} is not a fraction",
                    self.relative_floor
                ),
                "use a fraction of the expected value such as 0.15".into(),
            ));
        }
        if self.silent_after == 0 {
            return Err((
                "anomalies.silent_after: 0 buckets".into(),
                "use 1 or more buckets in a row without events".into(),
            ));
        }
        if self.min_margin_percent > 100 {
            return Err((
                format!(
                    "anomalies.min_margin_percent: {} is over 100",
                    self.min_margin_percent
                ),
                "use a gross-margin floor from 0 to 100 percent".into(),
            ));
        }
        if self.min_volume.is_negative() {
            return Err((
                "anomalies.min_volume: negative".into(),
                "use a quantity of 0 or more".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn buckets_per_day(&self) -> i64 {
        DAY_MS / self.bucket.millis()
    }

    /// How far back (in buckets) a verdict looks.
    pub fn reach(&self) -> i64 {
        self.buckets_per_day() * 7 * self.weeks.max(2) as i64 + self.silent_after as i64
    }

    /// The bucket holding `t`.
    pub fn bucket_of(&self, t: EventTime) -> i64 {
        t.0.div_euclid(self.bucket.millis())
    }

    pub fn start_of(&self, bucket: i64) -> EventTime {
        EventTime(bucket * self.bucket.millis())
    }

    pub(crate) fn min_volume_for(&self, catalog: &Catalog, sku: SkuIdx) -> Quantity {
        let id = &catalog.skus[sku.ix()].id;
        self.min_volume_by_sku
            .get(id.as_ref() as &str)
            .copied()
            .unwrap_or(self.min_volume)
    }
}

mod quantity_text {
    use crate::money::Quantity;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(q: &Quantity, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(q)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Quantity, D::Error> {
        let text = String::deserialize(d)?;
        Quantity::parse(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a quantity ({e}); write it as a string such as \"100\" or \"2.5\""
            ))
        })
    }
}

mod quantity_map {
    use std::collections::BTreeMap;

    use crate::money::Quantity;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Quantity>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            map.serialize_entry(k, &v.to_string())?;
        }
        map.end()
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Quantity>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                Quantity::parse(&v).map(|q| (k.clone(), q)).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "{k} = `{v}` is not a quantity ({e}); write it as a string such as \"100\""
                    ))
                })
            })
            .collect()
    }
}
