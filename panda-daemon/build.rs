//! Embeds the BPF object built by `cargo xtask build-ebpf`.
//!
//! The object is built by xtask rather than here because it needs a toolchain
//! with a BPF `core` that is not the one building this crate (see
//! xtask/src/ebpf.rs); this script only points the compiler at the result.
use std::{env, path::PathBuf};

fn main() {
    let object = match env::var_os("PANDA_BPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/bpf/panda.bpf.o")
        }
    };
    println!("cargo::rerun-if-env-changed=PANDA_BPF_OBJECT");
    println!("cargo::rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "\n\nThe BPF object {} is missing.\nBuild it first with `cargo xtask build-ebpf` \
             (or `cargo xtask build`), or point PANDA_BPF_OBJECT at one.\n\n",
            object.display()
        );
    }
    println!(
        "cargo::rustc-env=PANDA_BPF_OBJECT_PATH={}",
        object.canonicalize().unwrap().display()
    );
}
