//! `RKE2-PROBE key=value` facts from the console.

use std::collections::BTreeMap;

pub const PREFIX: &str = "RKE2-PROBE ";

/// Collects probe facts from console text (later lines win). Lines may carry console noise
/// before the prefix (interleaved kernel output), which is skipped.
pub fn facts(console: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in console.lines() {
        let Some(i) = line.find(PREFIX) else { continue };
        let rest = line[i + PREFIX.len()..].trim_end_matches('\r');
        if let Some((k, v)) = rest.split_once('=') {
            out.insert(k.to_string(), v.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_lines() {
        let f = super::facts("junk\r\n[ 1.0] x RKE2-PROBE fips=1\r\nRKE2-PROBE label:/etc=a:b:c:s0\nRKE2-PROBE fips=0\n");
        assert_eq!(f["fips"], "0");
        assert_eq!(f["label:/etc"], "a:b:c:s0");
        assert_eq!(f.len(), 2);
    }
}
