//! Any text as a catalog file: loaded, or refused with errors that name an entry and a fix.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = meterflow_schemas::catalog::from_toml_str(text) {
        for e in &errors.0 {
            assert!(!e.message.is_empty() && !e.fix.is_empty(), "{e:?}");
        }
    }
});
