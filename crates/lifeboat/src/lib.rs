//! The `lifeboat` command: every subcommand of the one binary.

pub mod cli;
mod ops;
mod run;
