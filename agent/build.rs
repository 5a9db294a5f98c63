//! Builds the XDP program (crate `tollgate-ebpf`) for the BPF target with the
//! nightly toolchain and bpf-linker, into OUT_DIR, where `src/lib.rs` embeds
//! it. One `cargo build` of the agent therefore always carries the matching
//! kernel object.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "tollgate-ebpf")
        .ok_or_else(|| anyhow!("package tollgate-ebpf not found in the workspace"))?;
    let root_dir =
        ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF object failed; `cargo xtask setup` installs what it needs (nightly rust-src, bpf-linker)")
}
