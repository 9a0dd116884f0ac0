//! The native node configuration, then role resolution with a fixed identity.
#![no_main]
use rke2_firstboot::identity::Identity;

libfuzzer_sys::fuzz_target!(|data: &str| {
    if let Ok(plan) = rke2_firstboot::dialects::native::parse(data) {
        if let Some(cfg) = plan.rke2 {
            let id = Identity::from_args(&["mac=52:54:00:00:01:01,serial=S1,hostname=h"]).unwrap_or_default();
            let _ = rke2_firstboot::role::resolve(&cfg, &id);
        }
    }
});
