//! Compiles `mailfleet/*.proto` with the `protoc` binary shipped inside the
//! `protoc-bin-vendored` crate, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let files = [
        "mailfleet/filter.proto",
        "mailfleet/history.proto",
        "mailfleet/mailstore.proto",
        "mailfleet/queue.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure().compile_protos(&files, &["."])?;
    Ok(())
}
