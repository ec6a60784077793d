//! The `lifeboat` binary: a thin shell over the library's subcommands.

fn main() -> std::process::ExitCode {
    lifeboat::cli::main()
}
