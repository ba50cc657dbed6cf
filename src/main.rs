use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let outcome = hostenv::main_with_args(std::env::args_os(), &hostenv::ProcessEnv);
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    ExitCode::from(outcome.exit_code as u8)
}
