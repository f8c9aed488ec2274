//! Network namespaces for partition tests: one per master, joined by a bridge, so a test
//! can cut one master off from the others while the test still reaches every master.

use std::process::{Command, Stdio};

/// Network namespaces, one per master, joined by a bridge in the root namespace, so that
/// a test can cut one master off from the others with blackhole routes while the test
/// itself (and agents and frameworks, in the root namespace) still reach every master.
/// Removed (with everything in them) on drop.
pub struct Hosts {
    bridge: String,
    pub(crate) names: Vec<String>,
    pub(crate) ips: Vec<String>,
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh_checked(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Hosts {
    /// Creates `n` namespaces on a private /24 named after this process, so parallel test
    /// processes never collide.
    pub fn create(n: usize) -> Hosts {
        let tag = std::process::id() % 100_000;
        // 10.<200-249>.<0-255>.0/24, picked from the pid.
        let net = format!("10.{}.{}", 200 + (tag / 256) % 50, tag % 256);
        let bridge = format!("dbr{tag}");
        let hosts = Hosts {
            bridge: bridge.clone(),
            names: (0..n).map(|i| format!("drv{tag}-{i}")).collect(),
            ips: (0..n).map(|i| format!("{net}.{}", i + 2)).collect(),
        };
        sh_checked(&["ip", "link", "add", &bridge, "type", "bridge"]);
        sh_checked(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", &bridge]);
        sh_checked(&["ip", "link", "set", &bridge, "up"]);
        // Docker sets the FORWARD policy to DROP, and bridged traffic passes through it:
        // let our bridge forward between its own ports.
        sh_checked(&[
            "iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ]);
        for i in 0..n {
            let ns = &hosts.names[i];
            let outside = format!("dv{tag}o{i}");
            let inside = format!("dv{tag}i{i}");
            sh_checked(&["ip", "netns", "add", ns]);
            sh_checked(&[
                "ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            sh_checked(&["ip", "link", "set", &inside, "netns", ns]);
            sh_checked(&["ip", "link", "set", &outside, "master", &bridge]);
            sh_checked(&["ip", "link", "set", &outside, "up"]);
            let ip = format!("{}/24", hosts.ips[i]);
            sh_checked(&["ip", "-n", ns, "addr", "add", &ip, "dev", &inside]);
            sh_checked(&["ip", "-n", ns, "link", "set", &inside, "up"]);
            sh_checked(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh_checked(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("{net}.1"),
            ]);
        }
        hosts
    }

    /// Cuts host `i` off from every other host (not from the root namespace).
    pub fn isolate(&self, i: usize) {
        for j in 0..self.names.len() {
            if j != i {
                sh_checked(&[
                    "ip",
                    "-n",
                    &self.names[i],
                    "route",
                    "add",
                    "blackhole",
                    &format!("{}/32", self.ips[j]),
                ]);
                sh_checked(&[
                    "ip",
                    "-n",
                    &self.names[j],
                    "route",
                    "add",
                    "blackhole",
                    &format!("{}/32", self.ips[i]),
                ]);
            }
        }
    }

    /// Undoes every [`Hosts::isolate`].
    pub fn heal(&self) {
        for i in 0..self.names.len() {
            for j in 0..self.names.len() {
                if i != j {
                    sh(&[
                        "ip",
                        "-n",
                        &self.names[i],
                        "route",
                        "del",
                        "blackhole",
                        &format!("{}/32", self.ips[j]),
                    ]);
                }
            }
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.names {
            sh(&["ip", "netns", "del", ns]);
        }
        sh(&["ip", "link", "del", &self.bridge]);
        let b = self.bridge.as_str();
        sh(&[
            "iptables", "-D", "FORWARD", "-i", b, "-o", b, "-j", "ACCEPT",
        ]);
    }
}
