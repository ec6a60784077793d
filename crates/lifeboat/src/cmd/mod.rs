//! One module per subcommand. Each owns its clap arguments and a `run` that
//! `cli::dispatch` calls; none depends on `cli`. A sibling may use another's
//! (the demo runs `drill`).

pub(crate) mod agent;
pub(crate) mod controller;
pub(crate) mod db;
pub(crate) mod demo;
pub(crate) mod drill;
pub(crate) mod journal;
pub(crate) mod moves;
pub(crate) mod objects;
pub(crate) mod region_guard;
pub(crate) mod sample_app;
pub(crate) mod status;
pub(crate) mod tables;
pub(crate) mod validate;
