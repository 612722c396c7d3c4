//! Generates the gRPC services and the event schema from `proto/`, with the
//! vendored `protoc`, so that a fresh machine needs no system install.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = ["commands.proto", "queries.proto", "events.proto"].map(|file| proto_root.join("bank/v1").join(file));
    let descriptor = PathBuf::from(env::var("OUT_DIR")?).join("bank_v1_descriptor.bin");

    let mut config = prost_build::Config::new();
    config.enable_type_names();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().file_descriptor_set_path(&descriptor).compile_with_config(
        config,
        &files,
        &[proto_root.clone(), protoc_bin_vendored::include_path()?],
    )?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}
