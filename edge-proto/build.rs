//! Compiles `proto/edge/v1/*.proto` with protox (pure Rust), so a fresh
//! machine needs no protoc, then generates prost messages and tonic
//! clients and servers from the descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = ["edge/v1/feed.proto", "edge/v1/control.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
