//! A small catalog and event builders for tests across the workspace.

use crate::canonical::{checksum_of, sign, Canonical, CanonicalFields};
use crate::catalog::{from_toml_str, Catalog};

/// The least a contract needs: a `tokens` SKU at 1 USD per token, customer `acme` and its
/// contract `acme-1` from 2026. Tests append what they test (credits, a marketplace, ...).
pub const ONE_CONTRACT: &str = r#"
[[sku]]
id = "tokens"
unit = "tokens"

[[customer]]
id = "acme"

[[rate_card]]
id = "std"
version = 1
effective_from = "2026-01-01T00:00:00Z"
currency = "USD"

[[rate_card.price]]
sku = "tokens"
model = "per_unit"
unit_price = "1"

[[contract]]
id = "acme-1"
customer = "acme"
rate_card = "std"
starts = "2026-01-01T00:00:00Z"
"#;

/// Two customers, six SKUs (three summed; a peak, a distinct count and a gauge), a rate card with
/// a mid-month change and a pinned contract.
pub const CATALOG: &str = r#"
[[sku]]
id = "api_calls"
unit = "requests"

[[sku]]
id = "tokens"
unit = "tokens"

[[sku]]
id = "storage"
unit = "GB"

[[sku]]
id = "seats"
unit = "seats"
aggregation = "max"

[[sku]]
id = "active_users"
unit = "users"
aggregation = "unique_count"
unique_by = "user_id"

[[sku]]
id = "disk"
unit = "GB"
aggregation = "latest"

[[customer]]
id = "acme"
name = "Acme Corp"

[[customer]]
id = "globex"
name = "Globex"

[[rate_card]]
id = "standard"
version = 1
effective_from = "2026-01-01T00:00:00Z"
currency = "USD"
[[rate_card.price]]
sku = "api_calls"
model = "per_unit"
unit_price = "0.001"
[[rate_card.price]]
sku = "tokens"
model = "graduated"
tiers = [{ up_to = "1000", unit_price = "0.01", flat_fee = "5" }, { up_to = "10000", unit_price = "0.005", flat_fee = "1" }, { unit_price = "0.001" }]
[[rate_card.price]]
sku = "storage"
model = "volume"
tiers = [{ up_to = "100", unit_price = "0.1" }, { unit_price = "0.05", flat_fee = "2" }]
[[rate_card.price]]
sku = "api_calls"
region = "eu-west-1"
model = "per_unit"
unit_price = "0.0012"
[[rate_card.price]]
sku = "seats"
model = "per_unit"
unit_price = "10"
[[rate_card.price]]
sku = "active_users"
model = "graduated"
tiers = [{ up_to = "10", unit_price = "0" }, { unit_price = "2.5" }]
[[rate_card.price]]
sku = "disk"
model = "per_unit"
unit_price = "0.2"

[[rate_card]]
id = "standard"
version = 2
effective_from = "2026-11-15T00:00:00Z"
currency = "USD"
[[rate_card.price]]
sku = "api_calls"
model = "per_unit"
unit_price = "0.0008"
[[rate_card.price]]
sku = "tokens"
model = "graduated"
tiers = [{ up_to = "1000", unit_price = "0.02", flat_fee = "5" }, { up_to = "10000", unit_price = "0.004", flat_fee = "1" }, { unit_price = "0.001" }]
[[rate_card.price]]
sku = "storage"
model = "volume"
tiers = [{ up_to = "100", unit_price = "0.1" }, { unit_price = "0.04", flat_fee = "2" }]
[[rate_card.price]]
sku = "seats"
model = "per_unit"
unit_price = "12"
[[rate_card.price]]
sku = "active_users"
model = "graduated"
tiers = [{ up_to = "10", unit_price = "0" }, { unit_price = "3" }]
[[rate_card.price]]
sku = "disk"
model = "per_unit"
unit_price = "0.25"

[[contract]]
id = "acme-2026"
customer = "acme"
rate_card = "standard"
starts = "2026-01-01T00:00:00Z"

[[contract]]
id = "globex-legacy"
customer = "globex"
rate_card = "standard"
version = 1
starts = "2026-01-01T00:00:00Z"
ends = "2027-01-01T00:00:00Z"
"#;

pub fn catalog() -> Catalog {
    from_toml_str(CATALOG).expect("fixture catalog is valid")
}

/// A native event line for the fixture catalog.
pub fn event(
    id: &str,
    customer: &str,
    contract: &str,
    sku: &str,
    unit: &str,
    quantity: &str,
    time: &str,
) -> String {
    format!(
        r#"{{"event_id":"{id}","customer_id":"{customer}","contract_id":"{contract}","sku":"{sku}","unit":"{unit}","quantity":"{quantity}","timestamp":"{time}","environment":"production"}}"#
    )
}

/// `line` (an event from [`event`]) with `metadata.attributes.user_id`.
pub fn with_user(line: &str, user: &str) -> String {
    line.replace(
        r#""environment""#,
        &format!(r#""metadata":{{"attributes":{{"user_id":"{user}"}}}},"environment""#),
    )
}

/// The void of `line` (an event from [`event`] with id `original` and quantity `quantity`),
/// with its own id `id`.
pub fn void_of(line: &str, original: &str, quantity: &str, id: &str) -> String {
    line.replace(&format!(r#""{original}""#), &format!(r#""{id}""#))
        .replace(
            &format!(r#""quantity":"{quantity}""#),
            &format!(r#""quantity":"-{quantity}""#),
        )
        .replace(
            r#""environment""#,
            &format!(
                r#""correction":{{"action":"void","original_event_id":"{original}"}},"environment""#
            ),
        )
}

/// An acme api_calls event (the most common shape in tests).
pub fn api(id: &str, quantity: &str, time: &str) -> String {
    event(
        id,
        "acme",
        "acme-2026",
        "api_calls",
        "requests",
        quantity,
        time,
    )
}

/// The canonical form of [`api`]`(id, "3", time)`.
pub fn api_canonical(id: &str, time: &str) -> Vec<u8> {
    canonical_of(&CanonicalFields {
        event_id: id,
        customer_id: "acme",
        contract_id: "acme-2026",
        sku: "api_calls",
        unit: "requests",
        quantity: crate::money::Quantity::from_units(3),
        time: crate::time::EventTime::parse_rfc3339(time).expect("an RFC 3339 time"),
        environment: "production",
        ..Default::default()
    })
}

/// `line` (an event from [`event`]) with `extra` (JSON members) before its environment.
pub fn with_fields(line: &str, extra: &str) -> String {
    line.replace(r#""environment""#, &format!(r#"{extra},"environment""#))
}

/// [`api`]`(id, "3", time)`, signed under `key_id` with `secret`.
pub fn signed_api(id: &str, time: &str, key_id: &str, secret: &[u8]) -> String {
    let sig = signature(secret, &api_canonical(id, time));
    with_fields(
        &api(id, "3", time),
        &format!(r#""signature":{{"key_id":"{key_id}","hmac_sha256":"{sig}"}}"#),
    )
}

/// Canonical bytes of `fields`.
pub fn canonical_of(fields: &CanonicalFields<'_>) -> Vec<u8> {
    Canonical::default().render(fields).to_vec()
}

pub fn checksum(canonical: &[u8]) -> String {
    checksum_of(canonical)
}

pub fn signature(key: &[u8], canonical: &[u8]) -> String {
    sign(key, canonical)
}

/// Five weeks of acme's api_calls from Monday 2026-09-07, twelve events an hour (50 units each
/// by day, 10 by night), with a burst of twelve more of 500 on day 29 (a Tuesday) at 14:00 and
/// nothing on day 31 from 09:00 to 15:00: one spike and one silent meter. Returns the records
/// and the starts of the spike's and the silence's windows.
pub fn anomaly_stream() -> (Vec<String>, crate::time::EventTime, crate::time::EventTime) {
    use crate::time::EventTime;
    let monday = EventTime::from_civil(2026, 9, 7).0;
    let h = 3_600_000i64;
    let mut records = Vec::new();
    for hour in 0..35 * 24i64 {
        let (day, of_day) = (hour / 24, hour % 24);
        if day == 31 && (9..15).contains(&of_day) {
            continue;
        }
        let size = if (8..20).contains(&of_day) {
            "50"
        } else {
            "10"
        };
        for i in 0..12 {
            let t = EventTime(monday + hour * h + i * 300_000);
            records.push(api(&format!("e{hour}-{i}"), size, &t.to_string()));
        }
        if day == 29 && of_day == 14 {
            for i in 0..12 {
                let t = EventTime(monday + hour * h + i * 300_000 + 1000);
                records.push(api(&format!("burst{i}"), "500", &t.to_string()));
            }
        }
    }
    (
        records,
        EventTime(monday + (29 * 24 + 14) * h),
        EventTime(monday + (31 * 24 + 9) * h),
    )
}
