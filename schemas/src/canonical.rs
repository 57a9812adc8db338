//! The canonical form of a usage event: what checksums and signatures cover, and what the payload
//! fingerprint (duplicate vs conflicting reuse of an `event_id`) hashes.
//!
//! ```text
//! meterflow.v1
//! event_id=<event_id>
//! customer_id=<customer_id>
//! contract_id=<contract_id>
//! sku=<sku>
//! unit=<unit>
//! quantity=<quantity, shortest exact decimal: 12.5, 3, -0.25>
//! timestamp=<milliseconds since the Unix epoch>
//! environment=<environment>
//! region=<metadata.region or empty>
//! plan=<metadata.plan or empty>
//! marketplace=<metadata.marketplace or empty>
//! attributes=<metadata.attributes as compact JSON with keys sorted, or empty>
//! correction=<action>:<original_event_id>, or empty
//! ```
//!
//! Each line ends with `\n`. Text fields may not contain control characters, so the form is
//! unambiguous. `checksum` is `sha256:` + hex SHA-256 of these bytes; `signature.hmac_sha256` is
//! hex HMAC-SHA256 of them under the producer's key. The payload fingerprint hashes everything
//! after the `event_id` line.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::hashing::fingerprint;
use crate::money::{push_scaled, Quantity};
use crate::time::EventTime;

/// The fields of the canonical form, already parsed. `Default` is empty metadata and no
/// correction.
#[derive(Default)]
pub struct CanonicalFields<'a> {
    pub event_id: &'a str,
    pub customer_id: &'a str,
    pub contract_id: &'a str,
    pub sku: &'a str,
    pub unit: &'a str,
    pub quantity: Quantity,
    pub time: EventTime,
    pub environment: &'a str,
    pub region: &'a str,
    pub plan: &'a str,
    pub marketplace: &'a str,
    pub attributes: &'a str,
    /// `(action, original_event_id)`
    pub correction: Option<(&'a str, &'a str)>,
}

/// A rendered canonical form; keeps its buffer between events.
#[derive(Default)]
pub struct Canonical {
    buf: Vec<u8>,
    payload_start: usize,
}

impl Canonical {
    pub fn render(&mut self, f: &CanonicalFields<'_>) -> &[u8] {
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(b"meterflow.v1\nevent_id=");
        b.extend_from_slice(f.event_id.as_bytes());
        b.push(b'\n');
        self.payload_start = b.len();
        for (k, v) in [
            ("customer_id=", f.customer_id),
            ("contract_id=", f.contract_id),
            ("sku=", f.sku),
            ("unit=", f.unit),
        ] {
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(v.as_bytes());
            b.push(b'\n');
        }
        b.extend_from_slice(b"quantity=");
        push_scaled(b, f.quantity.0, Quantity::SCALE);
        b.extend_from_slice(b"\ntimestamp=");
        b.extend_from_slice(itoa::Buffer::new().format(f.time.millis()).as_bytes());
        b.push(b'\n');
        for (k, v) in [
            ("environment=", f.environment),
            ("region=", f.region),
            ("plan=", f.plan),
            ("marketplace=", f.marketplace),
            ("attributes=", f.attributes),
        ] {
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(v.as_bytes());
            b.push(b'\n');
        }
        b.extend_from_slice(b"correction=");
        if let Some((action, original)) = f.correction {
            b.extend_from_slice(action.as_bytes());
            b.push(b':');
            b.extend_from_slice(original.as_bytes());
        }
        b.push(b'\n');
        &self.buf
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Fingerprint of the payload part of the last render.
    pub fn payload_fingerprint(&self) -> u64 {
        fingerprint(&self.buf[self.payload_start..])
    }

    /// Checks `sha256:<hex>` against the last render.
    pub fn checksum_matches(&self, checksum: &str) -> bool {
        let Some(hex) = checksum.strip_prefix("sha256:") else {
            return false;
        };
        let digest = Sha256::digest(&self.buf);
        hex_eq(hex, &digest)
    }

    /// Checks a hex HMAC-SHA256 against the last render, in constant time.
    pub fn signature_matches(&self, key: &[u8], hex: &str) -> bool {
        let Some(mac_bytes) = decode_hex32(hex) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
        mac.update(&self.buf);
        mac.verify_slice(&mac_bytes).is_ok()
    }
}

/// `sha256:<hex>` of some canonical bytes (for producers and tests).
pub fn checksum_of(canonical: &[u8]) -> String {
    format!("sha256:{}", to_hex(&Sha256::digest(canonical)))
}

/// Hex HMAC-SHA256 of some canonical bytes (for producers and tests).
pub fn sign(key: &[u8], canonical: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(canonical);
    to_hex(&mac.finalize().into_bytes())
}

pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

fn hex_eq(hex: &str, bytes: &[u8]) -> bool {
    decode_hex32(hex).is_some_and(|d| d[..] == bytes[..])
}

/// Compact JSON of `(key, raw scalar)` pairs with keys sorted; empty when there are none.
pub fn canonical_attributes(attrs: &[(std::borrow::Cow<'_, str>, &str)]) -> String {
    if attrs.is_empty() {
        return String::new();
    }
    let mut sorted: Vec<_> = attrs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut s = String::from("{");
    for (i, (k, v)) in sorted.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&serde_json::to_string(k.as_ref()).expect("strings serialize"));
        s.push(':');
        s.push_str(v.trim());
    }
    s.push('}');
    s
}
