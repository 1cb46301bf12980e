fn main() -> std::process::ExitCode {
    roiscope::cli::main()
}
