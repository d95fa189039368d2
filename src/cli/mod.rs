//! Operator subcommands of the `matter-est` binary (DESIGN.md "Layout": subcommands live here
//! once main.rs grows). Each opens the config and the ledger, calls one service, prints.

pub mod audit;
pub mod certs;
pub mod ops;
pub mod serve;
pub mod tokens;

/// How the audit log names an operator at this host's shell: `cli:$USER`.
pub fn operator() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}
