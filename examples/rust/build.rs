//! Generates the client stubs of authsvc.v1 from the repository's proto/ into OUT_DIR (never
//! committed). protox is a protobuf compiler written in Rust and pinned in Cargo.lock, so the build
//! needs no protoc on the machine and compiles the same on every clone; tonic-prost-build turns its
//! descriptors into prost messages and tonic clients.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "authsvc/v1/auth_service.proto",
        "authsvc/v1/account_service.proto",
    ];
    let descriptors = protox::compile(files, [&proto_root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    println!(
        "cargo:rerun-if-changed={}",
        proto_root.join("authsvc").display()
    );
    Ok(())
}
