//! The initrd module closure against kmod's `modprobe --show-depends`, and the built initrd
//! against `zstd -d` and GNU `cpio`, on the Debian base named by `RKE2_TEST_BASE`.

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers outside #[test] included)

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use rke2_image::archive;
use rke2_image::initrd::{self, Spec, BOOT_MODULES, LOAD_ORDER_FILE};
use rke2_image::tree::{Blob, Tree};

struct Base {
    tarball: PathBuf,
    tree: Tree,
    kver: String,
    /// Temporary root holding `lib/modules/<kver>` extracted by GNU tar, for modprobe.
    modroot: tempfile::TempDir,
}

fn base() -> Option<&'static Base> {
    static BASE: OnceLock<Option<Base>> = OnceLock::new();
    // Checked by every test (outside the once-only init), so each skip is reported.
    let tarball = rke2_testsupport::prereq::test_base()?;
    BASE.get_or_init(|| {
        let mut tree = Tree::new(0);
        archive::load(&tarball, &mut tree).unwrap();
        let kvers = initrd::kernel_versions(&tree);
        assert_eq!(kvers.len(), 1, "expected one kernel in the base: {kvers:?}");
        let kver = kvers[0].clone();

        let modroot = tempfile::tempdir().unwrap();
        // Held by a static, never dropped: removed when the test process exits.
        rke2_testsupport::scratch::remove_at_exit(modroot.path());
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(modroot.path())
            .arg("--wildcards")
            .arg(format!("*usr/lib/modules/{kver}/*"))
            .status()
            .unwrap();
        assert!(st.success(), "tar could not extract the modules");
        // modprobe -d looks in <dir>/lib/modules.
        std::os::unix::fs::symlink("usr/lib", modroot.path().join("lib")).unwrap();
        Some(Base {
            tarball,
            tree,
            kver,
            modroot,
        })
    })
    .as_ref()
}

/// `modprobe --show-depends`: the module paths (relative to the modules dir) it would insmod,
/// in order. Built-in modules print no path.
fn show_depends(b: &Base, module: &str) -> Vec<String> {
    let out = Command::new("modprobe")
        .arg("-d")
        .arg(b.modroot.path())
        .args(["-S", &b.kver, "--show-depends", module])
        .output()
        .expect("modprobe (kmod) must be installed");
    assert!(
        out.status.success(),
        "modprobe --show-depends {module}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("{}/lib/modules/{}/", b.modroot.path().display(), b.kver);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .map(|p| {
            p.trim()
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("unexpected modprobe path {p}"))
                .to_string()
        })
        .collect()
}

fn rel<'a>(b: &Base, path: &'a str) -> &'a str {
    path.strip_prefix(&format!("usr/lib/modules/{}/", b.kver))
        .unwrap_or_else(|| panic!("module path {path} outside the modules dir"))
}

#[test]
fn boot_closure_matches_modprobe() {
    let Some(b) = base() else { return };
    let closure = initrd::module_closure(&b.tree, &b.kver, BOOT_MODULES).unwrap();
    let ours: Vec<&str> = closure.iter().map(|m| rel(b, &m.path)).collect();
    let unique: BTreeSet<&str> = ours.iter().copied().collect();
    assert_eq!(unique.len(), ours.len(), "duplicates in {ours:?}");

    let mut expected = BTreeSet::new();
    for m in BOOT_MODULES {
        let deps = show_depends(b, m);
        assert!(!deps.is_empty(), "{m} is built in or missing: pick another");
        expected.extend(deps);
    }
    let ours_set: BTreeSet<String> = unique.iter().map(|s| s.to_string()).collect();
    assert_eq!(ours_set, expected);

    // A valid order: everything modprobe loads before a module comes before it in ours.
    let pos: BTreeMap<&str, usize> = ours.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    for m in &closure {
        let deps = show_depends(b, &m.name);
        let me = rel(b, &m.path);
        let own = deps.iter().position(|d| d == me).unwrap();
        for d in &deps[..own] {
            if d != me {
                assert!(
                    pos[d.as_str()] < pos[me],
                    "{d} must load before {me}: {ours:#?}"
                );
            }
        }
    }
    println!("{} modules: {ours:?}", ours.len());
}

#[test]
fn softdep_and_aliases() {
    let Some(b) = base() else { return };
    let names = |wanted: &[&str]| -> Vec<String> {
        initrd::module_closure(&b.tree, &b.kver, wanted)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect()
    };
    // erofs -> libcrc32c, whose softdep "pre: crc32c" is an alias of crc32c_generic (and of
    // crc32c_intel): the provider must load first or erofs fails with "Unknown symbol crc32c".
    let e = names(&["erofs"]);
    let at = |n: &str| e.iter().position(|x| x == n).unwrap_or(usize::MAX);
    assert!(at("crc32c_generic") < at("libcrc32c"), "{e:?}");
    assert!(at("libcrc32c") < at("erofs"), "{e:?}");
    assert_eq!(e.last().map(String::as_str), Some("erofs"));
    // '-' and '_' are the same; an alias resolves like modprobe does.
    assert_eq!(names(&["dm-verity"]), names(&["dm_verity"]));
    let alias: BTreeSet<String> = names(&["crypto-crc32c"]).into_iter().collect();
    let oracle: BTreeSet<String> = show_depends(b, "crypto-crc32c")
        .iter()
        .map(|p| {
            let f = p.rsplit('/').next().unwrap();
            f.trim_end_matches(".ko").replace('-', "_")
        })
        .collect();
    assert_eq!(alias, oracle);
    // Built in (unix sockets): nothing to load, no error.
    assert!(names(&["unix"]).is_empty());
    let err = initrd::module_closure(&b.tree, &b.kver, &["no_such_module"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no_such_module") && err.contains(&b.kver),
        "{err}"
    );
}

fn run_pipe(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{cmd:?} failed");
    out.stdout
}

fn tar_file(b: &Base, path: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(&b.tarball)
        .arg(format!("./{path}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "tar -xO {path}");
    out.stdout
}

#[test]
fn built_initrd_unpacks_with_zstd_and_cpio() {
    let Some(b) = base() else { return };
    let init = Blob::bytes(b"#!/bin/sh\necho rke2-init stand-in\n".to_vec());
    let extra = vec![(
        "/etc/rke2-init/extra.conf".to_string(),
        Blob::bytes(b"x=1\n".to_vec()),
        0o600,
    )];
    let spec = Spec {
        init: &init,
        kver: &b.kver,
        modules: BOOT_MODULES,
        extra_files: &extra,
        mtime: 1_700_000_000,
    };
    let t0 = std::time::Instant::now();
    let rd = initrd::build(&b.tree, &spec).unwrap();
    let took = t0.elapsed();
    let again = initrd::build(&b.tree, &spec).unwrap();
    assert!(rd.bytes == again.bytes, "initrd is not deterministic");
    println!(
        "initrd: {} modules, {} bytes compressed, {} bytes uncompressed, built in {:?}",
        rd.modules.len(),
        rd.bytes.len(),
        rd.uncompressed_size,
        took
    );

    let cpio = run_pipe(Command::new("zstd").args(["-d", "-c"]), &rd.bytes);
    assert_eq!(cpio.len() as u64, rd.uncompressed_size);
    let listing = run_pipe(Command::new("cpio").args(["-t", "--quiet"]), &cpio);
    let listed: BTreeSet<String> = String::from_utf8(listing)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();

    let md = format!("lib/modules/{}", b.kver);
    let mut expected: BTreeSet<String> = [
        "init",
        "dev",
        "dev/console",
        "proc",
        "sys",
        "run",
        "sysroot",
        "etc",
        "etc/rke2-init",
        "etc/rke2-init/extra.conf",
        LOAD_ORDER_FILE,
        "lib",
        "lib/modules",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.insert(md.clone());
    expected.insert(format!("{md}/modules.dep"));
    expected.insert(format!("{md}/modules.softdep"));
    for m in &rd.modules {
        let mut p = format!("{md}/{}", rel(b, &m.path));
        expected.insert(p.clone());
        while let Some(i) = p.rfind('/') {
            p.truncate(i);
            expected.insert(p.clone());
        }
    }
    assert_eq!(listed, expected);

    // Unpack as root and look at what the kernel would see.
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new("cpio");
    c.args(["-idm", "--quiet"]).current_dir(dir.path());
    run_pipe(&mut c, &cpio);
    let root = dir.path();
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let console = std::fs::symlink_metadata(root.join("dev/console")).unwrap();
    assert!(console.file_type().is_char_device());
    assert_eq!(console.rdev(), (5 << 8) | 1);
    let init_meta = std::fs::metadata(root.join("init")).unwrap();
    assert_eq!(init_meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(init_meta.mtime(), 1_700_000_000);
    assert_eq!(
        std::fs::read(root.join("init")).unwrap(),
        b"#!/bin/sh\necho rke2-init stand-in\n"
    );

    // Module bytes are the base's, and the load order lists each module once, dependencies
    // first as modules.dep in the initrd states them.
    let erofs = rd.modules.iter().find(|m| m.name == "erofs").unwrap();
    assert_eq!(
        std::fs::read(root.join(format!("{md}/{}", rel(b, &erofs.path)))).unwrap(),
        tar_file(b, &erofs.path)
    );
    let order = std::fs::read_to_string(root.join(LOAD_ORDER_FILE)).unwrap();
    let order: Vec<&str> = order.lines().collect();
    assert_eq!(order.len(), rd.modules.len());
    let dep_text = std::fs::read_to_string(root.join(format!("{md}/modules.dep"))).unwrap();
    assert_eq!(dep_text.lines().count(), rd.modules.len());
    for line in dep_text.lines() {
        let (m, deps) = line.split_once(':').unwrap();
        let at = |r: &str| {
            order
                .iter()
                .position(|o| *o == format!("/{md}/{r}"))
                .unwrap_or_else(|| panic!("{r} not in the load order"))
        };
        assert!(root.join(format!("{md}/{m}")).is_file());
        for d in deps.split_whitespace() {
            assert!(at(d) < at(m), "{d} must load before {m}");
        }
    }
    let softdep = std::fs::read_to_string(root.join(format!("{md}/modules.softdep"))).unwrap();
    assert!(
        softdep.contains("softdep libcrc32c pre: crc32c"),
        "{softdep}"
    );

    // depmod accepts the initrd's module set, and modprobe resolves erofs inside it the same
    // way as in the full base.
    let st = Command::new("depmod")
        .arg("-b")
        .arg(root)
        .arg(&b.kver)
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("modprobe")
        .arg("-d")
        .arg(root)
        .args(["-S", &b.kver, "--show-depends", "erofs"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let n = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("insmod "))
        .count();
    assert_eq!(n, show_depends(b, "erofs").len());
}

/// Host files an executable needs: itself, its shared libraries and the ELF interpreter, as
/// `ldd` names them.
fn with_libs(exe: &str) -> Vec<String> {
    let out = Command::new("ldd").arg(exe).output().unwrap();
    assert!(out.status.success(), "ldd {exe}");
    let mut files = vec![exe.to_string()];
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(p.to_string());
        }
    }
    files
}

/// Boots the base's kernel in QEMU with our initrd: every module of the load-order file must
/// load with plain `insmod` in that order, and the kernel's dm-verity (from the closure) must
/// accept a hash tree from `contract::verity` through the table line `verity::table` gives,
/// read the data back intact, and refuse a copy with one flipped byte.
#[test]
fn kernel_boots_initrd_and_dm_verity_accepts_our_tree() {
    use rke2_image_contract::verity;
    use std::fs::{self, OpenOptions};
    let Some(b) = base() else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);

    // Data (16 MiB: two tree levels), its hash device, and a copy with one flipped byte.
    let blocks = 4096u64;
    let mut data = Vec::with_capacity((blocks * 4096) as usize);
    let mut x = 0x9e3779b97f4a7c15u64;
    while data.len() < (blocks * 4096) as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(p("data.img"), &data).unwrap();
    data[(blocks as usize - 3) * 4096 + 17] ^= 1;
    fs::write(p("bad.img"), &data).unwrap();
    let params = verity::Params::new(blocks, b"rke2-test-salt".to_vec(), [7; 16]);
    let d = fs::File::open(p("data.img")).unwrap();
    let h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(p("hash.img"))
        .unwrap();
    let root = verity::format(&d, 0, &h, 0, &params).unwrap();
    drop(h);
    let good_table = verity::table(&params, "/dev/vda", "/dev/vdb", &root);
    let bad_table = verity::table(&params, "/dev/vdc", "/dev/vdb", &root);
    let data_sum = {
        let out = Command::new("sha256sum")
            .arg(p("data.img"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    };

    let script = format!(
        r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
while read m; do
  $B insmod "$m" || echo "RKE2TEST insmod-failed $m"
done < /{LOAD_ORDER_FILE}
echo "RKE2TEST loaded $($B wc -l < /proc/modules)"
$B grep -q erofs /proc/filesystems && echo RKE2TEST erofs-registered
for i in $($B seq 100); do [ -b /dev/vdc ] && break; $B sleep 0.1; done
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
/usr/sbin/dmsetup create --noudevsync --readonly good --table "{good_table}" && echo RKE2TEST good-created
/usr/sbin/dmsetup create --noudevsync --readonly bad --table "{bad_table}" && echo RKE2TEST bad-created
/usr/sbin/dmsetup mknodes
echo "RKE2TEST sum $($B sha256sum /dev/mapper/good)"
$B dd if=/dev/mapper/bad of=/dev/null bs=4096 2>/dev/null || echo RKE2TEST bad-read-failed
echo RKE2TEST done
$B poweroff -f
"#
    );
    let init = Blob::bytes(script.into_bytes());
    let mut extra = vec![(
        "bin/busybox".to_string(),
        Blob::bytes(fs::read("/usr/bin/busybox").expect("busybox-static must be installed")),
        0o755,
    )];
    for f in with_libs("/usr/sbin/dmsetup") {
        extra.push((f.clone(), Blob::bytes(fs::read(&f).unwrap()), 0o755));
    }
    let spec = Spec {
        init: &init,
        kver: &b.kver,
        modules: BOOT_MODULES,
        extra_files: &extra,
        mtime: 0,
    };
    let rd = initrd::build(&b.tree, &spec).unwrap();
    fs::write(p("initrd.zst"), &rd.bytes).unwrap();
    let kernel = b
        .tree
        .read_file(format!("boot/vmlinuz-{}", b.kver).as_bytes())
        .unwrap();
    fs::write(p("vmlinuz"), kernel).unwrap();

    // KVM is opt-in: on some hosts /dev/kvm exists but guests hang under it.
    let accel = if std::env::var_os("RKE2_TEST_KVM").is_some() {
        "kvm"
    } else {
        "tcg"
    };
    let drive = |f: &str| format!("file={},format=raw,if=virtio,readonly=on", p(f).display());
    let mut child = Command::new("qemu-system-x86_64")
        // -cpu max: crc32c-intel and crct10dif-pclmul need SSE4.2/PCLMUL or fail with ENODEV.
        .args([
            "-machine",
            &format!("q35,accel={accel}"),
            "-cpu",
            "max",
            "-m",
            "512",
        ])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", p("serial.log").display()))
        .arg("-kernel")
        .arg(p("vmlinuz"))
        .arg("-initrd")
        .arg(p("initrd.zst"))
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .args(["-drive", &drive("data.img")])
        .args(["-drive", &drive("hash.img")])
        .args(["-drive", &drive("bad.img")])
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 must be installed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = String::from_utf8_lossy(&fs::read(p("serial.log")).unwrap()).into_owned();
    let marks: Vec<&str> = log
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("RKE2TEST "))
        .collect();
    println!("guest: {marks:?}");
    assert!(marks.contains(&"done"), "guest did not finish:\n{log}");
    assert!(
        !marks.iter().any(|m| m.starts_with("insmod-failed")),
        "{log}"
    );
    assert!(
        marks.contains(&format!("loaded {}", rd.modules.len()).as_str()),
        "not every module loaded: {marks:?}\n{log}"
    );
    for m in [
        "erofs-registered",
        "good-created",
        "bad-created",
        "bad-read-failed",
    ] {
        assert!(marks.contains(&m), "missing {m}: {marks:?}\n{log}");
    }
    let sum = marks
        .iter()
        .find_map(|m| m.strip_prefix("sum "))
        .unwrap_or_default();
    assert!(
        sum.starts_with(&data_sum),
        "dm-verity read back {sum:?}, data is {data_sum}\n{log}"
    );
}
