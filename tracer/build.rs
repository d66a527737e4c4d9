//! Builds the BPF probe (`tracer-ebpf`) and leaves it in `OUT_DIR` for `include_bytes_aligned!`.
//!
//! Without a BPF toolchain the build still succeeds with an empty probe, so that host
//! `cargo check/clippy/test` work anywhere; the binary then refuses to trace and says why.
//! `TRACER_REQUIRE_PROBE=1` (set by `cargo xtask`) makes a missing toolchain an error.

#[path = "build/bpf_toolchain.rs"]
#[allow(dead_code)] // xtask uses the parts that install the toolchain
mod bpf_toolchain;

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("tracer/ sits in the workspace")
        .to_owned();
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("tracer-probe.o");
    for path in [
        "tracer-ebpf/src",
        "tracer-ebpf/Cargo.toml",
        "tracer-common/src",
        "tracer-common/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    println!("cargo:rerun-if-changed=build/bpf_toolchain.rs");
    println!("cargo:rerun-if-env-changed=TRACER_REQUIRE_PROBE");

    let required = env::var_os("TRACER_REQUIRE_PROBE").is_some_and(|v| v == "1");
    let toolchain = match bpf_toolchain::detect() {
        Ok(t) => t,
        Err(missing) if !required => {
            println!("cargo:warning=building tracer without its BPF probe: {missing}");
            fs::write(&out, b"").expect("write empty probe to OUT_DIR");
            return;
        }
        Err(missing) => fail(&missing.to_string()),
    };
    // One probe build for every host profile: a separate target dir avoids cargo's lock on
    // the outer build's dir, and sharing it avoids rebuilding `core` per profile.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("bpf");
    let cargo = PathBuf::from(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    match toolchain.build_probe(&workspace, &cargo, &target_dir) {
        Ok(object) => {
            fs::copy(&object, &out).unwrap_or_else(|e| {
                fail(&format!(
                    "copy {} to {}: {e}",
                    object.display(),
                    out.display()
                ))
            });
        }
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
