//! Any text as a routing file: the loader must never panic, and every refusal must
//! name a place (`file:line:column`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "SET").then(|| "value".to_string());
    if let Err(errors) = playrelay::config::load_str(text, Path::new("fuzz.toml"), &env) {
        for error in &errors.0 {
            assert!(error.to_string().starts_with("fuzz.toml:"), "{error}");
        }
    }
});
