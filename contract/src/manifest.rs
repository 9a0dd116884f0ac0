//! `manifest.json`: what a build consumed and produced. Written next to the image and embedded
//! in the ESP; read back by `rke2-image inspect`.

use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "rke2-image.io/manifest/v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    pub tool: Tool,
    pub image: ImageInfo,
    /// Every input, in build order (rke2 artifacts sorted by name). Named, never by host path.
    pub inputs: Vec<Input>,
    pub disk: Disk,
    pub verity: Verity,
    pub boot: Boot,
    /// Named checks the build ran and their outcome (e.g. `kernel-config`, `fips-supervisor`).
    #[serde(default)]
    pub checks: Vec<Check>,
    /// The RKE2 payload baked into the root, when the definition has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rke2: Option<Rke2>,
    /// The unified kernel images on the ESP, with the command line each carries.
    #[serde(default)]
    pub ukis: Vec<Uki>,
    /// Every file on the ESP, sorted by path, except the manifest and its signature (which
    /// cannot list themselves). `rke2-image verify` hashes each of them.
    #[serde(default)]
    pub esp_files: Vec<EspFile>,
    /// The published files (the raw image) with their sha256, for `sha256sum -c`-style checks.
    /// Only in the manifest published next to the image: the copy embedded in the ESP cannot
    /// carry the hash of the image file that holds it, so there it is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<EspFile>,
}

/// A file (on the ESP, or a published output) with its size and sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EspFile {
    /// Path on the ESP (`/`-separated, no leading `/`), or an output's file name.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// One unified kernel image (Boot Loader Specification type #2 entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Uki {
    /// Path on the ESP.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// The `.cmdline` section as the kernel receives it.
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rke2 {
    pub version: String,
    /// Where the release came from, without host paths: the release URL, `import:<version>`
    /// (carried in with `release import`) or `dir:<version>` (an `artifacts:` directory).
    #[serde(default)]
    pub origin: String,
    /// Preloaded air-gap image references, sorted.
    pub images: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageInfo {
    pub name: String,
    pub version: String,
    /// Seconds since the epoch that every timestamp in the image is clamped to.
    pub epoch: u64,
    /// File name of the raw disk image next to the manifest.
    pub file: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Input {
    /// `definition`, `base`, `overlay`, `rke2-artifact`, `init`, `node-agent`.
    pub kind: String,
    /// File name (an overlay's directory name), never the host path: the manifest is part of
    /// the image, and the same inputs must give the same bytes wherever they were. The build
    /// log names the host paths.
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    pub disk_guid: String,
    pub sector_size: u64,
    pub size: u64,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Partition {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    /// Bytes of the partition actually used by its content.
    pub used: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Verity {
    pub root_hash: String,
    pub salt: String,
    pub uuid: String,
    pub hash_algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Boot {
    pub kernel_version: String,
    pub cmdline: String,
    /// Loader entry file name on the ESP.
    pub entry: String,
    pub initrd_size: u64,
    pub initrd_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Check {
    pub name: String,
    /// `passed`, `warned` or `skipped`.
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest written before `ukis`, `espFiles` and `outputs` existed still reads.
    #[test]
    fn older_manifest_without_esp_records_reads() {
        let old = r#"{"schema":"rke2-image.io/manifest/v1","tool":{"name":"rke2-image","version":"0.1.0"},
            "image":{"name":"n","version":"1","epoch":0,"file":"n-1.raw","size":1},"inputs":[],
            "disk":{"diskGuid":"x","sectorSize":512,"size":1,"partitions":[]},
            "verity":{"rootHash":"a","salt":"b","uuid":"c","hashAlgorithm":"sha256","dataBlockSize":4096,"hashBlockSize":4096,"dataBlocks":1},
            "boot":{"kernelVersion":"k","cmdline":"c","entry":"e","initrdSize":1,"initrdSha256":"d"}}"#;
        let m: Manifest = serde_json::from_str(old).expect("older manifest");
        assert!(m.ukis.is_empty() && m.esp_files.is_empty() && m.outputs.is_empty());
        // An empty `outputs` is not written (the embedded copy); the others always are.
        let text = serde_json::to_string(&m).expect("serialize");
        assert!(!text.contains("outputs") && text.contains("espFiles"));
        let unknown = old.replace(r#""inputs":[]"#, r#""inputs":[],"bogus":1"#);
        assert!(serde_json::from_str::<Manifest>(&unknown).is_err());
    }
}
