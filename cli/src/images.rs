//! `drover images import | list | remove`: an agent's local image store, through that
//! agent's own API (`--agent`, not the masters: images live on each agent).
//!
//! `import` streams the archive in 1 MiB chunks; a directory (an OCI image layout) is
//! sent as a tar built on the fly. Rendering is a pure function of the response, tested
//! without an agent.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use drover_proto::pb::{self, agent_api_client::AgentApiClient};
use tokio::sync::mpsc;

use crate::format;
use crate::table::Table;

/// The agent API's limit per chunk.
const CHUNK: usize = 1 << 20;

/// `drover images` subcommands.
#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Import an image archive into an agent's image store: a `docker save` tarball
    /// (classic, or the OCI layout of Docker 25+), a tar of an OCI image layout, either
    /// optionally gzipped, or an OCI image layout directory. Layer digests are verified;
    /// archives with entries escaping the root filesystem are refused.
    Import(ImportArgs),
    /// List the images in an agent's image store.
    List(ListArgs),
    /// Remove an image from an agent's image store (refused while a container uses it).
    Remove(RemoveArgs),
}

/// Which agent to talk to.
#[derive(Args, Debug)]
pub struct AgentArg {
    /// The agent's API address (its --listen).
    #[arg(
        long,
        env = "DROVER_AGENT",
        default_value = "127.0.0.1:5051",
        value_name = "HOST:PORT"
    )]
    pub agent: String,
}

/// `drover images import` flags.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The archive file, or an OCI image layout directory.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Also name the image NAME (`repo:tag`; `:latest` when no tag is given). Only for
    /// archives holding one image. Names the archive carries (RepoTags, OCI ref
    /// annotations) are kept too.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Read the archive as this format: 'oci' (index.json) or 'docker' (docker save's
    /// manifest.json). Default: detect.
    #[arg(long, value_name = "oci|docker", value_parser = ["oci", "docker"])]
    pub format: Option<String>,
    #[command(flatten)]
    pub agent: AgentArg,
    /// Print the agent's response as pretty JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// `drover images list` flags.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub agent: AgentArg,
    /// Print the agent's response as pretty JSON (for scripts): every image with its
    /// full digest, names, sizes and image config.
    #[arg(long)]
    pub json: bool,
}

/// `drover images remove` flags.
#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The image: a name, a digest, or a unique digest prefix of 12 hex digits or more.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    #[command(flatten)]
    pub agent: AgentArg,
}

pub async fn run(command: ImagesCommand) -> Result<()> {
    match command {
        ImagesCommand::Import(args) => import(args).await,
        ImagesCommand::List(args) => list(args).await,
        ImagesCommand::Remove(args) => remove(args).await,
    }
}

async fn connect(agent: &str) -> Result<AgentApiClient<tonic::transport::Channel>> {
    AgentApiClient::connect(format!("http://{agent}"))
        .await
        .with_context(|| format!("no agent answered at {agent} (give its address with --agent)"))
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow!("{} ({:?})", s.message(), s.code())
}

async fn import(args: ImportArgs) -> Result<()> {
    let meta = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut client = connect(&args.agent.agent).await?;
    let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let path = args.file.clone();
    let is_dir = meta.is_dir();
    // Read (or tar) on a blocking thread; chunks flow to the request stream.
    let reader = tokio::task::spawn_blocking(move || produce(&path, is_dir, tx.clone()));
    let mut first = Some(pb::ImportImageChunk {
        name: args.name.clone().unwrap_or_default(),
        format: args.format.clone().unwrap_or_default(),
        data: Vec::new(),
    });
    let read_error = std::sync::Arc::new(std::sync::Mutex::new(None::<std::io::Error>));
    let seen = read_error.clone();
    let chunks = futures::stream::unfold(rx, move |mut rx| {
        let first = first.take();
        let seen = seen.clone();
        async move {
            match rx.recv().await {
                Some(Ok(data)) => {
                    let mut chunk = first.unwrap_or_default();
                    chunk.data = data;
                    Some((chunk, rx))
                }
                Some(Err(e)) => {
                    *seen.lock().unwrap() = Some(e);
                    None
                }
                None => first.map(|c| (c, rx)),
            }
        }
    });
    let result = client.import_image(chunks).await;
    let _ = reader.await;
    if let Some(e) = read_error.lock().unwrap().take() {
        bail!("reading {}: {e}", args.file.display());
    }
    let response = result
        .map_err(status_error)
        .with_context(|| {
            format!(
                "importing {} into the agent at {}",
                args.file.display(),
                args.agent.agent
            )
        })?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(());
    }
    print!("{}", render_import(&response));
    Ok(())
}

/// Sends the archive's bytes in chunks; a directory becomes a tar of its contents.
fn produce(path: &Path, is_dir: bool, tx: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let result = if is_dir {
        let mut builder = tar::Builder::new(ChunkWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: tx.clone(),
        });
        builder.follow_symlinks(false);
        builder
            .append_dir_all(".", path)
            .and_then(|()| builder.into_inner())
            .and_then(|mut w| w.flush_chunk())
    } else {
        (|| {
            use std::io::Read;
            let mut file = std::fs::File::open(path)?;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = file.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                if tx.blocking_send(Ok(buf)).is_err() {
                    // The agent answered early (an error): nothing more to send.
                    return Ok(());
                }
            }
        })()
    };
    if let Err(e) = result {
        let _ = tx.blocking_send(Err(e));
    }
}

/// A `Write` that hands out full chunks.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
}

impl ChunkWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the agent stopped reading the archive"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn list(args: ListArgs) -> Result<()> {
    let mut client = connect(&args.agent.agent).await?;
    let response = client
        .list_images(pb::ListImagesRequest {})
        .await
        .map_err(status_error)
        .with_context(|| format!("listing the images of the agent at {}", args.agent.agent))?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(());
    }
    if response.images.is_empty() {
        println!("No images on this agent. Import one with `drover images import FILE`.");
        return Ok(());
    }
    print!(
        "{}",
        render_images(&response.images, drover_proto::unix_seconds())
    );
    Ok(())
}

async fn remove(args: RemoveArgs) -> Result<()> {
    let mut client = connect(&args.agent.agent).await?;
    let response = client
        .remove_image(pb::RemoveImageRequest {
            image: args.image.clone(),
        })
        .await
        .map_err(status_error)
        .with_context(|| {
            format!(
                "removing {} from the agent at {}",
                args.image, args.agent.agent
            )
        })?
        .into_inner();
    if let Some(image) = response.image {
        println!("Removed {} {}", image.digest, names(&image));
    }
    Ok(())
}

fn names(image: &pb::ImageSummary) -> String {
    if image.names.is_empty() {
        "<none>".to_string()
    } else {
        image.names.join(",")
    }
}

/// `sha256:` and the first 12 hex digits, enough to name an image uniquely in practice.
fn short_digest(digest: &str) -> &str {
    &digest[..digest.len().min("sha256:".len() + 12)]
}

/// Bytes for people: `512 B`, `1.5 KiB`, `4.2 MiB`, `1.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

pub fn render_import(response: &pb::ImportImageResponse) -> String {
    let mut out = String::new();
    for i in &response.images {
        out.push_str(&format!(
            "Imported {} {} ({} layer{}, {} unpacked)\n",
            i.digest,
            names(i),
            i.layers,
            if i.layers == 1 { "" } else { "s" },
            bytes(i.size_bytes)
        ));
    }
    out
}

pub fn render_images(images: &[pb::ImageSummary], now: f64) -> String {
    let mut table = Table::new(&["NAMES", "DIGEST", "SIZE", "LAYERS", "CREATED", "IMPORTED"])
        .right(&["SIZE", "LAYERS"]);
    let mut sorted: Vec<&pb::ImageSummary> = images.iter().collect();
    sorted.sort_by(|a, b| names(a).cmp(&names(b)).then(a.digest.cmp(&b.digest)));
    for i in sorted {
        table.row(vec![
            names(i),
            short_digest(&i.digest).to_string(),
            bytes(i.size_bytes),
            i.layers.to_string(),
            if i.created.is_empty() {
                "-".to_string()
            } else {
                i.created.clone()
            },
            format!("{} ago", format::duration(now - i.imported_at)),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(names: &[&str], digest_char: char, size: u64) -> pb::ImageSummary {
        pb::ImageSummary {
            digest: format!("sha256:{}", digest_char.to_string().repeat(64)),
            names: names.iter().map(|s| s.to_string()).collect(),
            size_bytes: size,
            layers: 2,
            imported_at: 1000.0,
            created: "2024-01-02T03:04:05Z".into(),
            ..Default::default()
        }
    }

    #[test]
    fn images_table() {
        let text = render_images(
            &[
                image(&["web:1", "web:latest"], 'b', 5 << 20),
                image(&[], 'a', 300),
            ],
            1065.0,
        );
        assert_eq!(
            text,
            concat!(
                "NAMES             DIGEST                  SIZE  LAYERS  CREATED               IMPORTED\n",
                "<none>            sha256:aaaaaaaaaaaa    300 B       2  2024-01-02T03:04:05Z  1m5s ago\n",
                "web:1,web:latest  sha256:bbbbbbbbbbbb  5.0 MiB       2  2024-01-02T03:04:05Z  1m5s ago\n",
            )
        );
    }

    #[test]
    fn import_summary() {
        let response = pb::ImportImageResponse {
            images: vec![image(&["web:1"], 'c', 2048)],
            archive_bytes: 4096,
        };
        assert_eq!(
            render_import(&response),
            format!(
                "Imported sha256:{} web:1 (2 layers, 2.0 KiB unpacked)\n",
                "c".repeat(64)
            )
        );
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn directories_are_sent_as_tars_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.json"), b"{}").unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs/big"), vec![7u8; CHUNK + 10]).unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || produce(&path, true, tx))
            .join()
            .unwrap();
        let mut all = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK);
            all.extend(chunk);
        }
        let mut archive = tar::Archive::new(all.as_slice());
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert!(names.contains(&"index.json".to_string()), "{names:?}");
        assert!(names.contains(&"blobs/big".to_string()), "{names:?}");
    }
}
