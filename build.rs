// Embed libtorch's directory as an rpath so the binaries run without LD_LIBRARY_PATH,
// and keep libtorch (and with it libtorch_cuda) linked even though no symbol is used
// directly from it (otherwise --as-needed drops it and CUDA is never found).
// PRIMA_NODE_NO_RPATH=1 (the GPU bundle): no rpath, the machine's libtorch is found through
// LD_LIBRARY_PATH (a DT_RPATH would win over it).
fn main() {
    println!("cargo:rerun-if-env-changed=PRIMA_NODE_NO_RPATH");
    let rpath = std::env::var_os("PRIMA_NODE_NO_RPATH").is_none();
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        if rpath {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
            println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
        }
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
