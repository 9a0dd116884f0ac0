//! `compose`: overlays, the node programs, the RKE2 payload and the generated files go into
//! the tree; every timestamp is clamped to the epoch.

use super::{file_sha256, invalid, stage, BoxError, BuildContext, BuildError};
use std::path::Path;

use crate::definition::{Definition, SelinuxMode};
use crate::tree::{Blob, Inode, Kind, Tree};
use crate::{compose, payload, sign};
use rke2_image_contract::manifest;

/// What later stages need from composition besides the tree.
pub(super) struct Composed {
    /// `rke2-init`, the initrd's PID 1 (a host file).
    pub init: Blob,
    /// The RKE2 payload's record for the manifest, when the definition has one.
    pub rke2: Option<manifest::Rke2>,
}

pub(super) fn run(ctx: &mut BuildContext) -> Result<Composed, BuildError> {
    let (def, epoch) = (ctx.def, ctx.epoch);
    for o in &def.overlays {
        let spec = compose::Overlay {
            source: o.source.clone(),
            target: o.target.clone(),
            uid: o.uid,
            gid: o.gid,
            modes: o.modes.clone(),
        };
        let s = compose::add_overlay(&mut ctx.tree, &spec, epoch).map_err(stage("compose"))?;
        ctx.log(&format!(
            "compose: overlay {} ({} files)",
            display_path(def, &o.source),
            s.files
        ));
        ctx.add_input("overlay", &o.source, s.sha256, s.bytes);
    }
    let init_path = match &def.init {
        Some(p) => p.clone(),
        None => ctx.opts.programs_dir.join("rke2-init"),
    };
    if !init_path.is_file() {
        return Err(invalid(
            "compose",
            format!(
                "init program {} not found: build it with `cargo build --release -p rke2-firstboot --bin rke2-init` or set `initrd.init` in {}",
                init_path.display(),
                ctx.file()
            ),
        ));
    }
    let (init_sha, init_len) = file_sha256(&init_path).map_err(stage("compose"))?;
    ctx.add_input("init", &init_path, init_sha, init_len);
    let agent_path = ctx.opts.programs_dir.join("rke2-firstboot");
    if agent_path.is_file() {
        let (sha, len) = file_sha256(&agent_path).map_err(stage("compose"))?;
        let inode = Inode::new(
            Kind::File(Blob::HostFile {
                path: agent_path.clone(),
                len,
            }),
            0o755,
            0,
            0,
            epoch,
        );
        ctx.tree
            .insert_resolved(b"usr/bin/rke2-firstboot", inode)
            .map_err(stage("compose"))?;
        ctx.add_input("node-agent", &agent_path, sha, len);
    } else {
        ctx.log(&format!(
            "compose: warning: {} not found; the image has no first-boot agent",
            agent_path.display()
        ));
    }
    let mut rke2 = None;
    if let Some(spec) = &def.rke2 {
        let popts = payload::Options {
            fips: def.fips,
            cis: def.cis,
            selinux: def.selinux != SelinuxMode::Disabled,
            allow_non_fips_supervisor: ctx.opts.allow_non_fips_supervisor,
            epoch,
        };
        let log = &mut *ctx.log;
        let report = payload::apply(&mut ctx.tree, spec, &popts, &mut |l| {
            log(&format!("compose: rke2: {l}"))
        })
        .map_err(stage("compose"))?;
        ctx.log(&format!(
            "compose: rke2 {} with {} preloaded images",
            report.version,
            report.images.len()
        ));
        ctx.inputs.extend(report.inputs.iter().cloned());
        ctx.checks.extend(report.checks.iter().cloned());
        rke2 = Some(manifest::Rke2 {
            version: report.version.clone(),
            origin: spec.origin.clone(),
            images: report.images.clone(),
        });
    }
    let identity = compose::Identity {
        name: def.name.clone(),
        version: def.version.clone(),
        pretty_name: def.description.clone(),
    };
    for note in compose::add_generated(&mut ctx.tree, &identity, epoch).map_err(stage("compose"))? {
        ctx.log(&format!("compose: {note}"));
    }
    add_update_files(ctx)?;
    set_selinux_config(&mut ctx.tree, def.selinux, epoch).map_err(stage("compose"))?;
    ctx.tree.clamp_mtimes(epoch);
    Ok(Composed {
        init: Blob::HostFile {
            path: init_path,
            len: init_len,
        },
        rke2,
    })
}

/// Units that would write the ESP at runtime: `bootctl update` replaces our (possibly Secure
/// Boot signed) systemd-boot and the token service drops a random seed there. Only
/// `rke2-update` and `systemd-bless-boot` may touch the ESP.
pub const MASKED_UNITS: [&str; 2] = [
    "systemd-boot-system-token.service",
    "systemd-boot-update.service",
];

/// What every image carries for A/B updates (`rke2_image_contract::update`): the policy, the
/// public keys a bundle may be signed with, the ESP mount point and the masks of the units
/// that would write the ESP.
fn add_update_files(ctx: &mut BuildContext) -> Result<(), BuildError> {
    use rke2_image_contract::update;
    let (def, epoch) = (ctx.def, ctx.epoch);
    let file = |data: Vec<u8>| Inode::new(Kind::File(Blob::bytes(data)), 0o644, 0, 0, epoch);
    let mut policy = serde_json::to_vec_pretty(&def.update.policy).map_err(stage("compose"))?;
    policy.push(b'\n');
    ctx.tree
        .insert_resolved(update::POLICY.as_bytes(), file(policy))
        .map_err(stage("compose"))?;
    let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(private) = ctx.signing_key {
        keys.push((
            "image.pem".into(),
            sign::public_pem(&private.verifying_key()),
        ));
    }
    for (i, p) in def.update.trusted_keys.iter().enumerate() {
        let public = sign::load_public(p, "update.trustedKeys")
            .map_err(|e| invalid("compose", format!("{}: {e}", ctx.file())))?;
        let (sha, len) = file_sha256(p).map_err(stage("compose"))?;
        ctx.add_input("trusted-key", p, sha, len);
        keys.push((format!("trusted-{}.pem", i + 1), sign::public_pem(&public)));
    }
    // Exactly the keys the definition names: a key an overlay or the base put there would be
    // trusted by every node without appearing in the definition.
    let dir = update::KEYS_DIR.as_bytes();
    if let Ok(real) = ctx.tree.resolve(dir, false) {
        if ctx.tree.lookup(&real).is_some() {
            ctx.tree.remove(&real);
            ctx.log(&format!(
                "compose: replaced /{} with the keys the definition names",
                update::KEYS_DIR
            ));
        }
    }
    for (name, pem) in keys {
        let path = format!("{}/{name}", update::KEYS_DIR);
        ctx.tree
            .insert_resolved(path.as_bytes(), file(pem))
            .map_err(stage("compose"))?;
    }
    ctx.tree
        .insert_resolved(update::ESP_MOUNT.as_bytes(), Inode::dir(0o755, epoch))
        .map_err(stage("compose"))?;
    for unit in MASKED_UNITS {
        let link = Inode::new(Kind::Symlink(b"/dev/null".to_vec()), 0o777, 0, 0, epoch);
        ctx.tree
            .insert_resolved(format!("etc/systemd/system/{unit}").as_bytes(), link)
            .map_err(stage("compose"))?;
    }
    ctx.log(&format!(
        "compose: update policy {} tries, health timeout {}s; {} trusted key(s)",
        def.update.policy.tries,
        def.update.policy.health_timeout_seconds,
        def.update.trusted_keys.len() + usize::from(ctx.signing_key.is_some())
    ));
    Ok(())
}

/// `/etc/selinux/config` must agree with the command line: systemd loads the policy only when
/// the config asks for it.
fn set_selinux_config(tree: &mut Tree, mode: SelinuxMode, epoch: u64) -> Result<(), BoxError> {
    let path = b"etc/selinux/config";
    let Some(id) = tree.lookup(path) else {
        return Ok(());
    };
    let old = tree.read_file(path)?;
    let want = match mode {
        SelinuxMode::Enforcing => "enforcing",
        SelinuxMode::Permissive => "permissive",
        SelinuxMode::Disabled => "disabled",
    };
    let text = String::from_utf8_lossy(&old);
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("SELINUX=") {
                found = true;
                format!("SELINUX={want}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(format!("SELINUX={want}"));
    }
    let mut bytes = out.join("\n").into_bytes();
    bytes.push(b'\n');
    let inode = tree.inode(id).clone();
    let mut new = Inode::new(
        Kind::File(Blob::bytes(bytes)),
        inode.mode,
        inode.uid,
        inode.gid,
        epoch,
    );
    new.xattrs = inode.xattrs;
    tree.insert(path, new)?;
    Ok(())
}

/// Path relative to the definition's directory when it is below it, for stable logs.
fn display_path(def: &Definition, p: &Path) -> String {
    let dir = def.file.parent().unwrap_or(Path::new(""));
    p.strip_prefix(dir).unwrap_or(p).display().to_string()
}
