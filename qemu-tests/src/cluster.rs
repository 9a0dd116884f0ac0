//! Several VMs booted from copies of one image, each given its node configuration the way a
//! datacenter would (QEMU fw_cfg, or a NoCloud `CIDATA` drive), reporting through the probe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::built::{self, Image};
use crate::probe;
use crate::vm::{Boot, Config, Nic, Vm};

/// fw_cfg key the first-boot agent reads its configuration from.
pub const FW_CFG_CONFIG: &str = "opt/org.rke2-image/config";
/// fw_cfg prefix of test-only knobs (read by the probe and, for `pause-before`, the agent).
pub const FW_CFG_TEST: &str = "opt/org.rke2-image/test";

/// Console lines that end a wait at once.
pub const FATAL: [&str; 3] = ["Kernel panic", "rke2-init: FAILED", "emergency mode"];

/// How a node receives its configuration.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// `-fw_cfg name=opt/org.rke2-image/config,file=…`
    FwCfg(Vec<u8>),
    /// A FAT volume labelled `CIDATA` with `user-data` (and `meta-data`), as cloud-init's
    /// NoCloud datasource reads it.
    NoCloud(Vec<u8>),
    None,
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub nics: Vec<Nic>,
    pub config: Delivery,
    /// Test knobs: (name, value) under [`FW_CFG_TEST`].
    pub knobs: Vec<(String, String)>,
    pub memory_mib: u32,
    pub cpus: u32,
}

impl NodeSpec {
    pub fn new(name: &str, nics: Vec<Nic>, config: Delivery) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            nics,
            config,
            knobs: Vec::new(),
            memory_mib: 1536,
            cpus: 1,
        }
    }

    /// Keep the VM running after the probe reported (a server others join).
    pub fn hold(mut self) -> NodeSpec {
        self.knobs.push(("hold".into(), "1".into()));
        self
    }

    pub fn knob(mut self, name: &str, value: &str) -> NodeSpec {
        self.knobs.push((name.into(), value.into()));
        self
    }
}

/// Writes a NoCloud `CIDATA` FAT volume with mkfs.fat and mtools.
pub fn cidata(path: &Path, user_data: &[u8], meta_data: &str) -> Result<()> {
    let dir = path.parent().context("cidata path has no parent")?;
    let ud = dir.join(format!(
        "{}.user-data",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let md = ud.with_extension("meta-data");
    std::fs::write(&ud, user_data).with_context(|| format!("writing {}", ud.display()))?;
    std::fs::write(&md, meta_data).with_context(|| format!("writing {}", md.display()))?;
    let _ = std::fs::remove_file(path);
    built::run(
        Command::new("mkfs.fat")
            .args(["-C", "-n", "CIDATA"])
            .arg(path)
            .arg("2048"),
    )?;
    for (src, name) in [(&ud, "user-data"), (&md, "meta-data")] {
        let mut dst = String::from("::/");
        dst.push_str(name);
        built::run(Command::new("mcopy").arg("-i").arg(path).arg(src).arg(&dst))?;
    }
    Ok(())
}

/// VM slots: how many vCPUs may run at once across the tests of one process, so parallel
/// tests do not starve each other's guests on a 2-core machine (TCG timeouts then fire).
pub struct Slots {
    free: Mutex<u32>,
    cv: Condvar,
}

/// Held vCPU slots; returned on drop.
pub struct SlotGuard<'a> {
    slots: &'a Slots,
    n: u32,
}

impl Slots {
    pub const fn new(n: u32) -> Slots {
        Slots {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }

    /// Blocks until `n` slots are free (at most the total: ask for what exists).
    pub fn take(&self, n: u32) -> SlotGuard<'_> {
        let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *f < n {
            f = self.cv.wait(f).unwrap_or_else(|e| e.into_inner());
        }
        *f -= n;
        SlotGuard { slots: self, n }
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut f = self.slots.free.lock().unwrap_or_else(|e| e.into_inner());
        *f += self.n;
        self.slots.cv.notify_all();
    }
}

/// When things happened, in seconds since QEMU started (from console arrival times).
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub handoff: Option<f64>,
    pub firstboot_done: Option<f64>,
    pub supervisor_ready: Option<f64>,
    pub probe: Option<f64>,
}

impl std::fmt::Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.1} s"));
        write!(
            f,
            "hand-off {}, first boot done {}, supervisor ready {}, probe {}",
            s(self.handoff),
            s(self.firstboot_done),
            s(self.supervisor_ready),
            s(self.probe)
        )
    }
}

/// A booted node.
pub struct Node {
    pub name: String,
    pub disk: PathBuf,
    pub vm: Vm,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("name", &self.name).finish()
    }
}

/// What a node's probe reported.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub facts: BTreeMap<String, String>,
    pub console: String,
    pub timings: Timings,
}

impl Report {
    /// A probe fact; a missing one fails with the facts there are.
    pub fn fact(&self, k: &str) -> &str {
        match self.facts.get(k) {
            Some(v) => v,
            None => panic!(
                "{}: probe fact {k} missing; facts: {:?}",
                self.name, self.facts
            ),
        }
    }

    /// AVC denials on the console.
    pub fn denials(&self) -> Vec<&str> {
        probe::avc_denials(&self.console)
    }
}

impl Node {
    /// Boots the image through a copy-on-write overlay `<work>/<name>.qcow2` (the image stays
    /// untouched; only what the node writes takes space).
    pub fn boot(img: &Image, work: &Path, spec: &NodeSpec) -> Result<Node> {
        let disk = work.join(format!("{}.qcow2", spec.name));
        built::overlay_disk(&img.disk, &disk, None)?;
        Node::boot_disk(&disk, work, spec)
    }

    /// Boots an existing disk (a second boot of the same machine).
    pub fn boot_disk(disk: &Path, work: &Path, spec: &NodeSpec) -> Result<Node> {
        Node::start(Config::new(disk, Boot::Uefi), work, spec)
    }

    /// Starts a machine as `cfg` says (boot medium, more drives, NICs before the spec's),
    /// with the spec's memory and CPUs, and its NICs, configuration and knobs added.
    pub fn start(mut cfg: Config, work: &Path, spec: &NodeSpec) -> Result<Node> {
        cfg.memory_mib = spec.memory_mib;
        cfg.cpus = spec.cpus;
        cfg.nics.extend(spec.nics.iter().cloned());
        let disk = cfg.disk.clone();
        let mut n = 0;
        let mut log = work.join(format!("{}.console.log", spec.name));
        while log.exists() {
            n += 1;
            log = work.join(format!("{}.{n}.console.log", spec.name));
        }
        cfg.log = Some(log);
        match &spec.config {
            Delivery::FwCfg(bytes) => {
                let f = work.join(format!("{}.fw_cfg-config", spec.name));
                std::fs::write(&f, bytes)?;
                cfg.fw_cfg.push((FW_CFG_CONFIG.into(), f));
            }
            Delivery::NoCloud(bytes) => {
                let f = work.join(format!("{}.cidata.img", spec.name));
                cidata(
                    &f,
                    bytes,
                    &format!(
                        "instance-id: {}\nlocal-hostname: {}\n",
                        spec.name, spec.name
                    ),
                )?;
                cfg.drives.push(f);
            }
            Delivery::None => {}
        }
        for (k, v) in &spec.knobs {
            let f = work.join(format!("{}.knob-{k}", spec.name));
            std::fs::write(&f, v)?;
            cfg.fw_cfg.push((format!("{FW_CFG_TEST}/{k}"), f));
        }
        let vm = Vm::start(&cfg)?;
        Ok(Node {
            name: spec.name.clone(),
            disk,
            vm,
        })
    }

    /// Waits for `RKE2-PROBE done=1`; returns the facts and timings.
    pub fn wait_probe(&mut self, timeout: Duration) -> Result<Report> {
        self.vm
            .wait_for("RKE2-PROBE done=1", &FATAL, timeout)
            .with_context(|| format!("{}: waiting for the probe", self.name))?;
        Ok(self.report())
    }

    /// Facts and timings so far.
    pub fn report(&self) -> Report {
        let console = self.vm.console();
        let secs = |m: &str| self.vm.seen_at(m).map(|d| d.as_secs_f64());
        let timings = Timings {
            handoff: secs("rke2-init: handing off"),
            firstboot_done: secs("rke2-firstboot: done;")
                .or_else(|| secs("rke2-firstboot: FAILED")),
            supervisor_ready: secs("rke2-standin: supervisor ready")
                .or_else(|| secs("rke2-standin: joined https")),
            probe: secs("RKE2-PROBE done=1"),
        };
        Report {
            name: self.name.clone(),
            facts: probe::facts(&console),
            console,
            timings,
        }
    }
}

/// The image every cluster test boots: the production overlays, the test probe, and the RKE2
/// payload from a generated release around the stand-in supervisor (a test double), with the
/// CIS profile. `work` is emptied first.
/// `formats` as for `build --format` (must include `raw`).
pub fn payload_image(
    base: &Path,
    programs: &Path,
    work: &Path,
    version: &str,
    formats: &str,
) -> Result<Image> {
    let _ = std::fs::remove_dir_all(work);
    let section = payload_release(work, version)?;
    built::build_formats(base, programs, work, &section, formats)
}

/// Writes the generated RKE2 release around the stand-in supervisor to `<work>/release` and
/// returns the definition sections that put it in an image (`rke2:`, with the CIS profile).
pub fn payload_release(work: &Path, version: &str) -> Result<String> {
    let release = work.join("release");
    std::fs::create_dir_all(&release)?;
    let bin = rke2_testsupport::stand_in_binary()?;
    rke2_testsupport::fixture::write_release(
        &release,
        &bin,
        &rke2_testsupport::fixture::FixtureOptions::new(version),
    )?;
    Ok(format!(
        "rke2:\n  artifacts: {}\n  version: {version}\nsecurity:\n  cis: true\n",
        release.display()
    ))
}
