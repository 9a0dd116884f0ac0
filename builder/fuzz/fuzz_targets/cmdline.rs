//! The kernel command-line splitter and the definition's item check on arbitrary text: no
//! panic, and an item the check accepts is one parameter that cannot reach a reserved key
//! however the kernel splits it, alone or after any other accepted item.
#![no_main]
use rke2_image_contract::cmdline;

libfuzzer_sys::fuzz_target!(|text: &str| {
    let params = cmdline::parse(text);
    let _ = cmdline::get(text, "rke2.roothash");
    for item in text.split('\n') {
        if rke2_image::esp::check_item(item).is_ok() {
            let line = format!("rke2.slot=a {item} quiet fips=1");
            let p = cmdline::parse(&line);
            assert_eq!(p.len(), 4, "{item:?} changed its neighbours: {p:?}");
            assert!(
                rke2_image::esp::reserved_key(p[1].key).is_none(),
                "{item:?}"
            );
            assert_eq!(cmdline::get(&line, "fips"), Some("1"));
        }
    }
    drop(params);
});
