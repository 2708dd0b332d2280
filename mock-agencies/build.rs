//! Compiles `hedui/mock/v1/control.proto` with protox (a pure-Rust protobuf
//! compiler, so no `protoc` is needed on the machine) and generates the
//! prost messages and the tonic client and server of the control service.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["hedui/mock/v1/control.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    // control.proto imports hedui.v1 messages; they are hedui-proto's types.
    let fds = protox::compile(files, ["proto", "../proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("hedui_mock_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .extern_path(".hedui.v1", "::hedui_proto::v1")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
