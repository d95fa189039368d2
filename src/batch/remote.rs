//! A batch whose DACs a running server issues (DESIGN.md "One command, either way"): the
//! engine's two questions, asked of the server's admin API by the CLI.

use crate::error::Result;
use crate::matter::Pid;

use super::Facts;

/// A server that issues a batch's DACs.
pub trait Enroll: Sync {
    /// What the batch needs of `label`; refused (before anything is made) when `pid` is not one
    /// the label issues.
    fn label(&self, label: &str, pid: Pid) -> Result<Facts>;

    /// The DAC (DER) for the CSR (DER) on `label`: a new one, or the one on record for this key
    /// and subject.
    fn issue(&self, label: &str, csr: &[u8]) -> Result<Vec<u8>>;
}

impl Facts {
    /// The facts a server reports of a label (`GET /v1/labels`).
    pub fn remote(
        vid: String,
        cn_prefix: String,
        chain: Vec<Vec<u8>>,
        quota: Option<u64>,
        used: u64,
    ) -> Self {
        let mut chain = chain.into_iter();
        let pai = chain.next().unwrap_or_default();
        Facts {
            vid,
            cn_prefix,
            pai,
            paa: chain.last(),
            quota,
            used,
            local: None,
        }
    }
}
