// Rebuild when bpf-linker changes (it is not a cargo dependency).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
