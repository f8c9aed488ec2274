//! Tasks inside images through the whole cluster, no Docker needed: the test writes a
//! `docker save`-style archive itself (static busybox, its applets, an `/etc/passwd` with
//! a user `app`, a marker file), `drover images import` sends it to a real agent running
//! as root, and a framework launches linux tasks naming the image. They see the image's
//! files and not the host's, write to the sandbox at `/mnt/sandbox`, run as the user
//! they name (looked up in the image), run the image's own command when they have none,
//! fail with the right reason for an unknown user or image, and leave nothing mounted.
//! A running image task survives a `kill -9` of its agent, ends while the agent is
//! away, is reported once, and its root filesystem is removed after the restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_agent::layout::{Layout, TaskKey};
use drover_proto::pb::{self, task_status::Reason, TaskState};
use drover_proto::Resources;
use drover_tests::raw::{subscribe, task, Fw};
use drover_tests::{bin_dir, wait_until, Cluster, Timing};
use sha2::Digest;

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A tar entry of the image's one layer.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        match e {
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            Entry::File(path, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Writes a classic `docker save` archive of a one-layer image tagged `tag`; returns its
/// path. The image's config runs `/bin/sh -c "echo from the image"` as root.
fn write_image(dir: &Path, tag: &str) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        // Debian's static busybox: the image needs a binary without shared libraries.
        let _ = std::process::Command::new("apt-get")
            .args(["install", "-y", "-qq", "busybox-static"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    let binary = std::fs::read(busybox)
        .expect("/bin/busybox is missing: apt-get install busybox-static (scripts/setup.sh does)");
    let mut entries = vec![
        Entry::Dir("bin"),
        Entry::File("bin/busybox", &binary, 0o755),
        Entry::Dir("etc"),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/home/app:/bin/sh\n",
            0o644,
        ),
        Entry::File("etc/group", b"root:x:0:\napp:x:1234:\n", 0o644),
        Entry::File("marker", b"inside the image\n", 0o644),
    ];
    let links: Vec<String> = ["sh", "cat", "echo", "id", "sleep", "pwd"]
        .iter()
        .map(|a| format!("bin/{a}"))
        .collect();
    for l in &links {
        entries.push(Entry::Symlink(l, "busybox"));
    }
    let layer = layer(&entries);
    let layer_hex = sha256(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sh", "-c", "echo from the image"],
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]},
    }))
    .unwrap();
    let config_name = format!("{}.json", sha256(&config));
    let layer_name = format!("{layer_hex}/layer.tar");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [tag],
        "Layers": [layer_name],
    }]))
    .unwrap();
    let path = dir.join("image.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for (name, bytes) in [
        ("manifest.json", &manifest),
        (config_name.as_str(), &config),
        (layer_name.as_str(), &layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    b.into_inner().unwrap().flush().unwrap();
    path
}

fn in_image(mut t: pb::TaskInfo, image: &str, user: &str) -> pb::TaskInfo {
    t.container = Some(pb::ContainerInfo {
        r#type: pb::container_info::Type::Linux as i32,
        image: Some(pb::Image { name: image.into() }),
        ..Default::default()
    });
    if let Some(c) = t.command.as_mut() {
        c.user = user.into();
    }
    t
}

/// Mount points under `dir` on this host (the agent's mount namespace is ours).
fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(dir.to_str().unwrap()))
        .map(str::to_string)
        .collect()
}

/// The sandbox of task `id` under the agent's work dir (one framework).
fn sandbox(work_dir: &Path, id: &str) -> Option<PathBuf> {
    let root = work_dir.join("sandboxes");
    std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .map(|fw| fw.path().join(id))
        .find(|p| p.is_dir())
}

/// Acknowledges updates until every task in `ids` is terminal; returns their last states.
async fn until_terminal(fw: &mut Fw, ids: &[&str]) -> Vec<pb::TaskStatus> {
    let mut done: Vec<pb::TaskStatus> = Vec::new();
    while done.len() < ids.len() {
        let st = fw.update().await;
        fw.ack(&st).await;
        let id = st.task_id.clone().unwrap().value;
        let state = TaskState::try_from(st.state).unwrap();
        if ids.contains(&id.as_str()) && drover_proto::states::is_terminal(state) {
            done.retain(|d| d.task_id != st.task_id);
            done.push(st);
        }
    }
    done
}

fn find<'a>(statuses: &'a [pb::TaskStatus], id: &str) -> &'a pb::TaskStatus {
    statuses
        .iter()
        .find(|s| s.task_id.as_ref().is_some_and(|t| t.value == id))
        .unwrap()
}

#[test]
fn tasks_run_inside_an_imported_image_and_leave_nothing_mounted() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let agent = cluster.agent_address(0);
    let work_dir = cluster.dir.path().join("agent-0");
    let archive = write_image(cluster.dir.path(), "tiny:1");
    let out = std::process::Command::new(bin_dir().join("drover"))
        .args(["images", "import"])
        .arg(&archive)
        .args(["--agent", &agent])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A file only the host has.
    let host_only = cluster.dir.path().join("host-only");
    std::fs::write(&host_only, "host\n").unwrap();

    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut fw = rt.block_on(subscribe(&addr, "images"));
    let res = |r: &str| Resources::parse(r).unwrap().to_proto();
    let sees = format!(
        "cat /marker; [ -e {} ] && echo host-visible; echo \"sandbox=$DROVER_SANDBOX\"; \
         echo \"uid=$(id -u)\"; echo note > /mnt/sandbox/note",
        host_only.display()
    );
    let mut default = in_image(task("default", res("cpus:0.1;mem:32"), ""), "tiny:1", "");
    default.command = None;
    let statuses = rt.block_on(async {
        let offer = fw.offer().await;
        fw.launch(
            vec![offer.id.clone().unwrap()],
            vec![
                in_image(task("sees", res("cpus:0.1;mem:32"), &sees), "tiny:1", "app"),
                default,
                in_image(
                    task("ghost", res("cpus:0.1;mem:32"), "true"),
                    "tiny:1",
                    "ghost",
                ),
                in_image(task("missing", res("cpus:0.1;mem:32"), "true"), "nope", ""),
                in_image(
                    task(
                        "survivor",
                        res("cpus:0.1;mem:32"),
                        "echo waiting; while [ ! -e /mnt/sandbox/go ]; do sleep 0.1; done; \
                         echo done",
                    ),
                    "tiny:1",
                    "",
                ),
            ],
        )
        .await
        .unwrap();
        until_terminal(&mut fw, &["sees", "default", "ghost", "missing"]).await
    });
    let stdout = |id: &str| {
        sandbox(&work_dir, id)
            .map(|s| std::fs::read_to_string(s.join("stdout")).unwrap_or_default())
            .unwrap_or_default()
    };

    let sees = find(&statuses, "sees");
    assert_eq!(sees.state, TaskState::TaskFinished as i32, "{sees:?}");
    assert_eq!(
        stdout("sees"),
        "inside the image\nsandbox=/mnt/sandbox\nuid=1234\n"
    );
    assert_eq!(
        std::fs::read_to_string(sandbox(&work_dir, "sees").unwrap().join("note")).unwrap(),
        "note\n"
    );
    let default = find(&statuses, "default");
    assert_eq!(default.state, TaskState::TaskFinished as i32, "{default:?}");
    assert_eq!(stdout("default"), "from the image\n");

    let ghost = find(&statuses, "ghost");
    assert_eq!(
        (ghost.state, ghost.reason),
        (TaskState::TaskFailed as i32, Reason::TaskUserUnknown as i32),
        "{ghost:?}"
    );
    assert!(ghost.message.contains("'ghost'"), "{}", ghost.message);
    let missing = find(&statuses, "missing");
    assert_eq!(
        (missing.state, missing.reason),
        (
            TaskState::TaskFailed as i32,
            Reason::ContainerLaunchFailed as i32
        ),
        "{missing:?}"
    );
    assert!(missing.message.contains("'nope'"), "{}", missing.message);

    // Only the survivor's root filesystem is still mounted.
    let mounted = mounts_under(&work_dir);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert!(mounted[0].contains("/survivor/"), "{mounted:?}");

    // kill -9 of the agent: the survivor keeps running, and ends while the agent is away.
    cluster.kill_agent(0);
    let survivor = sandbox(&work_dir, "survivor").unwrap();
    std::fs::write(survivor.join("go"), "").unwrap();
    wait_until(
        "the survivor to finish while its agent is down",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || (stdout("survivor") == "waiting\ndone\n").then_some(()),
    );
    cluster.start_agent(0);
    let finished = rt.block_on(until_terminal(&mut fw, &["survivor"]));
    assert_eq!(finished[0].state, TaskState::TaskFinished as i32);
    // After the recovered task's end, nothing of any container stays mounted, and its
    // root filesystem is gone.
    assert_eq!(mounts_under(&work_dir), Vec::<String>::new());
    let framework = survivor
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let layout = Layout::new(&work_dir);
    for id in ["sees", "default", "ghost", "missing", "survivor"] {
        let image_dir = layout
            .task_meta(&TaskKey::new(framework, id))
            .dir()
            .join("image");
        assert!(!image_dir.exists(), "{} is left", image_dir.display());
    }
    // Reported once: the master's view holds one completed survivor.
    let (_, completed) = cluster.tasks();
    let reports = completed
        .iter()
        .filter(|t| t.task_id.as_ref().is_some_and(|id| id.value == "survivor"))
        .count();
    assert_eq!(reports, 1);
}
