//! Exit codes (BSD sysexits, as docs/configuration.md lists them) and the
//! command line parse every binary uses.

use std::process::ExitCode;

/// A bad command line or an unusable config file (EX_USAGE).
pub const USAGE: u8 = 64;
/// Input that parsed but was rejected (EX_DATAERR): `edge check`.
pub const DATAERR: u8 = 65;
/// A store, peer or listener is unavailable (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// The service could not start (EX_SOFTWARE).
pub const START: u8 = 70;
/// A concurrent writer won; try again (EX_TEMPFAIL).
pub const TEMPFAIL: u8 = 75;

/// Parses the command line. `--help` and `--version` print and return
/// `Err(0)`; a bad command line prints clap's message and returns
/// `Err(64)` (clap's own code would be 2).
pub fn parse_args<C: clap::Parser>() -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}
