use super::*;
use crate::fixtures::{self, api, event};

const NOW: &str = "2026-11-22T00:00:00Z";

fn validator(rules: ValidationRules) -> Validator {
    Validator::new(Arc::new(rules), Arc::new(fixtures::catalog()))
}

fn run(v: &mut Validator, line: &str) -> Result<UsageEvent, Rejection> {
    v.validate(
        line.as_bytes(),
        Lineage {
            source: 0,
            partition: 0,
            offset: 7,
            record: 0,
        },
        EventTime::parse_rfc3339(NOW).unwrap(),
    )
}

fn reason(line: &str) -> (Reason, Option<String>) {
    let r = run(&mut validator(ValidationRules::default()), line).unwrap_err();
    (r.reason, r.field.map(|f| f.to_string()))
}

#[test]
fn a_good_event_resolves_against_the_catalog() {
    let mut v = validator(ValidationRules::default());
    let ev = run(&mut v, &api("e1", "12.5", "2026-11-01T10:00:00Z")).unwrap();
    let cat = v.catalog().clone();
    assert_eq!(cat.customers[ev.customer.ix()].id, "acme");
    assert_eq!(ev.quantity, Quantity::parse("12.5").unwrap());
    assert_eq!(cat.price(ev.price).version, 1);
    assert!(ev.billable());
    // After the mid-month change the same contract is priced by version 2.
    let ev2 = run(&mut v, &api("e2", "1", "2026-11-16T10:00:00Z")).unwrap();
    assert_eq!(cat.price(ev2.price).version, 2);
    // The pinned contract stays on version 1.
    let pinned = run(
        &mut v,
        &event(
            "e3",
            "globex",
            "globex-legacy",
            "api_calls",
            "requests",
            "1",
            "2026-11-16T10:00:00Z",
        ),
    )
    .unwrap();
    assert_eq!(cat.price(pinned.price).version, 1);
}

#[test]
fn every_catalog_reason_is_reported() {
    let t = "2026-11-01T10:00:00Z";
    assert_eq!(
        reason(&event(
            "e",
            "nobody",
            "acme-2026",
            "api_calls",
            "requests",
            "1",
            t
        ))
        .0,
        Reason::UnknownCustomer
    );
    assert_eq!(
        reason(&event("e", "acme", "nope", "api_calls", "requests", "1", t)).0,
        Reason::UnknownContract
    );
    assert_eq!(
        reason(&event(
            "e",
            "acme",
            "globex-legacy",
            "api_calls",
            "requests",
            "1",
            t
        ))
        .0,
        Reason::ContractCustomerMismatch
    );
    assert_eq!(
        reason(&event(
            "e",
            "globex",
            "globex-legacy",
            "api_calls",
            "requests",
            "1",
            "2027-01-01T00:00:00Z"
        ))
        .0,
        Reason::TimestampInFuture
    );
    assert_eq!(
        reason(&api("e", "1", "2025-06-01T00:00:00Z")).0,
        Reason::ContractInactive
    );
    assert_eq!(
        reason(&event(
            "e",
            "acme",
            "acme-2026",
            "gpu_hours",
            "hours",
            "1",
            t
        ))
        .0,
        Reason::SkuNotInRateCard
    );
    assert_eq!(
        reason(&event("e", "acme", "acme-2026", "storage", "TB", "1", t)),
        (Reason::UnitMismatch, Some("unit".into()))
    );
}

#[test]
fn field_and_value_reasons() {
    let t = "2026-11-01T10:00:00Z";
    assert_eq!(reason("not json").0, Reason::MalformedJson);
    assert_eq!(
        reason(&api("e", "1", t).replace(r#""sku":"api_calls","#, "")),
        (Reason::MissingField, Some("sku".into()))
    );
    assert_eq!(reason(&api("e", "-1", t)).0, Reason::NegativeQuantity);
    assert_eq!(reason(&api("e", "NaN", t)).0, Reason::InvalidQuantity);
    assert_eq!(reason(&api("e", "1e30", t)).0, Reason::QuantityTooLarge);
    assert_eq!(
        reason(&api("e", "0.0000000001", t)).0,
        Reason::InvalidQuantity
    );
    assert_eq!(
        reason(&api("e", "1", "2026-11-01 10:00")).0,
        Reason::InvalidTimestamp
    );
    assert_eq!(
        reason(&api("e", "1", "2026-11-22T00:06:00Z")).0,
        Reason::TimestampInFuture
    );
    assert_eq!(
        reason(&api("", "1", t)),
        (Reason::InvalidField, Some("event_id".into()))
    );
    assert_eq!(
        reason(&api("a\\nb", "1", t)),
        (Reason::InvalidField, Some("event_id".into()))
    );
    let big = format!(r#"{{"event_id":"{}"}}"#, "x".repeat(70_000));
    assert_eq!(reason(&big).0, Reason::PayloadTooLarge);
}

#[test]
fn rejections_keep_the_raw_record_and_lineage() {
    let line = api("e9", "-4", "2026-11-01T10:00:00Z");
    let r = run(&mut validator(ValidationRules::default()), &line).unwrap_err();
    assert_eq!(&*r.raw, line.as_str());
    assert_eq!(
        r.lineage,
        Lineage {
            source: 0,
            partition: 0,
            offset: 7,
            record: 0
        }
    );
    assert_eq!(r.event_id.as_deref(), Some("e9"));
    assert!(!r.reason.remediation().is_empty());
}

#[test]
fn corrections_may_be_negative_and_voids_must_mirror_the_original() {
    let mut v = validator(ValidationRules::default());
    let t = "2026-11-01T10:00:00Z";
    let original = run(&mut v, &api("orig", "5", t)).unwrap();
    let void = api("v1", "-5", t).replace(
        r#""environment""#,
        r#""correction":{"action":"void","original_event_id":"orig"},"environment""#,
    );
    let void = run(&mut v, &void).unwrap();
    let c = void.correction.as_ref().unwrap();
    assert_eq!(c.original_key, original.key);
    assert_eq!(
        c.original_fingerprint, original.fingerprint,
        "a void reproduces its original's fingerprint"
    );
    let wrong = api("v2", "-4", t).replace(
        r#""environment""#,
        r#""correction":{"action":"void","original_event_id":"orig"},"environment""#,
    );
    assert_ne!(
        run(&mut v, &wrong)
            .unwrap()
            .correction
            .unwrap()
            .original_fingerprint,
        original.fingerprint
    );
    let amend = api("a1", "-2", t).replace(
        r#""environment""#,
        r#""correction":{"action":"amend","original_event_id":"orig"},"environment""#,
    );
    assert_eq!(
        run(&mut v, &amend).unwrap().quantity,
        Quantity::from_units(-2)
    );
    let positive_void = api("v3", "5", t).replace(
        r#""environment""#,
        r#""correction":{"action":"void","original_event_id":"orig"},"environment""#,
    );
    assert_eq!(
        run(&mut v, &positive_void).unwrap_err().reason,
        Reason::InvalidQuantity
    );
}

#[test]
fn the_fingerprint_ignores_formatting_but_not_content() {
    let mut v = validator(ValidationRules::default());
    let t = "2026-11-01T10:00:00Z";
    let a = run(&mut v, &api("e", "12.50", t)).unwrap();
    let b = run(&mut v, &api("e", "12.5", "2026-11-01T11:00:00+01:00")).unwrap();
    let c = run(&mut v, &api("e", "12.6", t)).unwrap();
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_ne!(a.fingerprint, c.fingerprint);
}

#[test]
fn integrity_checksums_and_signatures() {
    let t = "2026-11-01T10:00:00Z";
    let canon = fixtures::api_canonical("e1", t);
    let with = |extra: &str| {
        api("e1", "3", t).replace(r#""environment""#, &format!(r#"{extra},"environment""#))
    };
    let mut rules = ValidationRules::default();
    rules.keys.insert("producer-a".into(), b"secret".to_vec());
    rules.integrity = IntegrityMode::Require;
    let mut v = validator(rules);
    assert!(run(
        &mut v,
        &with(&format!(r#""checksum":"{}""#, fixtures::checksum(&canon)))
    )
    .is_ok());
    let sig = fixtures::signature(b"secret", &canon);
    assert!(run(
        &mut v,
        &with(&format!(
            r#""signature":{{"key_id":"producer-a","hmac_sha256":"{sig}"}}"#
        ))
    )
    .is_ok());
    assert_eq!(
        run(
            &mut v,
            &with(&format!(
                r#""signature":{{"key_id":"producer-b","hmac_sha256":"{sig}"}}"#
            ))
        )
        .unwrap_err()
        .reason,
        Reason::UnknownSigningKey
    );
    let tampered = with(&format!(r#""checksum":"{}""#, fixtures::checksum(&canon)))
        .replace(r#""quantity":"3""#, r#""quantity":"30""#);
    assert_eq!(
        run(&mut v, &tampered).unwrap_err().reason,
        Reason::BadChecksum
    );
    let bad_sig = fixtures::signature(b"other", &canon);
    assert_eq!(
        run(
            &mut v,
            &with(&format!(
                r#""signature":{{"key_id":"producer-a","hmac_sha256":"{bad_sig}"}}"#
            ))
        )
        .unwrap_err()
        .reason,
        Reason::BadSignature
    );
    assert_eq!(
        run(&mut v, &api("e1", "3", t)).unwrap_err().reason,
        Reason::MissingIntegrity
    );
}

#[test]
fn non_billable_environments_are_accepted_but_flagged() {
    let mut v = validator(ValidationRules::default());
    let ev = run(
        &mut v,
        &api("e", "1", "2026-11-01T10:00:00Z").replace("production", "sandbox"),
    )
    .unwrap();
    assert!(!ev.billable());
    assert_eq!(ev.environment, Environment::Other("sandbox".into()));
}

#[test]
fn regions_pick_their_price() {
    let mut v = validator(ValidationRules::default());
    let line = api("e", "1", "2026-11-01T10:00:00Z").replace(
        r#""environment""#,
        r#""metadata":{"region":"eu-west-1","attributes":{"b":1,"a":"x"}},"environment""#,
    );
    let ev = run(&mut v, &line).unwrap();
    let cat = v.catalog().clone();
    assert_eq!(cat.region_name(cat.price(ev.price).region), "eu-west-1");
    assert_eq!(
        ev.metadata.as_ref().unwrap().attributes.as_deref(),
        Some(r#"{"a":"x","b":1}"#)
    );
}

#[test]
fn keys_rotate_and_a_signature_covers_quantity_customer_and_time() {
    let t = "2026-11-01T10:00:00Z";
    let signed = |key_id: &str, secret: &[u8]| fixtures::signed_api("e1", t, key_id, secret);
    // Mid-rotation: the old and the new key are both active; the one before them is retired.
    let mut rules = ValidationRules::default();
    rules.keys.insert("2026-10".into(), b"old".to_vec());
    rules.keys.insert("2026-11".into(), b"new".to_vec());
    rules.retired_keys.push("2026-09".into());
    rules.integrity = IntegrityMode::RequireSignature;
    let mut v = validator(rules);
    for (key_id, secret) in [("2026-10", &b"old"[..]), ("2026-11", b"new")] {
        assert!(run(&mut v, &signed(key_id, secret)).is_ok(), "{key_id}");
    }
    let retired = run(&mut v, &signed("2026-09", b"older")).unwrap_err();
    assert_eq!(retired.reason, Reason::SignatureKeyRetired);
    assert_eq!(retired.field.as_deref(), Some("signature.key_id"));
    // A valid signature does not carry over to a changed quantity, customer or time.
    let good = signed("2026-11", b"new");
    for (from, to) in [
        (r#""quantity":"3""#, r#""quantity":"300""#),
        (r#""customer_id":"acme""#, r#""customer_id":"globex""#),
        (t, "2026-11-01T11:00:00Z"),
    ] {
        let tampered = good.replace(from, to);
        assert_ne!(tampered, good, "{from} is in the record");
        assert_eq!(
            run(&mut v, &tampered).unwrap_err().reason,
            Reason::BadSignature,
            "{from} → {to}"
        );
    }
}

#[test]
fn a_customer_can_require_signed_events_while_others_need_none() {
    let t = "2026-11-01T10:00:00Z";
    let mut rules = ValidationRules::default();
    rules.keys.insert("acme".into(), b"acme-key".to_vec());
    rules.signatures_required_for.push("acme".into());
    let mut v = validator(rules);
    let unsigned = run(&mut v, &api("e1", "3", t)).unwrap_err();
    assert_eq!(unsigned.reason, Reason::MissingIntegrity);
    assert!(unsigned.message.contains("acme"), "{}", unsigned.message);
    let signed = fixtures::signed_api("e1", t, "acme", b"acme-key");
    assert!(run(&mut v, &signed).is_ok());
    // A checksum is not enough for acme; globex needs nothing.
    let canon = fixtures::api_canonical("e1", t);
    let summed = fixtures::with_fields(
        &api("e1", "3", t),
        &format!(r#""checksum":"{}""#, fixtures::checksum(&canon)),
    );
    assert_eq!(
        run(&mut v, &summed).unwrap_err().reason,
        Reason::MissingIntegrity
    );
    let globex = event(
        "e2",
        "globex",
        "globex-legacy",
        "api_calls",
        "requests",
        "3",
        t,
    );
    assert!(run(&mut v, &globex).is_ok(), "{:?}", run(&mut v, &globex));
}
