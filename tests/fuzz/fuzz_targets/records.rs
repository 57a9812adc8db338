//! Any bytes, read as a file chunk and as one Kafka message (one object, NDJSON, a JSON array,
//! CloudEvents structured or batch), split into records and validated against the fixture
//! catalog: every record must be accepted or rejected with a reason, never panic.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use meterflow_operators::decode::for_each_record;
use meterflow_operators::source::{Chunk, MessageSpan};
use meterflow_schemas::time::EventTime;
use meterflow_schemas::validate::{ValidationRules, Validator};

fuzz_target!(|data: &[u8]| {
    let catalog = Arc::new(meterflow_schemas::fixtures::catalog());
    let mut validator = Validator::new(Arc::new(ValidationRules::default()), catalog);
    let now = EventTime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
    let file = Chunk { bytes: data.to_vec(), ..Chunk::default() };
    let message = Chunk {
        bytes: data.to_vec(),
        messages: vec![MessageSpan {
            start: 0,
            len: data.len() as u32,
            source: 0,
            partition: 0,
            offset: 0,
            meta_start: 0,
            key_len: 0,
            headers_len: 0,
        }],
        ..Chunk::default()
    };
    for chunk in [&file, &message] {
        for_each_record(chunk, |lineage, bytes, _| {
            if let Err(r) = validator.validate(bytes, lineage, now) {
                assert!(!r.reason.code().is_empty());
                assert!(!r.reason.remediation().is_empty());
            }
        });
    }
});
