//! The development PKI (`matter-est init-dev`): a PAA and a PAI for test VID 0xFFF1 that follow
//! MATTER.md, a TLS CA with a server certificate for localhost, and a gateway client CA with one
//! gateway certificate. Made with our own code, no openssl.
//!
//! Development material only: the Matter test VIDs FFF1–FFF4 are not trusted by production
//! commissioners, and the keys are plain files — except, with `init-dev --hsm`, the PAI key,
//! which is generated inside a SoftHSM2 token made under the same directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::cert::{self, CertFields, key_usage};
use super::random_serial;
use crate::asn1::{self, oid, tag};
use crate::error::{Error, Result};
use crate::signer::{self, KeySigner};

/// The test VID of the development PKI (Matter Core §2.5.2: FFF1–FFF4 are test vendors).
pub const DEV_VID: &str = "FFF1";

/// Validity of the development TLS certificates: 825 days, the longest TLS server lifetime
/// Apple clients accept (and well inside UTCTime).
const TLS_VALIDITY_SECS: i64 = 825 * 86_400;

/// Where `init-dev` puts each file, relative to its directory.
pub mod files {
    pub const CONFIG: &str = "matter-est.toml";
    pub const PAA_CERT: &str = "pki/paa.pem";
    pub const PAA_KEY: &str = "pki/paa.key";
    pub const PAI_CERT: &str = "pki/pai.pem";
    pub const PAI_KEY: &str = "pki/pai.key";
    pub const TLS_CA_CERT: &str = "tls/ca.pem";
    pub const TLS_CA_KEY: &str = "tls/ca.key";
    pub const SERVER_CERT: &str = "tls/server.pem";
    pub const SERVER_KEY: &str = "tls/server.key";
    pub const CLIENT_CA_CERT: &str = "clients/ca.pem";
    pub const CLIENT_CA_KEY: &str = "clients/ca.key";
    pub const GATEWAY_CERT: &str = "clients/gateway.pem";
    pub const GATEWAY_KEY: &str = "clients/gateway.key";
    /// The admin CA (`[admin] client_ca`) and one admin client certificate per role.
    pub const ADMIN_CA_CERT: &str = "clients/admin-ca.pem";
    pub const ADMIN_CA_KEY: &str = "clients/admin-ca.key";
    /// (role, certificate, key): the CN of each is `dev-ROLE`.
    pub const ADMIN_ROLES: [(&str, &str, &str); 3] = [
        ("admin", "clients/admin.pem", "clients/admin.key"),
        ("operator", "clients/operator.pem", "clients/operator.key"),
        ("auditor", "clients/auditor.pem", "clients/auditor.key"),
    ];
    /// `--hsm`: SoftHSM2's config (name it in `SOFTHSM2_CONF`), its token directory, the PINs.
    pub const SOFTHSM_CONF: &str = "softhsm/softhsm2.conf";
    pub const SOFTHSM_TOKENS: &str = "softhsm/tokens";
    pub const USER_PIN: &str = "softhsm/user.pin";
    pub const SO_PIN: &str = "softhsm/so.pin";
    /// `--hsm`: the PAI's public key (the private key never leaves the token).
    pub const PAI_PUBLIC: &str = "pki/pai-public.pem";
}

/// `--hsm`: the label of the SoftHSM2 token and of the PAI key in it.
pub const DEV_TOKEN: &str = "matter-est-dev";
pub const DEV_KEY_LABEL: &str = "dev-pai";

/// Length of the random development PINs, in hex digits (SoftHSM2 accepts 4 to 255 bytes).
const DEV_PIN_HEX: usize = 16;

/// The PAI key of `init-dev --hsm`: where the module is, and how to generate the key in a token
/// given the `softhsm2.conf` made for it (SoftHSM2 reads its config from `SOFTHSM2_CONF` only,
/// at `C_Initialize`, so the caller runs the generation in a process with that variable set).
pub struct HsmKeygen<'a> {
    pub module: &'a Path,
    pub keygen: &'a mut dyn FnMut(&HsmFiles) -> Result<[u8; 65]>,
}

/// What the key generation of `init-dev --hsm` is given: absolute paths under DIR.
pub struct HsmFiles {
    pub conf: PathBuf,
    pub user_pin: PathBuf,
    pub so_pin: PathBuf,
    pub public_out: PathBuf,
}

/// The CN of the development gateway's client certificate.
pub const DEV_GATEWAY_CN: &str = "gw-line-1";

/// What `init-dev` did.
#[derive(Debug)]
pub struct DevPki {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// False when everything already existed and was kept.
    pub created: bool,
}

/// Creates the development PKI and config under `dir`. Existing material is kept unless
/// `force`; a partial directory (some files missing) is refused without `force`, so a key is
/// never paired with a certificate it did not sign.
pub fn init(dir: &Path, force: bool) -> Result<DevPki> {
    init_with(dir, force, None)
}

/// As [`init`], the PAI key generated inside a new SoftHSM2 token under `dir` when `hsm` is
/// given: no file under `dir` holds the PAI private key, and the config signs through PKCS#11.
pub fn init_with(dir: &Path, force: bool, hsm: Option<HsmKeygen<'_>>) -> Result<DevPki> {
    let config = dir.join(files::CONFIG);
    let mut all = vec![
        files::CONFIG,
        files::PAA_CERT,
        files::PAA_KEY,
        files::PAI_CERT,
        files::PAI_KEY,
        files::TLS_CA_CERT,
        files::TLS_CA_KEY,
        files::SERVER_CERT,
        files::SERVER_KEY,
        files::CLIENT_CA_CERT,
        files::CLIENT_CA_KEY,
        files::GATEWAY_CERT,
        files::GATEWAY_KEY,
    ];
    if hsm.is_some() {
        all.retain(|f| *f != files::PAI_KEY);
        all.extend([
            files::SOFTHSM_CONF,
            files::USER_PIN,
            files::SO_PIN,
            files::PAI_PUBLIC,
        ]);
    }
    let present = all.iter().filter(|f| dir.join(f).exists()).count();
    if !force && present == all.len() {
        return Ok(DevPki {
            dir: dir.to_path_buf(),
            config,
            created: false,
        });
    }
    if !force && present > 0 {
        return Err(Error::io(
            dir,
            format!(
                "holds {present} of the {} development PKI files; pass --force to replace them all",
                all.len()
            ),
        ));
    }
    let mut subdirs = vec!["", "pki", "tls", "clients"];
    if hsm.is_some() {
        // A forced re-creation starts from an empty token directory.
        let tokens = dir.join(files::SOFTHSM_TOKENS);
        if tokens.exists() {
            fs::remove_dir_all(&tokens).map_err(|e| Error::io(&tokens, e))?;
        }
        subdirs.extend(["softhsm", files::SOFTHSM_TOKENS]);
    }
    for sub in subdirs {
        let d = dir.join(sub);
        fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(&d, e))?;
    }
    let dir_abs = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    // The PAI key: a file, or generated in the token (then only its public key is known here).
    let (pai_point, pai_pkcs8, config_text) = match hsm {
        None => {
            let (pkcs8, point) = signer::generate_p256()?;
            (point, Some(pkcs8), DEV_CONFIG.to_string())
        }
        Some(hsm) => {
            let hsm_files = HsmFiles {
                conf: dir_abs.join(files::SOFTHSM_CONF),
                user_pin: dir_abs.join(files::USER_PIN),
                so_pin: dir_abs.join(files::SO_PIN),
                public_out: dir_abs.join(files::PAI_PUBLIC),
            };
            write_file(
                dir,
                files::SOFTHSM_CONF,
                format!(
                    "# SoftHSM2 token of the development PKI (matter-est init-dev --hsm).\n\
                     directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                    dir_abs.join(files::SOFTHSM_TOKENS).display()
                )
                .as_bytes(),
                0o600,
            )?;
            write_file(dir, files::USER_PIN, random_pin()?.as_bytes(), 0o600)?;
            write_file(dir, files::SO_PIN, random_pin()?.as_bytes(), 0o600)?;
            let point = (hsm.keygen)(&hsm_files)?;
            let keys = format!(
                "# The PAI key is in the SoftHSM2 token under softhsm/ (no file holds it); run with\n\
                 # SOFTHSM2_CONF={} set.\nmodule = \"{}\"\ntoken_label = \"{DEV_TOKEN}\"\n\
                 key_label = \"{DEV_KEY_LABEL}\"\npin_file = \"{}\"\n",
                hsm_files.conf.display(),
                hsm.module.display(),
                files::USER_PIN,
            );
            let text = DEV_CONFIG
                .replace("file = \"pki/pai.key\"\n", &keys)
                .replace(
                    "keys in plain files.",
                    "the PAI key in a SoftHSM2 token, the others in plain files.",
                );
            (point, None, text)
        }
    };
    let now = asn1::now();
    let not_before = now - super::BACKDATE_SECS;

    // PAA: self-signed, VID-scoped, cA TRUE pathLen 1 (MATTER.md "PAA").
    let paa_subject = name(&[
        (oid::COMMON_NAME, "Matter Dev PAA FFF1"),
        (oid::MATTER_VID, DEV_VID),
    ]);
    let paa = Ca::new(paa_subject)?;
    let paa_cert = paa.issue(
        &paa.subject,
        &paa.point,
        not_before,
        asn1::NO_EXPIRY,
        vec![
            cert::basic_constraints_ext(Some(Some(1))),
            cert::key_usage_ext(key_usage::CERT_SIGN),
        ],
    )?;

    // PAI: VID FFF1 without PID, cA TRUE pathLen 0 (MATTER.md "PAI").
    let pai_subject = name(&[
        (oid::COMMON_NAME, "Matter Dev PAI FFF1 no PID"),
        (oid::MATTER_VID, DEV_VID),
    ]);
    let pai_cert = paa.issue(
        &pai_subject,
        &pai_point,
        not_before,
        asn1::NO_EXPIRY,
        vec![
            cert::basic_constraints_ext(Some(Some(0))),
            cert::key_usage_ext(key_usage::CERT_SIGN),
        ],
    )?;

    // TLS CA and the server certificate for localhost, 127.0.0.1 and ::1.
    let tls_ca = Ca::new(name(&[(oid::COMMON_NAME, "matter-est dev TLS CA")]))?;
    let tls_ca_cert = tls_ca.self_signed_tls_ca(not_before, now + 10 * 365 * 86_400)?;
    let (server_pkcs8, server_point) = signer::generate_p256()?;
    let server_cert = tls_ca.issue(
        &name(&[(oid::COMMON_NAME, "localhost")]),
        &server_point,
        not_before,
        now + TLS_VALIDITY_SECS,
        vec![
            cert::basic_constraints_ext(None),
            cert::key_usage_ext(key_usage::DIGITAL_SIGNATURE),
            eku(oid::KP_SERVER_AUTH),
            localhost_san(),
        ],
    )?;

    // Gateway client CA and one gateway certificate.
    let client_ca = Ca::new(name(&[(oid::COMMON_NAME, "matter-est dev gateway CA")]))?;
    let client_ca_cert = client_ca.self_signed_tls_ca(not_before, now + 10 * 365 * 86_400)?;
    let (gw_pkcs8, gw_point) = signer::generate_p256()?;
    let gw_cert = client_ca.issue(
        &name(&[(oid::COMMON_NAME, DEV_GATEWAY_CN)]),
        &gw_point,
        not_before,
        now + TLS_VALIDITY_SECS,
        vec![
            cert::basic_constraints_ext(None),
            cert::key_usage_ext(key_usage::DIGITAL_SIGNATURE),
            eku(oid::KP_CLIENT_AUTH),
        ],
    )?;

    write_pem(dir, files::PAA_CERT, "CERTIFICATE", &[&paa_cert])?;
    write_key(dir, files::PAA_KEY, &paa.pkcs8)?;
    write_pem(dir, files::PAI_CERT, "CERTIFICATE", &[&pai_cert])?;
    if let Some(pkcs8) = &pai_pkcs8 {
        write_key(dir, files::PAI_KEY, pkcs8)?;
    }
    write_pem(dir, files::TLS_CA_CERT, "CERTIFICATE", &[&tls_ca_cert])?;
    write_key(dir, files::TLS_CA_KEY, &tls_ca.pkcs8)?;
    write_pem(dir, files::SERVER_CERT, "CERTIFICATE", &[&server_cert])?;
    write_key(dir, files::SERVER_KEY, &server_pkcs8)?;
    write_pem(
        dir,
        files::CLIENT_CA_CERT,
        "CERTIFICATE",
        &[&client_ca_cert],
    )?;
    write_key(dir, files::CLIENT_CA_KEY, &client_ca.pkcs8)?;
    write_pem(dir, files::GATEWAY_CERT, "CERTIFICATE", &[&gw_cert])?;
    write_key(dir, files::GATEWAY_KEY, &gw_pkcs8)?;

    // Admin CA (its own: a gateway certificate is never an admin's) and one certificate per
    // role, named by `cn:dev-ROLE` in [[admin.identities]].
    let admin_ca = Ca::new(name(&[(oid::COMMON_NAME, "matter-est dev admin CA")]))?;
    let admin_ca_cert = admin_ca.self_signed_tls_ca(not_before, now + 10 * 365 * 86_400)?;
    write_pem(dir, files::ADMIN_CA_CERT, "CERTIFICATE", &[&admin_ca_cert])?;
    write_key(dir, files::ADMIN_CA_KEY, &admin_ca.pkcs8)?;
    for (role, cert_file, key_file) in files::ADMIN_ROLES {
        let (pkcs8, point) = signer::generate_p256()?;
        let cert = admin_ca.issue(
            &name(&[(oid::COMMON_NAME, &format!("dev-{role}"))]),
            &point,
            not_before,
            now + TLS_VALIDITY_SECS,
            vec![
                cert::basic_constraints_ext(None),
                cert::key_usage_ext(key_usage::DIGITAL_SIGNATURE),
                eku(oid::KP_CLIENT_AUTH),
            ],
        )?;
        write_pem(dir, cert_file, "CERTIFICATE", &[&cert])?;
        write_key(dir, key_file, &pkcs8)?;
    }
    write_file(dir, files::CONFIG, config_text.as_bytes(), 0o600)?;
    Ok(DevPki {
        dir: dir.to_path_buf(),
        config,
        created: true,
    })
}

/// Issues a new development PAI for `point` (a key kept elsewhere, e.g. in a PKCS#11 token),
/// signed by the development PAA under `dir`, and writes it over `pki/pai.pem`. Same subject and
/// extensions as `init` makes (MATTER.md "PAI"). The old PAI key file, if any, is removed: it no
/// longer matches.
pub fn reissue_pai(dir: &Path, point: &[u8; 65]) -> Result<Vec<u8>> {
    let paa = Ca::load(dir, files::PAA_CERT, files::PAA_KEY)?;
    let now = asn1::now();
    let pai_subject = name(&[
        (oid::COMMON_NAME, "Matter Dev PAI FFF1 no PID"),
        (oid::MATTER_VID, DEV_VID),
    ]);
    let pai_cert = paa.issue(
        &pai_subject,
        point,
        now - super::BACKDATE_SECS,
        asn1::NO_EXPIRY,
        vec![
            cert::basic_constraints_ext(Some(Some(0))),
            cert::key_usage_ext(key_usage::CERT_SIGN),
        ],
    )?;
    write_pem(dir, files::PAI_CERT, "CERTIFICATE", &[&pai_cert])?;
    let old_key = dir.join(files::PAI_KEY);
    match fs::remove_file(&old_key) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&old_key, e)),
        _ => {}
    }
    Ok(pai_cert)
}

/// The development PAA under `dir` playing the PAA of a PAI ceremony: issues the PAI that the
/// CSR asks for (its subject and public key; cA TRUE pathLen 0, keyCertSign + cRLSign, as
/// MATTER.md "PAI"), after checking the CSR's signature and that it carries the PAA's VID.
pub fn sign_pai_csr(dir: &Path, csr_body: &[u8]) -> Result<Vec<u8>> {
    let req = crate::csr::parse(csr_body)?;
    match req.ids.vid {
        Some(v) if v.to_string() == DEV_VID => {}
        other => {
            return Err(Error::BadRequest(format!(
                "the PAI CSR's VID is {other:?}; the development PAA signs only VID {DEV_VID}"
            )));
        }
    }
    let subject = der::Encode::to_der(&req.subject).map_err(|e| Error::Internal(e.to_string()))?;
    let paa = Ca::load(dir, files::PAA_CERT, files::PAA_KEY)?;
    paa.issue(
        &subject,
        &req.public_key,
        asn1::now() - super::BACKDATE_SECS,
        asn1::NO_EXPIRY,
        vec![
            cert::basic_constraints_ext(Some(Some(0))),
            cert::key_usage_ext(key_usage::CERT_SIGN),
        ],
    )
}

/// The config `init-dev` writes (`config/dev.toml`); paths are relative to its directory.
pub const DEV_CONFIG: &str = include_str!("../../config/dev.toml");

/// A CA key pair and its subject, for the development PKI.
struct Ca {
    pkcs8: Vec<u8>,
    point: [u8; 65],
    signer: KeySigner,
    subject: Vec<u8>,
}

impl Ca {
    fn new(subject: Vec<u8>) -> Result<Self> {
        let (pkcs8, point) = signer::generate_p256()?;
        let signer = KeySigner::from_pkcs8(&pkcs8)?;
        Ok(Self {
            pkcs8,
            point,
            signer,
            subject,
        })
    }

    /// A CA written by `init`: its PEM certificate and PKCS#8 key under `dir`.
    fn load(dir: &Path, cert_rel: &str, key_rel: &str) -> Result<Self> {
        let cert =
            super::cert::Parsed::from_der(&crate::issuance::read_cert(&dir.join(cert_rel))?)?;
        let key_path = dir.join(key_rel);
        let pem = fs::read_to_string(&key_path).map_err(|e| Error::io(&key_path, e))?;
        let (_, pkcs8) = der::pem::decode_vec(pem.as_bytes())
            .map_err(|e| Error::io(&key_path, format!("bad PEM: {e}")))?;
        let signer = KeySigner::from_pkcs8(&pkcs8)?;
        Ok(Self {
            point: *signer::Signer::public_key(&signer),
            pkcs8,
            signer,
            subject: cert.subject_der,
        })
    }

    /// Issues a certificate for `subject`/`point`, adding SKID and AKID after `extensions`.
    fn issue(
        &self,
        subject: &[u8],
        point: &[u8; 65],
        not_before: i64,
        not_after: i64,
        mut extensions: Vec<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        extensions.push(cert::subject_key_id_ext(&cert::key_id(point)));
        extensions.push(cert::authority_key_id_ext(&cert::key_id(&self.point)));
        let serial = random_serial()?;
        cert::build_and_sign(
            &CertFields {
                serial: &serial,
                issuer: &self.subject,
                not_before,
                not_after,
                subject,
                public_key: point,
                extensions: &extensions,
            },
            &self.signer,
        )
    }

    fn self_signed_tls_ca(&self, not_before: i64, not_after: i64) -> Result<Vec<u8>> {
        self.issue(
            &self.subject,
            &self.point,
            not_before,
            not_after,
            vec![
                cert::basic_constraints_ext(Some(None)),
                cert::key_usage_ext(key_usage::SIGN_AND_CERT_SIGN),
            ],
        )
    }
}

/// A random PIN of [`DEV_PIN_HEX`] hex digits and a newline.
fn random_pin() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; DEV_PIN_HEX / 2];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Internal("the system random generator failed".into()))?;
    Ok(format!("{}\n", asn1::hex(&bytes)))
}

/// A Name of single-attribute RDNs with UTF8String values.
pub fn name(attrs: &[(&[u8], &str)]) -> Vec<u8> {
    let rdns: Vec<Vec<u8>> = attrs.iter().map(|(o, v)| asn1::rdn_utf8(o, v)).collect();
    let refs: Vec<&[u8]> = rdns.iter().map(Vec::as_slice).collect();
    asn1::tlv(tag::SEQUENCE, &refs)
}

fn eku(purpose: &[u8]) -> Vec<u8> {
    asn1::extension(
        oid::EXT_KEY_USAGE,
        false,
        &asn1::tlv(tag::SEQUENCE, &[&asn1::tlv(tag::OID, &[purpose])]),
    )
}

fn localhost_san() -> Vec<u8> {
    let dns = asn1::tlv(0x82, &[b"localhost"]);
    let v4 = asn1::tlv(0x87, &[&[127, 0, 0, 1]]);
    let mut v6 = [0u8; 16];
    v6[15] = 1;
    let v6 = asn1::tlv(0x87, &[&v6]);
    asn1::extension(
        oid::SUBJECT_ALT_NAME,
        false,
        &asn1::tlv(tag::SEQUENCE, &[&dns, &v4, &v6]),
    )
}

/// Writes certificates as PEM (mode 0644: certificates are public).
pub fn write_pem(dir: &Path, rel: &str, label: &str, ders: &[&[u8]]) -> Result<()> {
    let mut text = String::new();
    for der in ders {
        text.push_str(
            &der::pem::encode_string(label, der::pem::LineEnding::LF, der)
                .map_err(|e| Error::Internal(e.to_string()))?,
        );
    }
    write_file(dir, rel, text.as_bytes(), 0o644)
}

/// Writes a PKCS#8 private key as PEM, mode 0600.
pub fn write_key(dir: &Path, rel: &str, pkcs8: &[u8]) -> Result<()> {
    let pem = der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, pkcs8)
        .map_err(|e| Error::Internal(e.to_string()))?;
    write_file(dir, rel, pem.as_bytes(), 0o600)
}

/// Writes a file with `mode` set at creation (no window in which a key is world-readable).
pub fn write_file(dir: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let path = dir.join(rel);
    let _ = fs::remove_file(&path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&path, e))?;
    f.sync_all().map_err(|e| Error::io(&path, e))
}
