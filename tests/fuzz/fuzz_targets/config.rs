//! Any text as `meterflow.toml`: parsed, or refused with an error naming the key and the fix.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = meterflow::config::Config::parse(text, "fuzz.toml") {
        assert!(!e.to_string().is_empty());
    }
});
