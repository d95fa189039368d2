//! The file signer: a PKCS#8 PEM key on disk, plain or encrypted (development and small
//! deployments; production keeps the PAI key in an HSM).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use p256::SecretKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};

use super::{KeySigner, Signer};
use crate::error::{Error, Result};

/// Where the passphrase of an encrypted key comes from. Never the command line: argv is visible
/// to every local user through /proc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassphraseSource {
    /// The named environment variable.
    Env(String),
    /// The first line of a file (which must not be readable by group or others).
    File(PathBuf),
}

/// A signer whose key was read from a PEM file.
pub struct FileSigner {
    inner: KeySigner,
}

impl FileSigner {
    /// Loads `path`, refusing a file readable by group or others (DEVELOPERS.md "Security").
    ///
    /// Accepts `PRIVATE KEY` (PKCS#8), `ENCRYPTED PRIVATE KEY` (PKCS#8 with PBES2, needs a
    /// passphrase) and `EC PRIVATE KEY` (SEC1, what `openssl ecparam -genkey` writes).
    pub fn load(path: &Path, passphrase: Option<&PassphraseSource>) -> Result<Self> {
        let key_err = |problem: String| Error::KeyFile {
            path: path.to_path_buf(),
            problem,
        };
        check_private_mode(path)?;
        let pem = fs::read_to_string(path).map_err(|e| key_err(e.to_string()))?;
        let secret = if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            let source = passphrase.ok_or_else(|| {
                key_err("the key is encrypted; configure passphrase_env or passphrase_file".into())
            })?;
            let pass = read_passphrase(source)?;
            SecretKey::from_pkcs8_encrypted_pem(&pem, pass.as_bytes())
                .map_err(|e| key_err(format!("cannot decrypt (wrong passphrase?): {e}")))?
        } else if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            SecretKey::from_sec1_pem(&pem)
                .map_err(|e| key_err(format!("not a P-256 SEC1 key: {e}")))?
        } else {
            SecretKey::from_pkcs8_pem(&pem)
                .map_err(|e| key_err(format!("not a P-256 PKCS#8 PEM key: {e}")))?
        };
        // Re-encode so the PKCS#8 always embeds the public key, as ring requires.
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| key_err(format!("cannot re-encode key: {e}")))?;
        let inner = KeySigner::from_pkcs8(der.as_bytes()).map_err(|e| key_err(e.to_string()))?;
        Ok(Self { inner })
    }
}

impl Signer for FileSigner {
    fn public_key(&self) -> &[u8; 65] {
        self.inner.public_key()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.inner.sign(message)
    }
}

/// Refuses a secret file that group or others may read or write.
pub fn check_private_mode(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| Error::KeyFile {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::KeyFile {
            path: path.to_path_buf(),
            problem: format!(
                "mode {mode:04o} lets group or others read it; run `chmod 600 {}`",
                path.display()
            ),
        });
    }
    Ok(())
}

/// The passphrase from its source (an environment variable, or the first line of a 0600 file).
pub fn read_passphrase(source: &PassphraseSource) -> Result<String> {
    match source {
        PassphraseSource::Env(var) => std::env::var(var).map_err(|_| Error::KeyFile {
            path: PathBuf::from(format!("${var}")),
            problem: "the passphrase environment variable is not set".into(),
        }),
        PassphraseSource::File(path) => {
            check_private_mode(path)?;
            let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            Ok(text.lines().next().unwrap_or_default().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        let (pkcs8, _) = super::super::generate_p256().expect("keygen");
        let pem =
            der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, &pkcs8).expect("pem");
        fs::write(&path, pem).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = FileSigner::load(&path, None).err().expect("refused");
        assert!(err.to_string().contains("0644"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        FileSigner::load(&path, None).expect("0600 loads");
    }
}
