//! `rke2-init`: PID 1 of the rke2-image initrd (see `rke2_firstboot::init`).
//!
//! Build it as a static binary (no libc needed at run time, no extra toolchain):
//!
//! ```text
//! cargo rustc -p rke2-firstboot --bin rke2-init --release -- -C target-feature=+crt-static
//! ```
//!
//! The result is `target/release/rke2-init`; `file` reports it as "static-pie linked".

fn main() {
    let failure = rke2_firstboot::init::run();
    rke2_firstboot::init::fail_and_halt(&failure)
}
