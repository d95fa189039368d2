//! Subcommands of the `matter-est` binary that have outgrown main.rs (DESIGN.md "Layout").
//! Each opens the config and the ledger (or the running server's socket), calls one service,
//! prints.

pub mod audit;
pub mod backend;
pub mod certs;
pub mod dashboard;
pub mod ops;
pub mod pai;
pub mod pending;
pub mod pki;
pub mod serve;
pub mod tokens;

/// How the audit log names an operator at this host's shell: `cli:$USER`.
pub fn operator() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}
