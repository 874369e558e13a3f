// Embed libtorch's directory as an rpath so the binaries run without LD_LIBRARY_PATH,
// and keep libtorch (and with it libtorch_cuda) linked even though no symbol is used
// directly from it (otherwise --as-needed drops it and CUDA is never found).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
