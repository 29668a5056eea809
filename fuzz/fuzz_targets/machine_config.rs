//! A Machines API machine config as JSON: decoding and validating any bytes
//! answers a config or an error, never a panic; an accepted config's stop
//! grace is within Fly's bound.
#![no_main]

use hangar_core::duration;
use hangar_core::machine::MachineConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<MachineConfig>(data) else {
        return;
    };
    if config.validate().is_ok() {
        let (_, grace) = config.stop();
        assert!(grace <= duration::MAX_STOP_GRACE);
        let _ = config.restart();
        let _ = config.guest();
        let _ = config.argv(&[], &[]);
    }
});
