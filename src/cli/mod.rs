//! Subcommands of `matter-est` kept out of main.rs (DESIGN.md "Layout": main.rs stays thin).

pub mod pki;
