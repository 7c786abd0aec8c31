//! Helpers shared by the integration tests that start `tessera dev`
//! clusters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Port bases are multiples of 100 from this one...
const FIRST_BASE: u16 = 20_000;
/// ...below this one: the kernel's ephemeral range starts at 32768, and a
/// port there can be taken at any time by another test's outgoing
/// connection (a bench smoke run failed on a storage admin port so taken).
const END_BASE: u16 = 32_700;

/// A port base whose whole range for a dev cluster of `storage_nodes`
/// (gateway, meta and storage ports and their admin ports, base ..=
/// base+20+2n, see `tessera_server::dev`) is free right now, picked
/// pseudo-randomly so that concurrent test runs rarely meet.
pub fn free_port_base(storage_nodes: usize) -> u16 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let last = 20 + 2 * storage_nodes as u16;
    assert!(
        last < 100,
        "{storage_nodes} storage nodes overflow a 100-port range"
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let seed =
        nanos ^ (u64::from(std::process::id()) << 16) ^ CALLS.fetch_add(1, Ordering::Relaxed);
    let slots = u64::from((END_BASE - FIRST_BASE) / 100);
    for attempt in 0..slots {
        let slot = (seed.wrapping_add(attempt * 7919)) % slots;
        let base = FIRST_BASE + (slot as u16) * 100;
        if (0..=last).all(|off| std::net::TcpListener::bind(("127.0.0.1", base + off)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range found");
}
