//! matter-est: an EST (RFC 7030) server issuing Matter Device Attestation Certificates from a
//! Product Attestation Intermediate.
//!
//! The request's way (DESIGN.md): `csr` → `policy` → `profile` (+ `signer`) → self-check →
//! `store` → response. [`issuance::Issuer`] is the one path every front end calls.

pub mod admin;
pub mod approval;
pub mod asn1;
pub mod batch;
pub mod ceremony;
pub mod config;
pub mod csr;
pub mod envelope;
pub mod error;
pub mod est;
pub mod issuance;
pub mod matter;
pub mod pki;
pub mod policy;
pub mod profile;
pub mod ratelimit;
pub mod revocation;
pub mod server;
pub mod signer;
pub mod store;
pub mod tls;

pub use error::{Error, Result};
