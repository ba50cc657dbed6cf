//! The privileged half of hostenv, installed on each host (its library: `src/lib.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    ExitCode::from(hostenv_host::main(args))
}
