//! The edge's Host / authority parsing: any header value maps to an app or
//! to nothing, never a panic, and only `<label>.<domain>` maps to an app.
#![no_main]

use std::sync::OnceLock;

use hangar_proxy::RouteTable;
use libfuzzer_sys::fuzz_target;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| RouteTable::new("apps.example.com"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(app) = table().app_of_host(raw) {
        assert!(!app.is_empty() && !app.contains('.'), "{raw:?} -> {app:?}");
        assert!(
            !app.bytes().any(|b| b.is_ascii_uppercase()),
            "{raw:?} -> {app:?}"
        );
        // A real app name is found however the client spells the
        // domain's case or adds a port.
        if hangar_core::name::AppName::parse(&app).is_ok() {
            let again = format!("{app}.APPS.example.com.:8080");
            assert_eq!(table().app_of_host(&again).as_deref(), Some(app.as_str()));
        }
    }
});
