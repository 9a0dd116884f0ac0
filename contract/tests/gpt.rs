//! GPT tables written by `contract::gpt`, checked against sgdisk and sfdisk (util-linux), and
//! tables written by sgdisk read back by `contract::gpt`.

// Tests may unwrap (the workspace lint also covers test helpers).
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::Path;
use std::process::Command;

use rke2_image_contract::gpt::{Entry, GptError, Guid, Table, TableCopy};
use rke2_image_contract::partitions::{self, ALIGN, SECTOR};

const MIB: u64 = 1024 * 1024;

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} not runnable: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn disk(dir: &Path, name: &str, size: u64) -> (File, String) {
    let path = dir.join(name);
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(size).unwrap();
    (f, path.to_str().unwrap().to_string())
}

fn guid(n: u8) -> Guid {
    let mut b = [0u8; 16];
    for (i, x) in b.iter_mut().enumerate() {
        *x = n.wrapping_mul(31).wrapping_add(i as u8 * 17);
    }
    Guid::from_hash(b)
}

/// The product's layout: ESP, then A/B root and verity partitions, 1 MiB aligned.
fn product_table(disk_size: u64, esp: u64, root: u64, verity: u64) -> Table {
    let mut t = Table::new(guid(0), disk_size, SECTOR).unwrap();
    let mut next = ALIGN / SECTOR;
    for spec in partitions::BUILT {
        let size = match spec.number {
            1 => esp,
            2 | 4 => root,
            _ => verity,
        };
        let e = Entry {
            type_guid: Guid::parse(spec.type_guid).unwrap(),
            guid: guid(spec.number as u8),
            first_lba: next,
            last_lba: next + size / SECTOR - 1,
            attributes: 0,
            name: spec.label.to_string(),
        };
        t.add(spec.number, e).unwrap();
        next += size / SECTOR;
    }
    t
}

fn assert_sgdisk_clean(path: &str) {
    let (ok, text) = run("sgdisk", &["-v", path]);
    assert!(
        ok && text.contains("No problems found"),
        "sgdisk -v {path}:\n{text}"
    );
}

/// `sgdisk -i N` and `sfdisk --json` report exactly what the table holds.
fn assert_tools_agree(path: &str, t: &Table) {
    let (ok, p) = run("sgdisk", &["-p", path]);
    assert!(ok, "{p}");
    assert!(
        p.contains(&format!("Disk identifier (GUID): {}", t.disk_guid)),
        "{p}"
    );
    assert!(
        p.contains(&format!(
            "First usable sector is {}, last usable sector is {}",
            t.first_usable, t.last_usable
        )),
        "{p}"
    );
    for (n, e) in t.partitions() {
        let (ok, i) = run("sgdisk", &["-i", &n.to_string(), path]);
        assert!(ok, "{i}");
        for want in [
            format!("Partition GUID code: {} ", e.type_guid),
            format!("Partition unique GUID: {}\n", e.guid),
            format!("First sector: {} ", e.first_lba),
            format!("Last sector: {} ", e.last_lba),
            format!("Attribute flags: {:016X}\n", e.attributes),
            format!("Partition name: '{}'\n", e.name),
        ] {
            assert!(i.contains(&want), "sgdisk -i {n}: missing {want:?} in\n{i}");
        }
    }

    let (ok, j) = run("sfdisk", &["--json", path]);
    assert!(ok, "{j}");
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    let pt = &v["partitiontable"];
    assert_eq!(pt["label"], "gpt");
    assert_eq!(pt["id"], t.disk_guid.to_string());
    assert_eq!(pt["firstlba"], t.first_usable);
    assert_eq!(pt["lastlba"], t.last_usable);
    let parts = pt["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), t.partitions().count());
    for (p, (n, e)) in parts.iter().zip(t.partitions()) {
        assert_eq!(p["node"], format!("{path}{n}"));
        assert_eq!(p["start"], e.first_lba);
        assert_eq!(p["size"], e.sectors());
        assert_eq!(p["type"], e.type_guid.to_string());
        assert_eq!(p["uuid"], e.guid.to_string());
        assert_eq!(p["name"], e.name.as_str());
    }
}

#[test]
fn product_layout_passes_sgdisk_and_sfdisk_for_several_sizes() {
    let dir = tempfile::tempdir().unwrap();
    for (size, esp, root, verity) in [
        (1024 * MIB, 128 * MIB, 300 * MIB, 8 * MIB),
        (4096 * MIB, 512 * MIB, 1536 * MIB, 16 * MIB),
        // Just enough: the last partition ends one MiB before the end.
        (64 * MIB, 32 * MIB, 14 * MIB, MIB),
    ] {
        let t = product_table(size, esp, root, verity);
        let (f, path) = disk(dir.path(), &format!("d{size}.img"), size);
        t.write(&f).unwrap();
        assert_sgdisk_clean(&path);
        assert_tools_agree(&path, &t);
        let back = Table::read(&f, size, SECTOR).unwrap();
        assert_eq!(back, t);
        assert!(back.damaged.is_empty());
    }
}

#[test]
fn odd_layouts_names_and_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let size = 100 * MIB + 7 * SECTOR;
    let mut t = Table::new(guid(9), size, SECTOR).unwrap();
    let esp = Guid::parse(partitions::ESP_TYPE).unwrap();
    let mk = |first, last, name: &str, attributes| Entry {
        type_guid: esp,
        guid: guid(first as u8),
        first_lba: first,
        last_lba: last,
        attributes,
        name: name.to_string(),
    };
    // Unaligned, sparse numbering, full-length name, attribute bits, whole usable area used.
    t.add(7, mk(34, 34, "x", 1)).unwrap();
    t.add(
        128,
        mk(35, 2047, "abcdefghijklmnopqrstuvwxyz0123456789", 1 << 60),
    )
    .unwrap();
    let last = t.last_usable;
    t.add(1, mk(2048, last, "rest", 0)).unwrap();
    let (f, path) = disk(dir.path(), "odd.img", size);
    t.write(&f).unwrap();
    assert_sgdisk_clean(&path);
    assert_tools_agree(&path, &t);
    assert_eq!(Table::read(&f, size, SECTOR).unwrap(), t);
    assert_eq!(t.free_tail(), (last + 1, last));
}

#[test]
fn protective_mbr_matches_uefi_layout() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let t = product_table(size, 32 * MIB, 14 * MIB, MIB);
    let (f, path) = disk(dir.path(), "mbr.img", size);
    t.write(&f).unwrap();
    // sfdisk reading the MBR alone (-X dos would reject GPT, so read the raw bytes).
    let raw = std::fs::read(&path).unwrap();
    assert_eq!(&raw[510..512], &[0x55, 0xAA]);
    assert_eq!(raw[446 + 4], 0xEE);
    assert_eq!(&raw[446 + 8..446 + 12], &1u32.to_le_bytes());
    assert_eq!(
        &raw[446 + 12..446 + 16],
        &((size / SECTOR - 1) as u32).to_le_bytes()
    );
    // No other MBR partition entries, no disk signature.
    assert!(raw[462..510].iter().all(|&b| b == 0));
    assert!(raw[440..446].iter().all(|&b| b == 0));
    // gdisk's own view of the MBR: protective, not hybrid.
    let (ok, text) = run("sgdisk", &["-p", &path]);
    assert!(
        ok && !text.contains("hybrid") && !text.contains("MBR only"),
        "{text}"
    );
}

#[test]
fn writes_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let size = 128 * MIB;
    let (f1, p1) = disk(dir.path(), "a.img", size);
    let (f2, p2) = disk(dir.path(), "b.img", size);
    product_table(size, 32 * MIB, 32 * MIB, MIB)
        .write(&f1)
        .unwrap();
    product_table(size, 32 * MIB, 32 * MIB, MIB)
        .write(&f2)
        .unwrap();
    assert!(std::fs::read(p1).unwrap() == std::fs::read(p2).unwrap());
}

#[test]
fn reads_tables_written_by_sgdisk() {
    let dir = tempfile::tempdir().unwrap();
    let size = 200 * MIB;
    let (f, path) = disk(dir.path(), "sg.img", size);
    let (ok, text) = run(
        "sgdisk",
        &[
            "-U",
            "11111111-2222-4333-8444-555555555555",
            "-n",
            "1:2048:+16M",
            "-t",
            "1:EF00",
            "-c",
            "1:esp",
            "-u",
            "1:AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE",
            "-n",
            "3:0:+50M",
            "-t",
            "3:8304",
            "-c",
            "3:root-a",
            "-A",
            "3:set:2",
            &path,
        ],
    );
    assert!(ok, "{text}");
    let t = Table::read(&f, size, SECTOR).unwrap();
    assert!(t.damaged.is_empty(), "{:?}", t.damaged);
    assert_eq!(
        t.disk_guid.to_string(),
        "11111111-2222-4333-8444-555555555555"
    );
    let esp = t.get(1).unwrap();
    assert_eq!(esp.type_guid.to_string(), partitions::ESP_TYPE);
    assert_eq!(esp.guid.to_string(), "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE");
    assert_eq!((esp.first_lba, esp.last_lba), (2048, 2048 + 16 * 2048 - 1));
    let root = t.get(3).unwrap();
    assert_eq!(root.type_guid.to_string(), partitions::ROOT_X86_64_TYPE);
    assert_eq!(root.name, "root-a");
    assert_eq!(root.attributes, 1 << 2);
    assert!(t.get(2).is_none());
    assert_eq!(t.find("root-a").unwrap().0, 3);
    assert_tools_agree(&path, &t);
}

#[test]
fn damaged_primary_falls_back_to_backup_and_rewrite_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let size = 128 * MIB;
    let t = product_table(size, 32 * MIB, 32 * MIB, MIB);
    let (f, path) = disk(dir.path(), "bad.img", size);
    t.write(&f).unwrap();

    // Flip a byte inside the primary entry array: the header CRC still matches, the array's not.
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0x5A], 2 * SECTOR + 130).unwrap();
    let back = Table::read(&f, size, SECTOR).unwrap();
    assert_eq!(back.entries, t.entries);
    assert_eq!(back.damaged.len(), 1, "{:?}", back.damaged);
    assert_eq!(back.damaged[0].0, TableCopy::Primary);
    assert!(
        back.damaged[0].1.contains("entry array"),
        "{:?}",
        back.damaged
    );
    let (_, v) = run("sgdisk", &["-v", &path]);
    assert!(
        !v.contains("No problems found"),
        "sgdisk missed the damage:\n{v}"
    );

    // Destroy the primary header signature too.
    f.write_all_at(b"XXXX", SECTOR).unwrap();
    let back = Table::read(&f, size, SECTOR).unwrap();
    assert!(
        back.damaged[0].1.contains("signature"),
        "{:?}",
        back.damaged
    );

    back.write(&f).unwrap();
    assert_sgdisk_clean(&path);
    let fixed = Table::read(&f, size, SECTOR).unwrap();
    assert!(fixed.damaged.is_empty());
    assert_eq!(fixed.entries, t.entries);

    // Damaged backup header only: the primary is used and the backup reported.
    let mut hdr = [0u8; 4];
    f.read_exact_at(&mut hdr, size - SECTOR + 24).unwrap();
    f.write_all_at(&[hdr[0] ^ 1], size - SECTOR + 24).unwrap();
    let back = Table::read(&f, size, SECTOR).unwrap();
    assert_eq!(back.damaged.len(), 1);
    assert_eq!(back.damaged[0].0, TableCopy::Backup);
    assert!(back.damaged[0].1.contains("CRC"), "{:?}", back.damaged);

    // Both gone.
    f.write_all_at(b"XXXX", SECTOR).unwrap();
    match Table::read(&f, size, SECTOR) {
        Err(GptError::NoValidTable { primary, backup }) => {
            assert!(primary.contains("signature"), "{primary}");
            assert!(backup.contains("CRC"), "{backup}");
        }
        other => panic!("expected NoValidTable, got {other:?}"),
    }
}

#[test]
fn grown_disk_resize_and_state_partition_fill_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let size = 256 * MIB;
    let t = product_table(size, 64 * MIB, 64 * MIB, 2 * MIB);
    let (f, path) = disk(dir.path(), "grow.img", size);
    t.write(&f).unwrap();
    let used_end = t.free_tail().0;

    // The image written to a bigger disk (not a multiple of 1 MiB, as real disks often are).
    let new_size = 1000 * MIB + 123 * SECTOR;
    f.set_len(new_size).unwrap();
    let (_, v) = run("sgdisk", &["-v", &path]);
    assert!(
        !v.contains("No problems found"),
        "expected a misplaced backup:\n{v}"
    );

    let mut t2 = Table::read(&f, new_size, SECTOR).unwrap();
    assert!(t2.damaged.is_empty(), "{:?}", t2.damaged);
    assert_eq!(
        t2.disk_sectors,
        size / SECTOR,
        "the table keeps its own size until resize"
    );
    assert_eq!(t2.entries, t.entries);
    t2.resize(new_size).unwrap();
    let (first, last) = t2.free_tail();
    assert_eq!(first, used_end);
    assert_eq!(last, new_size / SECTOR - 34);
    let first = first.div_ceil(ALIGN / SECTOR) * (ALIGN / SECTOR);
    let state = partitions::STATE;
    t2.add(
        state.number,
        Entry {
            type_guid: Guid::parse(state.type_guid).unwrap(),
            guid: guid(6),
            first_lba: first,
            last_lba: last,
            attributes: 0,
            name: state.label.to_string(),
        },
    )
    .unwrap();
    t2.write(&f).unwrap();
    assert_sgdisk_clean(&path);
    assert_tools_agree(&path, &t2);
    let (_, v) = run("sgdisk", &["-v", &path]);
    // Only the gap before the 1 MiB-aligned ESP and the alignment slack before the state
    // partition may remain free.
    let gap = (ALIGN / SECTOR - 34) + (first - used_end);
    assert!(
        v.contains(&format!("{gap} free sectors")),
        "state partition does not fill the disk:\n{v}"
    );
    let back = Table::read(&f, new_size, SECTOR).unwrap();
    assert_eq!(back, t2);
    assert_eq!(back.find("state").unwrap().1.last_lba, back.last_usable);

    // Shrinking below a partition is refused.
    let mut t3 = back.clone();
    assert!(matches!(
        t3.resize(size),
        Err(GptError::ShrinkCutsPartition { number: 6, .. })
    ));
}

#[test]
fn image_larger_than_disk_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let size = 128 * MIB;
    let t = product_table(size, 32 * MIB, 32 * MIB, MIB);
    let (f, _) = disk(dir.path(), "trunc.img", size);
    t.write(&f).unwrap();
    f.set_len(100 * MIB).unwrap();
    match Table::read(&f, 100 * MIB, SECTOR) {
        Err(GptError::NoValidTable { primary, .. }) => {
            assert!(primary.contains("beyond the disk"), "{primary}")
        }
        other => panic!("expected NoValidTable, got {other:?}"),
    }
}

#[test]
fn add_rejects_overlaps_bounds_and_bad_slots() {
    let mut t = Table::new(guid(1), 64 * MIB, SECTOR).unwrap();
    let ty = Guid::parse(partitions::VAR_TYPE).unwrap();
    let e = |first, last| Entry {
        type_guid: ty,
        guid: guid(2),
        first_lba: first,
        last_lba: last,
        attributes: 0,
        name: "p".into(),
    };
    t.add(1, e(2048, 4095)).unwrap();
    assert!(matches!(
        t.add(2, e(4095, 5000)),
        Err(GptError::Overlap {
            number: 2,
            other: 1,
            ..
        })
    ));
    assert!(matches!(
        t.add(2, e(100, 2048)),
        Err(GptError::Overlap { other: 1, .. })
    ));
    assert!(matches!(
        t.add(2, e(33, 100)),
        Err(GptError::OutOfRange { .. })
    ));
    let last = t.last_usable;
    assert!(matches!(
        t.add(2, e(last, last + 1)),
        Err(GptError::OutOfRange { .. })
    ));
    assert!(matches!(
        t.add(2, e(5000, 4999)),
        Err(GptError::OutOfRange { .. })
    ));
    assert_eq!(t.add(1, e(8000, 9000)), Err(GptError::SlotUsed(1)));
    assert_eq!(t.add(0, e(8000, 9000)), Err(GptError::BadNumber(0)));
    assert_eq!(t.add(129, e(8000, 9000)), Err(GptError::BadNumber(129)));
    let mut z = e(8000, 9000);
    z.type_guid = Guid::ZERO;
    assert!(matches!(t.add(2, z), Err(GptError::ZeroType { .. })));
    let mut long = e(8000, 9000);
    long.name = "x".repeat(37);
    assert!(matches!(t.add(2, long), Err(GptError::NameTooLong { .. })));
    t.add(2, e(4096, last)).unwrap();
    assert_eq!(t.free_tail(), (last + 1, last));

    assert!(matches!(
        Table::new(guid(1), 64 * MIB + 1, SECTOR),
        Err(GptError::UnalignedDisk { .. })
    ));
    assert!(matches!(
        Table::new(guid(1), 64 * MIB, 1000),
        Err(GptError::BadSectorSize(1000))
    ));
    assert!(matches!(
        Table::new(guid(1), 20 * SECTOR, SECTOR),
        Err(GptError::DiskTooSmall { .. })
    ));
}

#[test]
fn sector_size_4096_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let mut t = Table::new(guid(3), size, 4096).unwrap();
    assert_eq!(t.first_usable, 6);
    assert_eq!(t.last_usable, size / 4096 - 6);
    t.add(
        1,
        Entry {
            type_guid: Guid::parse(partitions::ESP_TYPE).unwrap(),
            guid: guid(4),
            first_lba: 256,
            last_lba: t.last_usable,
            attributes: 0,
            name: "esp".into(),
        },
    )
    .unwrap();
    let (f, _) = disk(dir.path(), "4k.img", size);
    t.write(&f).unwrap();
    assert_eq!(Table::read(&f, size, 4096).unwrap(), t);
    // Read with the wrong sector size: no table there.
    assert!(Table::read(&f, size, 512).is_err());
}

#[test]
fn rewriting_an_sgdisk_table_reproduces_its_headers_and_arrays() {
    let dir = tempfile::tempdir().unwrap();
    // 4 GiB puts the last LBA beyond cylinder 255 (CHS high bits in the sector byte).
    for size in [300 * MIB, 4096 * MIB] {
        let (theirs, tpath) = disk(dir.path(), "theirs.img", size);
        let (ok, text) = run(
            "sgdisk",
            &[
                "-U",
                "0F0E0D0C-0B0A-4908-8706-050403020100",
                "-n",
                "1:2048:+64M",
                "-t",
                "1:EF00",
                "-c",
                "1:esp",
                "-u",
                "1:11111111-2222-4333-8444-555555555555",
                "-n",
                "2:0:+100M",
                "-t",
                "2:8304",
                "-c",
                "2:root-a",
                "-u",
                "2:66666666-7777-4888-9999-AAAAAAAAAAAA",
                "-A",
                "2:set:60",
                &tpath,
            ],
        );
        assert!(ok, "{text}");
        let t = Table::read(&theirs, size, SECTOR).unwrap();
        let (ours, _) = disk(dir.path(), "ours.img", size);
        t.write(&ours).unwrap();
        // Only the table regions: the rest of these sparse files is zeros and large.
        let region = |f: &File, at: u64, len: u64| {
            use std::os::unix::fs::FileExt;
            let mut v = vec![0u8; len as usize];
            f.read_exact_at(&mut v, at).unwrap();
            v
        };
        let s = SECTOR;
        // Primary header and array (LBA 1..=33), backup array and header (the last 33 sectors).
        assert!(
            region(&theirs, s, 33 * s) == region(&ours, s, 33 * s),
            "primary header/array differ from sgdisk's"
        );
        assert!(
            region(&theirs, size - 33 * s, 33 * s) == region(&ours, size - 33 * s, 33 * s),
            "backup array/header differ from sgdisk's"
        );
        // The protective MBR partition entry too (sgdisk may add boot code or a disk signature).
        let (a, b) = (region(&theirs, 0, s), region(&ours, 0, s));
        assert_eq!(a[446..512], b[446..512]);
    }
}
