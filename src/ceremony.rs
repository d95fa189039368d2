//! The PAI ceremony kit (issue 13; the INeS whitepaper §3.1: the PAI is created in an offline
//! signing ceremony at the PAA). The key is generated inside the token
//! ([`crate::signer::pkcs11::generate_key`], `matter-est pai keygen`) or in an encrypted PKCS#8
//! file, the PAI CSR is signed with it ([`pai_csr`]), and the PAI the PAA returns is checked
//! against the key and MATTER.md before a label uses it ([`pai_import`]), which also writes the
//! label's config section.

use std::path::{Path, PathBuf};

use crate::asn1::{self, oid};
use crate::error::{Error, Result};
use crate::issuance::{self, read_cert};
use crate::matter::{MAX_CN_CHARS, Pid, Vid};
use crate::profile::{Pai, dev};
use crate::signer::pkcs11::{self, Pkcs11Config, Pkcs11Signer};
use crate::signer::{FileSigner, PassphraseSource, Signer};

/// Where the PAI key is.
pub enum PaiKey {
    /// In a PKCS#11 token (production).
    Token(Pkcs11Config),
    /// In a PKCS#8 file, normally encrypted.
    File {
        key: PathBuf,
        passphrase: Option<PassphraseSource>,
    },
}

impl PaiKey {
    /// A signer for the key; for a token, the key is found by `point` when given, else by the
    /// configured label/id.
    fn signer(&self, point: Option<&[u8; 65]>) -> Result<Box<dyn Signer>> {
        match self {
            PaiKey::Token(config) => {
                let point = match point {
                    Some(p) => *p,
                    None => pkcs11::public_key_of(config)?,
                };
                Ok(Box::new(Pkcs11Signer::open(config, &point)?))
            }
            PaiKey::File { key, passphrase } => {
                let signer = FileSigner::load(key, passphrase.as_ref())?;
                if point.is_some_and(|p| p != signer.public_key()) {
                    return Err(Error::KeyFile {
                        path: key.clone(),
                        problem: "this key does not match the PAI".into(),
                    });
                }
                Ok(Box::new(signer))
            }
        }
    }
}

/// The PAI's CSR (PKCS#10, ecdsa-with-SHA256), signed by the key in the token: subject CN, VID
/// and (for a single-product PAI) PID, one UTF8String each (MATTER.md "PAI", "VID and PID in the
/// subject"). The PAA decides every extension.
pub fn pai_csr(key: &PaiKey, vid: Vid, pid: Option<Pid>, cn: &str) -> Result<Vec<u8>> {
    // MATTER.md: CN at most 64 characters; a CN with Mvid:/Mpid: tags confuses verifiers.
    if cn.is_empty()
        || cn.chars().count() > MAX_CN_CHARS
        || cn.contains("Mvid:")
        || cn.contains("Mpid:")
    {
        return Err(Error::BadRequest(format!(
            "the PAI CN {cn:?} must be 1 to {MAX_CN_CHARS} characters without Mvid:/Mpid: tags"
        )));
    }
    let signer = key.signer(None)?;
    let vid = vid.to_string();
    let pid = pid.map(|p| p.to_string());
    let mut attrs: Vec<(&[u8], &str)> = vec![(oid::COMMON_NAME, cn), (oid::MATTER_VID, &vid)];
    if let Some(pid) = &pid {
        attrs.push((oid::MATTER_PID, pid));
    }
    crate::csr::build(&dev::name(&attrs), signer.as_ref())
}

/// A PAI that passed [`pai_import`].
pub struct Imported {
    pub pai: Pai,
    /// The `[labels.NAME]` section (TOML) that serves it.
    pub config_section: String,
}

/// Checks the PAI certificate at `cert` before a label uses it: MATTER.md "PAI" (VID, pathLen 0,
/// key usage, size ≤ 600 bytes, …), signed by `chain` up to a PAA whose VID it carries, and its
/// public key held by the key (a token: found, logged in to, a test signature verified; a file:
/// the same key). Returns the label's config section.
pub fn pai_import(cert: &Path, chain: &[PathBuf], key: &PaiKey, label: &str) -> Result<Imported> {
    let bad = |problem: String| Error::Io {
        path: cert.to_path_buf(),
        problem,
    };
    let pai =
        Pai::from_der(&read_cert(cert)?).map_err(|e| bad(format!("not a Matter PAI: {e}")))?;
    if chain.is_empty() {
        return Err(bad(
            "give the PAA (and any certificates between) with --chain".into(),
        ));
    }
    let chain_der = chain
        .iter()
        .map(|p| read_cert(p))
        .collect::<Result<Vec<_>>>()?;
    issuance::check_chain(&pai, &chain_der)
        .map_err(|e| bad(format!("does not chain to the PAA: {e}")))?;
    // The token holds its key: the signer finds it by the PAI's public key and signs with it.
    let signer = key.signer(Some(pai.public_key()))?;
    debug_assert_eq!(signer.public_key(), pai.public_key());
    let absolute = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let quote = |p: &Path| toml_string(&absolute(p).display().to_string());
    let mut section = format!(
        "[labels.{label}]\npai = {}\nchain = [{}]\n",
        quote(cert),
        chain
            .iter()
            .map(|p| quote(p))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(pid) = pai.pid {
        section.push_str(&format!("pids = [\"{pid}\"]\n"));
    }
    section.push_str(&format!("\n[labels.{label}.signer]\n"));
    let pin_or_passphrase = |kind: &str, source: &PassphraseSource| match source {
        PassphraseSource::Env(v) => format!("{kind}_env = {}\n", toml_string(v)),
        PassphraseSource::File(f) => format!("{kind}_file = {}\n", quote(f)),
    };
    match key {
        PaiKey::File { key, passphrase } => {
            section.push_str(&format!("file = {}\n", quote(key)));
            if let Some(p) = passphrase {
                section.push_str(&pin_or_passphrase("passphrase", p));
            }
        }
        PaiKey::Token(config) => {
            section.push_str(&format!(
                "module = {}\n",
                toml_string(&config.module.display().to_string())
            ));
            if let Some(l) = &config.token.label {
                section.push_str(&format!("token_label = {}\n", toml_string(l)));
            }
            if let Some(s) = &config.token.serial {
                section.push_str(&format!("token_serial = {}\n", toml_string(s)));
            }
            if let Some(l) = &config.key_label {
                section.push_str(&format!("key_label = {}\n", toml_string(l)));
            }
            if let Some(id) = &config.key_id {
                section.push_str(&format!("key_id = \"{}\"\n", asn1::hex(id)));
            }
            section.push_str(&pin_or_passphrase("pin", &config.pin));
        }
    }
    Ok(Imported {
        pai,
        config_section: section,
    })
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
        let parsed: toml::Value =
            toml::from_str(&format!("k = {}", toml_string("a\"b\\c\n"))).expect("toml");
        assert_eq!(parsed["k"].as_str(), Some("a\"b\\c\n"));
    }
}
