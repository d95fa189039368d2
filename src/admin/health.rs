//! Health checks for load balancers and orchestrators (issue 15), answered on both admin doors
//! without a client certificate: `/healthz` (the process serves) and `/readyz` (it can issue:
//! the ledger answers, every label's signer signs, no CRL is past its nextUpdate).

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::Ctx;

/// `/healthz`: 200 while the process answers.
pub fn healthz() -> (u16, Value) {
    (200, json!({ "status": "ok" }))
}

/// `/readyz`: 200 when every check passes, else 503; the body lists each check and, for a
/// failing one, why.
pub fn readyz(ctx: &Ctx) -> (u16, Value) {
    let mut checks = Vec::new();
    let mut ready = true;
    let mut check = |name: String, result: std::result::Result<(), String>| {
        ready &= result.is_ok();
        checks.push(match result {
            Ok(()) => json!({ "check": name, "ok": true }),
            Err(problem) => json!({ "check": name, "ok": false, "problem": problem }),
        });
    };

    // The ledger: a read of its audit chain's head (the table every change appends to).
    let ledger = ctx.ledger();
    check(
        "ledger".into(),
        ledger.audit_head().map(|_| ()).map_err(|e| e.to_string()),
    );

    // Every label's signer signs a fixed digest, and the signature verifies by the PAI's key.
    let digest = Sha256::digest(b"matter-est readiness probe");
    match ctx.issuer() {
        Ok(issuer) => {
            for label in issuer.labels() {
                let signer = label.signer.as_ref();
                let result = match signer.sign(&digest) {
                    Ok(sig) if crate::signer::verify(signer.public_key(), &digest, &sig) => Ok(()),
                    Ok(_) => Err("the test signature does not verify".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                check(format!("signer:{}", label.config.name), result);
            }
        }
        Err(e) => check("signers".into(), Err(e.to_string())),
    }

    // No label's CRL is past its nextUpdate.
    let now = crate::asn1::now();
    for name in ctx.config().labels.keys() {
        match ledger.crl(name) {
            Ok(Some(crl)) if crl.next_update < now => check(
                format!("crl:{name}"),
                Err(format!(
                    "CRL number {} is past its nextUpdate by {} s",
                    crl.number,
                    now - crl.next_update
                )),
            ),
            Ok(Some(_)) => check(format!("crl:{name}"), Ok(())),
            Ok(None) => {}
            Err(e) => check(format!("crl:{name}"), Err(e.to_string())),
        }
    }

    let status = if ready { "ready" } else { "not ready" };
    (
        if ready { 200 } else { 503 },
        json!({ "status": status, "checks": checks }),
    )
}
