//! The `mastfs` binary; everything lives in the library so the compiler sees what is unused.

fn main() -> std::process::ExitCode {
    mastfs::main()
}
