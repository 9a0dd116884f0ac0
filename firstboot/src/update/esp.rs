//! The slot entries on the mounted ESP (`<esp>/EFI/Linux`). FAT has no atomic replace, so an
//! entry is never overwritten in place: a new one is written under a temporary name that is not
//! `*.efi` (systemd-boot ignores it), fsynced, renamed, and the directory fsynced.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rke2_image_contract::update::{Entry, ESP_UKI_DIR};

fn dir(esp: &Path) -> PathBuf {
    esp.join(ESP_UKI_DIR)
}

fn sync_dir(d: &Path) -> Result<(), String> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("syncing {}: {e}", d.display()))
}

/// This image's slot entries, sorted by file name.
pub fn list(esp: &Path, image: &str) -> Result<Vec<Entry>, String> {
    let d = dir(esp);
    let rd = fs::read_dir(&d).map_err(|e| {
        format!(
            "reading {}: {e} (is the ESP mounted at {}? efi.mount does it on disk boots)",
            d.display(),
            esp.display()
        )
    })?;
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names
        .iter()
        .filter_map(|n| Entry::parse(image, n))
        .collect())
}

/// The entry of `slot` (the first by name when, unexpectedly, there are several).
pub fn of_slot(entries: &[Entry], slot: char) -> Option<&Entry> {
    entries.iter().find(|e| e.slot == slot)
}

/// Renames `from` to `to` (a counter change) and makes it durable.
pub fn rename(esp: &Path, from: &Entry, to: &Entry) -> Result<(), String> {
    let d = dir(esp);
    let (a, b) = (d.join(from.file_name()), d.join(to.file_name()));
    if a == b {
        return Ok(());
    }
    fs::rename(&a, &b).map_err(|e| format!("renaming {} to {}: {e}", a.display(), b.display()))?;
    sync_dir(&d)
}

/// Marks `e` bad (a zero counter: systemd-boot sorts it last, so the other slot boots next).
pub fn mark_bad(esp: &Path, e: &Entry) -> Result<(), String> {
    let bad = Entry {
        tries_left: Some(0),
        tries_done: None,
        ..e.clone()
    };
    rename(esp, e, &bad)
}

/// Removes `e` and makes the removal durable.
pub fn remove(esp: &Path, e: &Entry) -> Result<(), String> {
    let d = dir(esp);
    let p = d.join(e.file_name());
    fs::remove_file(&p).map_err(|err| format!("removing {}: {err}", p.display()))?;
    sync_dir(&d)
}

/// The temporary name an entry is written under before it is renamed into place.
pub fn temp_path(esp: &Path, slot: char) -> PathBuf {
    dir(esp).join(format!(".rke2-update-{slot}.tmp"))
}

/// Streams `src` into the temporary file of `slot` (created anew) and fsyncs it.
pub fn write_temp(esp: &Path, slot: char, src: &mut dyn Read) -> Result<u64, String> {
    let p = temp_path(esp, slot);
    let _ = fs::remove_file(&p);
    let f = File::create(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
    copy_synced(f, &p, src)
}

/// Copies `src` into `f` (the file or device at `path`) and fsyncs it; returns the bytes.
pub fn copy_synced(mut f: File, path: &Path, src: &mut dyn Read) -> Result<u64, String> {
    let n = std::io::copy(src, &mut f).map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.flush()
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("syncing {}: {e}", path.display()))?;
    Ok(n)
}

/// Renames the temporary file of `slot` to `e` and makes it durable.
pub fn install_temp(esp: &Path, slot: char, e: &Entry) -> Result<(), String> {
    let d = dir(esp);
    let (a, b) = (temp_path(esp, slot), d.join(e.file_name()));
    fs::rename(&a, &b)
        .map_err(|err| format!("renaming {} to {}: {err}", a.display(), b.display()))?;
    sync_dir(&d)
}

/// Removes a leftover temporary file of `slot` (after a failure).
pub fn discard_temp(esp: &Path, slot: char) {
    let _ = fs::remove_file(temp_path(esp, slot));
}
