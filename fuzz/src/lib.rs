//! The node's modules that handle received bytes, compiled from ../src by path and exposed
//! under the same module paths as in the library, so `fuzzing.rs` compiles unchanged here.
#![allow(dead_code)]

#[path = "../../src/net/dimse.rs"]
pub mod dimse_src;
#[path = "../../src/net/pdata.rs"]
pub mod pdata_src;
#[path = "../../src/store/header.rs"]
pub mod header_src;
#[path = "../../src/store/length_guard.rs"]
pub mod length_guard_src;
#[path = "../../src/uid.rs"]
pub mod uid;

pub mod net {
    pub use super::dimse_src as dimse;
    pub use super::pdata_src as pdata;
}

pub mod store {
    pub use super::header_src as header;
    pub use super::length_guard_src as length_guard;
}

#[path = "../../src/imaging/mod.rs"]
pub mod imaging;

#[path = "../../src/fuzzing.rs"]
pub mod fuzzing;

/// Panic handling for the targets. libfuzzer-sys aborts on every panic, but the node
/// catches panics of third-party pixel decoders on purpose (`series::load_volume`), so a
/// panic is only a crash when it escapes the target function. The message of the last
/// panic is kept and printed before the abort.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("{info}");
        if let Ok(mut m) = LAST_PANIC.lock() {
            *m = msg;
        }
    }));
}

static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

pub fn run(f: fn(&[u8]), data: &[u8]) {
    if std::panic::catch_unwind(|| f(data)).is_err() {
        let msg = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
        eprintln!("panic escaped the fuzz target: {msg}");
        std::process::abort();
    }
}
