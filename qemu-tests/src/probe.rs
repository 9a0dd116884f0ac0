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

/// Every `avc:  denied` line of a console.
pub fn avc_denials(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter(|l| l.contains("avc:  denied"))
        .collect()
}

/// Denials that are ours to fix: on paths without a proper label (rke2-init or the builder
/// got a label wrong; the throwaway init of the early measurements left `tmpfs_t` on /etc), by or against the rke2 domains and types, or by `initrc_t`, the domain
/// systemd gives services without their own (rke2-firstboot, the probe). Denials of other
/// domains looking at our processes (logind reading /proc of one) are the base policy's.
pub fn our_denials(console: &str) -> Vec<&str> {
    avc_denials(console)
        .into_iter()
        .filter(|d| {
            [":unlabeled_t:", ":file_t:", ":default_t:", ":tmpfs_t:"]
                .iter()
                .any(|t| d.contains(&format!("tcontext=system_u:object_r{t}")))
                || d.contains("rke2")
                || d.contains("scontext=system_u:system_r:initrc_t:")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn classifies_denials() {
        let c = "x\n\
            [1] avc:  denied  { relabelfrom } scontext=system_u:system_r:systemd_tmpfiles_t:s0 tcontext=system_u:object_r:etc_t:s0\n\
            [2] avc:  denied  { search } scontext=system_u:system_r:systemd_logind_t:s0 tcontext=system_u:system_r:initrc_t:s0\n\
            [3] avc:  denied  { send_msg } scontext=system_u:system_r:initrc_t:s0 tcontext=system_u:system_r:foo_t:s0\n\
            [4] avc:  denied  { read } scontext=system_u:system_r:rke2_t:s0 tcontext=system_u:object_r:etc_t:s0\n\
            [5] avc:  denied  { write } scontext=system_u:system_r:udev_t:s0 tcontext=system_u:object_r:tmpfs_t:s0\n";
        assert_eq!(super::avc_denials(c).len(), 5);
        let ours: Vec<&str> = super::our_denials(c).iter().map(|l| &l[..3]).collect();
        assert_eq!(ours, ["[3]", "[4]", "[5]"]);
    }

    #[test]
    fn parses_lines() {
        let f = super::facts("junk\r\n[ 1.0] x RKE2-PROBE fips=1\r\nRKE2-PROBE label:/etc=a:b:c:s0\nRKE2-PROBE fips=0\n");
        assert_eq!(f["fips"], "0");
        assert_eq!(f["label:/etc"], "a:b:c:s0");
        assert_eq!(f.len(), 2);
    }
}
