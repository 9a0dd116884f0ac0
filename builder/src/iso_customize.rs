//! `rke2-image iso customize` and `iso show-config`: a node configuration embedded into a copy
//! of an `iso` output without rebuilding it (like coreos-installer's `iso ignition embed`).
//! Every `iso` output carries an embed area, the file [`embed::CONFIG_FILE`] on its ISO 9660
//! side (layout in `contract/src/embed.rs`); customizing rewrites that file's bytes in place,
//! so the ISO 9660 directory, El Torito catalogue and GPT stay as xorriso wrote them. The
//! agent's `medium` source reads the area back on a live boot.
//!
//! The output is written beside itself (a temporary in OUT's directory, fsynced, renamed over
//! OUT, the directory fsynced), so OUT is either the old file or the complete new one.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rke2_image_contract::embed;
use rke2_image_contract::iso9660::{self, IsoError};

/// The area of an ISO larger than this is not one `rke2-image` wrote.
const MAX_AREA: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CustomizeError {
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error(
        "{path}: no {file}: not an rke2-image ISO, or built before `iso customize` existed \
         (rebuild it with `rke2-image build --format iso`)",
        file = embed::CONFIG_FILE
    )]
    NoArea { path: PathBuf },
    #[error("{path}: {err}")]
    Iso { path: PathBuf, err: IsoError },
    #[error("{path}: {file}: {err}", file = embed::CONFIG_FILE)]
    Area {
        path: PathBuf,
        err: embed::EmbedError,
    },
    #[error(
        "{config}: {len} bytes; the embed area of {iso} holds at most {max} bytes \
         (shorten the configuration, e.g. move large files to a URL)"
    )]
    TooLarge {
        config: PathBuf,
        iso: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("{0}")]
    Config(String),
    #[error(
        "{out} exists; pass --force to replace it (an output equal to the input is then \
         rewritten atomically)"
    )]
    Exists { out: PathBuf },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CustomizeError + '_ {
    move |e| CustomizeError::Io {
        path: path.to_path_buf(),
        msg: crate::limits::io_reason(&e),
    }
}

/// Where the embed area of the ISO `f` (read from `path`) is.
fn find_area(f: &File, path: &Path) -> Result<iso9660::Extent, CustomizeError> {
    let e = iso9660::find(f, embed::CONFIG_FILE).map_err(|err| match err {
        IsoError::NotFound(_) => CustomizeError::NoArea {
            path: path.to_path_buf(),
        },
        // Shorter than the volume descriptors: not an ISO at all.
        IsoError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => CustomizeError::Iso {
            path: path.to_path_buf(),
            err: IsoError::NotIso,
        },
        err => CustomizeError::Iso {
            path: path.to_path_buf(),
            err,
        },
    })?;
    if e.len < embed::HEADER_BYTES as u64 || e.len > MAX_AREA {
        return Err(CustomizeError::Area {
            path: path.to_path_buf(),
            err: embed::EmbedError::Short {
                len: e.len.min(MAX_AREA) as usize,
            },
        });
    }
    Ok(e)
}

/// The embed area of the ISO at `iso`: where it is and what it holds (`None`: empty).
pub fn read(iso: &Path) -> Result<(iso9660::Extent, Option<Vec<u8>>), CustomizeError> {
    let f = File::open(iso).map_err(io(iso))?;
    let e = find_area(&f, iso)?;
    let mut area = vec![0u8; e.len as usize];
    f.read_exact_at(&mut area, e.offset).map_err(io(iso))?;
    let payload = embed::decode(&area, area.len()).map_err(|err| CustomizeError::Area {
        path: iso.to_path_buf(),
        err,
    })?;
    Ok((e, payload))
}

/// Checks `bytes` (read from `config`) as the agent will: one of its dialects, every node of
/// a cluster configuration resolvable. Returns the agent's warnings.
pub fn check_config(config: &Path, bytes: &[u8]) -> Result<Vec<String>, CustomizeError> {
    rke2_firstboot::agent::validate(&config.display().to_string(), bytes, None)
        .map_err(|e| CustomizeError::Config(e.to_string()))
}

/// Reads a configuration file for [`customize`], up to the agent's own limit (anything larger
/// is refused by the agent anyway; [`customize`] names the area's smaller limit).
pub fn read_config(path: &Path) -> Result<Vec<u8>, CustomizeError> {
    crate::limits::read_host_file(
        path,
        rke2_firstboot::dialects::MAX_CONFIG_BYTES as u64,
        "node configuration",
    )
    .map_err(|msg| CustomizeError::Io {
        path: path.to_path_buf(),
        msg,
    })
}

/// What to put into the area.
pub enum Payload<'a> {
    /// A configuration file (checked first) and its bytes.
    Config(&'a Path, &'a [u8]),
    /// Nothing: the area as the builder writes it.
    Empty,
}

/// Writes a copy of `input` with `payload` in its embed area to `out`. `out` must not exist
/// unless `force` (which also allows `out` = `input`, rewritten through a temporary). Returns
/// the agent's warnings about the configuration.
pub fn customize(
    input: &Path,
    payload: Payload,
    out: &Path,
    force: bool,
) -> Result<Vec<String>, CustomizeError> {
    // The input is checked before anything is written.
    let (extent, _) = read(input)?;
    let mut warnings = Vec::new();
    let bytes: &[u8] = match payload {
        Payload::Config(path, bytes) => {
            let room = extent.len as usize - embed::HEADER_BYTES;
            if bytes.len() > room {
                return Err(CustomizeError::TooLarge {
                    config: path.to_path_buf(),
                    iso: input.to_path_buf(),
                    len: bytes.len(),
                    max: room,
                });
            }
            warnings = check_config(path, bytes)?;
            bytes
        }
        Payload::Empty => &[],
    };
    if !force && out.symlink_metadata().is_ok() {
        return Err(CustomizeError::Exists {
            out: out.to_path_buf(),
        });
    }
    let area = embed::encode(bytes, extent.len as usize).map_err(|err| CustomizeError::Area {
        path: input.to_path_buf(),
        err,
    })?;
    let dir = crate::publish::dir_of(out);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "iso".into());
    // Removed when dropped unless persisted: an error leaves OUT as it was.
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    copy(input, temp.path())?;
    let f = OpenOptions::new()
        .write(true)
        .read(true)
        .open(temp.path())
        .map_err(io(temp.path()))?;
    // The copy must be the ISO just checked (not one replaced meanwhile): same area.
    if find_area(&f, temp.path())? != extent {
        return Err(CustomizeError::Io {
            path: input.to_path_buf(),
            msg: "changed while being copied".into(),
        });
    }
    f.write_all_at(&area, extent.offset)
        .map_err(io(temp.path()))?;
    f.sync_all().map_err(io(temp.path()))?;
    drop(f);
    temp.persist(out).map_err(|e| CustomizeError::Io {
        path: out.to_path_buf(),
        msg: crate::limits::io_reason(&e.error),
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(warnings)
}

/// Copies `from` over `to` with the kernel's copy (a reflink or server-side copy where the
/// filesystem has one); `to` gets `from`'s permissions.
fn copy(from: &Path, to: &Path) -> Result<(), CustomizeError> {
    fs::copy(from, to).map(|_| ()).map_err(io(from))
}
