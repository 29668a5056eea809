//! hangar.toml (and fly.toml, same keys): any text is a config or an error
//! naming the key, never a panic, and every duration it accepts is bounded.
#![no_main]

use hangar_core::app_config::AppConfig;
use hangar_core::duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = AppConfig::parse(text) {
        assert!(config.deploy.wait_timeout <= duration::MAX_TENANT_DURATION);
        assert!(config.deploy.drain_timeout <= duration::MAX_TENANT_DURATION);
    }
    let _ = AppConfig::parse_for(text, "fuzzed-app");
    let _ = duration::parse(text);
});
