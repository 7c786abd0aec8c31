//! Compiles `proto/*.proto` with protox (pure Rust), so building Tessera
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with env!(): the compiled build script is
    // shared between checkouts that use one target directory.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).join("../../proto");
    let files = ["storage.proto", "meta.proto"].map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let [storage, meta] = files;
    // Shard data goes through a codec with a larger decode buffer
    // (src/shard_codec.rs); meta and Raft messages use prost's.
    let fds = protox::compile([&storage], [&root])?;
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::shard_codec::ShardCodec")
        .compile_fds(fds)?;
    let fds = protox::compile([&meta], [&root])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
