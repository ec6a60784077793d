//! The `lifeboat` command: every subcommand of the one binary.
//!
//! [`cli`] parses the command line and hands each subcommand to its module under
//! `cmd` (one per subcommand, each with its flags). Beside them: `engine` (the one
//! place that tells PostgreSQL from MariaDB), `shared` (config loading, signals, the
//! API client) and `sockets` (what the long-running processes bind).

mod certs;
pub mod cli;
mod cmd;
mod engine;
mod shared;
mod sockets;
