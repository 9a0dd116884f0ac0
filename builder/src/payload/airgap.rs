//! Air-gap image tarballs: verified while streamed, each one's `manifest.json` read through its
//! zstd/gzip stream (no extraction) and compared with the release's image lists for the chosen
//! CNI and parts. The tarballs go into the verified root as host files (never read into
//! memory); the first-boot agent links them into `/var/lib/rancher/rke2/agent/images/`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use rke2_image_contract::manifest::Check;
use rke2_image_contract::paths::AIRGAP_IMAGES;
use serde::Deserialize;

use super::artifacts::{Checksums, Verified};
use super::{check, PayloadError, Rke2Spec, LEGACY};
use crate::tree::{Blob, Inode, Kind, Tree};

/// The image importer refuses zstd windows above 2^25 (archives are made with `--long=25`).
pub const ZSTD_WINDOW_LIMIT: u64 = 1 << 25;

#[derive(Debug)]
pub struct Preloaded {
    pub verified: Vec<Verified>,
    /// Normalised references of every preloaded image, sorted.
    pub images: Vec<String>,
    pub check: Check,
}

/// File stem of a part: `rke2-images-core`, or `rke2-images` for the legacy tarball.
pub fn stem(part: &str) -> String {
    if part == LEGACY {
        "rke2-images".into()
    } else {
        format!("rke2-images-{part}")
    }
}

/// `docker.io/library/x:tag` form, so `docker save`'s short names compare with the lists.
pub fn normalize_ref(r: &str) -> String {
    let r = r.trim();
    let (first, rest) = r.split_once('/').unwrap_or(("", r));
    let is_registry =
        !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    let (registry, path) = if is_registry {
        (first.to_string(), rest.to_string())
    } else {
        ("docker.io".to_string(), r.to_string())
    };
    let path = if registry == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let last = path.rsplit('/').next().unwrap_or("");
    let tagged = last.contains(':') || last.contains('@');
    format!("{registry}/{path}{}", if tagged { "" } else { ":latest" })
}

/// Window size declared by a zstd frame header at the start of `b`, if it is one.
pub fn zstd_window(b: &[u8]) -> Option<u64> {
    if b.get(..4)? != [0x28, 0xb5, 0x2f, 0xfd] {
        return None;
    }
    let fhd = *b.get(4)?;
    let single = fhd & 0x20 != 0;
    if !single {
        let wd = *b.get(5)?;
        let log = 10 + u64::from(wd >> 3);
        let base = 1u64 << log;
        return Some(base + (base / 8) * u64::from(wd & 7));
    }
    // Single segment: the window is the content size.
    let did = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(fhd >> 6)];
    let at = 5 + did;
    let f = b.get(at..at + fcs_len)?;
    let mut v = 0u64;
    for (i, &x) in f.iter().enumerate() {
        v |= u64::from(x) << (8 * i);
    }
    Some(if fcs_len == 2 { v + 256 } else { v })
}

/// One entry of a `docker save` archive's `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArchivedImage {
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// The config blob's member name: `<hex>.json` (classic) or `blobs/sha256/<hex>` (OCI
    /// layout, docker 25+); the hex is the image id.
    #[serde(default)]
    pub config: String,
}

/// Reads a `docker save` tarball (`.tar.zst`, `.tar.gz` or `.tar`) to its end and returns the
/// `RepoTags` of its `manifest.json`.
pub fn scan_tarball(
    name: &str,
    path: &Path,
    r: &mut dyn Read,
) -> Result<Vec<String>, PayloadError> {
    Ok(read_docker_archive(name, path, r)?
        .into_iter()
        .flat_map(|m| m.repo_tags.unwrap_or_default())
        .collect())
}

/// Reads a `docker save` tarball to its end and returns its `manifest.json` entries.
pub fn read_docker_archive(
    name: &str,
    path: &Path,
    r: &mut dyn Read,
) -> Result<Vec<ArchivedImage>, PayloadError> {
    let arch = |m: String| PayloadError::Archive {
        path: path.to_path_buf(),
        message: m,
    };
    // libzstd's refusal of a frame above window_log_max, wherever in the stream it comes.
    let decode_err = |what: &str, e: io::Error| {
        if e.to_string().contains("Frame requires too much memory") {
            arch(format!(
                "{what}: a zstd frame's window is larger than 2^25, which the rke2 image importer refuses; recompress with `zstd --long=25` ({e})"
            ))
        } else {
            arch(format!("{what}: {e}"))
        }
    };
    let mut buf = BufReader::with_capacity(1 << 16, r);
    let decoded: Box<dyn Read + '_> = if name.ends_with(".zst") || name.ends_with(".tzst") {
        let head = buf.fill_buf().map_err(|source| PayloadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        match zstd_window(head) {
            Some(w) if w > ZSTD_WINDOW_LIMIT => {
                return Err(PayloadError::ZstdWindow {
                    path: path.to_path_buf(),
                    window: w,
                    limit: ZSTD_WINDOW_LIMIT,
                })
            }
            Some(_) => {}
            None => return Err(arch("not a zstd stream".into())),
        }
        let mut d = zstd::stream::read::Decoder::with_buffer(buf)
            .map_err(|e| arch(format!("zstd: {e}")))?;
        // Later frames are held to the importer's limit too.
        d.window_log_max(25)
            .map_err(|e| arch(format!("zstd: {e}")))?;
        Box::new(d)
    } else if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::MultiGzDecoder::new(buf))
    } else if name.ends_with(".tar") {
        Box::new(buf)
    } else {
        return Err(arch(
            "unsupported image archive type (use .tar.zst, .tar.gz or .tar)".into(),
        ));
    };
    let mut a = tar::Archive::new(decoded);
    let mut tags: Option<Vec<ArchivedImage>> = None;
    for e in a
        .entries()
        .map_err(|e| arch(format!("not a tar archive: {e}")))?
    {
        let mut e = e.map_err(|e| decode_err("corrupt image archive", e))?;
        let p = e
            .path()
            .map_err(|e| arch(format!("bad member name: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if p == "manifest.json" {
            let mut text = Vec::new();
            e.read_to_end(&mut text)
                .map_err(|e| decode_err("manifest.json", e))?;
            tags =
                Some(serde_json::from_slice(&text).map_err(|e| {
                    arch(format!("manifest.json is not a docker save manifest: {e}"))
                })?);
        } else {
            // Reading every member checks the whole archive decodes.
            io::copy(&mut e, &mut io::sink()).map_err(|e| decode_err(&p, e))?;
        }
    }
    let mut inner = a.into_inner();
    io::copy(&mut inner, &mut io::sink()).map_err(|e| decode_err("after the archive", e))?;
    tags.ok_or_else(|| arch("no manifest.json: not a docker save archive".into()))
}

/// Image list of a part (`<stem>.linux-amd64.txt`), verified.
fn read_list(sums: &Checksums, stem: &str) -> Result<(Vec<String>, Verified), PayloadError> {
    let name = format!("{stem}.linux-amd64.txt");
    sums.verify_stream(&name, |r| {
        let mut s = String::new();
        r.read_to_string(&mut s)
            .map_err(|source| PayloadError::Io {
                path: sums.dir.join(&name),
                source,
            })?;
        Ok(s.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect())
    })
}

pub fn preload(
    tree: &mut Tree,
    sums: &Checksums,
    spec: &Rke2Spec,
    epoch: u64,
    log: &mut dyn FnMut(&str),
) -> Result<Preloaded, PayloadError> {
    let mut out = Preloaded {
        verified: Vec::new(),
        images: Vec::new(),
        check: check("airgap-images", "skipped", "rke2.images is empty"),
    };
    if spec.images.is_empty() {
        return Ok(out);
    }
    let mut have: BTreeSet<String> = BTreeSet::new();
    let mut files = Vec::new();
    for part in &spec.images {
        let st = stem(part);
        let zst = format!("{st}.linux-amd64.tar.zst");
        let gz = format!("{st}.linux-amd64.tar.gz");
        let name = if sums.contains(&zst) {
            zst
        } else if sums.contains(&gz) {
            gz
        } else {
            return Err(PayloadError::NotListed {
                name: format!("{zst} (or {gz})"),
                sums: sums.file.clone(),
            });
        };
        let path = sums.dir.join(&name);
        let (tags, v) = sums.verify_stream(&name, |r| scan_tarball(&name, &path, r))?;
        log(&format!("rke2: {name}: {} images, verified", tags.len()));
        have.extend(tags.iter().map(|t| normalize_ref(t)));
        let inode = Inode::new(
            Kind::File(Blob::HostFile {
                path: v.path.clone(),
                len: v.size,
            }),
            0o644,
            0,
            0,
            epoch,
        );
        tree.insert_resolved(format!("{AIRGAP_IMAGES}/{name}").as_bytes(), inode)?;
        files.push(name);
        out.verified.push(v);
    }
    // Required: core (unless only the legacy tarball, which carries core + canal), the CNI's
    // parts and every chosen part's own list.
    let mut required: Vec<String> = Vec::new();
    let legacy_only =
        spec.images.iter().any(|i| i == LEGACY) && !spec.images.iter().any(|i| i == "core");
    let mut add = |p: &str| {
        if !required.iter().any(|r| r == p) {
            required.push(p.to_string());
        }
    };
    add(if legacy_only { LEGACY } else { "core" });
    for c in &spec.cni {
        if !(legacy_only && c == "canal") {
            add(c);
        }
    }
    for p in &spec.images {
        add(p);
    }
    let mut lists: BTreeMap<String, usize> = BTreeMap::new();
    for part in &required {
        let st = stem(part);
        let (list, v) = read_list(sums, &st)?;
        for image in &list {
            if !have.contains(&normalize_ref(image)) {
                return Err(PayloadError::ImageMissing {
                    image: image.clone(),
                    list: v.name.clone(),
                    tarballs: files.join(", "),
                });
            }
        }
        lists.insert(v.name.clone(), list.len());
        out.verified.push(v);
    }
    out.images = have.into_iter().collect();
    let detail = lists
        .iter()
        .map(|(n, c)| format!("{n} ({c})"))
        .collect::<Vec<_>>()
        .join(", ");
    out.check = check(
        "airgap-images",
        "passed",
        format!(
            "{} images in {}; complete for {detail}; zstd windows <= 2^25",
            out.images.len(),
            files.join(", ")
        ),
    );
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn normalises_references() {
        assert_eq!(normalize_ref("rancher/x:1"), "docker.io/rancher/x:1");
        assert_eq!(
            normalize_ref("docker.io/rancher/x:1"),
            "docker.io/rancher/x:1"
        );
        assert_eq!(normalize_ref("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            normalize_ref("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
        assert_eq!(normalize_ref("localhost:5000/a"), "localhost:5000/a:latest");
    }

    #[test]
    fn zstd_window_matches_the_encoder() {
        for log in [20u32, 25, 27] {
            let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
            e.window_log(log).unwrap();
            e.include_contentsize(false).unwrap();
            std::io::Write::write_all(&mut e, b"hello").unwrap();
            let z = e.finish().unwrap();
            assert_eq!(zstd_window(&z), Some(1u64 << log));
        }
        assert_eq!(zstd_window(b"PK\x03\x04xx"), None);
    }
}
