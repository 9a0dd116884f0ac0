//! Tokens, URLs, server addresses, URL templates, data URLs, identities, network addresses
//! and interface names.
#![no_main]
use rke2_firstboot::identity::Identity;

libfuzzer_sys::fuzz_target!(|data: &str| {
    let _ = rke2_firstboot::preflight::Token::parse(data);
    let _ = rke2_firstboot::http::Url::parse(data);
    let _ = rke2_firstboot::role::server_url(data);
    let _ = rke2_firstboot::dialects::ignition::v3::data_url("fuzz", data);
    let _ = rke2_firstboot::sources::cmdline_url::substitute(data, &Identity::default());
    let _ = Identity::from_args(&[data]);
    let _ = rke2_firstboot::network::Cidr::parse(data);
    let _ = rke2_firstboot::network::Link::parse("fuzz", data);
    let _ = rke2_firstboot::network::missing_addresses(
        &rke2_firstboot::network::NetworkPlan {
            link: rke2_firstboot::network::Link::Name("eth0".into()),
            addresses: Vec::new(),
            gateways: Vec::new(),
            dns: Vec::new(),
            search: Vec::new(),
            mtu: None,
        },
        data,
    );
});
