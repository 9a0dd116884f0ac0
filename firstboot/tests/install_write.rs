//! The installer's write step (`install::write`) on files standing in for the medium and the
//! target disk, checked with `sgdisk -v` and against the raw image's table and bytes. The
//! dm-verity read-back needs a kernel and runs in the QEMU install test.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::process::Command;

use rke2_firstboot::install::write::{self, Payload, Region, WriteError};
use rke2_image_contract::gpt::{Entry, Guid, Table};
use rke2_image_contract::partitions::{self, BUILT};
use rke2_testsupport::prereq;

const MIB: u64 = 1 << 20;

/// A raw image of 40 MiB in the project's layout: (table, bytes).
fn raw_image() -> (Table, Vec<u8>) {
    let size = 40 * MIB;
    let mut t = Table::new(Guid::from_hash([7; 16]), size, 512).unwrap();
    let sizes = [8, 8, 1, 8, 1];
    let mut at = MIB / 512;
    for (p, mib) in BUILT.iter().zip(sizes) {
        let n = mib * MIB / 512;
        t.add(
            p.number,
            Entry {
                type_guid: Guid::parse(p.type_guid).unwrap(),
                guid: Guid::from_hash([p.number as u8; 16]),
                first_lba: at,
                last_lba: at + n - 1,
                attributes: 0,
                name: p.label.into(),
            },
        )
        .unwrap();
        at += n;
    }
    let f = tempfile::tempfile().unwrap();
    f.set_len(size).unwrap();
    t.write(&f).unwrap();
    let mut bytes = vec![0u8; size as usize];
    f.read_exact_at(&mut bytes, 0).unwrap();
    // Contents: a distinct pattern per written partition.
    for (p, fill) in [
        (partitions::ESP, 0x11u8),
        (partitions::ROOT_A, 0x22),
        (partitions::ROOT_A_VERITY, 0x33),
    ] {
        let e = t.get(p.number).unwrap();
        let (o, l) = (e.first_lba * 512, e.sectors() * 512);
        for (i, b) in bytes[o as usize..(o + l) as usize].iter_mut().enumerate() {
            *b = fill ^ (i as u8);
        }
    }
    // The ESP's free clusters at its end are zeros, as in a built image.
    let esp = t.get(1).unwrap();
    let end = ((esp.last_lba + 1) * 512) as usize;
    bytes[end - 2 * MIB as usize..end].fill(0);
    (t, bytes)
}

/// The medium: the four payload files back to back (2 MiB apart, as on an ISO any offsets).
fn medium(t: &Table, raw: &[u8]) -> (File, [Region; 4]) {
    let f = tempfile::tempfile().unwrap();
    let part = |n: u32| {
        let e = t.get(n).unwrap();
        (e.first_lba * 512, e.sectors() * 512)
    };
    let (esp_o, esp_l) = part(1);
    let (root_o, root_l) = part(2);
    let (ver_o, ver_l) = part(3);
    // The root and hash files are shorter than their partitions, as the EROFS and tree are.
    let pieces = [
        (0, esp_o),
        (esp_o, esp_l - 2 * MIB),
        (root_o, root_l - MIB),
        (ver_o, ver_l / 2),
    ];
    let mut regions = [Region { offset: 0, len: 0 }; 4];
    let mut at = 4096;
    for (i, (o, l)) in pieces.iter().enumerate() {
        f.write_all_at(&raw[*o as usize..(*o + *l) as usize], at)
            .unwrap();
        regions[i] = Region {
            offset: at,
            len: *l,
        };
        at += l + 2 * MIB;
    }
    (f, regions)
}

fn payload(f: &File, r: [Region; 4]) -> Payload<'_> {
    Payload {
        medium: f,
        head: r[0],
        esp: r[1],
        root: r[2],
        verity: r[3],
    }
}

#[test]
fn written_disk_is_the_raw_image_resized() {
    if !prereq::program("sgdisk", "gdisk") {
        return;
    }
    let (t, raw) = raw_image();
    let (m, r) = medium(&t, &raw);
    let p = payload(&m, r);
    let image = write::image_table(&write::read_head(&p).unwrap()).unwrap();
    assert_eq!(image.entries, t.entries);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    let disk = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let size = 100 * MIB;
    // A used disk: old bytes everywhere (stale signatures must not survive where they matter).
    disk.write_all_at(&vec![0xee; size as usize], 0).unwrap();
    assert!(!write::installed(&disk, size, &image, &p));

    let l = write::layout(&image, size, &p).unwrap();
    let mut lines = Vec::new();
    let n = write::write(&disk, "/dev/test", &l, &p, &mut |s| {
        lines.push(s.to_string())
    })
    .unwrap();
    assert_eq!(n, r.iter().map(|x| x.len).sum::<u64>());
    assert!(
        lines
            .iter()
            .any(|s| s.starts_with("writing the ESP (6 MiB) to /dev/test")),
        "{lines:?}"
    );

    // The outside oracle: sgdisk finds a valid GPT with its backup at the disk's end.
    let v = Command::new("sgdisk")
        .arg("-v")
        .arg(&path)
        .output()
        .unwrap();
    let vt = String::from_utf8_lossy(&v.stdout);
    assert!(vt.contains("No problems found"), "{vt}");
    // The same partitions and disk GUID as the raw image.
    let got = Table::read(&disk, size, 512).unwrap();
    assert_eq!((got.disk_guid, &got.entries), (t.disk_guid, &t.entries));
    assert_eq!(got.disk_sectors, size / 512);
    // The same bytes in the head and the written partitions.
    let read = |o: u64, l: u64| {
        let mut b = vec![0u8; l as usize];
        disk.read_exact_at(&mut b, o).unwrap();
        b
    };
    for (o, l) in [(MIB, 8 * MIB), (9 * MIB, 7 * MIB), (17 * MIB, MIB / 2)] {
        assert!(
            read(o, l) == raw[o as usize..(o + l) as usize],
            "bytes at {o}"
        );
    }
    // root-b, root-b-verity and the state area start zeroed (no stale signatures).
    for o in [18 * MIB, 26 * MIB, 27 * MIB] {
        assert!(read(o, MIB).iter().all(|b| *b == 0), "stale bytes at {o}");
    }
    write::verify_esp_and_table(&disk, "/dev/test", &l, &p).unwrap();
    assert!(write::installed(&disk, size, &image, &p));

    // A damaged ESP byte is found by the read-back.
    disk.write_all_at(&[0], MIB + 4 * MIB + 3).unwrap();
    let e = write::verify_esp_and_table(&disk, "/dev/test", &l, &p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the ESP read back differs from esp.img near byte 4194304"),
        "{e}"
    );
    assert!(e.contains("install again"), "{e}");
}

#[test]
fn refusals_before_writing() {
    let (t, raw) = raw_image();
    let (m, r) = medium(&t, &raw);
    let p = payload(&m, r);
    let image = write::image_table(&write::read_head(&p).unwrap()).unwrap();
    // Smaller than the raw image.
    let e = write::layout(&image, 39 * MIB, &p).unwrap_err();
    assert!(matches!(e, WriteError::Small { .. }), "{e}");
    assert!(e.to_string().contains("choose a larger disk"), "{e}");
    // A root file larger than its partition (a medium of two builds).
    let mut big = p;
    big.root.len = 9 * MIB;
    let e = write::layout(&image, 64 * MIB, &big)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("root.img (9 MiB) does not fit its partition root-a (8 MiB)"),
        "{e}"
    );
    // Not a head.
    let e = write::image_table(&[0u8; 4096]).unwrap_err().to_string();
    assert!(e.contains("no GPT header at LBA 1"), "{e}");
    // A write that fails part-way says the disk has no table.
    let l = write::layout(&image, 64 * MIB, &p).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::write(&ro, vec![0u8; (64 * MIB) as usize]).unwrap();
    let f = File::open(&ro).unwrap();
    let e = write::write(&f, "/dev/test", &l, &p, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("the disk now has no partition table"), "{e}");
}
