//! The `iso` output (`output.formats: [raw, iso]`) from the synthetic base, checked with
//! xorriso's own reports (El Torito EFI image, GPT with the ESP), `sgdisk -v`, `fsck.fat -n`
//! on the ESP, `osirrox` extracting the root and hash device (equal to the raw image's regions,
//! accepted by `veritysetup verify`), the live UKI's command line, the published manifest's
//! record, reproducibility, and the raw image unchanged by selecting `iso`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rke2_image_contract::manifest::Manifest;
use rke2_testsupport::prereq;

mod common;
use common::{ok, text};
const STEM: &str = "iso-1.0";
/// The EFI System partition type GUID as xorriso prints it (on-disk byte order).
const ESP_TYPE: &str = "28732ac11ff8d211ba4b00a0c93ec93b";

/// Builds the synthetic image with `--format formats` in a fresh directory (the definition is
/// the same file every time, so the build seed is too); returns it.
fn build(formats: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join("base.tar"), common::base_tar(Vec::new())).unwrap();
    fs::write(p.join("init"), b"#!/bin/sh\n").unwrap();
    fs::write(
        p.join("image.yaml"),
        "apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: iso\nversion: \"1.0\"\n\
             base:\n  archive: base.tar\ninitrd:\n  init: init\n\
             security:\n  selinux: disabled\nkernel:\n  cmdline:\n    - console=ttyS0,115200\n\
             disk:\n  espSize: 64MiB\n  rootSize: 24MiB\n  stateSize: 256MiB\n\
             output:\n  directory: out\nepoch: 1700000000\n",
    )
    .unwrap();
    ok(Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .arg("build")
        .arg(p.join("image.yaml"))
        .args(["--format", formats])
        .env_remove("SOURCE_DATE_EPOCH")
        .env("RKE2_IMAGE_CACHE", p.join("cache")));
    dir
}

fn out(d: &Path, suffix: &str) -> PathBuf {
    d.join(format!("out/{STEM}.{suffix}"))
}

fn manifest(d: &Path) -> Manifest {
    serde_json::from_slice(&fs::read(out(d, "manifest.json")).unwrap()).unwrap()
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// `field : N values...` lines of an xorriso report for entry `n`.
fn report_values<'a>(report: &'a str, field: &str, n: u32) -> Option<Vec<&'a str>> {
    report.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim() != field {
            return None;
        }
        let mut it = v.split_whitespace();
        (it.next()? == n.to_string()).then(|| it.collect())
    })
}

/// Extracts the file `from` of `iso` to `to` with osirrox.
fn extract(iso: &Path, from: &str, to: &Path) {
    ok(Command::new("osirrox")
        .args(["-no_rc", "-indev"])
        .arg(iso)
        .arg("-extract")
        .arg(from)
        .arg(to));
}

/// Every program in `programs` (name, Debian package) is installed (else see `prereq`).
fn have(programs: &[(&str, &str)]) -> bool {
    programs.iter().all(|(p, pkg)| prereq::program(p, pkg))
}

/// xorriso's El Torito and system area (MBR, GPT) reports on `iso`.
fn xorriso_report(iso: &Path) -> String {
    text(&ok(Command::new("xorriso").args([
        "-no_rc",
        "-indev",
        iso.to_str().unwrap(),
        "-report_el_torito",
        "plain",
        "-report_system_area",
        "plain",
    ])))
}

fn read_region(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

#[test]
fn iso_hybrid_layout_files_and_reproducible() {
    if !have(&[
        ("xorriso", "xorriso"),
        ("osirrox", "xorriso"),
        ("sgdisk", "gdisk"),
        ("fsck.fat", "dosfstools"),
        ("mcopy", "mtools"),
        ("veritysetup", "cryptsetup-bin"),
    ]) {
        return;
    }
    let a = build("raw,iso");
    let iso = out(a.path(), "iso");
    let raw = out(a.path(), "raw");
    // Nothing staged or worked on is left behind.
    for e in fs::read_dir(a.path().join("out")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !n.contains(".partial-") && !n.contains("iso-work"),
            "{n} left behind"
        );
    }

    // Recorded in the published manifest.
    let m = manifest(a.path());
    let data = fs::read(&iso).unwrap();
    let rec = m
        .outputs
        .iter()
        .find(|o| o.path == format!("{STEM}.iso"))
        .unwrap_or_else(|| panic!("the iso is not in the manifest's outputs: {:?}", m.outputs));
    assert_eq!(
        (rec.size, rec.sha256.as_str()),
        (data.len() as u64, &*sha256(&data))
    );
    assert!(
        !data
            .windows(a.path().as_os_str().len())
            .any(|w| w == a.path().as_os_str().as_encoded_bytes()),
        "a host path in the ISO"
    );

    // xorriso's reports: an El Torito UEFI no-emulation image that is appended partition 2,
    // and a GPT publishing that partition as an EFI System partition.
    let r = xorriso_report(&iso);
    let boot = report_values(&r, "El Torito boot img", 1).unwrap_or_else(|| panic!("{r}"));
    assert_eq!(&boot[..3], ["UEFI", "y", "none"], "{r}");
    assert!(
        r.contains("MBR protective-msdos-label") && r.contains("GPT"),
        "{r}"
    );
    assert_eq!(
        report_values(&r, "GPT type GUID", 2),
        Some(vec![ESP_TYPE]),
        "{r}"
    );
    let se = report_values(&r, "GPT start and size", 2).unwrap_or_else(|| panic!("{r}"));
    let (esp_start, esp_blocks): (u64, u64) = (se[0].parse().unwrap(), se[1].parse().unwrap());
    let img_blks = report_values(&r, "El Torito img blks", 1).unwrap_or_else(|| panic!("{r}"));
    // The El Torito image is the whole partition (2048-byte blocks there, 512 in the GPT).
    assert_eq!(img_blks[0].parse::<u64>().unwrap() * 4, esp_blocks, "{r}");
    // The GPT's disk GUID derives from the build seed, not only from the date.
    let disk_guid = r
        .lines()
        .find_map(|l| l.strip_prefix("GPT disk GUID      :"))
        .unwrap_or_else(|| panic!("{r}"))
        .trim();
    assert_eq!(disk_guid.len(), 32);
    assert_eq!(&disk_guid[14..15], "4", "version 4: {disk_guid}");
    assert!(
        !disk_guid.starts_with("3230"),
        "a date-derived GUID: {disk_guid}"
    );
    let v = text(&ok(Command::new("sgdisk").arg("-v").arg(&iso)));
    assert!(v.contains("No problems found"), "{v}");

    // The ESP: clean FAT, systemd-boot and the live UKI with the disk UKI's line + rke2.root=iso.
    let esp = a.path().join("esp.img");
    fs::write(&esp, read_region(&iso, esp_start * 512, esp_blocks * 512)).unwrap();
    let f = text(&ok(Command::new("fsck.fat").arg("-n").arg(&esp)));
    assert!(!f.contains("differ"), "{f}");
    let uki = a.path().join("live.efi");
    ok(Command::new("mcopy")
        .arg("-i")
        .arg(&esp)
        .arg(format!("::/EFI/Linux/{STEM}-live.efi"))
        .arg(&uki));
    ok(Command::new("mcopy")
        .arg("-i")
        .arg(&esp)
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .arg(a.path().join("bootx64.efi")));
    let uki_bytes = fs::read(&uki).unwrap();
    let line = format!("{} rke2.root=iso", m.ukis[0].cmdline);
    assert!(
        uki_bytes.windows(line.len()).any(|w| w == line.as_bytes()),
        "the live UKI lacks {line:?}"
    );
    assert!(line.contains(&format!("rke2.roothash={}", m.verity.root_hash)));

    // The files: osirrox extracts the root and hash device, equal to the raw image's root-a
    // regions and accepted by veritysetup; the manifest is the embedded one.
    let x = a.path().join("x");
    fs::create_dir(&x).unwrap();
    for (from, to) in [
        ("/rke2/root.img", "root.img"),
        ("/rke2/verity.img", "verity.img"),
        ("/rke2/manifest.json", "manifest.json"),
        ("/rke2/head.img", "head.img"),
        ("/rke2/esp.img", "esp.img"),
    ] {
        extract(&iso, from, &x.join(to));
    }
    let part = |label: &str| {
        let p = m.disk.partitions.iter().find(|p| p.label == label).unwrap();
        p.first_lba * m.disk.sector_size
    };
    let root = fs::read(x.join("root.img")).unwrap();
    assert_eq!(root.len() as u64, m.verity.data_blocks * 4096);
    assert!(root == read_region(&raw, part("root-a"), root.len() as u64));
    let hash = fs::read(x.join("verity.img")).unwrap();
    assert!(hash == read_region(&raw, part("root-a-verity"), hash.len() as u64));
    let vs = Command::new("veritysetup")
        .arg("verify")
        .arg(x.join("root.img"))
        .arg(x.join("verity.img"))
        .arg(&m.verity.root_hash)
        .output()
        .unwrap();
    assert!(vs.status.success(), "{}", text(&vs));
    // The installer's payload: the raw image's head (protective MBR + primary GPT, up to the
    // first partition) and its ESP partition, equal bytes.
    let head = fs::read(x.join("head.img")).unwrap();
    assert_eq!(head.len() as u64, part("esp"));
    assert!(head == read_region(&raw, 0, part("esp")));
    let esp_p = m.disk.partitions.iter().find(|p| p.label == "esp").unwrap();
    let esp_len = (esp_p.last_lba + 1 - esp_p.first_lba) * m.disk.sector_size;
    // Up to its last non-zero 2 KiB block: the rest of the partition is zeros (the installer
    // zeroes it).
    let disk_esp = fs::read(x.join("esp.img")).unwrap();
    let used = disk_esp.len() as u64;
    assert!(
        used > 0 && used <= esp_len && used.is_multiple_of(2048),
        "{used}"
    );
    assert!(disk_esp == read_region(&raw, part("esp"), used));
    assert!(disk_esp[disk_esp.len() - 2048..].iter().any(|b| *b != 0));
    assert!(read_region(&raw, part("esp") + used, esp_len - used)
        .iter()
        .all(|b| *b == 0));
    // The install entry: the live UKI with its line plus a bare rke2.install; not the default.
    let entry = a.path().join("install.conf");
    ok(Command::new("mcopy")
        .arg("-i")
        .arg(&esp)
        .arg("::/loader/entries/install.conf")
        .arg(&entry));
    let entry = fs::read_to_string(&entry).unwrap();
    assert!(
        entry.contains(&format!("\nefi /EFI/Linux/{STEM}-live.efi\n")),
        "{entry}"
    );
    assert!(
        entry.contains(&format!("\noptions {line} rke2.install\n")),
        "{entry}"
    );

    ok(Command::new("mcopy")
        .arg("-i")
        .arg(format!("{}@@{}", raw.display(), part("esp")))
        .arg("::/rke2-image/manifest.json")
        .arg(x.join("esp-manifest.json")));
    assert!(
        fs::read(x.join("manifest.json")).unwrap()
            == fs::read(x.join("esp-manifest.json")).unwrap()
    );

    // `inspect` reads the ISO: its hybrid GPT, the live UKI on its ESP, the manifest and
    // verity superblock from its ISO 9660 files, all consistent.
    let ins = ok(Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .args(["inspect", "--json"])
        .arg(&iso));
    let j: serde_json::Value = serde_json::from_slice(&ins.stdout).unwrap();
    assert_eq!(j["medium"], "iso", "{j}");
    assert_eq!(j["problems"], serde_json::json!([]), "{j}");
    assert_eq!(j["rootHash"], m.verity.root_hash.as_str(), "{j}");
    assert_eq!(
        j["manifest"]["verity"]["rootHash"],
        m.verity.root_hash.as_str()
    );
    assert_eq!(j["verity"][0]["partition"], "/rke2/verity.img", "{j}");
    assert_eq!(j["verity"][0]["dataBlocks"], m.verity.data_blocks, "{j}");
    let files: Vec<&str> = j["isoFiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "/rke2/manifest.json",
            "/rke2/root.img",
            "/rke2/verity.img",
            "/rke2/config.img"
        ]
    );
    assert_eq!(j["embeddedConfig"], "empty", "{j}");
    let human = text(&ok(Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .arg("inspect")
        .arg(&iso)));
    assert!(human.contains("ISO (hybrid"), "{human}");
    // A copy whose ISO 9660 manifest disagrees with the live UKI's root hash is a problem.
    let bad = a.path().join("bad.iso");
    fs::copy(&iso, &bad).unwrap();
    let mf = j["isoFiles"][0]["offset"].as_u64().unwrap();
    let mtext = fs::read(x.join("manifest.json")).unwrap();
    let at = mtext
        .windows(m.verity.root_hash.len())
        .position(|w| w == m.verity.root_hash.as_bytes())
        .unwrap() as u64;
    let f = fs::OpenOptions::new().write(true).open(&bad).unwrap();
    let c = if m.verity.root_hash.starts_with('0') {
        b"1"
    } else {
        b"0"
    };
    f.write_all_at(c, mf + at).unwrap();
    drop(f);
    let o = Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .arg("inspect")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("root hash") && text(&o).contains("differs from the manifest"),
        "{}",
        text(&o)
    );
    fs::remove_file(&bad).unwrap();

    // A second build elsewhere: the same ISO; a raw-only build: the same raw image.
    let b = build("raw,iso");
    assert!(
        data == fs::read(out(b.path(), "iso")).unwrap(),
        "the ISO differs between two builds"
    );
    drop(b);
    let c = build("raw");
    assert!(!out(c.path(), "iso").exists());
    let same = Command::new("cmp")
        .arg(&raw)
        .arg(out(c.path(), "raw"))
        .output()
        .unwrap();
    assert!(
        same.status.success(),
        "selecting iso changed the raw image: {}",
        text(&same)
    );
}

/// Runs `rke2-image` with `args`; its output.
fn rke2_image(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .args(args)
        .output()
        .unwrap()
}

/// `iso customize` / `iso show-config` on a built ISO: the built area is empty; a cluster
/// configuration round-trips (read back by osirrox too); El Torito and the GPT stay valid
/// (xorriso, `sgdisk -v`); the same input customized twice gives the same bytes and `--remove`
/// gives back the built ISO exactly; a configuration too large, invalid, a non-rke2 ISO and an
/// existing output are refused without writing anything.
#[test]
fn iso_customize_embeds_a_configuration() {
    use rke2_image_contract::embed;
    use std::ffi::OsStr;
    if !have(&[
        ("xorriso", "xorriso"),
        ("osirrox", "xorriso"),
        ("sgdisk", "gdisk"),
    ]) {
        return;
    }
    let a = build("iso");
    let d = a.path();
    let iso = out(d, "iso");
    let built = fs::read(&iso).unwrap();
    let o = |p: &Path| p.as_os_str().to_owned();
    let s = |v: &str| OsStr::new(v).to_owned();
    let cz = |input: &Path, config: &Path, out: &Path| {
        vec![
            s("iso"),
            s("customize"),
            o(input),
            s("--config"),
            o(config),
            s("-o"),
            o(out),
        ]
    };
    let run = |args: Vec<std::ffi::OsString>| {
        let r: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        rke2_image(&r)
    };
    // The area as built: an empty header and zeros (osirrox extracts it).
    let area = d.join("area.img");
    extract(&iso, embed::CONFIG_FILE, &area);
    assert!(fs::read(&area).unwrap() == embed::empty());
    let show = run(vec![s("iso"), s("show-config"), o(&iso)]);
    assert!(
        show.status.success() && show.stdout.is_empty(),
        "{}",
        text(&show)
    );
    assert!(text(&show).contains("empty"), "{}", text(&show));

    // Customize with the example cluster file: shown back, and extracted back by osirrox.
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/node-config/cluster.yaml");
    let cfg_bytes = fs::read(&cfg).unwrap();
    let c1 = d.join("c1.iso");
    let r = run(cz(&iso, &cfg, &c1));
    assert!(r.status.success(), "{}", text(&r));
    let show = run(vec![s("iso"), s("show-config"), o(&c1)]);
    assert!(show.status.success(), "{}", text(&show));
    assert!(show.stdout == cfg_bytes);
    fs::remove_file(&area).unwrap();
    extract(&c1, embed::CONFIG_FILE, &area);
    let got = fs::read(&area).unwrap();
    assert_eq!(got.len(), embed::AREA_BYTES);
    assert_eq!(embed::decode(&got, got.len()), Ok(Some(cfg_bytes.clone())));
    // inspect names what is embedded and still finds the ISO consistent.
    let ins = run(vec![s("inspect"), s("--json"), o(&c1)]);
    assert!(ins.status.success(), "{}", text(&ins));
    let j: serde_json::Value = serde_json::from_slice(&ins.stdout).unwrap();
    assert_eq!(
        j["embeddedConfig"],
        format!("{} bytes, sha256 {}", cfg_bytes.len(), sha256(&cfg_bytes)).as_str(),
        "{j}"
    );
    // Only the area changed.
    let c1_bytes = fs::read(&c1).unwrap();
    assert_eq!(c1_bytes.len(), built.len());
    let diff: Vec<usize> = (0..built.len())
        .filter(|&i| built[i] != c1_bytes[i])
        .collect();
    let at = fs::File::open(&iso)
        .map(|f| rke2_image_contract::iso9660::find(&f, embed::CONFIG_FILE).unwrap())
        .unwrap();
    assert!(
        diff.iter()
            .all(|&i| (i as u64) >= at.offset && (i as u64) < at.offset + at.len),
        "bytes outside the area changed"
    );
    // El Torito and the GPT as xorriso wrote them.
    let rep = |p: &Path| xorriso_report(p).replace(p.to_str().unwrap(), "ISO");
    let r1 = rep(&c1);
    assert_eq!(
        report_values(&r1, "El Torito boot img", 1).unwrap()[..3],
        ["UEFI", "y", "none"],
        "{r1}"
    );
    assert_eq!(r1, rep(&iso));
    let v = text(&ok(Command::new("sgdisk").arg("-v").arg(&c1)));
    assert!(v.contains("No problems found"), "{v}");

    // Twice the same input: the same bytes; over a customized one: the same bytes again;
    // --remove: the built ISO; OUT = IN with --force rewrites it in place.
    let c2 = d.join("c2.iso");
    for input in [&iso, &c1] {
        let r = run(cz(input, &cfg, &c2));
        assert!(r.status.success(), "{}", text(&r));
        assert!(
            fs::read(&c2).unwrap() == c1_bytes,
            "from {}",
            input.display()
        );
        fs::remove_file(&c2).unwrap();
    }
    fs::copy(&c1, &c2).unwrap();
    let r = run(vec![
        s("iso"),
        s("customize"),
        o(&c2),
        s("--remove"),
        s("-o"),
        o(&c2),
        s("--force"),
    ]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(
        fs::read(&c2).unwrap() == built,
        "--remove did not give back the built ISO"
    );

    // Refusals: nothing written, OUT untouched, no temporary left.
    let refused = |args: Vec<std::ffi::OsString>, want: &[&str]| {
        let r = run(args);
        let t = text(&r);
        assert!(!r.status.success(), "{t}");
        for w in want {
            assert!(t.contains(w), "{w:?} not in {t}");
        }
    };
    let big = d.join("big.yaml");
    fs::write(&big, vec![b'#'; embed::MAX_PAYLOAD + 1]).unwrap();
    let c3 = d.join("c3.iso");
    refused(
        cz(&iso, &big, &c3),
        &[
            &format!("{} bytes", embed::MAX_PAYLOAD + 1),
            &format!("at most {}", embed::MAX_PAYLOAD),
            "big.yaml",
        ],
    );
    let bad = d.join("bad.yaml");
    fs::write(
        &bad,
        "apiVersion: rke2-image/v1\nkind: NodeConfig\ncluster:\n  tokne: x\n",
    )
    .unwrap();
    refused(cz(&iso, &bad, &c3), &["bad.yaml", "tokne"]);
    refused(cz(&iso, &cfg, &c1), &["c1.iso exists", "--force"]);
    refused(cz(&iso, &cfg, &iso), &["exists", "--force"]);
    let plain_tree = d.join("plain");
    fs::create_dir_all(plain_tree.join("rke2")).unwrap();
    fs::write(plain_tree.join("rke2/root.img"), b"x").unwrap();
    let plain = d.join("plain.iso");
    rke2_testsupport::iso::mkisofs(&plain_tree, &plain, &[]).unwrap();
    refused(
        cz(&plain, &cfg, &c3),
        &["no /rke2/config.img", "not an rke2-image ISO"],
    );
    refused(cz(&cfg, &cfg, &c3), &["cluster.yaml", "ISO 9660"]);
    assert!(!c3.exists());
    assert!(fs::read(&c1).unwrap() == c1_bytes);
    assert!(fs::read(&iso).unwrap() == built);
    for e in fs::read_dir(d).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.ends_with(".tmp"), "{n} left behind");
    }
}
