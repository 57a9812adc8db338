//! The compact form a [`UsageEvent`] takes between the processes of a cluster.
//!
//! Half of the events a process reads cross to the process that owns their key (dedup), and
//! timely encodes whatever crosses with bincode, which writes every integer at its full width:
//! 124 bytes for an event with a 16-character id and no optional parts. Here an
//! event is one byte string: integers as LEB128 varints (signed ones zigzagged), the two keys
//! left out (each is the hash of its event id, computed again on arrival), and the optional
//! parts behind one byte of flags: about 50 bytes for the same event.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Correction, CorrectionAction, Environment, Metadata, UsageEvent};
use crate::catalog::{ContractIdx, CustomerIdx, PriceIdx, SkuIdx};
use crate::hashing::EventKey;
use crate::lineage::{KafkaMeta, Lineage};
use crate::money::Quantity;
use crate::time::EventTime;

const METADATA: u8 = 1;
const CORRECTION: u8 = 2;
const KAFKA: u8 = 4;
const OTHER_ENVIRONMENT: u8 = 8;
const STREAM_WATERMARK: u8 = 16;

impl Serialize for UsageEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // timely serializes what crosses three times (it measures twice, then writes): the
        // encoding goes into one buffer per thread, not into an allocation each time.
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUFFER.with_borrow_mut(|out| {
            out.clear();
            encode(self, out);
            s.serialize_bytes(out)
        })
    }
}

impl<'de> Deserialize<'de> for UsageEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<UsageEvent, D::Error> {
        d.deserialize_bytes(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = UsageEvent;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a usage event in meterflow's compact encoding")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<UsageEvent, E> {
        decode(bytes).map_err(E::custom)
    }

    /// A self-describing format (JSON) writes the bytes as a sequence of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UsageEvent, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(64));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        decode(&bytes).map_err(de::Error::custom)
    }
}

fn encode(e: &UsageEvent, out: &mut Vec<u8>) {
    debug_assert_eq!(e.key, EventKey::of(&e.event_id), "the key is its id's hash");
    let flags = if e.metadata.is_some() { METADATA } else { 0 }
        | if e.correction.is_some() {
            CORRECTION
        } else {
            0
        }
        | if e.kafka.is_some() { KAFKA } else { 0 }
        | match e.environment {
            Environment::Billable(_) => 0,
            Environment::Other(_) => OTHER_ENVIRONMENT,
        }
        | if e.stream_watermark != EventTime::MIN {
            STREAM_WATERMARK
        } else {
            0
        };
    out.push(flags);
    out.extend_from_slice(&e.fingerprint.to_le_bytes());
    text(out, &e.event_id);
    for ix in [e.customer.0, e.contract.0, e.sku.0, e.price.0] {
        varint(out, ix.into());
    }
    varint(out, zigzag(e.quantity.0));
    varint(out, zigzag(e.time.0.into()));
    if e.stream_watermark != EventTime::MIN {
        varint(out, zigzag(e.stream_watermark.0.into()));
    }
    match &e.environment {
        Environment::Billable(i) => out.push(*i),
        Environment::Other(name) => text(out, name),
    }
    let l = &e.lineage;
    varint(out, l.source.into());
    varint(out, zigzag(l.partition.into()));
    varint(out, l.offset.into());
    varint(out, l.record.into());
    if let Some(m) = &e.metadata {
        for v in [&m.region, &m.plan, &m.marketplace, &m.attributes] {
            match v {
                Some(v) => {
                    varint(out, v.len() as u128 + 1);
                    out.extend_from_slice(v.as_bytes());
                }
                None => out.push(0),
            }
        }
    }
    if let Some(c) = &e.correction {
        debug_assert_eq!(c.original_key, EventKey::of(&c.original_event_id));
        out.push(match c.action {
            CorrectionAction::Amend => 0,
            CorrectionAction::Void => 1,
        });
        text(out, &c.original_event_id);
        out.extend_from_slice(&c.original_fingerprint.to_le_bytes());
    }
    if let Some(k) = &e.kafka {
        text(out, &k.key);
        text(out, &k.headers);
    }
}

fn decode(bytes: &[u8]) -> Result<UsageEvent, &'static str> {
    let mut r = Reader(bytes);
    let flags = r.byte()?;
    let fingerprint = r.u64()?;
    let event_id: Box<str> = r.text()?.into();
    let customer = CustomerIdx(r.u32()?);
    let contract = ContractIdx(r.u32()?);
    let sku = SkuIdx(r.u32()?);
    let price = PriceIdx(r.u32()?);
    let quantity = Quantity(unzigzag(r.varint()?));
    let time = EventTime(r.i64()?);
    let stream_watermark = if flags & STREAM_WATERMARK != 0 {
        EventTime(r.i64()?)
    } else {
        EventTime::MIN
    };
    let environment = if flags & OTHER_ENVIRONMENT != 0 {
        Environment::Other(r.text()?.into())
    } else {
        Environment::Billable(r.byte()?)
    };
    let lineage = Lineage {
        source: r.u32()?,
        partition: i32::try_from(unzigzag(r.varint()?)).map_err(|_| "partition out of range")?,
        offset: u64::try_from(r.varint()?).map_err(|_| "offset out of range")?,
        record: r.u32()?,
    };
    let metadata = if flags & METADATA != 0 {
        Some(Box::new(Metadata {
            region: r.optional_text()?,
            plan: r.optional_text()?,
            marketplace: r.optional_text()?,
            attributes: r.optional_text()?,
        }))
    } else {
        None
    };
    let correction = if flags & CORRECTION != 0 {
        let action = match r.byte()? {
            0 => CorrectionAction::Amend,
            1 => CorrectionAction::Void,
            _ => return Err("unknown correction action"),
        };
        let original_event_id: Box<str> = r.text()?.into();
        Some(Box::new(Correction {
            action,
            original_key: EventKey::of(&original_event_id),
            original_event_id,
            original_fingerprint: r.u64()?,
        }))
    } else {
        None
    };
    let kafka = if flags & KAFKA != 0 {
        Some(Box::new(KafkaMeta {
            key: r.text()?.to_owned(),
            headers: r.text()?.to_owned(),
        }))
    } else {
        None
    };
    if !r.0.is_empty() {
        return Err("trailing bytes after a usage event");
    }
    Ok(UsageEvent {
        key: EventKey::of(&event_id),
        fingerprint,
        event_id,
        customer,
        contract,
        sku,
        price,
        quantity,
        time,
        stream_watermark,
        environment,
        metadata,
        correction,
        lineage,
        kafka,
    })
}

fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

fn unzigzag(v: u128) -> i128 {
    (v >> 1) as i128 ^ -((v & 1) as i128)
}

fn varint(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn text(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u128);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        let (&b, rest) = self.0.split_first().ok_or("a usage event cut short")?;
        self.0 = rest;
        Ok(b)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("a usage event cut short");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn varint(&mut self) -> Result<u128, &'static str> {
        let mut v: u128 = 0;
        for shift in (0..128).step_by(7) {
            let b = self.byte()?;
            v |= u128::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("a varint longer than 128 bits")
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        u32::try_from(self.varint()?).map_err(|_| "an index out of range")
    }
    fn i64(&mut self) -> Result<i64, &'static str> {
        i64::try_from(unzigzag(self.varint()?)).map_err(|_| "a time out of range")
    }
    fn text(&mut self) -> Result<&'a str, &'static str> {
        let n = usize::try_from(self.varint()?).map_err(|_| "a text too long")?;
        std::str::from_utf8(self.take(n)?).map_err(|_| "a text that is not UTF-8")
    }
    fn optional_text(&mut self) -> Result<Option<Box<str>>, &'static str> {
        let n = usize::try_from(self.varint()?).map_err(|_| "a text too long")?;
        if n == 0 {
            return Ok(None);
        }
        let bytes = self.take(n - 1)?;
        let s = std::str::from_utf8(bytes).map_err(|_| "a text that is not UTF-8")?;
        Ok(Some(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> UsageEvent {
        UsageEvent {
            key: EventKey::of(id),
            fingerprint: 0x0123_4567_89ab_cdef,
            event_id: id.into(),
            customer: CustomerIdx(86),
            contract: ContractIdx(86),
            sku: SkuIdx(2),
            price: PriceIdx(7),
            quantity: Quantity::parse("458").unwrap(),
            time: EventTime(1_788_220_807_164),
            stream_watermark: EventTime::MIN,
            environment: Environment::Billable(0),
            metadata: None,
            correction: None,
            lineage: Lineage {
                source: 0,
                partition: 0,
                offset: 1_234_567,
                record: 3,
            },
            kafka: None,
        }
    }

    fn every_part() -> UsageEvent {
        let mut e = event("evt-\u{e9}v\u{e9}nement-1");
        e.quantity = Quantity(-i128::MAX);
        e.time = EventTime(-5);
        e.stream_watermark = EventTime(i64::MAX);
        e.environment = Environment::Other("staging".into());
        e.sku = SkuIdx::INVOICE;
        e.lineage = Lineage {
            source: u32::MAX,
            partition: -1,
            offset: u64::MAX,
            record: u32::MAX,
        };
        e.metadata = Some(Box::new(Metadata {
            region: Some("eu-west-1".into()),
            plan: None,
            marketplace: Some("".into()),
            attributes: Some("{\"gpu\":\"a100\"}".into()),
        }));
        e.correction = Some(Box::new(Correction {
            action: CorrectionAction::Void,
            original_event_id: "evt-0".into(),
            original_key: EventKey::of("evt-0"),
            original_fingerprint: u64::MAX,
        }));
        e.kafka = Some(Box::new(KafkaMeta {
            key: "cus-000086".into(),
            headers: "{}".into(),
        }));
        e
    }

    #[test]
    fn every_field_survives_the_trip_between_processes() {
        for e in [event("evt-000000000000"), every_part()] {
            let bytes = bincode::serialize(&e).unwrap();
            assert_eq!(bincode::deserialize::<UsageEvent>(&bytes).unwrap(), e);
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<UsageEvent>(&json).unwrap(), e);
        }
    }

    #[test]
    fn an_event_crosses_in_under_half_the_bytes_bincode_would_take() {
        let e = event("evt-000000000000");
        let compact = bincode::serialized_size(&e).unwrap();
        // What bincode writes for the same fields at their full width.
        let full = 16 + 8 + (8 + 16) + 4 * 4 + 16 + 8 + 8 + (4 + 1) + 3 + (4 + 4 + 8 + 4);
        assert!(compact * 2 < full, "{compact} bytes, against {full}");
    }

    #[test]
    fn damaged_bytes_are_an_error_not_a_wrong_event() {
        let mut bytes = Vec::new();
        encode(&every_part(), &mut bytes);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        bytes.push(0);
        assert!(decode(&bytes).is_err());
    }
}
