use which::which;

/// Linking this crate needs the `bpf-linker` binary, a dependency cargo cannot
/// see. Rebuild when it changes (e.g. `cargo xtask setup` installed another
/// version), so an object linked by an old linker is never reused.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            println!("cargo:warning=bpf-linker not found in PATH; run `cargo xtask setup` to install it")
        }
    }
}
