//! QEMU boot-test harness (being written).
