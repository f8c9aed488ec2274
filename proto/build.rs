//! Compiles the `.proto` files with protox (pure Rust), so that `protoc` is
//! never a prerequisite, then generates prost messages and tonic services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/drover/v1/common.proto",
        "proto/drover/v1/scheduler.proto",
        "proto/drover/v1/agent.proto",
        "proto/drover/v1/operator.proto",
        "proto/drover/v1/raft.proto",
        "proto/drover/v1/testing.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(
            ".drover.v1.FrameworkId",
            "#[derive(Eq, Hash, PartialOrd, Ord)]",
        )
        .type_attribute(".drover.v1.AgentId", "#[derive(Eq, Hash, PartialOrd, Ord)]")
        .type_attribute(".drover.v1.OfferId", "#[derive(Eq, Hash, PartialOrd, Ord)]")
        .type_attribute(".drover.v1.TaskId", "#[derive(Eq, Hash, PartialOrd, Ord)]")
        .type_attribute(
            ".drover.v1.ExecutorId",
            "#[derive(Eq, Hash, PartialOrd, Ord)]",
        )
        .compile_fds(fds)?;
    Ok(())
}
