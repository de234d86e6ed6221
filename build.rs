//! Links the `rtlab` binary as a fixed-address executable (not PIE) on Linux.
//!
//! A PIE rtlab carries about 300,000 relative relocations (polars, candle and wgpu's vtables) that the
//! dynamic loader applies at every start, copying some 5 MB of pages: 6 to 7 ms before `main`, which
//! is most of what a short `rtlab run` costs. Without PIE the linker resolves them once.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("linux") && target.starts_with("x86_64") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
