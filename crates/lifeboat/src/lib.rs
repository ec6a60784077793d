//! The `lifeboat` command: every subcommand of the one binary.

pub mod cli;
mod demo;
mod extra;
mod ops;
mod run;
mod wiring;
