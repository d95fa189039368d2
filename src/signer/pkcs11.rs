//! The PKCS#11 signer: the PAI key stays in a token (an HSM; SoftHSM2 in tests) and signs there.
//!
//! DESIGN.md "Decisions already taken" (PKCS#11):
//! - The key is found the way Let's Encrypt's pkcs11key finds it: the EC public key object whose
//!   `CKA_EC_POINT` is the PAI certificate's public key, then the private key with that object's
//!   `CKA_ID`. A configuration cannot point at the wrong key: a label or id in the config only
//!   narrows the search, and a key that does not match the PAI is refused at start.
//! - Signing hashes in software (SHA-256) and calls raw `CKM_ECDSA` (SoftHSM2 has no
//!   `CKM_ECDSA_SHA256`), then DER-encodes the raw `r ‖ s` the token returns (PKCS#11 v2.40
//!   §2.3.1: the signature is the two integers concatenated, each as long as the order).
//! - A cryptoki `Session` is `Send`, not `Sync`: a pool of sessions, each used by one thread at a
//!   time, lets the issuing threads sign concurrently. The module is initialised once per
//!   process and shared by every label that names it.
//! - A token error is never a crash: signing returns [`Error::SignerUnavailable`] (503 with
//!   `Retry-After` on the wire), and a thread of the signer reconnects with exponential backoff.
//!   SoftHSM2 (and other modules) see a returned token only after `C_Finalize` +
//!   `C_Initialize`, so reconnecting re-initialises the module. A wrong PIN is never retried: real
//!   tokens lock the user PIN after a few failures.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};

use super::file::check_private_mode;
use super::{PassphraseSource, Signer};
use crate::error::{Error, Result};

/// Sessions per signer when the config does not say: the issuing threads of `serve` (two per
/// core, `issuing_threads` in main.rs) on a 4-core host. A session costs the token a few hundred
/// bytes; a signer opens them only as concurrent signings need them.
pub const DEFAULT_SESSIONS: usize = 8;

/// The most sessions a config may ask for. Beyond the issuing threads extra sessions stay idle;
/// network HSMs cap sessions per partition (Thales Luna: 1,024 per partition client), and one
/// server should not take them all.
pub const MAX_SESSIONS: usize = 256;

/// Where Debian and Ubuntu install SoftHSM2's PKCS#11 module (package `softhsm2`), for
/// `init-dev --hsm`.
pub const SOFTHSM_MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];

/// First wait before reconnecting to a failed token; it doubles after each failed attempt.
/// One second: a token that comes back (a reseated USB HSM, a restarted HSM daemon, a restored
/// SoftHSM2 directory) is noticed almost at once.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between reconnection attempts. 30 s bounds how long a returned token waits
/// to be noticed; an attempt (one `C_Finalize` + `C_Initialize` and a test signature) every 30 s
/// costs a token nothing. Also the `Retry-After` given while a wrong PIN keeps the signer down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long a signing waits for a free session when all are busy before giving up with 503:
/// 10 s, a third of the default request deadline (`server.request_timeout_secs`, 30 s), so the
/// client gets a `Retry-After` rather than a timeout.
pub const SESSION_WAIT: Duration = Duration::from_secs(10);

/// The message signed and verified at start and after every reconnection, to prove the key
/// found is usable (CKA_SIGN, login state) and is the PAI's.
const PROBE_MESSAGE: &[u8] = b"matter-est PKCS#11 probe";

/// DER of the P-256 curve OID (`prime256v1`, RFC 5480 §2.1.1.1), the `CKA_EC_PARAMS` of keys we
/// generate.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// How the label's PAI key is reached in a PKCS#11 token (`[labels.NAME.signer]` with `module`).
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library) path.
    pub module: PathBuf,
    /// Which token.
    pub token: TokenSelector,
    /// Narrows the key search to this `CKA_LABEL`.
    pub key_label: Option<String>,
    /// Narrows the key search to this `CKA_ID`.
    pub key_id: Option<Vec<u8>>,
    /// Where the user PIN comes from (never the command line, never logged).
    pub pin: PassphraseSource,
    /// Sessions in the pool (1 to [`MAX_SESSIONS`]).
    pub sessions: usize,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token", &self.token.to_string())
            .field("key", &self.key_description())
            .field("pin", &self.pin)
            .field("sessions", &self.sessions)
            .finish()
    }
}

impl Pkcs11Config {
    /// The key as the config names it, for messages.
    pub fn key_description(&self) -> String {
        match (&self.key_label, &self.key_id) {
            (Some(l), Some(id)) => format!("label {l:?} id {}", hex(id)),
            (Some(l), None) => format!("label {l:?}"),
            (None, Some(id)) => format!("id {}", hex(id)),
            (None, None) => "(any key matching the PAI)".into(),
        }
    }
}

/// Which token: by label, by serial number, or both (PKCS#11 `CK_TOKEN_INFO`, blank-padded
/// fields compared without their padding).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSelector {
    pub label: Option<String>,
    pub serial: Option<String>,
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.label, &self.serial) {
            (Some(l), Some(s)) => write!(f, "label {l:?} serial {s:?}"),
            (Some(l), None) => write!(f, "label {l:?}"),
            (None, Some(s)) => write!(f, "serial {s:?}"),
            (None, None) => write!(f, "(none selected)"),
        }
    }
}

/// What an RFC 7512 `pkcs11:` URI names. Unknown path attributes (manufacturer, model, …) are
/// refused rather than ignored, so a URI never selects less precisely than it reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub serial: Option<String>,
    pub object: Option<String>,
    pub id: Option<Vec<u8>>,
    pub module_path: Option<PathBuf>,
    pub pin_source: Option<PathBuf>,
}

/// Parses an RFC 7512 PKCS#11 URI: `pkcs11:token=…;serial=…;object=…;id=%01%02;type=private`
/// with the query attributes `module-path` and `pin-source` (a file path or `file:` URI).
/// `pin-value` is refused: a PIN in the config file would be a secret in a file that is not
/// treated as one.
pub fn parse_uri(uri: &str) -> std::result::Result<Pkcs11Uri, String> {
    let rest = uri
        .strip_prefix("pkcs11:")
        .ok_or_else(|| format!("{uri:?} does not start with \"pkcs11:\" (RFC 7512 §2.3)"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut out = Pkcs11Uri::default();
    for attr in path.split(';').filter(|a| !a.is_empty()) {
        let (name, value) = attr
            .split_once('=')
            .ok_or_else(|| format!("path attribute {attr:?} has no '='"))?;
        let value = pct_decode(value)?;
        let text =
            || String::from_utf8(value.clone()).map_err(|_| format!("{name} is not UTF-8 text"));
        match name {
            "token" => out.token = Some(text()?),
            "serial" => out.serial = Some(text()?),
            "object" => out.object = Some(text()?),
            "id" => out.id = Some(value),
            "type" if value == b"private" => {}
            "type" => {
                return Err("type must be \"private\": the signer needs the private key".into());
            }
            other => {
                return Err(format!(
                    "path attribute {other:?} is not supported; use token, serial, object, id, type"
                ));
            }
        }
    }
    for attr in query.split('&').filter(|a| !a.is_empty()) {
        let (name, value) = attr
            .split_once('=')
            .ok_or_else(|| format!("query attribute {attr:?} has no '='"))?;
        let value = String::from_utf8(pct_decode(value)?)
            .map_err(|_| format!("{name} is not UTF-8 text"))?;
        match name {
            "module-path" => out.module_path = Some(PathBuf::from(value)),
            "pin-source" => {
                let path = value.strip_prefix("file:").unwrap_or(&value);
                out.pin_source = Some(PathBuf::from(path));
            }
            "pin-value" => {
                return Err(
                    "pin-value puts the PIN in the config; use pin-source (a 0600 file), pin_file or pin_env"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "query attribute {other:?} is not supported; use module-path, pin-source"
                ));
            }
        }
    }
    Ok(out)
}

/// A P-256 key whose private half lives in a PKCS#11 token.
pub struct Pkcs11Signer {
    shared: Arc<Shared>,
}

impl Pkcs11Signer {
    /// Opens the token, logs in, finds the private key whose public key is `pai_point` and signs
    /// a test message with it. Refuses, naming module, token and key, when any step fails.
    pub fn open(config: &Pkcs11Config, pai_point: &[u8; 65]) -> Result<Self> {
        let fail = |problem: String| Error::Pkcs11 {
            module: config.module.clone(),
            token: config.token.to_string(),
            key: config.key_description(),
            problem,
        };
        if config.token.label.is_none() && config.token.serial.is_none() {
            return Err(fail(
                "no token selected: set token_label or token_serial".into(),
            ));
        }
        let pin = read_pin(&config.pin).map_err(&fail)?;
        let module = Module::get(&config.module).map_err(&fail)?;
        let shared = Arc::new(Shared {
            name: format!(
                "module {} token {} key {}",
                config.module.display(),
                config.token,
                config.key_description()
            ),
            module,
            token: config.token.clone(),
            key_label: config.key_label.clone(),
            key_id: config.key_id.clone(),
            pin,
            point: *pai_point,
            max_sessions: config.sessions.clamp(1, MAX_SESSIONS),
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
            down: Mutex::new(None),
        });
        shared.probe().map_err(|p| fail(p.to_string()))?;
        tracing::info!(signer = %shared.name, sessions = shared.max_sessions, "PKCS#11 signer ready");
        Ok(Self { shared })
    }

    /// Whether the signer can sign now (false while its token is unreachable).
    pub fn is_up(&self) -> bool {
        lock(&self.shared.down).is_none()
    }
}

impl Signer for Pkcs11Signer {
    fn public_key(&self) -> &[u8; 65] {
        &self.shared.point
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.shared.refuse_while_down()?;
        let digest = Sha256::digest(message);
        match self.shared.sign_digest(&digest) {
            Ok(raw) => der_signature(&raw),
            Err(Problem::Busy) => Err(Error::SignerUnavailable {
                signer: self.shared.name.clone(),
                reason: format!(
                    "all {} sessions stayed busy for {} s",
                    self.shared.max_sessions,
                    SESSION_WAIT.as_secs()
                ),
                retry_after_secs: 1,
            }),
            Err(problem) => Err(self.shared.went_down(problem)),
        }
    }
}

/// Generates a P-256 key pair inside the token: the private key sensitive, non-extractable and
/// sign-only, both halves with `label` and `id`. Returns the public point (SEC1 uncompressed).
pub fn generate_key(
    module: &Path,
    token: &TokenSelector,
    pin: &PassphraseSource,
    label: &str,
    id: &[u8],
) -> Result<[u8; 65]> {
    let fail = |problem: String| Error::Pkcs11 {
        module: module.to_path_buf(),
        token: token.to_string(),
        key: format!("label {label:?} id {}", hex(id)),
        problem,
    };
    let pin = read_pin(pin).map_err(&fail)?;
    let m = Module::get(module).map_err(&fail)?;
    let _generation = m.generation.read().unwrap_or_else(|e| e.into_inner());
    let slot = find_token(&m.ctx, token).map_err(|p| fail(p.to_string()))?;
    let session = m.ctx.open_rw_session(slot).map_err(|e| fail(ck(&e)))?;
    login(&session, &pin).map_err(|p| fail(p.to_string()))?;
    // Two keys under one label or id would make the key search ambiguous later.
    for (what, attribute) in [
        ("label", Attribute::Label(label.as_bytes().to_vec())),
        ("id", Attribute::Id(id.to_vec())),
    ] {
        if !session
            .find_objects(&[attribute])
            .map_err(|e| fail(ck(&e)))?
            .is_empty()
        {
            return Err(fail(format!(
                "the token already holds an object with this {what}; choose another key label and id"
            )));
        }
    }
    let common = [
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let mut public = common.to_vec();
    public.extend([
        Attribute::EcParams(P256_PARAMS.to_vec()),
        Attribute::Verify(true),
    ]);
    let mut private = common.to_vec();
    private.extend([
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
    ]);
    let (public, _) = session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .map_err(|e| fail(ck(&e)))?;
    let point = ec_point(&session, public).map_err(|p| fail(p.to_string()))?;
    point_from_attribute(&point).ok_or_else(|| fail("the token returned no P-256 point".into()))
}

/// The public key of the one EC key pair the config names by `key_label` and/or `key_id` (the
/// PAI ceremony: before a PAI certificate exists, the key is known by its name only).
pub fn public_key_of(config: &Pkcs11Config) -> Result<[u8; 65]> {
    let fail = |problem: String| Error::Pkcs11 {
        module: config.module.clone(),
        token: config.token.to_string(),
        key: config.key_description(),
        problem,
    };
    if config.key_label.is_none() && config.key_id.is_none() {
        return Err(fail("name the key with a key label or id".into()));
    }
    let pin = read_pin(&config.pin).map_err(&fail)?;
    let m = Module::get(&config.module).map_err(&fail)?;
    let _generation = m.generation.read().unwrap_or_else(|e| e.into_inner());
    let slot = find_token(&m.ctx, &config.token).map_err(|p| fail(p.to_string()))?;
    let session = m.ctx.open_ro_session(slot).map_err(|e| fail(ck(&e)))?;
    login(&session, &pin).map_err(|p| fail(p.to_string()))?;
    let mut template = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
    ];
    if let Some(label) = &config.key_label {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &config.key_id {
        template.push(Attribute::Id(id.clone()));
    }
    match session
        .find_objects(&template)
        .map_err(|e| fail(ck(&e)))?
        .as_slice()
    {
        [public] => {
            let value = ec_point(&session, *public).map_err(|p| fail(p.to_string()))?;
            point_from_attribute(&value)
                .ok_or_else(|| fail("the key is not an uncompressed P-256 point".into()))
        }
        [] => Err(fail("the token holds no EC public key by that name".into())),
        several => Err(fail(format!(
            "{} EC public keys go by that name; give both key label and id",
            several.len()
        ))),
    }
}

/// Initialises a free token slot as a new token labelled `label` and sets its user PIN (what
/// `softhsm2-util --init-token --free` does, without PINs on a command line). For development
/// tokens (SoftHSM2 keeps one free slot); a real HSM's tokens are set up by its own tools.
pub fn init_token(
    module: &Path,
    label: &str,
    so_pin: &PassphraseSource,
    user_pin: &PassphraseSource,
) -> Result<()> {
    let fail = |problem: String| Error::Pkcs11 {
        module: module.to_path_buf(),
        token: format!("label {label:?} (new)"),
        key: "(none yet)".into(),
        problem,
    };
    let so_pin = read_pin(so_pin).map_err(&fail)?;
    let user_pin = read_pin(user_pin).map_err(&fail)?;
    let m = Module::get(module).map_err(&fail)?;
    let _generation = m.generation.read().unwrap_or_else(|e| e.into_inner());
    let mut free = None;
    for slot in m.ctx.get_all_slots().map_err(|e| fail(ck(&e)))? {
        match m.ctx.get_token_info(slot) {
            Ok(info) if !info.token_initialized() => {
                free = Some(slot);
                break;
            }
            _ => {}
        }
    }
    let slot =
        free.ok_or_else(|| fail("the module has no free (uninitialised) token slot".into()))?;
    m.ctx
        .init_token(slot, &so_pin, label)
        .map_err(|e| fail(ck(&e)))?;
    let session = m.ctx.open_rw_session(slot).map_err(|e| fail(ck(&e)))?;
    session
        .login(UserType::So, Some(&so_pin))
        .map_err(|e| fail(ck(&e)))?;
    session.init_pin(&user_pin).map_err(|e| fail(ck(&e)))?;
    session.logout().map_err(|e| fail(ck(&e)))?;
    Ok(())
}

// ---- the module, shared by every signer that names it ----

/// One loaded and initialised PKCS#11 module. PKCS#11 allows one `C_Initialize` per process
/// (v2.40 §5.4), so every label naming the same path shares it.
struct Module {
    ctx: Pkcs11,
    /// How many times the module was (re)initialised. Sessions and handles from an older
    /// generation are void. Signing holds it shared; re-initialising holds it exclusively, so no
    /// signing is in flight across `C_Finalize`.
    generation: RwLock<u64>,
}

impl Module {
    fn get(path: &Path) -> std::result::Result<Arc<Module>, String> {
        static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
        let mut modules = lock(MODULES.get_or_init(Default::default));
        if let Some(m) = modules.get(path) {
            return Ok(m.clone());
        }
        if path.components().count() > 1 && !path.exists() {
            return Err("the module file does not exist (install the HSM vendor's PKCS#11 library, or softhsm2, and give its path)".into());
        }
        let ctx = Pkcs11::new(path).map_err(|e| format!("cannot load the module: {e}"))?;
        initialize(&ctx).map_err(|e| format!("C_Initialize failed: {}", ck(&e)))?;
        let m = Arc::new(Module {
            ctx,
            generation: RwLock::new(0),
        });
        modules.insert(path.to_path_buf(), m.clone());
        Ok(m)
    }

    /// `C_Finalize` + `C_Initialize`, unless another signer already did it since `seen`.
    fn reinitialize(&self, seen: u64) -> std::result::Result<(), String> {
        let mut generation = self.generation.write().unwrap_or_else(|e| e.into_inner());
        if *generation != seen {
            return Ok(());
        }
        // Fails with CKR_CRYPTOKI_NOT_INITIALIZED when an earlier C_Initialize failed: fine.
        let _ = self.ctx.clone().finalize();
        *generation += 1;
        initialize(&self.ctx).map_err(|e| format!("C_Initialize failed: {}", ck(&e)))
    }
}

fn initialize(ctx: &Pkcs11) -> std::result::Result<(), CkError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

// ---- one signer's state ----

struct Shared {
    /// "module M token T key K", for logs and messages.
    name: String,
    module: Arc<Module>,
    token: TokenSelector,
    key_label: Option<String>,
    key_id: Option<Vec<u8>>,
    pin: AuthPin,
    point: [u8; 65],
    max_sessions: usize,
    pool: Mutex<Pool>,
    /// Signalled when a session goes back to the pool or is discarded.
    returned: Condvar,
    /// `Some` while the token is unreachable.
    down: Mutex<Option<Down>>,
}

#[derive(Default)]
struct Pool {
    /// The module generation these sessions belong to.
    generation: u64,
    /// The token's slot and the private key, found once per generation.
    found: Option<(Slot, ObjectHandle)>,
    idle: Vec<Session>,
    /// Sessions open (idle or in use).
    open: usize,
}

struct Down {
    reason: String,
    since: Instant,
    next_attempt: Instant,
    backoff: Duration,
    /// A PIN problem: not retried until the operator fixes it and restarts.
    gave_up: bool,
}

/// Why a token operation failed.
#[derive(Debug)]
enum Problem {
    /// The token or module failed (removed, not initialised, device error, …): retry later.
    Token(String),
    /// The token answered, but not with what we need (no such token, no matching key, …):
    /// retry later, the operator may be fixing it.
    Setup(String),
    /// The PIN was refused: never retried automatically.
    Pin(String),
    /// Every session stayed busy.
    Busy,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Token(p) | Problem::Setup(p) | Problem::Pin(p) => f.write_str(p),
            Problem::Busy => f.write_str("every session stayed busy"),
        }
    }
}

impl From<CkError> for Problem {
    fn from(e: CkError) -> Self {
        match &e {
            CkError::Pkcs11(
                RvError::PinIncorrect
                | RvError::PinLocked
                | RvError::PinExpired
                | RvError::PinInvalid
                | RvError::PinLenRange,
                _,
            ) => Problem::Pin(ck(&e)),
            _ => Problem::Token(ck(&e)),
        }
    }
}

impl Shared {
    /// Signs `digest` with raw CKM_ECDSA on a pooled session: the raw `r ‖ s`.
    fn sign_digest(&self, digest: &[u8]) -> std::result::Result<Vec<u8>, Problem> {
        let generation = self
            .module
            .generation
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let (session, key) = self.checkout(*generation)?;
        match session.sign(&Mechanism::Ecdsa, key, digest) {
            Ok(sig) => {
                self.checkin(session);
                Ok(sig)
            }
            Err(e) => {
                self.discard(session);
                Err(e.into())
            }
        }
    }

    fn checkout(&self, generation: u64) -> std::result::Result<(Session, ObjectHandle), Problem> {
        let mut pool = lock(&self.pool);
        if pool.generation != generation {
            // The module was re-initialised: C_Finalize closed these sessions. Forget them
            // rather than drop them: a C_CloseSession with a stale handle could close a new
            // session that reused the number.
            for stale in pool.idle.drain(..) {
                std::mem::forget(stale);
            }
            pool.open = 0;
            pool.found = None;
            pool.generation = generation;
        }
        let deadline = Instant::now() + SESSION_WAIT;
        loop {
            if let (Some(session), Some((_, key))) = (pool.idle.pop(), pool.found) {
                return Ok((session, key));
            }
            if pool.open < self.max_sessions {
                pool.open += 1;
                let found = pool.found;
                drop(pool);
                let opened = self.open_session(found);
                let mut pool = lock(&self.pool);
                return match opened {
                    Ok((session, slot, key)) => {
                        pool.found = Some((slot, key));
                        Ok((session, key))
                    }
                    Err(p) => {
                        pool.open -= 1;
                        self.returned.notify_one();
                        Err(p)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Problem::Busy);
            }
            pool = self
                .returned
                .wait_timeout(pool, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn checkin(&self, session: Session) {
        lock(&self.pool).idle.push(session);
        self.returned.notify_one();
    }

    fn discard(&self, session: Session) {
        drop(session);
        let mut pool = lock(&self.pool);
        pool.open = pool.open.saturating_sub(1);
        drop(pool);
        self.returned.notify_one();
    }

    /// A new logged-in session, and (first time in a generation) the token's slot and key.
    fn open_session(
        &self,
        found: Option<(Slot, ObjectHandle)>,
    ) -> std::result::Result<(Session, Slot, ObjectHandle), Problem> {
        let ctx = &self.module.ctx;
        let slot = match found {
            Some((slot, _)) => slot,
            None => find_token(ctx, &self.token)?,
        };
        let session = ctx.open_ro_session(slot)?;
        login(&session, &self.pin)?;
        let key = match found {
            Some((_, key)) => key,
            None => self.find_key(&session)?,
        };
        Ok((session, slot, key))
    }

    /// pkcs11key's search: the EC public key object whose CKA_EC_POINT is the PAI's key (narrowed
    /// by the configured label or id), then the private key with its CKA_ID.
    fn find_key(&self, session: &Session) -> std::result::Result<ObjectHandle, Problem> {
        let mut template = vec![
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
        ];
        if let Some(label) = &self.key_label {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &self.key_id {
            template.push(Attribute::Id(id.clone()));
        }
        let publics = session.find_objects(&template)?;
        let mut matching = None;
        for public in &publics {
            let point = ec_point(session, *public)?;
            if point_from_attribute(&point).as_ref() == Some(&self.point) {
                matching = Some(*public);
                break;
            }
        }
        let narrowed = if self.key_label.is_some() || self.key_id.is_some() {
            " with that label/id"
        } else {
            ""
        };
        let Some(public) = matching else {
            return Err(Problem::Setup(if publics.is_empty() {
                format!(
                    "the token holds no EC public key object{narrowed} (the key is found by its \
                     public half, so import or generate the public key object too)"
                )
            } else {
                format!(
                    "none of the token's {} EC public key(s){narrowed} is the PAI certificate's \
                     public key {}…: the key does not match the PAI",
                    publics.len(),
                    hex(&self.point[1..9])
                )
            }));
        };
        let id = match session.get_attributes(public, &[AttributeType::Id])?.pop() {
            Some(Attribute::Id(id)) => id,
            _ => Vec::new(),
        };
        let mut template = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Id(id.clone()),
        ];
        if let Some(label) = &self.key_label {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        match session.find_objects(&template)?.as_slice() {
            [key] => Ok(*key),
            [] => Err(Problem::Setup(format!(
                "the public key matching the PAI has CKA_ID {}, but no private EC key with that \
                 CKA_ID is visible after login",
                hex(&id)
            ))),
            keys => Err(Problem::Setup(format!(
                "{} private keys share CKA_ID {}; set key_label to choose one",
                keys.len(),
                hex(&id)
            ))),
        }
    }

    /// Signs a test message and verifies it under the PAI's key.
    fn probe(&self) -> std::result::Result<(), Problem> {
        let raw = self.sign_digest(&Sha256::digest(PROBE_MESSAGE))?;
        let der = der_signature(&raw).map_err(|e| Problem::Setup(e.to_string()))?;
        if super::verify(&self.point, PROBE_MESSAGE, &der) {
            Ok(())
        } else {
            Err(Problem::Setup(
                "the token's test signature does not verify under the PAI's public key".into(),
            ))
        }
    }

    /// While down: the 503 to answer, without touching the token.
    fn refuse_while_down(&self) -> Result<()> {
        match lock(&self.down).as_ref() {
            None => Ok(()),
            Some(down) => Err(self.unavailable(down)),
        }
    }

    fn unavailable(&self, down: &Down) -> Error {
        let wait = if down.gave_up {
            MAX_BACKOFF
        } else {
            down.next_attempt.saturating_duration_since(Instant::now())
        };
        Error::SignerUnavailable {
            signer: self.name.clone(),
            reason: down.reason.clone(),
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    /// Marks the signer down (once) and starts its reconnection thread.
    fn went_down(self: &Arc<Self>, problem: Problem) -> Error {
        let mut down = lock(&self.down);
        if let Some(d) = down.as_ref() {
            return self.unavailable(d);
        }
        let now = Instant::now();
        let gave_up = matches!(problem, Problem::Pin(_));
        let d = Down {
            reason: problem.to_string(),
            since: now,
            next_attempt: now + INITIAL_BACKOFF,
            backoff: INITIAL_BACKOFF,
            gave_up,
        };
        tracing::error!(
            signer = %self.name,
            error = %d.reason,
            "PAI signer is down: enrollments get 503 with Retry-After until it reconnects"
        );
        let err = self.unavailable(&d);
        *down = Some(d);
        drop(down);
        if !gave_up {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("pkcs11-reconnect".into())
                .spawn(move || Shared::reconnect(weak));
            if let Err(e) = spawned {
                tracing::error!(signer = %self.name, error = %e, "cannot start the reconnection thread");
            }
        }
        err
    }

    /// Re-initialises the module and probes the key, with exponential backoff, until the token
    /// answers again or refuses the PIN.
    /// Holds the signer weakly: a signer dropped while down stops its thread.
    fn reconnect(weak: Weak<Self>) {
        loop {
            let wait = {
                let Some(me) = weak.upgrade() else { return };
                match lock(&me.down).as_ref() {
                    Some(d) => d.next_attempt.saturating_duration_since(Instant::now()),
                    None => return,
                }
            };
            std::thread::sleep(wait);
            let Some(me) = weak.upgrade() else { return };
            if !me.attempt_reconnect() {
                return;
            }
        }
    }

    /// One reconnection attempt; false when there is nothing more to try (back up, or the PIN
    /// was refused).
    fn attempt_reconnect(&self) -> bool {
        {
            let seen = *self
                .module
                .generation
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let outcome = self
                .module
                .reinitialize(seen)
                .map_err(Problem::Token)
                .and_then(|()| self.probe());
            let mut down = lock(&self.down);
            let Some(d) = down.as_mut() else {
                return false;
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(
                        signer = %self.name,
                        down_ms = d.since.elapsed().as_millis() as u64,
                        "PAI signer reconnected"
                    );
                    *down = None;
                    false
                }
                Err(Problem::Pin(p)) => {
                    tracing::error!(
                        signer = %self.name,
                        error = %p,
                        "the token refused the PIN: not retrying (a PIN retried in a loop locks a \
                         real token); fix the PIN and restart matter-est"
                    );
                    d.reason = p;
                    d.gave_up = true;
                    false
                }
                Err(p) => {
                    d.backoff = (d.backoff * 2).min(MAX_BACKOFF);
                    d.next_attempt = Instant::now() + d.backoff;
                    d.reason = p.to_string();
                    tracing::warn!(
                        signer = %self.name,
                        error = %p,
                        retry_in_secs = d.backoff.as_secs(),
                        "PAI signer still down"
                    );
                    true
                }
            }
        }
    }
}

// ---- helpers ----

fn find_token(ctx: &Pkcs11, want: &TokenSelector) -> std::result::Result<Slot, Problem> {
    let mut seen = Vec::new();
    for slot in ctx.get_slots_with_token()? {
        let info = ctx.get_token_info(slot)?;
        let label = info.label().trim_end();
        let serial = info.serial_number().trim_end();
        if want.label.as_deref().is_none_or(|l| l == label)
            && want.serial.as_deref().is_none_or(|s| s == serial)
        {
            return Ok(slot);
        }
        if info.token_initialized() {
            seen.push(format!("{label:?} (serial {serial:?})"));
        }
    }
    Err(Problem::Setup(format!(
        "no token with {want}; tokens present: {}",
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    )))
}

/// `CKR_USER_ALREADY_LOGGED_IN` is success: login state is per token, shared by all sessions.
fn login(session: &Session, pin: &AuthPin) -> std::result::Result<(), Problem> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn ec_point(session: &Session, object: ObjectHandle) -> std::result::Result<Vec<u8>, Problem> {
    match session
        .get_attributes(object, &[AttributeType::EcPoint])?
        .pop()
    {
        Some(Attribute::EcPoint(p)) => Ok(p),
        _ => Ok(Vec::new()),
    }
}

/// CKA_EC_POINT is a DER OCTET STRING holding the SEC1 point (PKCS#11 v2.40 §2.3.3); some
/// modules store the bare point. Either way, the 65-byte uncompressed point.
fn point_from_attribute(value: &[u8]) -> Option<[u8; 65]> {
    let bare = match value {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        other => other,
    };
    let point: [u8; 65] = bare.try_into().ok()?;
    (point[0] == 0x04).then_some(point)
}

/// Raw `r ‖ s` (64 bytes for P-256) → DER `Ecdsa-Sig-Value` (RFC 5480 §2.2.3 … RFC 3279 §2.2.3).
fn der_signature(raw: &[u8]) -> Result<Vec<u8>> {
    let sig = p256::ecdsa::Signature::from_slice(raw).map_err(|_| {
        Error::Signer(format!(
            "the token returned a {}-byte ECDSA signature; P-256 gives 64 (r ‖ s)",
            raw.len()
        ))
    })?;
    Ok(sig.to_der().as_bytes().to_vec())
}

fn read_pin(source: &PassphraseSource) -> std::result::Result<AuthPin, String> {
    let pin = match source {
        PassphraseSource::Env(var) => std::env::var(var)
            .map_err(|_| format!("the PIN environment variable {var} is not set"))?,
        PassphraseSource::File(path) => {
            check_private_mode(path).map_err(|e| e.to_string())?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("PIN file {}: {e}", path.display()))?;
            text.lines().next().unwrap_or_default().to_string()
        }
    };
    if pin.is_empty() {
        return Err("the user PIN is empty".into());
    }
    Ok(AuthPin::from(pin))
}

/// A cryptoki error in a line, in the specification's names: `C_Login failed:
/// CKR_PIN_INCORRECT`.
fn ck(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => {
            format!("C_{} failed: CKR_{}", function_name(*function), rv_name(rv))
        }
        other => other.to_string(),
    }
}

fn function_name(f: Function) -> String {
    format!("{f:?}")
}

/// cryptoki's `PinIncorrect` → PKCS#11's `PIN_INCORRECT`.
fn rv_name(rv: &RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn pct_decode(text: &str) -> std::result::Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use p256::pkcs8::DecodePrivateKey;

    use super::*;

    #[test]
    fn uri_names_token_key_module_and_pin_file() {
        let u = parse_uri(
            "pkcs11:token=matter%20pai;object=pai-2026;id=%01%ab;type=private\
             ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
        )
        .expect("valid");
        assert_eq!(u.token.as_deref(), Some("matter pai"));
        assert_eq!(u.object.as_deref(), Some("pai-2026"));
        assert_eq!(u.id, Some(vec![0x01, 0xab]));
        assert_eq!(
            u.module_path,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(u.pin_source, Some(PathBuf::from("/run/pin")));
    }

    #[test]
    fn uri_refusals_say_why() {
        for (uri, says) in [
            ("token=x", "pkcs11:"),
            ("pkcs11:token=x?pin-value=1234", "pin-source"),
            ("pkcs11:type=public", "private"),
            ("pkcs11:model=x", "not supported"),
            ("pkcs11:id=%zz", "percent"),
        ] {
            let e = parse_uri(uri).expect_err(uri);
            assert!(e.contains(says), "{uri}: {e}");
        }
    }

    #[test]
    fn errors_use_the_specification_names() {
        let e = CkError::Pkcs11(RvError::PinIncorrect, Function::Login);
        assert_eq!(ck(&e), "C_Login failed: CKR_PIN_INCORRECT");
        let e = CkError::Pkcs11(RvError::ObjectHandleInvalid, Function::SignInit);
        assert_eq!(ck(&e), "C_SignInit failed: CKR_OBJECT_HANDLE_INVALID");
    }

    #[test]
    fn ec_point_attribute_in_both_forms() {
        let mut point = [7u8; 65];
        point[0] = 4;
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&point);
        assert_eq!(point_from_attribute(&wrapped), Some(point));
        assert_eq!(point_from_attribute(&point), Some(point));
        assert_eq!(point_from_attribute(&point[..64]), None);
    }

    #[test]
    fn raw_signature_becomes_der() {
        let (pkcs8, point) = super::super::generate_p256().expect("keygen");
        let key = p256::SecretKey::from_pkcs8_der(&pkcs8).expect("key");
        let signing = p256::ecdsa::SigningKey::from(key);
        let sig: p256::ecdsa::Signature =
            p256::ecdsa::signature::Signer::sign(&signing, b"message");
        let der = der_signature(&sig.to_bytes()).expect("der");
        assert!(super::super::verify(&point, b"message", &der));
        assert!(der_signature(&[0u8; 63]).is_err());
    }
}
