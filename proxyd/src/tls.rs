//! TLS for the client-facing listener: the server's identity and, with client
//! CAs, mutual TLS whose verified client certificate names the role.
//!
//! Every file is read and checked here at start-up, and every failure names
//! the file and what is wrong, so a bad certificate, key, CA or CRL stops
//! `proxyd` before it listens. This module must never panic on malformed
//! input, never fall back to something weaker than what was configured (no
//! client authentication when CAs were given, no revocation check when CRLs
//! were given), and never read a role from a certificate the handshake did not
//! verify.
//!
//! Decisions:
//! * Revocation is checked for every certificate of the client's chain except
//!   the trust anchor. A CRL past its `nextUpdate` is refused: at start-up (an
//!   error) and at handshake time (the client is refused; CRLs are read once,
//!   so a CRL that expires while `proxyd` runs must be replaced and `proxyd`
//!   restarted). Smokescreen ignores `nextUpdate`.
//! * Revocation is checked per CA: a certificate whose issuer has a CRL is
//!   checked against it, and one whose issuer has none (unknown status) is
//!   accepted, as with no CRLs at all; start-up logs a warning naming each
//!   client CA without a CRL. (Refusing unknown status would lock out every
//!   client of a CA whose CRL the operator cannot obtain, with no way out.)
//!   Every CRL must be issued and signed by a configured client CA, with the
//!   cRLSign key usage if the CA has key usages: a CRL that applies to nothing
//!   is a mistake, and a start-up error (Smokescreen warns and ignores it).
//! * The role is read from the end-entity certificate by the `--role-from`
//!   rule ([`RoleFrom`], in `role`): the subject CN by default. Several CNs
//!   that differ are ambiguous (Go's `pkix.Name`, hence Smokescreen, takes the
//!   last; other readers the first): a missing role. A value that is empty,
//!   not a decodable string (UTF8String, PrintableString, IA5String,
//!   NumericString, or BMPString as UTF-16), or contains a control character is
//!   a *missing* role, never the role `""`.
//! * Without client CAs, client certificates are not requested at all.
//! * With client CAs, TLS session resumption is on, through stateless
//!   session tickets only (TLS 1.3, and TLS 1.2 clients that ask for them; no
//!   server-side session cache). A ticket is sealed with a key that exists
//!   only in this process's memory and belongs to one [`ServerTls`]: a restart
//!   or a rebuilt configuration makes every earlier ticket useless (a full
//!   handshake follows). A ticket is accepted for at most
//!   [`SESSION_TICKET_LIFETIME`] after it was issued, and the ticket keys
//!   themselves rotate every 6 hours (rustls's ring `Ticketer`).
//! * A resumed session carries the certificate chain its full handshake
//!   verified (inside the sealed ticket), and the role is read from that
//!   chain. Before that, [`ServerTls::client_identity`] verifies the chain
//!   again with the same verifier, at the current time: CA, validity period,
//!   revocation and CRL expiry, exactly what a full handshake would check
//!   now. Resumption only skips the handshake's signatures (the server's
//!   CertificateVerify and the client's), never a check. A chain that fails
//!   is refused: the connection is closed before a byte of HTTP is read.
//! * Re-verification is remembered per chain (by SHA-256 of its
//!   certificates, at most [`VERIFIED_CHAINS_MAX`] chains): a chain verified at
//!   time `t` is taken as verified again at `now` only while
//!   `t <= now < min(notAfter of every certificate in the chain, nextUpdate of
//!   every CRL)`. That is the same verdict the verifier would give: its
//!   inputs (trust anchors and CRLs) are fixed for the life of a
//!   [`ServerTls`], revocation is a lookup by serial with no time in it, and
//!   the only time-dependent checks are the validity periods (a path valid at
//!   `t` is valid until its earliest notAfter) and CRL expiry (nextUpdate);
//!   the window takes the earliest of all of them, over more certificates and
//!   CRLs than the path uses, so it never extends past a time the verifier
//!   would refuse. A clock that goes backwards re-verifies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use std::{fs, io};

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, ProducesTickets, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{HandshakeKind, InconsistentKeys, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, SignatureVerificationAlgorithm, UnixTime,
};
use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::{Any, FromDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;

use crate::role::{MissingRole, RoleFrom};

/// The only ALPN protocol offered: the proxy speaks HTTP/1.1 to clients.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";
/// Marks a PEM file; a CRL file without it is read as DER.
const PEM_BEGIN: &[u8] = b"-----BEGIN ";
/// How long after it was issued a session ticket of an mTLS listener is
/// accepted; the client is told so (the ticket's lifetime hint).
pub const SESSION_TICKET_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Client chains whose re-verification is remembered; when full, all are
/// forgotten (they are verified again on their next resumption).
pub const VERIFIED_CHAINS_MAX: usize = 4096;

/// Where the server's certificate chain and private key come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerIdentity {
    /// One PEM file with the chain (end-entity first) and the private key
    /// (Smokescreen's `--tls-server-bundle-file`).
    Bundle(PathBuf),
    /// The chain (end-entity first) and the private key in two PEM files
    /// (config file `tls.cert_file` and `tls.key_file`).
    CertAndKey { cert: PathBuf, key: PathBuf },
}

/// Validated TLS settings of the client-facing listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain and key the listener presents.
    pub server_bundle: ServerIdentity,
    /// PEM files of CA certificates that client certificates must chain to;
    /// empty: client certificates are not requested.
    pub client_ca_files: Vec<PathBuf>,
    /// CRL files (PEM, possibly several CRLs, or one DER CRL), each issued by
    /// one of the client CAs.
    pub crl_files: Vec<PathBuf>,
    /// With client CAs: accept clients that present no certificate (they get
    /// no role). A presented certificate must still verify.
    pub allow_missing_role: bool,
    /// Which certificate field (and regex) names the role (`--role-from`).
    pub role_from: RoleFrom,
}

/// Who the client is, according to its verified certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientIdentity {
    /// The client presented no certificate (or none was requested).
    NoCertificate,
    /// The role the verified client certificate names (`--role-from`).
    Role(String),
    /// The client's certificate verified but names no role, for this reason: a missing role.
    CertificateWithoutRole(MissingRole),
}

impl ClientIdentity {
    /// The role, when the certificate names one.
    pub fn role(&self) -> Option<&str> {
        match self {
            ClientIdentity::Role(role) => Some(role),
            ClientIdentity::NoCertificate | ClientIdentity::CertificateWithoutRole(_) => None,
        }
    }
}

/// Why the TLS configuration was refused. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: malformed PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: no certificate found (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: certificate #{index} is not a valid X.509 certificate: {reason}", path.display())]
    BadCertificate { path: PathBuf, index: usize, reason: String },
    #[error(
        "{}: no private key found (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    #[error("{}: {count} private keys found; give exactly one", path.display())]
    SeveralPrivateKeys { path: PathBuf, count: usize },
    #[error("{}: the private key cannot be used: {reason}", path.display())]
    UnusableKey { path: PathBuf, reason: String },
    #[error("{}", key_mismatch_text(cert, key))]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: certificate #{index} ({subject}) cannot be a client CA: {reason}", path.display())]
    BadClientCa { path: PathBuf, index: usize, subject: String, reason: String },
    #[error("{}: not a valid CRL: {reason}", path.display())]
    BadCrl { path: PathBuf, reason: String },
    #[error("{}: CRLs are configured but no client CA files: CRLs apply only to client certificates", path.display())]
    CrlWithoutClientCa { path: PathBuf },
    #[error("{}: the CRL's issuer \"{issuer}\" is not one of the client CAs", path.display())]
    CrlIssuerUnknown { path: PathBuf, issuer: String },
    #[error("{}: the CRL is not signed by client CA \"{issuer}\": {reason}", path.display())]
    CrlSignature { path: PathBuf, issuer: String, reason: String },
    #[error("{}: client CA \"{issuer}\" may not sign CRLs (its key usage lacks cRLSign)", path.display())]
    CrlIssuerNotCrlSigner { path: PathBuf, issuer: String },
    #[error("{}: the CRL from \"{issuer}\" expired at {next_update} (nextUpdate); install a current one", path.display())]
    CrlExpired { path: PathBuf, issuer: String, next_update: String },
    #[error("TLS configuration refused by rustls ({what}): {reason}")]
    Rustls { what: &'static str, reason: String },
}

fn key_mismatch_text(cert: &Path, key: &Path) -> String {
    match cert == key {
        true => format!("{}: the private key does not match the certificate", key.display()),
        false => format!("{}: the private key does not match the certificate in {}", key.display(), cert.display()),
    }
}

/// The listener's TLS: the rustls configuration and, with client CAs, what
/// a resumed session must pass again before its role is believed.
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    resumption: Option<ResumptionCheck>,
    role_from: RoleFrom,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("mutual", &self.resumption.is_some()).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Builds the listener's TLS configuration: TLS 1.2 and 1.3 with the ring
    /// provider, ALPN `http/1.1`, client authentication as configured and,
    /// with client CAs, session tickets under a key of its own.
    pub fn new(settings: &TlsSettings) -> Result<ServerTls, TlsError> {
        let tickets = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError::Rustls { what: "session tickets", reason: e.to_string() })?;
        Self::with_ticketer(settings, Arc::new(BoundedTickets { inner: tickets, lifetime: SESSION_TICKET_LIFETIME }))
    }

    fn with_ticketer(settings: &TlsSettings, ticketer: Arc<dyn ProducesTickets>) -> Result<ServerTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified_key = load_server_identity(&settings.server_bundle, &provider)?;

        let mut resumption = None;
        let verifier = if settings.client_ca_files.is_empty() {
            if let Some(path) = settings.crl_files.first() {
                return Err(TlsError::CrlWithoutClientCa { path: path.clone() });
            }
            WebPkiClientVerifier::no_client_auth()
        } else {
            let cas = load_client_cas(&settings.client_ca_files)?;
            let roots = Arc::new(root_store(&cas)?);
            let crls = load_crls(&settings.crl_files, &cas, &roots, &provider)?;
            let mut builder = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .with_crls(crls.iter().map(|crl| crl.der.clone()))
                .enforce_revocation_expiration()
                .allow_unknown_revocation_status();
            if settings.allow_missing_role {
                builder = builder.allow_unauthenticated();
            }
            let verifier = builder
                .build()
                .map_err(|e| TlsError::Rustls { what: "client certificate verifier", reason: e.to_string() })?;
            resumption = Some(ResumptionCheck {
                verifier: Arc::clone(&verifier),
                crls_valid_until: crls.iter().map(|crl| crl.next_update).min(),
                verified: Mutex::new(HashMap::new()),
            });
            verifier
        };

        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls { what: "protocol versions", reason: e.to_string() })?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key)));
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        if resumption.is_some() {
            // Tickets only: they expire (BoundedTickets) and die with this
            // configuration; a server-side session cache would do neither.
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.ticketer = ticketer;
            // One ticket per connection: a client that reconnects needs one,
            // and each resumption brings it the next.
            config.send_tls13_tickets = 1;
        }
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            resumption,
            role_from: settings.role_from.clone(),
        })
    }

    /// Runs handshakes with this configuration.
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(self.acceptor.config())
    }

    /// The identity of a client whose handshake has completed. A full
    /// handshake has verified the client's chain; a resumed one has its chain
    /// verified again here, now (see the module documentation), and an error
    /// means the client must be refused.
    pub fn client_identity(&self, conn: &ServerConnection) -> Result<ClientIdentity, rustls::Error> {
        let chain = conn.peer_certificates().unwrap_or_default();
        if let Some(check) = &self.resumption
            && conn.handshake_kind() == Some(HandshakeKind::Resumed)
        {
            check.verify_again(chain, UnixTime::now())?;
        }
        Ok(match chain.first() {
            None => ClientIdentity::NoCertificate,
            Some(cert) => identity_from_certificate(cert, &self.role_from),
        })
    }
}

/// What a resumed mTLS session is checked against.
struct ResumptionCheck {
    /// The verifier full handshakes use.
    verifier: Arc<dyn ClientCertVerifier>,
    /// The earliest nextUpdate of the CRLs (Unix seconds); `None` without CRLs.
    crls_valid_until: Option<u64>,
    /// SHA-256 of a chain -> when it was verified and until when that stands.
    verified: Mutex<HashMap<[u8; 32], VerifiedWindow>>,
}

/// A re-verification that stands for `from <= now < until` (Unix seconds).
#[derive(Debug, Clone, Copy)]
struct VerifiedWindow {
    from: u64,
    until: u64,
}

impl ResumptionCheck {
    fn verify_again(&self, chain: &[CertificateDer<'static>], now: UnixTime) -> Result<(), rustls::Error> {
        // No certificate: the session was resumed from a handshake without
        // one, which only `allow_missing_role` permits (and still does).
        let Some((end_entity, intermediates)) = chain.split_first() else { return Ok(()) };
        let key = chain_digest(chain);
        let now_secs = now.as_secs();
        let known = self.verified.lock().unwrap_or_else(PoisonError::into_inner).get(&key).copied();
        if known.is_some_and(|window| window.from <= now_secs && now_secs < window.until) {
            return Ok(());
        }
        self.verifier.verify_client_cert(end_entity, intermediates, now)?;
        let until = chain_valid_until(chain).map(|certs| self.crls_valid_until.map_or(certs, |crls| certs.min(crls)));
        if let Some(until) = until.filter(|until| now_secs < *until) {
            let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            if verified.len() >= VERIFIED_CHAINS_MAX {
                verified.clear();
            }
            verified.insert(key, VerifiedWindow { from: now_secs, until });
        }
        Ok(())
    }
}

fn chain_digest(chain: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut digest = Sha256::new();
    for cert in chain {
        // Length-prefixed, so no two different chains hash the same bytes.
        digest.update((cert.len() as u64).to_be_bytes());
        digest.update(cert.as_ref());
    }
    digest.finalize().into()
}

/// The earliest notAfter of the chain's certificates (Unix seconds); `None`
/// if one does not parse (then nothing is remembered).
fn chain_valid_until(chain: &[CertificateDer<'_>]) -> Option<u64> {
    let mut until = u64::MAX;
    for cert in chain {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
        until = until.min(u64::try_from(parsed.validity().not_after.timestamp()).ok()?);
    }
    Some(until)
}

/// Session tickets that carry their issue time under the ticket key's seal
/// and are refused once older than `lifetime` (rustls's own ticketers bound
/// a ticket's age only by their 6-hour key rotation).
#[derive(Debug)]
struct BoundedTickets {
    inner: Arc<dyn ProducesTickets>,
    lifetime: Duration,
}

impl ProducesTickets for BoundedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut stamped = Vec::with_capacity(8 + plain.len());
        stamped.extend_from_slice(&UnixTime::now().as_secs().to_be_bytes());
        stamped.extend_from_slice(plain);
        self.inner.encrypt(&stamped)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher)?;
        let (stamp, session) = plain.split_first_chunk::<8>()?;
        let issued = u64::from_be_bytes(*stamp);
        let now = UnixTime::now().as_secs();
        // A ticket from the future (the clock went back) is refused too.
        (issued <= now && now - issued < self.lifetime.as_secs()).then(|| session.to_vec())
    }
}

fn identity_from_certificate(der: &[u8], role_from: &RoleFrom) -> ClientIdentity {
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert,
        Err(e) => {
            // webpki accepted it, so this is a parser disagreement: no role rather than a guess.
            tracing::warn!(error = %e, "verified client certificate does not parse; treating it as naming no role");
            return ClientIdentity::CertificateWithoutRole(MissingRole::NotText);
        }
    };
    match role_from.role_of(&cert) {
        Ok(role) => ClientIdentity::Role(role),
        Err(missing) => ClientIdentity::CertificateWithoutRole(missing),
    }
}

// --- files -------------------------------------------------------------------------------------

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// Every PEM section of a file; sections of unknown kinds (e.g. `EC PARAMETERS`) are skipped.
fn pem_sections(path: &Path, bytes: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsError> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: pem_error_text(&e) })
}

fn certificates(sections: &[(SectionKind, Vec<u8>)]) -> Vec<CertificateDer<'static>> {
    sections
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect()
}

fn private_keys(sections: Vec<(SectionKind, Vec<u8>)>) -> Vec<PrivateKeyDer<'static>> {
    sections.into_iter().filter_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der)).collect()
}

/// Parses a certificate strictly (no trailing bytes); `index` is 1-based, for messages.
fn parse_certificate<'a>(path: &Path, index: usize, der: &'a [u8]) -> Result<X509Certificate<'a>, TlsError> {
    let bad = |reason: String| TlsError::BadCertificate { path: path.to_path_buf(), index, reason };
    match x509_parser::parse_x509_certificate(der) {
        Ok((rest, _)) if !rest.is_empty() => Err(bad(format!("{} unexpected bytes after it", rest.len()))),
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(bad(e.to_string())),
    }
}

fn pem_error_text(error: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { end_marker } => {
            format!("no \"-----END {}-----\" line", String::from_utf8_lossy(end_marker))
        }
        Error::IllegalSectionStart { line } => format!("malformed line {:?}", String::from_utf8_lossy(line)),
        other => other.to_string(),
    }
}

// --- server identity ---------------------------------------------------------------------------

fn load_server_identity(identity: &ServerIdentity, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let (cert_path, key_path) = match identity {
        ServerIdentity::Bundle(path) => (path, path),
        ServerIdentity::CertAndKey { cert, key } => (cert, key),
    };
    let cert_sections = pem_sections(cert_path, &read_file(cert_path)?)?;
    let chain = certificates(&cert_sections);
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path.clone() });
    }
    for (index, der) in (1..).zip(&chain) {
        let cert = parse_certificate(cert_path, index, der)?;
        if index == 1 && !cert.validity().is_valid() {
            tracing::warn!(
                file = %cert_path.display(),
                not_before = %cert.validity().not_before,
                not_after = %cert.validity().not_after,
                "the server certificate is not valid now; clients will refuse it"
            );
        }
    }

    let key_sections =
        if key_path == cert_path { cert_sections } else { pem_sections(key_path, &read_file(key_path)?)? };
    let mut keys = private_keys(key_sections);
    let key = match (keys.pop(), keys.len()) {
        (None, _) => return Err(TlsError::NoPrivateKey { path: key_path.clone() }),
        (Some(key), 0) => key,
        (Some(_), others) => return Err(TlsError::SeveralPrivateKeys { path: key_path.clone(), count: others + 1 }),
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::UnusableKey { path: key_path.clone(), reason: e.to_string() })?;

    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the key cannot report its public half, so there is nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err(TlsError::KeyMismatch { cert: cert_path.clone(), key: key_path.clone() })
        }
        Err(e) => Err(TlsError::BadCertificate { path: cert_path.clone(), index: 1, reason: e.to_string() }),
    }
}

// --- client CAs and CRLs -----------------------------------------------------------------------

/// One client CA certificate and where it came from.
struct ClientCa {
    path: PathBuf,
    index: usize,
    der: CertificateDer<'static>,
}

fn load_client_cas(files: &[PathBuf]) -> Result<Vec<ClientCa>, TlsError> {
    let mut cas = Vec::new();
    for path in files {
        let certs = certificates(&pem_sections(path, &read_file(path)?)?);
        if certs.is_empty() {
            return Err(TlsError::NoCertificate { path: path.clone() });
        }
        for (index, der) in (1..).zip(certs) {
            parse_certificate(path, index, &der)?;
            cas.push(ClientCa { path: path.clone(), index, der });
        }
    }
    Ok(cas)
}

fn root_store(cas: &[ClientCa]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.der.clone()).map_err(|e| TlsError::BadClientCa {
            path: ca.path.clone(),
            index: ca.index,
            subject: subject_of(&ca.der),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn subject_of(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der).map_or_else(|_| "?".to_owned(), |(_, cert)| cert.subject().to_string())
}

/// Reads, parses and checks every CRL; see the module documentation for the rules.
fn load_crls(
    files: &[PathBuf],
    cas: &[ClientCa],
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Vec<LoadedCrl>, TlsError> {
    let mut crls = Vec::new();
    let mut covered = vec![false; cas.len()];
    for path in files {
        let bytes = read_file(path)?;
        let ders: Vec<Vec<u8>> = if bytes.windows(PEM_BEGIN.len()).any(|w| w == PEM_BEGIN) {
            pem_sections(path, &bytes)?
                .into_iter()
                .filter(|(kind, _)| *kind == SectionKind::Crl)
                .map(|(_, d)| d)
                .collect()
        } else {
            vec![bytes]
        };
        if ders.is_empty() {
            return Err(TlsError::BadCrl {
                path: path.clone(),
                reason: "no PEM \"-----BEGIN X509 CRL-----\" block".to_owned(),
            });
        }
        for der in ders {
            let der = CertificateRevocationListDer::from(der);
            let (issuer, next_update) = check_crl(path, &der, cas, roots, provider)?;
            if let Some(flag) = covered.get_mut(issuer) {
                *flag = true;
            }
            crls.push(LoadedCrl { der, next_update });
        }
    }
    if !crls.is_empty() {
        for (ca, _) in cas.iter().zip(&covered).filter(|(_, covered)| !**covered) {
            tracing::warn!(
                file = %ca.path.display(),
                ca = %subject_of(&ca.der),
                "client CA has no CRL: certificates it issued are not checked for revocation"
            );
        }
    }
    Ok(crls)
}

/// A checked CRL and its nextUpdate (Unix seconds).
struct LoadedCrl {
    der: CertificateRevocationListDer<'static>,
    next_update: u64,
}

/// Checks one CRL against the client CAs; returns the index of the CA that
/// signed it and the CRL's nextUpdate (Unix seconds).
fn check_crl(
    path: &Path,
    der: &CertificateRevocationListDer<'static>,
    cas: &[ClientCa],
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<(usize, u64), TlsError> {
    let bad = |reason: String| TlsError::BadCrl { path: path.to_path_buf(), reason };
    let crl = match x509_parser::parse_x509_crl(der) {
        Ok((rest, _)) if !rest.is_empty() => return Err(bad(format!("{} unexpected bytes after the CRL", rest.len()))),
        Ok((_, crl)) => crl,
        Err(e) => return Err(bad(format!("not an X.509 CRL in PEM or DER form ({e})"))),
    };
    // webpki, which checks revocation at handshake time, is stricter (CRL v2, required extensions).
    WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider))
        .with_crls([der.clone()])
        .build()
        .map_err(|e| bad(format!("refused by webpki: {e}")))?;
    let algorithms = provider.signature_verification_algorithms.all;
    let issuer = crl.issuer().to_string();
    let signature_algorithm = signature_algorithm_of(der).ok_or_else(|| bad("no signature algorithm".to_owned()))?;

    let mut same_name = false;
    let mut failure = String::new();
    let mut signer = None;
    for (index, ca) in cas.iter().enumerate() {
        let Ok((_, ca_cert)) = x509_parser::parse_x509_certificate(&ca.der) else { continue };
        if ca_cert.subject().as_raw() != crl.issuer().as_raw() {
            continue;
        }
        same_name = true;
        match verify_signature(
            algorithms,
            &ca_cert,
            signature_algorithm,
            crl.tbs_cert_list.as_ref(),
            &crl.signature_value.data,
        ) {
            Ok(()) => {
                signer = Some((index, ca_cert));
                break;
            }
            Err(reason) => failure = reason,
        }
    }
    let Some((index, ca_cert)) = signer else {
        return Err(match same_name {
            false => TlsError::CrlIssuerUnknown { path: path.to_path_buf(), issuer },
            true => TlsError::CrlSignature { path: path.to_path_buf(), issuer, reason: failure },
        });
    };

    let may_sign_crls = match ca_cert.key_usage() {
        Ok(None) => true, // no key usage extension: any usage (RFC 5280 practice, and webpki's)
        Ok(Some(usage)) => usage.value.crl_sign(),
        Err(_) => false,
    };
    if !may_sign_crls {
        return Err(TlsError::CrlIssuerNotCrlSigner { path: path.to_path_buf(), issuer });
    }
    match crl.next_update() {
        None => Err(bad("no nextUpdate field".to_owned())),
        Some(next) if next.timestamp() <= ASN1Time::now().timestamp() => {
            Err(TlsError::CrlExpired { path: path.to_path_buf(), issuer, next_update: next.to_string() })
        }
        Some(next) => Ok((index, u64::try_from(next.timestamp()).unwrap_or(0))),
    }
}

/// The contents of the CRL's outer `signatureAlgorithm` (the form webpki compares).
fn signature_algorithm_of(crl_der: &[u8]) -> Option<&[u8]> {
    let (_, outer) = Any::from_der(crl_der).ok()?;
    let (rest, _tbs) = Any::from_der(outer.data).ok()?;
    let (_, algorithm) = Any::from_der(rest).ok()?;
    Some(algorithm.data)
}

/// Verifies a signature the way webpki does: pick the provider's algorithm by
/// signature algorithm identifier and public key algorithm identifier.
fn verify_signature(
    algorithms: &[&dyn SignatureVerificationAlgorithm],
    signer: &X509Certificate<'_>,
    signature_algorithm: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let spki = signer.public_key();
    let key_algorithm =
        Any::from_der(spki.raw).ok().and_then(|(_, outer)| Any::from_der(outer.data).ok()).map(|(_, alg)| alg.data);
    let Some(key_algorithm) = key_algorithm else { return Err("the CA's public key does not parse".to_owned()) };
    let mut known_signature_algorithm = false;
    for algorithm in algorithms.iter().filter(|a| a.signature_alg_id().as_ref() == signature_algorithm) {
        known_signature_algorithm = true;
        if algorithm.public_key_alg_id().as_ref() == key_algorithm {
            return algorithm
                .verify_signature(&spki.subject_public_key.data, message, signature)
                .map_err(|_| "the signature does not verify with the CA's key".to_owned());
        }
    }
    Err(match known_signature_algorithm {
        true => "the signature algorithm does not fit the CA's key type".to_owned(),
        false => "unsupported signature algorithm".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, DnValue, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber, date_time_ymd,
    };
    use rustls::pki_types::ServerName;
    use rustls::{CertificateError, ClientConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;

    use super::*;

    /// A CA that issues certificates and CRLs.
    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    /// A certificate with its key, PEM.
    struct Issued {
        cert: String,
        key: String,
    }

    impl Ca {
        fn new(name: &str) -> Self {
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let pem = params.self_signed(&key).unwrap().pem();
            Ca { issuer: Issuer::new(params, key), pem }
        }

        /// A client certificate (clientAuth) with `cn`, serial `serial`; `edit` adjusts the parameters.
        fn issue(&self, cn: Option<&str>, serial: u64, edit: impl FnOnce(&mut CertificateParams)) -> Issued {
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            if let Some(cn) = cn {
                params.distinguished_name.push(DnType::CommonName, cn);
            }
            params.serial_number = Some(SerialNumber::from(serial));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.use_authority_key_identifier_extension = true;
            edit(&mut params);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Issued { cert: cert.pem(), key: key.serialize_pem() }
        }

        fn server(&self) -> Issued {
            self.issue(Some("proxyd test server"), 1, |p| {
                p.subject_alt_names = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap()
                    .subject_alt_names;
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            })
        }

        fn crl(&self, revoked: &[u64], edit: impl FnOnce(&mut CertificateRevocationListParams)) -> String {
            let mut params = CertificateRevocationListParams {
                this_update: date_time_ymd(2020, 1, 1),
                next_update: date_time_ymd(2100, 1, 1),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .iter()
                    .map(|serial| RevokedCertParams {
                        serial_number: SerialNumber::from(*serial),
                        revocation_time: date_time_ymd(2020, 1, 1),
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            };
            edit(&mut params);
            params.signed_by(&self.issuer).unwrap().pem().unwrap()
        }
    }

    /// A temporary directory with a CA and a server identity issued by it.
    struct Fixture {
        dir: tempfile::TempDir,
        ca: Ca,
        server: Issued,
    }

    impl Fixture {
        fn new() -> Self {
            let ca = Ca::new("proxyd unit test CA");
            let server = ca.server();
            Fixture { dir: tempfile::tempdir().unwrap(), ca, server }
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.dir.path().join(name);
            fs::write(&path, contents).unwrap();
            path
        }

        fn bundle(&self) -> ServerIdentity {
            ServerIdentity::Bundle(self.write("bundle.pem", format!("{}{}", self.server.cert, self.server.key)))
        }

        fn settings(&self, cas: &[&str], crls: &[&str], allow_missing_role: bool) -> TlsSettings {
            TlsSettings {
                server_bundle: self.bundle(),
                client_ca_files: cas
                    .iter()
                    .enumerate()
                    .map(|(i, pem)| self.write(&format!("ca{i}.pem"), pem))
                    .collect(),
                crl_files: crls.iter().enumerate().map(|(i, pem)| self.write(&format!("crl{i}.pem"), pem)).collect(),
                allow_missing_role,
                role_from: RoleFrom::default(),
            }
        }

        /// Settings that trust this fixture's CA, with an empty CRL.
        fn mtls(&self, allow_missing_role: bool) -> TlsSettings {
            self.settings(&[&self.ca.pem], &[&self.ca.crl(&[], |_| {})], allow_missing_role)
        }
    }

    fn client_config(ca_pem: &str, client: Option<&Issued>, tls12_only: bool) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider);
        let builder = match tls12_only {
            true => builder.with_protocol_versions(&[&rustls::version::TLS12]).unwrap(),
            false => builder.with_safe_default_protocol_versions().unwrap(),
        };
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
        let builder = builder.with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some(issued) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(issued.cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Runs a real handshake over an in-memory pipe; the server's view decides.
    async fn handshake_with(
        server: &ServerTls,
        client: Arc<ClientConfig>,
    ) -> Result<(ClientIdentity, Option<Vec<u8>>), rustls::Error> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let connector = TlsConnector::from(client);
        let name = ServerName::try_from("localhost").unwrap();
        let (_client, accepted) = tokio::join!(connector.connect(name, client_io), server.acceptor().accept(server_io));
        match accepted {
            Ok(stream) => {
                let conn = stream.get_ref().1;
                Ok((server.client_identity(conn)?, conn.alpn_protocol().map(<[u8]>::to_vec)))
            }
            Err(e) => Err(e.into_inner().unwrap().downcast::<rustls::Error>().map(|e| *e).unwrap()),
        }
    }

    async fn handshake(
        fx: &Fixture,
        settings: &TlsSettings,
        client: Option<&Issued>,
    ) -> Result<ClientIdentity, rustls::Error> {
        let server = ServerTls::new(settings).unwrap();
        handshake_with(&server, client_config(&fx.ca.pem, client, false)).await.map(|(identity, _)| identity)
    }

    fn is_cert_error(result: &Result<ClientIdentity, rustls::Error>, want: fn(&CertificateError) -> bool) -> bool {
        matches!(result, Err(rustls::Error::InvalidCertificate(e)) if want(e))
    }

    // --- loading ------------------------------------------------------------------------------

    #[test]
    fn good_bundle_and_good_cert_key_pair_load() {
        let fx = Fixture::new();
        let config = ServerTls::new(&fx.settings(&[], &[], false)).unwrap();
        assert_eq!(config.config().alpn_protocols, vec![b"http/1.1".to_vec()]);

        let cert = fx.write("cert.pem", &fx.server.cert);
        let key = fx.write("key.pem", &fx.server.key);
        let settings = TlsSettings { server_bundle: ServerIdentity::CertAndKey { cert, key }, ..fx.mtls(false) };
        ServerTls::new(&settings).unwrap();
    }

    #[test]
    fn openssl_style_extras_in_pem_files_are_skipped() {
        let fx = Fixture::new();
        let text = format!(
            "subject=CN = proxyd test server\n{}-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            fx.server.cert, fx.server.key
        );
        let settings = TlsSettings { server_bundle: ServerIdentity::Bundle(fx.write("b.pem", text)), ..fx.mtls(false) };
        ServerTls::new(&settings).unwrap();
    }

    #[test]
    fn server_identity_errors_name_the_file_and_the_problem() {
        let fx = Fixture::new();
        let other = fx.ca.server();
        let with = |identity: ServerIdentity| {
            ServerTls::new(&TlsSettings { server_bundle: identity, ..fx.settings(&[], &[], false) }).unwrap_err()
        };
        let bundle = |name: &str, text: String| with(ServerIdentity::Bundle(fx.write(name, text)));

        let missing = fx.dir.path().join("missing.pem");
        let err = with(ServerIdentity::Bundle(missing.clone()));
        assert!(matches!(&err, TlsError::Read { path, .. } if *path == missing), "{err}");
        assert!(err.to_string().contains("missing.pem: cannot read"), "{err}");

        let err = bundle("key-only.pem", fx.server.key.clone());
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("key-only.pem: no certificate found"), "{err}");

        let err = bundle("cert-only.pem", fx.server.cert.clone());
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("cert-only.pem: no private key found"), "{err}");

        let err = bundle("two-keys.pem", format!("{}{}{}", fx.server.cert, fx.server.key, other.key));
        assert!(matches!(err, TlsError::SeveralPrivateKeys { count: 2, .. }), "{err}");

        let err = bundle("mismatch.pem", format!("{}{}", fx.server.cert, other.key));
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().ends_with("mismatch.pem: the private key does not match the certificate"), "{err}");

        let cert = fx.write("c.pem", &fx.server.cert);
        let key = fx.write("k.pem", &other.key);
        let err = with(ServerIdentity::CertAndKey { cert, key });
        assert_eq!(
            err.to_string(),
            format!(
                "{}: the private key does not match the certificate in {}",
                fx.dir.path().join("k.pem").display(),
                fx.dir.path().join("c.pem").display()
            )
        );

        let garbage_cert = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        let err = bundle("garbage-cert.pem", format!("{garbage_cert}{}", fx.server.key));
        assert!(matches!(err, TlsError::BadCertificate { index: 1, .. }), "{err}");

        let err = bundle("second-garbage.pem", format!("{}{garbage_cert}{}", fx.server.cert, fx.server.key));
        assert!(matches!(err, TlsError::BadCertificate { index: 2, .. }), "{err}");

        let garbage_key = "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n";
        let err = bundle("garbage-key.pem", format!("{}{garbage_key}", fx.server.cert));
        assert!(matches!(err, TlsError::UnusableKey { .. }), "{err}");

        let err = bundle("bad-base64.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".into());
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
        let err = bundle("no-end.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n".into());
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
        assert!(err.to_string().ends_with("no-end.pem: malformed PEM: no \"-----END CERTIFICATE-----\" line"), "{err}");

        let err = bundle("binary.pem", String::from_utf8_lossy(&[0xff, 0x00, 0x13, 0x37]).into_owned());
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }

    #[test]
    fn client_ca_errors_name_the_file_and_the_problem() {
        let fx = Fixture::new();
        let err = ServerTls::new(&fx.settings(&["this is not a certificate\n"], &[], false)).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("ca0.pem: no certificate found"), "{err}");

        let garbage = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n";
        let err = ServerTls::new(&fx.settings(&[&fx.ca.pem, garbage], &[], false)).unwrap_err();
        assert!(matches!(&err, TlsError::BadCertificate { path, index: 1, .. } if path.ends_with("ca1.pem")), "{err}");

        let mut settings = fx.settings(&[], &[], false);
        settings.client_ca_files = vec![fx.dir.path().join("nope.pem")];
        assert!(matches!(ServerTls::new(&settings).unwrap_err(), TlsError::Read { .. }));
    }

    #[test]
    fn crl_errors_name_the_file_and_the_problem() {
        let fx = Fixture::new();
        let good = fx.ca.crl(&[], |_| {});

        let err = ServerTls::new(&fx.settings(&[], &[&good], false)).unwrap_err();
        assert!(matches!(err, TlsError::CrlWithoutClientCa { .. }), "{err}");

        // Smokescreen panics on these (its §9.17).
        for garbage in
            ["garbage", "\x30\x03\x02\x01\x01", "-----BEGIN X509 CRL-----\nZ2FyYmFnZQ==\n-----END X509 CRL-----\n"]
        {
            let err = ServerTls::new(&fx.settings(&[&fx.ca.pem], &[garbage], false)).unwrap_err();
            assert!(matches!(&err, TlsError::BadCrl { path, .. } if path.ends_with("crl0.pem")), "{garbage:?}: {err}");
            assert!(
                err.to_string().contains("crl0.pem: not a valid CRL: not an X.509 CRL in PEM or DER form"),
                "{err}"
            );
        }
        let err = ServerTls::new(&fx.settings(&[&fx.ca.pem], &[&fx.ca.pem], false)).unwrap_err();
        assert!(err.to_string().contains("no PEM \"-----BEGIN X509 CRL-----\" block"), "{err}");

        let stranger = Ca::new("some other CA");
        let err = ServerTls::new(&fx.settings(&[&fx.ca.pem], &[&stranger.crl(&[], |_| {})], false)).unwrap_err();
        assert!(matches!(&err, TlsError::CrlIssuerUnknown { issuer, .. } if issuer == "CN=some other CA"), "{err}");

        // Same name as the configured CA, different key: a forgery, or a CA that was re-keyed.
        let impostor = Ca::new("proxyd unit test CA");
        let err = ServerTls::new(&fx.settings(&[&fx.ca.pem], &[&impostor.crl(&[], |_| {})], false)).unwrap_err();
        assert!(matches!(err, TlsError::CrlSignature { .. }), "{err}");
        assert!(err.to_string().contains("does not verify with the CA's key"), "{err}");

        let expired = fx.ca.crl(&[], |p| {
            p.this_update = date_time_ymd(2000, 1, 1);
            p.next_update = date_time_ymd(2001, 1, 1);
        });
        let err = ServerTls::new(&fx.settings(&[&fx.ca.pem], &[&expired], false)).unwrap_err();
        assert!(matches!(err, TlsError::CrlExpired { .. }), "{err}");
        assert!(err.to_string().contains("expired at"), "{err}");

        let mut no_crl_sign = CertificateParams::default();
        no_crl_sign.distinguished_name = rcgen::DistinguishedName::new();
        no_crl_sign.distinguished_name.push(DnType::CommonName, "no crl sign");
        no_crl_sign.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        no_crl_sign.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        let ca_pem = no_crl_sign.self_signed(&key).unwrap().pem();
        // rcgen refuses to sign a CRL with it, so sign with an issuer that forgets its key usages.
        no_crl_sign.key_usages = Vec::new();
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&Issuer::new(no_crl_sign, key))
        .unwrap()
        .pem()
        .unwrap();
        let err = ServerTls::new(&fx.settings(&[&ca_pem], &[&crl], false)).unwrap_err();
        assert!(matches!(err, TlsError::CrlIssuerNotCrlSigner { .. }), "{err}");
    }

    #[test]
    fn der_crls_and_several_crls_in_one_pem_file_load() {
        let fx = Fixture::new();
        let second = Ca::new("second CA");
        let both = format!("{}{}", fx.ca.crl(&[7], |_| {}), second.crl(&[], |_| {}));
        ServerTls::new(&fx.settings(&[&fx.ca.pem, &second.pem], &[&both], false)).unwrap();

        let der = CertificateRevocationListDer::from_pem_slice(fx.ca.crl(&[], |_| {}).as_bytes()).unwrap();
        let mut settings = fx.settings(&[&fx.ca.pem], &[], false);
        settings.crl_files = vec![fx.write("crl.der", der.as_ref())];
        ServerTls::new(&settings).unwrap();
    }

    // --- identity -----------------------------------------------------------------------------

    fn cert_der(issued: &Issued) -> Vec<u8> {
        CertificateDer::from_pem_slice(issued.cert.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn role_is_the_one_usable_common_name() {
        let missing = ClientIdentity::CertificateWithoutRole;
        let ca = Ca::new("ca");
        let identity = |edit: fn(&mut CertificateParams)| {
            identity_from_certificate(&cert_der(&ca.issue(None, 9, edit)), &RoleFrom::default())
        };

        assert_eq!(identity(|_| {}), missing(MissingRole::NoField));
        assert_eq!(identity(|p| p.distinguished_name.push(DnType::CommonName, "")), missing(MissingRole::Empty));
        assert_eq!(
            identity(|p| p.distinguished_name.push(DnType::CommonName, "a\nb")),
            missing(MissingRole::NotPrintable)
        );
        assert_eq!(
            identity(|p| p.distinguished_name.push(DnType::CommonName, "svc")),
            ClientIdentity::Role("svc".into())
        );
        assert_eq!(
            identity(|p| p
                .distinguished_name
                .push(DnType::CommonName, DnValue::PrintableString("svc-1".try_into().unwrap()))),
            ClientIdentity::Role("svc-1".into())
        );
        assert_eq!(
            identity(|p| p
                .distinguished_name
                .push(DnType::CommonName, DnValue::BmpString("sérvice".try_into().unwrap()))),
            ClientIdentity::Role("sérvice".into())
        );
        assert_eq!(
            identity(|p| p
                .distinguished_name
                .push(DnType::CommonName, DnValue::TeletexString("svc".try_into().unwrap()))),
            missing(MissingRole::NotText)
        );
        assert_eq!(
            identity(|p| {
                p.distinguished_name.push(DnType::OrganizationName, "org");
                p.distinguished_name.push(DnType::CommonName, "first");
                p.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "second");
            }),
            missing(MissingRole::Ambiguous),
            "two different CNs are ambiguous: no role"
        );
        assert_eq!(
            identity(|p| p.distinguished_name.push(DnType::OrganizationName, "org")),
            missing(MissingRole::NoField)
        );

        // A UTF8String CN whose bytes are not UTF-8 (the signature no longer matters here).
        let mut der = cert_der(&ca.issue(Some("role-XX"), 9, |_| {}));
        let at = der.windows(7).position(|w| w == b"role-XX").unwrap();
        der[at + 5] = 0xff;
        der[at + 6] = 0xfe;
        assert_eq!(identity_from_certificate(&der, &RoleFrom::default()), missing(MissingRole::NotText));
        assert_eq!(
            identity_from_certificate(b"not a certificate", &RoleFrom::default()),
            missing(MissingRole::NotText)
        );
        assert_eq!(ClientIdentity::Role("r".into()).role(), Some("r"));
        assert_eq!(missing(MissingRole::NoField).role(), None);
    }

    // --- handshakes ---------------------------------------------------------------------------

    #[tokio::test]
    async fn valid_client_certificate_gives_its_cn_as_role() {
        let fx = Fixture::new();
        let client = fx.ca.issue(Some("billing"), 10, |_| {});
        let server = ServerTls::new(&fx.mtls(false)).unwrap();
        for tls12 in [false, true] {
            let (identity, alpn) =
                handshake_with(&server, client_config(&fx.ca.pem, Some(&client), tls12)).await.unwrap();
            assert_eq!(identity, ClientIdentity::Role("billing".into()), "tls12 {tls12}");
            assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        }
    }

    #[tokio::test]
    async fn without_client_cas_no_certificate_is_requested() {
        let fx = Fixture::new();
        let client = fx.ca.issue(Some("billing"), 10, |_| {});
        let settings = fx.settings(&[], &[], false);
        assert_eq!(handshake(&fx, &settings, None).await.unwrap(), ClientIdentity::NoCertificate);
        assert_eq!(handshake(&fx, &settings, Some(&client)).await.unwrap(), ClientIdentity::NoCertificate);
    }

    #[tokio::test]
    async fn missing_client_certificate_is_refused_unless_allowed() {
        let fx = Fixture::new();
        let refused = handshake(&fx, &fx.mtls(false), None).await;
        assert!(matches!(refused, Err(rustls::Error::NoCertificatesPresented)), "{refused:?}");
        assert_eq!(handshake(&fx, &fx.mtls(true), None).await.unwrap(), ClientIdentity::NoCertificate);
        // Allowing a missing certificate does not allow a bad one.
        let stranger = Ca::new("stranger").issue(Some("billing"), 10, |_| {});
        let bad = handshake(&fx, &fx.mtls(true), Some(&stranger)).await;
        assert!(is_cert_error(&bad, |e| matches!(e, CertificateError::UnknownIssuer)), "{bad:?}");
    }

    #[tokio::test]
    async fn revoked_expired_foreign_and_server_only_certificates_are_refused() {
        let fx = Fixture::new();
        let revoked = fx.ca.issue(Some("revoked"), 66, |_| {});
        let settings = fx.settings(&[&fx.ca.pem], &[&fx.ca.crl(&[66], |_| {})], true);
        let result = handshake(&fx, &settings, Some(&revoked)).await;
        assert!(is_cert_error(&result, |e| matches!(e, CertificateError::Revoked)), "{result:?}");
        // The same certificate is fine against a CRL that does not list it.
        assert_eq!(
            handshake(&fx, &fx.mtls(false), Some(&revoked)).await.unwrap(),
            ClientIdentity::Role("revoked".into())
        );

        let expired = fx.ca.issue(Some("expired"), 11, |p| {
            p.not_before = date_time_ymd(2000, 1, 1);
            p.not_after = date_time_ymd(2001, 1, 1);
        });
        let result = handshake(&fx, &fx.mtls(true), Some(&expired)).await;
        assert!(
            is_cert_error(&result, |e| matches!(
                e,
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )),
            "{result:?}"
        );

        let foreign = Ca::new("proxyd unit test CA").issue(Some("foreign"), 12, |_| {});
        let result = handshake(&fx, &fx.mtls(true), Some(&foreign)).await;
        assert!(is_cert_error(&result, |e| matches!(e, CertificateError::BadSignature)), "{result:?}");
        let foreign = Ca::new("another CA").issue(Some("foreign"), 12, |_| {});
        let result = handshake(&fx, &fx.mtls(true), Some(&foreign)).await;
        assert!(is_cert_error(&result, |e| matches!(e, CertificateError::UnknownIssuer)), "{result:?}");

        let server_only =
            fx.ca.issue(Some("server-only"), 13, |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]);
        let result = handshake(&fx, &fx.mtls(true), Some(&server_only)).await;
        assert!(
            is_cert_error(&result, |e| matches!(
                e,
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            )),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn certificate_without_cn_is_a_missing_role() {
        let fx = Fixture::new();
        let no_cn = fx.ca.issue(None, 20, |p| p.distinguished_name.push(DnType::OrganizationName, "org"));
        let empty_cn = fx.ca.issue(Some(""), 21, |_| {});
        for (client, reason) in [(&no_cn, MissingRole::NoField), (&empty_cn, MissingRole::Empty)] {
            assert_eq!(
                handshake(&fx, &fx.mtls(false), Some(client)).await.unwrap(),
                ClientIdentity::CertificateWithoutRole(reason)
            );
        }
    }

    #[tokio::test]
    async fn clients_of_either_of_two_cas_are_accepted() {
        let fx = Fixture::new();
        let second = Ca::new("second CA");
        let settings =
            fx.settings(&[&fx.ca.pem, &second.pem], &[&fx.ca.crl(&[], |_| {}), &second.crl(&[5], |_| {})], false);
        let server = ServerTls::new(&settings).unwrap();
        for (ca, cn, serial) in [(&fx.ca, "one", 4), (&second, "two", 4)] {
            let client = ca.issue(Some(cn), serial, |_| {});
            let (identity, _) = handshake_with(&server, client_config(&fx.ca.pem, Some(&client), false)).await.unwrap();
            assert_eq!(identity, ClientIdentity::Role(cn.into()));
        }
        let revoked = second.issue(Some("two"), 5, |_| {});
        let result = handshake_with(&server, client_config(&fx.ca.pem, Some(&revoked), false)).await.map(|r| r.0);
        assert!(is_cert_error(&result, |e| matches!(e, CertificateError::Revoked)), "{result:?}");
    }

    #[tokio::test]
    async fn revocation_is_checked_per_ca_and_a_ca_without_a_crl_is_not_checked() {
        let fx = Fixture::new();
        let second = Ca::new("second CA");
        let settings = fx.settings(&[&fx.ca.pem, &second.pem], &[&fx.ca.crl(&[66], |_| {})], false);
        let server = ServerTls::new(&settings).unwrap();
        // Serial 66 is revoked by the first CA only; the second CA's 66 is another certificate.
        let of_second = second.issue(Some("two"), 66, |_| {});
        let (identity, _) = handshake_with(&server, client_config(&fx.ca.pem, Some(&of_second), false)).await.unwrap();
        assert_eq!(identity, ClientIdentity::Role("two".into()));
        let of_first = fx.ca.issue(Some("one"), 66, |_| {});
        let result = handshake_with(&server, client_config(&fx.ca.pem, Some(&of_first), false)).await.map(|r| r.0);
        assert!(is_cert_error(&result, |e| matches!(e, CertificateError::Revoked)), "{result:?}");
    }

    #[tokio::test]
    async fn a_crl_that_expires_after_start_up_refuses_clients() {
        let fx = Fixture::new();
        let now = ASN1Time::now().to_datetime();
        let crl = fx.ca.crl(&[], |p| {
            p.this_update = now - Duration::from_secs(3600);
            p.next_update = now + Duration::from_secs(4);
        });
        let server = ServerTls::new(&fx.settings(&[&fx.ca.pem], &[&crl], false)).unwrap();
        let client = fx.ca.issue(Some("billing"), 10, |_| {});
        tokio::time::sleep(Duration::from_millis(5100)).await;
        let result = handshake_with(&server, client_config(&fx.ca.pem, Some(&client), false)).await.map(|r| r.0);
        assert!(
            is_cert_error(&result, |e| matches!(
                e,
                CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. }
            )),
            "{result:?}"
        );
    }

    // --- resumption ---------------------------------------------------------------------------

    /// One connection over 127.0.0.1: handshake, the server's verdict on the
    /// client (with its handshake kind), two bytes to the client (which read
    /// the session ticket that came before them), close.
    async fn session(
        server: &ServerTls,
        client: &Arc<ClientConfig>,
    ) -> (Result<ClientIdentity, rustls::Error>, Option<HandshakeKind>) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let serve = async {
            let (socket, _) = listener.accept().await.unwrap();
            let mut stream = match server.acceptor().accept(socket).await {
                Ok(stream) => stream,
                Err(e) => return (Err(e.into_inner().unwrap().downcast::<rustls::Error>().map(|e| *e).unwrap()), None),
            };
            let kind = stream.get_ref().1.handshake_kind();
            let identity = server.client_identity(stream.get_ref().1);
            if identity.is_ok() {
                stream.write_all(b"ok").await.unwrap();
                stream.shutdown().await.unwrap();
            }
            (identity, kind)
        };
        let connect = async {
            let socket = tokio::net::TcpStream::connect(address).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            if let Ok(mut stream) = TlsConnector::from(Arc::clone(client)).connect(name, socket).await {
                let mut reply = Vec::new();
                let _ = stream.read_to_end(&mut reply).await;
            }
        };
        tokio::join!(serve, connect).0
    }

    #[tokio::test]
    async fn a_reconnecting_client_resumes_with_the_role_of_its_certificate() {
        let fx = Fixture::new();
        let server = ServerTls::new(&fx.mtls(false)).unwrap();
        let billing = fx.ca.issue(Some("billing"), 10, |_| {});
        let search = fx.ca.issue(Some("search"), 11, |_| {});
        for tls12 in [false, true] {
            let client = client_config(&fx.ca.pem, Some(&billing), tls12);
            let (identity, kind) = session(&server, &client).await;
            assert_eq!((identity.unwrap(), kind), (ClientIdentity::Role("billing".into()), Some(HandshakeKind::Full)));
            // The second resumption is answered from the remembered verification.
            for attempt in 0..2 {
                let (identity, kind) = session(&server, &client).await;
                assert_eq!(kind, Some(HandshakeKind::Resumed), "tls12 {tls12}, attempt {attempt}");
                assert_eq!(identity.unwrap(), ClientIdentity::Role("billing".into()), "tls12 {tls12}");
            }
            // Another client's resumptions carry its own certificate's role.
            let other = client_config(&fx.ca.pem, Some(&search), tls12);
            assert_eq!(session(&server, &other).await.1, Some(HandshakeKind::Full));
            let (identity, kind) = session(&server, &other).await;
            assert_eq!(
                (identity.unwrap(), kind),
                (ClientIdentity::Role("search".into()), Some(HandshakeKind::Resumed))
            );
        }
    }

    #[tokio::test]
    async fn a_resumed_session_keeps_the_role_role_from_read_from_its_certificate() {
        let fx = Fixture::new();
        let rule = RoleFrom::parse(r"uri-san:^spiffe://example\.org/ns/[^/]+/sa/(.+)$").unwrap();
        let server = ServerTls::new(&TlsSettings { role_from: rule, ..fx.mtls(false) }).unwrap();
        let spiffe = |serial: u64, id: &'static str| {
            fx.ca.issue(Some("not-the-role"), serial, move |p| {
                p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
            })
        };
        let billing = spiffe(10, "spiffe://example.org/ns/prod/sa/billing");
        let foreign = spiffe(11, "spiffe://evil.org/ns/prod/sa/billing");
        for tls12 in [false, true] {
            let client = client_config(&fx.ca.pem, Some(&billing), tls12);
            let (identity, kind) = session(&server, &client).await;
            assert_eq!((identity.unwrap(), kind), (ClientIdentity::Role("billing".into()), Some(HandshakeKind::Full)));
            for _ in 0..2 {
                let (identity, kind) = session(&server, &client).await;
                assert_eq!(
                    (identity.unwrap(), kind),
                    (ClientIdentity::Role("billing".into()), Some(HandshakeKind::Resumed)),
                    "tls12 {tls12}"
                );
            }
            // A certificate the rule does not match stays without a role when resumed.
            let client = client_config(&fx.ca.pem, Some(&foreign), tls12);
            assert_eq!(session(&server, &client).await.1, Some(HandshakeKind::Full));
            let (identity, kind) = session(&server, &client).await;
            assert_eq!(
                (identity.unwrap(), kind),
                (ClientIdentity::CertificateWithoutRole(MissingRole::NoMatch), Some(HandshakeKind::Resumed))
            );
        }
    }

    #[tokio::test]
    async fn a_rebuilt_configuration_does_not_resume_earlier_sessions() {
        let fx = Fixture::new();
        let client = client_config(&fx.ca.pem, Some(&fx.ca.issue(Some("billing"), 10, |_| {})), false);
        let first = ServerTls::new(&fx.mtls(false)).unwrap();
        assert_eq!(session(&first, &client).await.1, Some(HandshakeKind::Full));
        let rebuilt = ServerTls::new(&fx.mtls(false)).unwrap();
        let (identity, kind) = session(&rebuilt, &client).await;
        assert_eq!((identity.unwrap(), kind), (ClientIdentity::Role("billing".into()), Some(HandshakeKind::Full)));
    }

    #[tokio::test]
    async fn a_resumed_session_whose_certificate_is_now_revoked_is_refused() {
        let fx = Fixture::new();
        let cert = fx.ca.issue(Some("billing"), 66, |_| {});
        // Two configurations under one ticket key: the second one's CRL revokes serial 66.
        let tickets = || -> Arc<dyn ProducesTickets> {
            Arc::new(BoundedTickets {
                inner: rustls::crypto::ring::Ticketer::new().unwrap(),
                lifetime: SESSION_TICKET_LIFETIME,
            })
        };
        for tls12 in [false, true] {
            let ticketer = tickets();
            let before = ServerTls::with_ticketer(&fx.mtls(false), Arc::clone(&ticketer)).unwrap();
            let revoking = fx.settings(&[&fx.ca.pem], &[&fx.ca.crl(&[66], |_| {})], false);
            let after = ServerTls::with_ticketer(&revoking, ticketer).unwrap();
            let client = client_config(&fx.ca.pem, Some(&cert), tls12);
            let (identity, kind) = session(&before, &client).await;
            assert_eq!((identity.unwrap(), kind), (ClientIdentity::Role("billing".into()), Some(HandshakeKind::Full)));
            let (identity, kind) = session(&before, &client).await;
            assert_eq!(
                (identity.unwrap(), kind),
                (ClientIdentity::Role("billing".into()), Some(HandshakeKind::Resumed))
            );
            let (identity, kind) = session(&after, &client).await;
            assert_eq!(kind, Some(HandshakeKind::Resumed), "tls12 {tls12}: the ticket is accepted by rustls");
            assert!(is_cert_error(&identity, |e| matches!(e, CertificateError::Revoked)), "{identity:?}");
        }
    }

    #[tokio::test]
    async fn resumption_is_refused_once_the_certificate_or_the_crl_has_expired() {
        let fx = Fixture::new();
        let now = ASN1Time::now().to_datetime();
        let crl = fx.ca.crl(&[], |p| {
            p.this_update = now - Duration::from_secs(3600);
            p.next_update = now + Duration::from_secs(5);
        });
        let server = ServerTls::new(&fx.settings(&[&fx.ca.pem], &[&crl], false)).unwrap();
        let short = fx.ca.issue(Some("short"), 10, |p| p.not_after = now + Duration::from_secs(2));
        let long = fx.ca.issue(Some("long"), 11, |_| {});
        let short = client_config(&fx.ca.pem, Some(&short), false);
        let long = client_config(&fx.ca.pem, Some(&long), false);
        for client in [&short, &long] {
            assert_eq!(session(&server, client).await.1, Some(HandshakeKind::Full));
            for _ in 0..2 {
                let (identity, kind) = session(&server, client).await;
                assert!(identity.is_ok() && kind == Some(HandshakeKind::Resumed), "{identity:?} {kind:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(3100)).await;
        let (identity, kind) = session(&server, &short).await;
        assert_eq!(kind, Some(HandshakeKind::Resumed));
        assert!(
            is_cert_error(&identity, |e| matches!(
                e,
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )),
            "{identity:?}"
        );
        let (identity, kind) = session(&server, &long).await;
        assert_eq!((identity.unwrap(), kind), (ClientIdentity::Role("long".into()), Some(HandshakeKind::Resumed)));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let (identity, kind) = session(&server, &long).await;
        assert_eq!(kind, Some(HandshakeKind::Resumed));
        assert!(
            is_cert_error(&identity, |e| matches!(
                e,
                CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. }
            )),
            "{identity:?}"
        );
    }

    #[test]
    fn tickets_are_refused_past_their_lifetime_or_when_altered() {
        let fresh =
            BoundedTickets { inner: rustls::crypto::ring::Ticketer::new().unwrap(), lifetime: SESSION_TICKET_LIFETIME };
        assert_eq!(fresh.lifetime(), 3600);
        let ticket = fresh.encrypt(b"session").unwrap();
        assert_eq!(fresh.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        let mut altered = ticket.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(fresh.decrypt(&altered), None);
        let spent = BoundedTickets { inner: rustls::crypto::ring::Ticketer::new().unwrap(), lifetime: Duration::ZERO };
        let ticket = spent.encrypt(b"session").unwrap();
        assert_eq!(spent.decrypt(&ticket), None);
    }
}
