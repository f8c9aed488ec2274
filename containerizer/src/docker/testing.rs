//! Support for tests and benchmarks that need a real Docker engine (not used by the agent
//! itself): the engine check every Docker test starts with, and a small image built on
//! the spot, since there is no registry to pull one from.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::DEFAULT_SOCKET;

/// `Some(reason)` when the Docker engine at the default socket does not answer, and the
/// test should be skipped (the reason is printed). Under `CI=true` an engine that does not
/// answer is a failure instead: CI machines run one, and a silent skip would hide that the
/// Docker tests never ran.
pub async fn engine_missing(test: &str) -> Option<String> {
    match super::connect(Path::new(DEFAULT_SOCKET)).await {
        Ok(_) => None,
        Err(reason) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: CI=true but the Docker engine is not usable: {reason}");
            }
            eprintln!("skipping {test}: {reason}");
            Some(reason)
        }
    }
}

/// A busybox image imported into the engine under a tag of its own, removed on drop.
///
/// Built from the host's static busybox (Debian's `busybox-static`) as a root filesystem
/// with one symlink per applet and an `/etc/passwd`, then `docker import`ed: no registry,
/// no network, about a second.
pub struct TestImage {
    pub name: String,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl TestImage {
    pub const BUSYBOX: &'static str = "/bin/busybox";

    /// Imports the image. Fails with a message saying what is missing.
    pub fn import() -> Result<TestImage, String> {
        let busybox = Path::new(Self::BUSYBOX);
        if !busybox.exists() {
            return Err(format!(
                "{} is missing (apt-get install busybox-static)",
                busybox.display()
            ));
        }
        let name = format!(
            "drover-test-busybox:{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let root =
            std::env::temp_dir().join(format!("drover-rootfs-{}", name.replace([':', '/'], "-")));
        let result = Self::build_rootfs(&root).and_then(|()| {
            let status = Command::new("sh")
                .arg("-c")
                .arg(r#"tar -C "$1" -cf - . | docker import - "$2" >/dev/null"#)
                .arg("sh")
                .arg(&root)
                .arg(&name)
                .stdin(Stdio::null())
                .status()
                .map_err(|e| format!("running tar | docker import: {e}"))?;
            if !status.success() {
                return Err(format!("docker import of {name} failed ({status})"));
            }
            Ok(())
        });
        let _ = std::fs::remove_dir_all(&root);
        result.map(|()| TestImage { name })
    }

    fn build_rootfs(root: &Path) -> Result<(), String> {
        let bin = root.join("bin");
        let io = |e: std::io::Error| format!("building the test root filesystem: {e}");
        std::fs::create_dir_all(&bin).map_err(io)?;
        for dir in ["etc", "tmp", "proc", "sys", "dev", "mnt/sandbox"] {
            std::fs::create_dir_all(root.join(dir)).map_err(io)?;
        }
        std::fs::copy(Self::BUSYBOX, bin.join("busybox")).map_err(io)?;
        let list = Command::new(Self::BUSYBOX)
            .arg("--list")
            .output()
            .map_err(io)?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "busybox" || applet.contains('/') {
                continue;
            }
            std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(io)?;
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        )
        .map_err(io)?;
        std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").map_err(io)?;
        Ok(())
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["image", "rm", "--force", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes every container labelled with `work_dir` (what a test's agent created), so a
/// failing test leaves nothing running.
pub fn remove_containers_of(work_dir: &Path) {
    let filter = format!(
        "label={}={}",
        super::spec::LABEL_WORK_DIR,
        work_dir.display()
    );
    let Ok(out) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &filter])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
