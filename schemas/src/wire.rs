//! Decoding one JSON record — a native meterflow event or a CloudEvents 1.0 envelope — into its
//! raw fields, without judging them yet (that is `validate.rs`).
//!
//! Strings are borrowed from the input when they contain no escapes. A field of the wrong JSON
//! type is reported with its name (`invalid_field`), an unexpected key as `unknown_field`, and
//! anything that is not JSON as `malformed_json`.
//!
//! CloudEvents mapping: `id` → `event_id`, `time` → `timestamp`, `subject` → `customer_id`
//! (unless `data.customer_id` is given; both must then agree), `source` → producer, and `data`
//! holds the remaining native fields. Extension attributes are ignored.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer;
use serde_json::value::RawValue;

use crate::rejection::{Reason, Rejection};

pub type Text<'a> = Cow<'a, str>;

/// A JSON string, borrowed when possible.
struct TextSeed;

impl<'de> DeserializeSeed<'de> for TextSeed {
    type Value = Text<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Text<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// The raw fields of one usage event, in native form (CloudEvents already mapped).
#[derive(Debug, Default)]
pub struct WireEvent<'a> {
    pub event_id: Option<Text<'a>>,
    pub customer_id: Option<Text<'a>>,
    pub contract_id: Option<Text<'a>>,
    pub sku: Option<Text<'a>>,
    pub unit: Option<Text<'a>>,
    /// The quantity as written: a JSON number's text, or a JSON string's content.
    pub quantity: Option<Text<'a>>,
    pub timestamp: Option<Text<'a>>,
    pub environment: Option<Text<'a>>,
    pub metadata: WireMetadata<'a>,
    pub checksum: Option<Text<'a>>,
    pub signature: Option<WireSignature<'a>>,
    pub correction: Option<WireCorrection<'a>>,
    /// CloudEvents `source`, when the record came in an envelope.
    pub producer: Option<Text<'a>>,
}

#[derive(Debug, Default)]
pub struct WireMetadata<'a> {
    pub region: Option<Text<'a>>,
    pub plan: Option<Text<'a>>,
    pub marketplace: Option<Text<'a>>,
    /// `(key, raw JSON scalar)`, in input order.
    pub attributes: Vec<(Text<'a>, &'a str)>,
}

#[derive(Debug)]
pub struct WireSignature<'a> {
    pub key_id: Text<'a>,
    pub hmac_sha256: Text<'a>,
}

#[derive(Debug)]
pub struct WireCorrection<'a> {
    pub action: Text<'a>,
    pub original_event_id: Text<'a>,
}

/// Field errors travel through serde as custom messages with these prefixes.
const FIELD: &str = "@field:";
const UNKNOWN: &str = "@unknown:";

fn field_error<E: de::Error>(field: &str, e: impl fmt::Display) -> E {
    E::custom(format_args!("{FIELD}{field}@{e}"))
}

fn unknown<E: de::Error>(field: &str) -> E {
    E::custom(format_args!("{UNKNOWN}{field}@"))
}

fn take<'de, A: MapAccess<'de>, T>(
    slot: &mut Option<T>,
    name: &str,
    map: &mut A,
    seed: impl DeserializeSeed<'de, Value = T>,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(field_error(name, "appears twice"));
    }
    *slot = Some(
        map.next_value_seed(seed)
            .map_err(|e| field_error(name, e))?,
    );
    Ok(())
}

/// Raw JSON of a quantity: number text, or string content.
struct QuantitySeed;

impl<'de> DeserializeSeed<'de> for QuantitySeed {
    type Value = Text<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Text<'de>, D::Error> {
        let raw: &'de RawValue = serde::Deserialize::deserialize(d)?;
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => {
                if text.contains('\\') {
                    serde_json::from_str::<String>(text)
                        .map(Cow::Owned)
                        .map_err(de::Error::custom)
                } else {
                    Ok(Cow::Borrowed(&text[1..text.len() - 1]))
                }
            }
            Some(b'-' | b'0'..=b'9') => Ok(Cow::Borrowed(text)),
            _ => Err(de::Error::custom(format_args!(
                "expected a decimal number or string, found {text}"
            ))),
        }
    }
}

/// Which keys a map may hold: a native top level, a CloudEvents `data` object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Native,
    Data,
}

/// Fills one native field if `key` names one. Returns false for other keys.
fn native_field<'de, A: MapAccess<'de>>(
    ev: &mut WireEvent<'de>,
    key: &str,
    place: Place,
    map: &mut A,
) -> Result<bool, A::Error> {
    match key {
        "event_id" if place == Place::Native => take(&mut ev.event_id, key, map, TextSeed)?,
        "timestamp" if place == Place::Native => take(&mut ev.timestamp, key, map, TextSeed)?,
        "customer_id" => take(&mut ev.customer_id, key, map, TextSeed)?,
        "contract_id" => take(&mut ev.contract_id, key, map, TextSeed)?,
        "sku" => take(&mut ev.sku, key, map, TextSeed)?,
        "unit" => take(&mut ev.unit, key, map, TextSeed)?,
        "quantity" => take(&mut ev.quantity, key, map, QuantitySeed)?,
        "environment" => take(&mut ev.environment, key, map, TextSeed)?,
        "checksum" => take(&mut ev.checksum, key, map, TextSeed)?,
        "metadata" => {
            let mut seen = None;
            take(&mut seen, key, map, MetadataSeed(&mut ev.metadata))?;
        }
        "signature" => take(&mut ev.signature, key, map, SignatureSeed)?,
        "correction" => take(&mut ev.correction, key, map, CorrectionSeed)?,
        _ => return Ok(false),
    }
    Ok(true)
}

struct MetadataSeed<'m, 'a>(&'m mut WireMetadata<'a>);

impl<'de> DeserializeSeed<'de> for MetadataSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MetadataSeed<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let m = self.0;
        while let Some(key) = map.next_key_seed(TextSeed)? {
            match key.as_ref() {
                "region" => take(&mut m.region, "metadata.region", &mut map, TextSeed)?,
                "plan" => take(&mut m.plan, "metadata.plan", &mut map, TextSeed)?,
                "marketplace" => take(
                    &mut m.marketplace,
                    "metadata.marketplace",
                    &mut map,
                    TextSeed,
                )?,
                "attributes" => {
                    let mut seen = None;
                    take(
                        &mut seen,
                        "metadata.attributes",
                        &mut map,
                        AttributesSeed(&mut m.attributes),
                    )?;
                }
                other => return Err(unknown(&format!("metadata.{other}"))),
            }
        }
        Ok(())
    }
}

struct AttributesSeed<'m, 'a>(&'m mut Vec<(Text<'a>, &'a str)>);

impl<'de> DeserializeSeed<'de> for AttributesSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AttributesSeed<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of string, number or boolean values")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(TextSeed)? {
            let raw: &'de RawValue = map.next_value()?;
            let text = raw.get();
            if matches!(text.as_bytes().first(), Some(b'{' | b'[')) {
                return Err(de::Error::custom(format_args!(
                    "attribute `{key}` must be a string, number or boolean, not an object or array"
                )));
            }
            if self.0.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format_args!(
                    "attribute `{key}` appears twice"
                )));
            }
            self.0.push((key, text));
        }
        Ok(())
    }
}

struct SignatureSeed;

impl<'de> DeserializeSeed<'de> for SignatureSeed {
    type Value = WireSignature<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SignatureSeed {
    type Value = WireSignature<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with key_id and hmac_sha256")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut key_id, mut mac) = (None, None);
        while let Some(key) = map.next_key_seed(TextSeed)? {
            match key.as_ref() {
                "key_id" => take(&mut key_id, "signature.key_id", &mut map, TextSeed)?,
                "hmac_sha256" => take(&mut mac, "signature.hmac_sha256", &mut map, TextSeed)?,
                other => return Err(unknown(&format!("signature.{other}"))),
            }
        }
        match (key_id, mac) {
            (Some(key_id), Some(hmac_sha256)) => Ok(WireSignature {
                key_id,
                hmac_sha256,
            }),
            _ => Err(de::Error::custom("needs both key_id and hmac_sha256")),
        }
    }
}

struct CorrectionSeed;

impl<'de> DeserializeSeed<'de> for CorrectionSeed {
    type Value = WireCorrection<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CorrectionSeed {
    type Value = WireCorrection<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with action and original_event_id")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut action, mut original) = (None, None);
        while let Some(key) = map.next_key_seed(TextSeed)? {
            match key.as_ref() {
                "action" => take(&mut action, "correction.action", &mut map, TextSeed)?,
                "original_event_id" => take(
                    &mut original,
                    "correction.original_event_id",
                    &mut map,
                    TextSeed,
                )?,
                other => return Err(unknown(&format!("correction.{other}"))),
            }
        }
        match (action, original) {
            (Some(action), Some(original_event_id)) => Ok(WireCorrection {
                action,
                original_event_id,
            }),
            _ => Err(de::Error::custom("needs both action and original_event_id")),
        }
    }
}

/// CloudEvents context attributes of an envelope.
#[derive(Default)]
struct Envelope<'a> {
    specversion: Option<Text<'a>>,
    id: Option<Text<'a>>,
    source: Option<Text<'a>>,
    kind: Option<Text<'a>>,
    subject: Option<Text<'a>>,
    time: Option<Text<'a>>,
    datacontenttype: Option<Text<'a>>,
    data: Option<Box<WireEvent<'a>>>,
    data_base64: bool,
}

/// The top level: native fields and CloudEvents attributes side by side; which one it was is
/// settled after the whole object is read. Native fields are written straight into the caller's
/// [`WireEvent`], which is large, so it is never moved.
struct TopLevel<'m, 'a> {
    native: &'m mut WireEvent<'a>,
    envelope: Envelope<'a>,
    /// First key that is neither (an extension attribute if this is a CloudEvent).
    other_key: Option<String>,
    any_native: Option<&'static str>,
}

struct TopSeed<'t, 'm, 'a>(&'t mut TopLevel<'m, 'a>);

impl<'de> Visitor<'de> for TopSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let top = self.0;
        let e = &mut top.envelope;
        while let Some(key) = map.next_key_seed(TextSeed)? {
            let k = key.as_ref();
            if native_field(top.native, k, Place::Native, &mut map)? {
                if top.any_native.is_none() {
                    top.any_native = NATIVE_NAMES.iter().find(|n| **n == k).copied();
                }
                continue;
            }
            match k {
                "specversion" => take(&mut e.specversion, k, &mut map, TextSeed)?,
                "id" => take(&mut e.id, k, &mut map, TextSeed)?,
                "source" => take(&mut e.source, k, &mut map, TextSeed)?,
                "type" => take(&mut e.kind, k, &mut map, TextSeed)?,
                "subject" => take(&mut e.subject, k, &mut map, TextSeed)?,
                "time" => take(&mut e.time, k, &mut map, TextSeed)?,
                "datacontenttype" => take(&mut e.datacontenttype, k, &mut map, TextSeed)?,
                "data" => take(&mut e.data, k, &mut map, DataSeed)?,
                "data_base64" => {
                    e.data_base64 = true;
                    map.next_value::<IgnoredAny>()?;
                }
                _ => {
                    top.other_key.get_or_insert_with(|| k.to_owned());
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

const NATIVE_NAMES: [&str; 12] = [
    "event_id",
    "timestamp",
    "customer_id",
    "contract_id",
    "sku",
    "unit",
    "quantity",
    "environment",
    "checksum",
    "metadata",
    "signature",
    "correction",
];

struct DataSeed;

impl<'de> DeserializeSeed<'de> for DataSeed {
    type Value = Box<WireEvent<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DataSeed {
    type Value = Box<WireEvent<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut ev = Box::<WireEvent>::default();
        while let Some(key) = map.next_key_seed(TextSeed)? {
            if !native_field(&mut ev, &key, Place::Data, &mut map)? {
                return Err(unknown(&format!("data.{key}")));
            }
        }
        Ok(ev)
    }
}

/// Settings for envelope acceptance.
#[derive(Clone, Debug)]
pub struct EnvelopeRules {
    /// Accepted CloudEvents `type` values.
    pub cloudevent_types: Vec<String>,
}

impl Default for EnvelopeRules {
    fn default() -> Self {
        EnvelopeRules {
            cloudevent_types: vec!["com.meterflow.usage.v1".into()],
        }
    }
}

/// Decodes one record into `out` (a default [`WireEvent`]). Errors are rejections without raw
/// payload or lineage (the caller adds them).
pub fn decode_into<'a>(
    bytes: &'a [u8],
    rules: &EnvelopeRules,
    out: &mut WireEvent<'a>,
) -> Result<(), Rejection> {
    // One UTF-8 check for the whole record; the parser then skips it per string.
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Rejection::new(
            Reason::MalformedJson,
            None,
            format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
        )
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let mut top = TopLevel {
        native: out,
        envelope: Envelope::default(),
        other_key: None,
        any_native: None,
    };
    de.deserialize_map(TopSeed(&mut top))
        .and_then(|_| de.end())
        .map_err(|e| match text.strip_prefix('\u{FEFF}') {
            // Said apart, as the fix is the producer's setting, not its JSON.
            Some(_) => Rejection::new(
                Reason::MalformedJson,
                None,
                "starts with a byte-order mark (U+FEFF): JSON text must not have one (RFC 8259 \
                 section 8.1); write UTF-8 without BOM"
                    .to_string(),
            ),
            None => classify(e),
        })?;
    if top.envelope.specversion.is_none() {
        let env = &top.envelope;
        let ce_key = [
            ("id", env.id.is_some()),
            ("source", env.source.is_some()),
            ("type", env.kind.is_some()),
            ("time", env.time.is_some()),
            ("data", env.data.is_some()),
        ]
        .into_iter()
        .find(|(_, present)| *present)
        .map(|(k, _)| k.to_owned());
        if let Some(k) = ce_key.or(top.other_key) {
            return Err(Rejection::new(
                Reason::UnknownField,
                Some(&k),
                format!("unknown field `{k}` (a CloudEvent would also need `specversion`)"),
            ));
        }
        return Ok(());
    }
    if let Some(name) = top.any_native {
        return Err(Rejection::new(
            Reason::UnknownField,
            Some(name),
            format!("`{name}` belongs inside `data` in a CloudEvents envelope"),
        ));
    }
    *top.native = from_cloudevent(top.envelope, rules)?;
    Ok(())
}

/// Decodes one record (see [`decode_into`]).
pub fn decode<'a>(bytes: &'a [u8], rules: &EnvelopeRules) -> Result<WireEvent<'a>, Rejection> {
    let mut ev = WireEvent::default();
    decode_into(bytes, rules, &mut ev)?;
    Ok(ev)
}

fn from_cloudevent<'a>(
    env: Envelope<'a>,
    rules: &EnvelopeRules,
) -> Result<WireEvent<'a>, Rejection> {
    let bad = |msg: String| Err(Rejection::new(Reason::UnsupportedEnvelope, None, msg));
    if env.specversion.as_deref() != Some("1.0") {
        return bad(format!(
            "CloudEvents specversion {:?} is not supported (expected \"1.0\")",
            env.specversion.as_deref().unwrap_or("")
        ));
    }
    match env.kind.as_deref() {
        Some(t) if rules.cloudevent_types.iter().any(|x| x == t) => {}
        Some(t) => {
            return bad(format!(
                "CloudEvents type `{t}` is not a configured usage type ({})",
                rules.cloudevent_types.join(", ")
            ))
        }
        None => {
            return Err(Rejection::new(
                Reason::MissingField,
                Some("type"),
                "missing CloudEvents attribute `type`",
            ))
        }
    }
    if let Some(ct) = env.datacontenttype.as_deref() {
        if !ct.starts_with("application/json") {
            return bad(format!("datacontenttype `{ct}` is not application/json"));
        }
    }
    if env.data_base64 {
        return bad("data_base64 is not supported; send data as a JSON object".into());
    }
    let Some(mut ev) = env.data else {
        return Err(Rejection::new(
            Reason::MissingField,
            Some("data"),
            "missing CloudEvents `data`",
        ));
    };
    if env.source.is_none() {
        return Err(Rejection::new(
            Reason::MissingField,
            Some("source"),
            "missing CloudEvents attribute `source`",
        ));
    }
    ev.event_id = env.id;
    ev.timestamp = env.time;
    ev.producer = env.source;
    match (&ev.customer_id, env.subject) {
        (None, subject) => ev.customer_id = subject,
        (Some(c), Some(s)) if *c != s => {
            return Err(Rejection::new(
                Reason::InvalidField,
                Some("subject"),
                format!("subject `{s}` disagrees with data.customer_id `{c}`"),
            ));
        }
        _ => {}
    }
    Ok(*ev)
}

/// Turns a serde_json error into a rejection with a reason and the field at fault.
fn classify(e: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    let msg = e.to_string();
    match e.classify() {
        Category::Data => {
            let trimmed = msg.split(" at line ").next().unwrap_or(&msg);
            if let Some(rest) = trimmed.strip_prefix(UNKNOWN) {
                let field = rest.trim_end_matches('@');
                return Rejection::new(
                    Reason::UnknownField,
                    Some(field),
                    format!("unknown field `{field}`"),
                );
            }
            if let Some(rest) = trimmed.strip_prefix(FIELD) {
                // Nested fields report the innermost name first; keep the most specific one.
                let mut parts = rest.splitn(2, '@');
                let field = parts.next().unwrap_or("");
                let mut detail = parts.next().unwrap_or("");
                let mut field = field.to_owned();
                while let Some(inner) = detail.strip_prefix(FIELD) {
                    let mut p = inner.splitn(2, '@');
                    field = p.next().unwrap_or("").to_owned();
                    detail = p.next().unwrap_or("");
                }
                if let Some(inner) = detail.strip_prefix(UNKNOWN) {
                    let f = inner.trim_end_matches('@');
                    return Rejection::new(
                        Reason::UnknownField,
                        Some(f),
                        format!("unknown field `{f}`"),
                    );
                }
                let reason = if field == "quantity" {
                    Reason::InvalidQuantity
                } else {
                    Reason::InvalidField
                };
                return Rejection::new(reason, Some(&field), format!("field `{field}`: {detail}"));
            }
            Rejection::new(
                Reason::MalformedJson,
                None,
                format!("not a JSON object: {msg}"),
            )
        }
        _ => Rejection::new(
            Reason::MalformedJson,
            None,
            format!("malformed JSON: {msg}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> WireEvent<'_> {
        decode(s.as_bytes(), &EnvelopeRules::default()).unwrap()
    }
    fn err(s: &str) -> Rejection {
        decode(s.as_bytes(), &EnvelopeRules::default()).unwrap_err()
    }

    #[test]
    fn native_fields_are_borrowed() {
        let ev = ok(
            r#"{"event_id":"e1","customer_id":"c","quantity":12.50,"metadata":{"region":"eu","attributes":{"model":"gpt","n":3}}}"#,
        );
        assert!(matches!(ev.event_id, Some(Cow::Borrowed("e1"))));
        assert_eq!(ev.quantity.as_deref(), Some("12.50"));
        assert_eq!(ev.metadata.region.as_deref(), Some("eu"));
        assert_eq!(ev.metadata.attributes.len(), 2);
        assert_eq!(ok(r#"{"quantity":"7"}"#).quantity.as_deref(), Some("7"));
        assert_eq!(ok(r#"{"sku":"a\"b"}"#).sku.as_deref(), Some("a\"b"));
    }

    #[test]
    fn reasons_name_the_field() {
        let r = err(r#"{"event_id":5}"#);
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::InvalidField, Some("event_id"))
        );
        let r = err(r#"{"quantity":true}"#);
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::InvalidQuantity, Some("quantity"))
        );
        let r = err(r#"{"metadata":{"region":1}}"#);
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::InvalidField, Some("metadata.region"))
        );
        let r = err(r#"{"metadata":{"colour":"red"}}"#);
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::UnknownField, Some("metadata.colour"))
        );
        let r = err(r#"{"event_id":"a","quantiy":1}"#);
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::UnknownField, Some("quantiy"))
        );
        let r = err(r#"{"event_id":"a","event_id":"b"}"#);
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::InvalidField, Some("event_id"))
        );
        assert_eq!(err(r#"{"event_id":"a""#).reason, Reason::MalformedJson);
        assert_eq!(err("[1,2]").reason, Reason::MalformedJson);
        let bom = err("\u{FEFF}{\"event_id\":\"a\"}");
        assert_eq!(bom.reason, Reason::MalformedJson);
        assert!(bom.message.contains("byte-order mark"), "{}", bom.message);
        assert!(!err("{\"event_id\":").message.contains("byte-order"));
        assert_eq!(err(r#"{"a":1} trailing"#).reason, Reason::MalformedJson);
    }

    #[test]
    fn the_published_json_schema_lists_exactly_the_decoded_fields() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../usage_event.schema.json")).unwrap();
        let mut published: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        published.sort();
        let mut decoded = NATIVE_NAMES.to_vec();
        decoded.sort();
        assert_eq!(published, decoded);
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        required.sort();
        // Every required field is reported as missing_field by validation.
        for field in &required {
            let line = crate::fixtures::api("e", "1", "2026-11-01T00:00:00Z");
            let without = strip_field(&line, field);
            let mut v = crate::validate::Validator::new(
                Default::default(),
                std::sync::Arc::new(crate::fixtures::catalog()),
            );
            let r = v
                .validate(
                    without.as_bytes(),
                    Default::default(),
                    crate::time::EventTime::now(),
                )
                .unwrap_err();
            assert_eq!(
                (r.reason, r.field.as_deref()),
                (Reason::MissingField, Some(*field)),
                "{without}"
            );
        }
    }

    fn strip_field(line: &str, field: &str) -> String {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        v.remove(field);
        serde_json::Value::Object(v).to_string()
    }

    #[test]
    fn cloudevents_map_to_native_fields() {
        let ev = ok(
            r#"{"specversion":"1.0","id":"e1","source":"/api","type":"com.meterflow.usage.v1","subject":"acme","time":"2026-11-01T00:00:00Z","traceparent":"x","data":{"contract_id":"c","sku":"s","unit":"u","quantity":1}}"#,
        );
        assert_eq!(ev.event_id.as_deref(), Some("e1"));
        assert_eq!(ev.customer_id.as_deref(), Some("acme"));
        assert_eq!(ev.timestamp.as_deref(), Some("2026-11-01T00:00:00Z"));
        assert_eq!(ev.producer.as_deref(), Some("/api"));
        let r = err(r#"{"specversion":"1.0","id":"e1","source":"/api","type":"other","data":{}}"#);
        assert_eq!(r.reason, Reason::UnsupportedEnvelope);
        let r = err(
            r#"{"specversion":"1.0","id":"e1","source":"/api","type":"com.meterflow.usage.v1","data":{"event_id":"x"}}"#,
        );
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::UnknownField, Some("data.event_id"))
        );
        let r = err(
            r#"{"specversion":"1.0","id":"e1","source":"/a","type":"com.meterflow.usage.v1","subject":"x","data":{"customer_id":"y"}}"#,
        );
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (Reason::InvalidField, Some("subject"))
        );
    }
}
