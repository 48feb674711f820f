//! `<binary> verify`: runs `database::verify`'s checks and prints one line each,
//! `ok   <check>: <what was checked>` or `FAIL <check>: <what was checked>; <problems>`.

use crate::database::DbConfig;
use std::process::ExitCode;

/// Runs every check against `config`'s database; exit code 0 only when all pass, 1 otherwise
/// (or when the database cannot be reached).
pub async fn run(name: &str, config: &DbConfig) -> ExitCode {
    let mut conn = match crate::database::migrations::connect_direct(config).await {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("{name} verify: cannot connect to the database: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checks = crate::database::verify::run(&mut conn).await;
    for check in &checks {
        if check.passed() {
            println!("ok   {}: {}", check.name, check.checked);
        } else {
            println!("FAIL {}: {}; {}", check.name, check.checked, check.problems.join("; "));
        }
    }
    let failed = checks.iter().filter(|c| !c.passed()).count();
    if failed == 0 {
        println!("all {} checks passed", checks.len());
        ExitCode::SUCCESS
    } else {
        println!("{failed} of {} checks failed", checks.len());
        ExitCode::FAILURE
    }
}
