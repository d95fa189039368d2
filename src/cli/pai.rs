//! `matter-est pai …`: the PAI ceremony kit (issue 13) with the key in a PKCS#11 token (or an
//! encrypted PKCS#8 file), and the key generation `init-dev --hsm` runs in a child process.

use std::path::PathBuf;

use clap::Subcommand;

use matter_est::ceremony::PaiKey;
use matter_est::profile::dev;
use matter_est::{Error, Result, asn1, matter, signer};

#[derive(Subcommand)]
pub enum PaiCommand {
    /// Generate a P-256 PAI key inside a token (sensitive, non-extractable, sign-only), or in an
    /// encrypted PKCS#8 file with --key-file, and write its public key.
    Keygen {
        #[command(flatten)]
        token: TokenArgs,
        /// First initialise a free slot as the token (SoftHSM2 development tokens), with the
        /// security officer PIN from this file; the user PIN is set from --pin-file/--pin-env.
        #[arg(long)]
        init_token_so_pin_file: Option<PathBuf>,
        /// Where to write the public key (PEM SubjectPublicKeyInfo).
        #[arg(long)]
        public_out: PathBuf,
    },
    /// Write the PAI's CSR, signed by the PAI key, for the PAA operator to sign.
    Csr {
        #[command(flatten)]
        token: TokenArgs,
        /// The PAI's Vendor ID (4 uppercase hex digits).
        #[arg(long)]
        vid: String,
        /// For a PAI that signs one product only.
        #[arg(long)]
        pid: Option<String>,
        /// The PAI's common name.
        #[arg(long)]
        cn: String,
        /// Where to write the CSR (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check the PAI the PAA returned (MATTER.md, chain to the PAA, the key holds its private
    /// half) and print (or write) the label's config section.
    Import {
        /// The PAI certificate (PEM or DER).
        cert: PathBuf,
        /// The PAA (and any certificate between), in order up to the PAA.
        #[arg(long, required = true)]
        chain: Vec<PathBuf>,
        #[command(flatten)]
        token: TokenArgs,
        /// The label to configure.
        #[arg(long)]
        label: String,
        /// Write the config section here instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Development only: the development PAA under DIR (init-dev) signs a PAI CSR.
    DevPaaSign {
        /// The development PKI's directory (made by init-dev).
        #[arg(long)]
        dir: PathBuf,
        /// The PAI CSR (PEM) to sign.
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the PAI (PEM).
        #[arg(long)]
        out: PathBuf,
    },
}

/// The PAI key: in a PKCS#11 token (--module, --token-label/--token-serial, PIN), or in a PKCS#8
/// file (--key-file, passphrase). PINs and passphrases come from a file or an environment
/// variable, never the command line (argv is visible to every local user).
#[derive(clap::Args)]
pub struct TokenArgs {
    /// The PKCS#11 module (shared library).
    #[arg(
        long,
        required_unless_present = "key_file",
        conflicts_with = "key_file"
    )]
    module: Option<PathBuf>,
    /// The token, by its label.
    #[arg(long, required_unless_present_any = ["token_serial", "key_file"])]
    token_label: Option<String>,
    /// The token, by its serial number.
    #[arg(long)]
    token_serial: Option<String>,
    /// The user PIN: the first line of this file (mode 0600).
    #[arg(long, conflicts_with = "pin_env", required_unless_present_any = ["pin_env", "key_file"])]
    pin_file: Option<PathBuf>,
    /// The user PIN: this environment variable.
    #[arg(long)]
    pin_env: Option<String>,
    /// CKA_LABEL of the key pair.
    #[arg(long, default_value = "pai")]
    key_label: String,
    /// CKA_ID of the key pair, hex (keygen's default: the label's bytes).
    #[arg(long)]
    key_id: Option<String>,
    /// The key in this PKCS#8 PEM file instead of a token (keygen writes it encrypted, 0600).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The key file's passphrase: this environment variable.
    #[arg(long, requires = "key_file", conflicts_with = "passphrase_file")]
    passphrase_env: Option<String>,
    /// The key file's passphrase: the first line of this file (mode 0600).
    #[arg(long, requires = "key_file")]
    passphrase_file: Option<PathBuf>,
}

impl TokenArgs {
    fn key(&self) -> Result<PaiKey> {
        match &self.key_file {
            Some(key) => Ok(PaiKey::File {
                key: key.clone(),
                passphrase: self.passphrase(),
            }),
            None => self.config().map(PaiKey::Token),
        }
    }

    fn passphrase(&self) -> Option<signer::PassphraseSource> {
        match (&self.passphrase_env, &self.passphrase_file) {
            (Some(v), _) => Some(signer::PassphraseSource::Env(v.clone())),
            (None, Some(f)) => Some(signer::PassphraseSource::File(f.clone())),
            (None, None) => None,
        }
    }

    fn config(&self) -> Result<signer::Pkcs11Config> {
        let pin = match (&self.pin_file, &self.pin_env) {
            (Some(f), _) => signer::PassphraseSource::File(f.clone()),
            (None, Some(v)) => signer::PassphraseSource::Env(v.clone()),
            (None, None) => return Err(Error::BadRequest("give --pin-file or --pin-env".into())),
        };
        let key_id = self
            .key_id
            .as_deref()
            .map(|h| {
                asn1::unhex(h)
                    .ok_or_else(|| Error::BadRequest(format!("--key-id {h:?} is not hex")))
            })
            .transpose()?;
        let module = self
            .module
            .clone()
            .ok_or_else(|| Error::BadRequest("give --module (or --key-file)".into()))?;
        Ok(signer::Pkcs11Config {
            module,
            token: signer::pkcs11::TokenSelector {
                label: self.token_label.clone(),
                serial: self.token_serial.clone(),
            },
            key_label: Some(self.key_label.clone()),
            key_id,
            pin,
            sessions: 1,
        })
    }
}

/// Runs one `pai` subcommand.
pub fn run(command: PaiCommand) -> Result<()> {
    match command {
        PaiCommand::Keygen {
            token,
            init_token_so_pin_file,
            public_out,
        } => {
            if let Some(key_file) = &token.key_file {
                return keygen_file(key_file, token.passphrase().as_ref(), &public_out);
            }
            let mut config = token.config()?;
            let label = token.key_label.clone();
            let id = config
                .key_id
                .take()
                .unwrap_or_else(|| label.as_bytes().to_vec());
            if let Some(so) = init_token_so_pin_file {
                let token_label = config.token.label.clone().ok_or_else(|| {
                    Error::BadRequest("--init-token-so-pin-file needs --token-label".into())
                })?;
                signer::pkcs11::init_token(
                    &config.module,
                    &token_label,
                    &signer::PassphraseSource::File(so),
                    &config.pin,
                )?;
            }
            let point = signer::pkcs11::generate_key(
                &config.module,
                &config.token,
                &config.pin,
                &label,
                &id,
            )?;
            let pem = der::pem::encode_string(
                "PUBLIC KEY",
                der::pem::LineEnding::LF,
                &asn1::p256_spki(&point),
            )
            .map_err(|e| Error::Internal(e.to_string()))?;
            std::fs::write(&public_out, pem).map_err(|e| Error::io(&public_out, e))?;
            println!(
                "generated P-256 key {label:?} (id {}) in token {}; public key: {}",
                asn1::hex(&id),
                config.token,
                public_out.display()
            );
            Ok(())
        }
        PaiCommand::Csr {
            token,
            vid,
            pid,
            cn,
            out,
        } => {
            let vid = matter::Vid::parse(&vid)?;
            let pid = pid.map(|p| matter::Pid::parse(&p)).transpose()?;
            let csr = matter_est::ceremony::pai_csr(&token.key()?, vid, pid, &cn)?;
            let pem =
                der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &csr)
                    .map_err(|e| Error::Internal(e.to_string()))?;
            std::fs::write(&out, pem).map_err(|e| Error::io(&out, e))?;
            println!(
                "wrote the PAI CSR {} (signed with the PAI key)",
                out.display()
            );
            Ok(())
        }
        PaiCommand::Import {
            cert,
            chain,
            token,
            label,
            out,
        } => {
            let imported = matter_est::ceremony::pai_import(&cert, &chain, &token.key()?, &label)?;
            eprintln!(
                "PAI {} checked: VID {}{}, chains to the PAA, its private key is the one given",
                cert.display(),
                imported.pai.vid,
                imported
                    .pai
                    .pid
                    .map(|p| format!(" PID {p}"))
                    .unwrap_or_default()
            );
            match out {
                Some(path) => {
                    std::fs::write(&path, &imported.config_section)
                        .map_err(|e| Error::io(&path, e))?;
                    println!(
                        "wrote the config section for label {label} to {}",
                        path.display()
                    );
                }
                None => print!("{}", imported.config_section),
            }
            Ok(())
        }
        PaiCommand::DevPaaSign { dir, csr, out } => {
            let body = std::fs::read(&csr).map_err(|e| Error::io(&csr, e))?;
            let pai = dev::sign_pai_csr(&dir, &body)?;
            let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &pai)
                .map_err(|e| Error::Internal(e.to_string()))?;
            std::fs::write(&out, pem).map_err(|e| Error::io(&out, e))?;
            println!(
                "the development PAA signed {} -> {}",
                csr.display(),
                out.display()
            );
            Ok(())
        }
    }
}

/// `pai keygen --key-file`: a P-256 key in an encrypted PKCS#8 file (PBES2, as batch
/// `--encrypt-passphrase-env` writes; mode 0600, never overwritten) and its public key.
fn keygen_file(
    path: &std::path::Path,
    passphrase: Option<&signer::PassphraseSource>,
    public_out: &std::path::Path,
) -> Result<()> {
    let source = passphrase.ok_or_else(|| {
        Error::BadRequest(
            "a PAI key file is written encrypted: give --passphrase-env or --passphrase-file"
                .into(),
        )
    })?;
    let pass = signer::file::read_passphrase(source)?;
    let encryptor = matter_est::batch::KeyEncryptor::new(pass.as_bytes())?;
    let (pkcs8, point) = signer::generate_p256()?;
    let pem = der::pem::encode_string(
        "ENCRYPTED PRIVATE KEY",
        der::pem::LineEnding::LF,
        &encryptor.encrypt(&pkcs8)?,
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    let mut file = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(file.write(true).create_new(true), 0o600);
    let mut f = file.open(path).map_err(|e| Error::io(path, e))?;
    std::io::Write::write_all(&mut f, pem.as_bytes()).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))?;
    let public = der::pem::encode_string(
        "PUBLIC KEY",
        der::pem::LineEnding::LF,
        &asn1::p256_spki(&point),
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(public_out, public).map_err(|e| Error::io(public_out, e))?;
    println!(
        "generated a P-256 key in {} (encrypted PKCS#8, mode 0600); public key: {}",
        path.display(),
        public_out.display()
    );
    Ok(())
}

/// `init-dev --hsm`: runs `matter-est pai keygen` in a child process whose `SOFTHSM2_CONF`
/// names the new token directory (SoftHSM2 reads its config from that variable only, and
/// setting it in this process would be unsafe), then reads the public key it wrote.
pub fn hsm_keygen(module: &std::path::Path, files: &dev::HsmFiles) -> Result<[u8; 65]> {
    let exe = std::env::current_exe().map_err(|e| Error::Internal(e.to_string()))?;
    let out = std::process::Command::new(exe)
        .args(["pai", "keygen", "--module"])
        .arg(module)
        .args([
            "--token-label",
            dev::DEV_TOKEN,
            "--key-label",
            dev::DEV_KEY_LABEL,
        ])
        .arg("--pin-file")
        .arg(&files.user_pin)
        .arg("--init-token-so-pin-file")
        .arg(&files.so_pin)
        .arg("--public-out")
        .arg(&files.public_out)
        .env("SOFTHSM2_CONF", &files.conf)
        .output()
        .map_err(|e| Error::Internal(format!("cannot run `matter-est pai keygen`: {e}")))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "`matter-est pai keygen` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let pem =
        std::fs::read_to_string(&files.public_out).map_err(|e| Error::io(&files.public_out, e))?;
    let (_, spki) = der::pem::decode_vec(pem.as_bytes())
        .map_err(|e| Error::io(&files.public_out, format!("bad PEM: {e}")))?;
    let prefix_len = spki.len().saturating_sub(65);
    let point: [u8; 65] = spki[prefix_len..]
        .try_into()
        .map_err(|_| Error::io(&files.public_out, "not a P-256 public key"))?;
    if asn1::p256_spki(&point) != spki {
        return Err(Error::io(&files.public_out, "not a P-256 public key"));
    }
    Ok(point)
}
