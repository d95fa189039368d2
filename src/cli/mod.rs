//! Subcommands of the `matter-est` binary that have outgrown main.rs (DESIGN.md "Layout").

pub mod pai;
pub mod pki;
