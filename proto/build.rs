//! Compiles `hedui/v1/*.proto` with protox (a pure-Rust protobuf compiler, so
//! no `protoc` is needed on the machine) and generates prost messages and
//! tonic clients and servers. The encoded descriptor set is written too, for
//! gRPC server reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "hedui/v1/facts.proto",
        "hedui/v1/adapter.proto",
        "hedui/v1/verification.proto",
        "hedui/v1/audit.proto",
        "hedui/v1/watch.proto",
        "hedui/v1/consent.proto",
        "hedui/v1/health.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("hedui_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // prost's codec with smaller first buffers (src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        // Written by hand, to send a report encoded once already
        // (src/verify_response.rs).
        .extern_path(
            ".hedui.v1.VerifyResponse",
            "crate::verify_response::VerifyResponse",
        )
        .compile_fds(fds)?;
    Ok(())
}
