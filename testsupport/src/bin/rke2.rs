//! TEST DOUBLE standing in for the real `rke2` binary in release fixtures. It is never part of
//! an image built from a real release. It carries a `.go.buildinfo` section like a Go binary
//! (the fixture generator writes the version and build settings into it) and answers
//! `rke2 --version` from it. `server` and `agent` speak the join protocol (see `standin`).

use rke2_testsupport::buildinfo;

#[repr(C, align(16))]
struct Section([u8; buildinfo::RESERVED]);

/// Placeholder contents; the fixture generator rewrites the whole section in the file.
#[used]
#[link_section = ".go.buildinfo"]
static BUILDINFO: Section = Section([0u8; buildinfo::RESERVED]);

fn version() -> (String, String) {
    let exe = std::fs::read("/proc/self/exe").unwrap_or_default();
    let info = buildinfo::elf_section(&exe, ".go.buildinfo")
        .and_then(|(off, size)| exe.get(off..off + size))
        .and_then(buildinfo::decode);
    match info {
        Some((go, modinfo)) => {
            let v = modinfo
                .split("pkg/version.Version=")
                .nth(1)
                .and_then(|r| r.split([' ', '"', '\n']).next())
                .unwrap_or("v0.0.0-standin")
                .to_string();
            (v, go)
        }
        None => ("v0.0.0-standin".into(), "unknown".into()),
    }
}

fn main() {
    // Keeps the section alive through the linker's garbage collection.
    std::hint::black_box(BUILDINFO.0.as_ptr());
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-v") | Some("version") => {
            let (v, go) = version();
            println!("rke2 version {v} (stand-in test double)");
            println!("go version {go}");
        }
        Some(cmd @ ("server" | "agent")) => {
            if let Err(e) = rke2_testsupport::standin::main(cmd, &args[1..]) {
                eprintln!("rke2-standin: {cmd}: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: rke2 [--version|server|agent] (stand-in test double)");
            std::process::exit(2);
        }
    }
}
