//! Free loopback ports for daemons that tests start themselves.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out.
const LOW: u32 = 10_000;
/// How many ports, from [`LOW`], are handed out (up to 29999).
const SPAN: u32 = 20_000;

/// A loopback port that is free now, for a daemon to bind a moment later (and again when the
/// test restarts it).
///
/// Not `bind(":0")`: that hands out ports from the kernel's ephemeral range (32768 and up),
/// the range every outgoing connection on this machine draws its local port from, so on a
/// busy machine a connection of another test could take the port before the daemon binds it
/// (or between a kill and a restart). These ports come from 10000..30000 instead, which
/// nothing allocates on its own; each test process starts at its own offset, walks forward
/// and skips ports that something already holds.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 400) * 50;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (offset + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for p in ports {
            assert!((LOW as u16..(LOW + SPAN) as u16).contains(&p), "{p}");
        }
        // Something holding a port makes free_port skip it.
        let held = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
        let held_port = held.local_addr().unwrap().port();
        for _ in 0..50 {
            assert_ne!(free_port(), held_port);
        }
    }
}
