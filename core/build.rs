fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A protoc shipped inside a crate: no system package needed to build.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    std::env::set_var("PROTOC_INCLUDE", protoc_bin_vendored::include_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/ca.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/ca.proto");
    Ok(())
}
