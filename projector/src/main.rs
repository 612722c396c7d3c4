//! projector: not built yet (see the project's open issues); exits non-zero so
//! that nothing mistakes it for a working service.

fn main() -> std::process::ExitCode {
    eprintln!("projector is not implemented yet");
    std::process::ExitCode::from(2)
}
