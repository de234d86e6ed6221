//! The `rtlab` binary: all the work is in the library.

fn main() -> std::process::ExitCode {
    rtlab::cli_main()
}
