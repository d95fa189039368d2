//! Operator subcommands of the `matter-est` binary (DESIGN.md "Layout": subcommands live here
//! once main.rs grows). Each opens the config and the ledger, calls one service, prints.

pub mod ops;
