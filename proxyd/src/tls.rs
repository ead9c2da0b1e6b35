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
//! * The role is the first CN attribute of the end-entity certificate's
//!   subject (Go's `pkix.Name`, hence Smokescreen, takes the last). A CN that
//!   is empty, not a decodable string (UTF8String, PrintableString, IA5String,
//!   NumericString, or BMPString as UTF-16), or contains a control character is
//!   a *missing* role, never the role `""`.
//! * Without client CAs, client certificates are not requested at all.
//! * With client CAs, TLS session resumption is off, so every connection
//!   proves its certificate against the current CA and CRL set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::{fs, io};

use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, SignatureVerificationAlgorithm};
use x509_parser::asn1_rs::{Any, FromDer, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;
use x509_parser::x509::AttributeTypeAndValue;

/// The only ALPN protocol offered: the proxy speaks HTTP/1.1 to clients.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";
/// Marks a PEM file; a CRL file without it is read as DER.
const PEM_BEGIN: &[u8] = b"-----BEGIN ";

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
}

/// Who the client is, according to its verified certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientIdentity {
    /// The client presented no certificate (or none was requested).
    NoCertificate,
    /// The subject CN of the verified client certificate.
    Role(String),
    /// The client's certificate verified but has no usable CN: a missing role.
    CertificateWithoutCn,
}

impl ClientIdentity {
    /// The role, when the certificate names one.
    pub fn role(&self) -> Option<&str> {
        match self {
            ClientIdentity::Role(role) => Some(role),
            ClientIdentity::NoCertificate | ClientIdentity::CertificateWithoutCn => None,
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

/// Builds the listener's TLS configuration: TLS 1.2 and 1.3 with the ring
/// provider, ALPN `http/1.1`, and client authentication as configured.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified_key = load_server_identity(&settings.server_bundle, &provider)?;

    let client_auth = !settings.client_ca_files.is_empty();
    let verifier = if client_auth {
        let cas = load_client_cas(&settings.client_ca_files)?;
        let roots = Arc::new(root_store(&cas)?);
        let crls = load_crls(&settings.crl_files, &cas, &roots, &provider)?;
        let mut builder = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .with_crls(crls)
            .enforce_revocation_expiration()
            .allow_unknown_revocation_status();
        if settings.allow_missing_role {
            builder = builder.allow_unauthenticated();
        }
        builder.build().map_err(|e| TlsError::Rustls { what: "client certificate verifier", reason: e.to_string() })?
    } else {
        if let Some(path) = settings.crl_files.first() {
            return Err(TlsError::CrlWithoutClientCa { path: path.clone() });
        }
        WebPkiClientVerifier::no_client_auth()
    };

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls { what: "protocol versions", reason: e.to_string() })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key)));
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    if client_auth {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// The identity of a client whose handshake has completed (and therefore
/// whose certificate chain, if any, was verified).
pub fn client_identity(conn: &ServerConnection) -> ClientIdentity {
    match conn.peer_certificates().and_then(<[CertificateDer<'static>]>::first) {
        None => ClientIdentity::NoCertificate,
        Some(cert) => identity_from_certificate(cert),
    }
}

fn identity_from_certificate(der: &[u8]) -> ClientIdentity {
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert,
        Err(e) => {
            // webpki accepted it, so this is a parser disagreement: no role rather than a guess.
            tracing::warn!(error = %e, "verified client certificate does not parse; treating it as having no CN");
            return ClientIdentity::CertificateWithoutCn;
        }
    };
    // Several CNs are ambiguous (Go, and so Smokescreen, reads the last one;
    // other readers the first): fail closed rather than pick one.
    let mut names = cert.subject().iter_common_name();
    match (names.next().and_then(common_name_text), names.next()) {
        (Some(cn), None) if !cn.is_empty() && !cn.chars().any(char::is_control) => ClientIdentity::Role(cn),
        _ => ClientIdentity::CertificateWithoutCn,
    }
}

fn common_name_text(attr: &AttributeTypeAndValue<'_>) -> Option<String> {
    let value = attr.attr_value();
    if value.tag() == Tag::BmpString {
        // UCS-2/UTF-16 big-endian; an odd length or an unpaired surrogate is not text.
        if value.data.len() % 2 != 0 {
            return None;
        }
        let units =
            value.data.chunks_exact(2).filter_map(|pair| <[u8; 2]>::try_from(pair).ok()).map(u16::from_be_bytes);
        return char::decode_utf16(units).collect::<Result<String, _>>().ok();
    }
    attr.as_str().ok().map(str::to_owned)
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
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
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
            let crl = CertificateRevocationListDer::from(der);
            let issuer = check_crl(path, &crl, cas, roots, provider)?;
            if let Some(flag) = covered.get_mut(issuer) {
                *flag = true;
            }
            crls.push(crl);
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

/// Checks one CRL against the client CAs; returns the index of the CA that signed it.
fn check_crl(
    path: &Path,
    der: &CertificateRevocationListDer<'static>,
    cas: &[ClientCa],
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<usize, TlsError> {
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
        Some(_) => Ok(index),
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
    use tokio_rustls::{TlsAcceptor, TlsConnector};

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
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<(ClientIdentity, Option<Vec<u8>>), rustls::Error> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let connector = TlsConnector::from(client);
        let acceptor = TlsAcceptor::from(server);
        let name = ServerName::try_from("localhost").unwrap();
        let (_client, accepted) = tokio::join!(connector.connect(name, client_io), acceptor.accept(server_io));
        match accepted {
            Ok(stream) => {
                let conn = stream.get_ref().1;
                Ok((client_identity(conn), conn.alpn_protocol().map(<[u8]>::to_vec)))
            }
            Err(e) => Err(e.into_inner().unwrap().downcast::<rustls::Error>().map(|e| *e).unwrap()),
        }
    }

    async fn handshake(
        fx: &Fixture,
        settings: &TlsSettings,
        client: Option<&Issued>,
    ) -> Result<ClientIdentity, rustls::Error> {
        let server = server_config(settings).unwrap();
        handshake_with(server, client_config(&fx.ca.pem, client, false)).await.map(|(identity, _)| identity)
    }

    fn is_cert_error(result: &Result<ClientIdentity, rustls::Error>, want: fn(&CertificateError) -> bool) -> bool {
        matches!(result, Err(rustls::Error::InvalidCertificate(e)) if want(e))
    }

    // --- loading ------------------------------------------------------------------------------

    #[test]
    fn good_bundle_and_good_cert_key_pair_load() {
        let fx = Fixture::new();
        let config = server_config(&fx.settings(&[], &[], false)).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let cert = fx.write("cert.pem", &fx.server.cert);
        let key = fx.write("key.pem", &fx.server.key);
        let settings = TlsSettings { server_bundle: ServerIdentity::CertAndKey { cert, key }, ..fx.mtls(false) };
        server_config(&settings).unwrap();
    }

    #[test]
    fn openssl_style_extras_in_pem_files_are_skipped() {
        let fx = Fixture::new();
        let text = format!(
            "subject=CN = proxyd test server\n{}-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            fx.server.cert, fx.server.key
        );
        let settings = TlsSettings { server_bundle: ServerIdentity::Bundle(fx.write("b.pem", text)), ..fx.mtls(false) };
        server_config(&settings).unwrap();
    }

    #[test]
    fn server_identity_errors_name_the_file_and_the_problem() {
        let fx = Fixture::new();
        let other = fx.ca.server();
        let with = |identity: ServerIdentity| {
            server_config(&TlsSettings { server_bundle: identity, ..fx.settings(&[], &[], false) }).unwrap_err()
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
        let err = server_config(&fx.settings(&["this is not a certificate\n"], &[], false)).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("ca0.pem: no certificate found"), "{err}");

        let garbage = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n";
        let err = server_config(&fx.settings(&[&fx.ca.pem, garbage], &[], false)).unwrap_err();
        assert!(matches!(&err, TlsError::BadCertificate { path, index: 1, .. } if path.ends_with("ca1.pem")), "{err}");

        let mut settings = fx.settings(&[], &[], false);
        settings.client_ca_files = vec![fx.dir.path().join("nope.pem")];
        assert!(matches!(server_config(&settings).unwrap_err(), TlsError::Read { .. }));
    }

    #[test]
    fn crl_errors_name_the_file_and_the_problem() {
        let fx = Fixture::new();
        let good = fx.ca.crl(&[], |_| {});

        let err = server_config(&fx.settings(&[], &[&good], false)).unwrap_err();
        assert!(matches!(err, TlsError::CrlWithoutClientCa { .. }), "{err}");

        // Smokescreen panics on these (its §9.17).
        for garbage in
            ["garbage", "\x30\x03\x02\x01\x01", "-----BEGIN X509 CRL-----\nZ2FyYmFnZQ==\n-----END X509 CRL-----\n"]
        {
            let err = server_config(&fx.settings(&[&fx.ca.pem], &[garbage], false)).unwrap_err();
            assert!(matches!(&err, TlsError::BadCrl { path, .. } if path.ends_with("crl0.pem")), "{garbage:?}: {err}");
            assert!(
                err.to_string().contains("crl0.pem: not a valid CRL: not an X.509 CRL in PEM or DER form"),
                "{err}"
            );
        }
        let err = server_config(&fx.settings(&[&fx.ca.pem], &[&fx.ca.pem], false)).unwrap_err();
        assert!(err.to_string().contains("no PEM \"-----BEGIN X509 CRL-----\" block"), "{err}");

        let stranger = Ca::new("some other CA");
        let err = server_config(&fx.settings(&[&fx.ca.pem], &[&stranger.crl(&[], |_| {})], false)).unwrap_err();
        assert!(matches!(&err, TlsError::CrlIssuerUnknown { issuer, .. } if issuer == "CN=some other CA"), "{err}");

        // Same name as the configured CA, different key: a forgery, or a CA that was re-keyed.
        let impostor = Ca::new("proxyd unit test CA");
        let err = server_config(&fx.settings(&[&fx.ca.pem], &[&impostor.crl(&[], |_| {})], false)).unwrap_err();
        assert!(matches!(err, TlsError::CrlSignature { .. }), "{err}");
        assert!(err.to_string().contains("does not verify with the CA's key"), "{err}");

        let expired = fx.ca.crl(&[], |p| {
            p.this_update = date_time_ymd(2000, 1, 1);
            p.next_update = date_time_ymd(2001, 1, 1);
        });
        let err = server_config(&fx.settings(&[&fx.ca.pem], &[&expired], false)).unwrap_err();
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
        let err = server_config(&fx.settings(&[&ca_pem], &[&crl], false)).unwrap_err();
        assert!(matches!(err, TlsError::CrlIssuerNotCrlSigner { .. }), "{err}");
    }

    #[test]
    fn der_crls_and_several_crls_in_one_pem_file_load() {
        let fx = Fixture::new();
        let second = Ca::new("second CA");
        let both = format!("{}{}", fx.ca.crl(&[7], |_| {}), second.crl(&[], |_| {}));
        server_config(&fx.settings(&[&fx.ca.pem, &second.pem], &[&both], false)).unwrap();

        let der = CertificateRevocationListDer::from_pem_slice(fx.ca.crl(&[], |_| {}).as_bytes()).unwrap();
        let mut settings = fx.settings(&[&fx.ca.pem], &[], false);
        settings.crl_files = vec![fx.write("crl.der", der.as_ref())];
        server_config(&settings).unwrap();
    }

    // --- identity -----------------------------------------------------------------------------

    fn cert_der(issued: &Issued) -> Vec<u8> {
        CertificateDer::from_pem_slice(issued.cert.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn role_is_the_one_usable_common_name() {
        let ca = Ca::new("ca");
        let identity =
            |edit: fn(&mut CertificateParams)| identity_from_certificate(&cert_der(&ca.issue(None, 9, edit)));

        assert_eq!(identity(|_| {}), ClientIdentity::CertificateWithoutCn);
        assert_eq!(
            identity(|p| p.distinguished_name.push(DnType::CommonName, "")),
            ClientIdentity::CertificateWithoutCn
        );
        assert_eq!(
            identity(|p| p.distinguished_name.push(DnType::CommonName, "a\nb")),
            ClientIdentity::CertificateWithoutCn
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
            ClientIdentity::CertificateWithoutCn
        );
        assert_eq!(
            identity(|p| {
                p.distinguished_name.push(DnType::OrganizationName, "org");
                p.distinguished_name.push(DnType::CommonName, "first");
                p.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "second");
            }),
            ClientIdentity::CertificateWithoutCn,
            "two CNs are ambiguous: no role"
        );
        assert_eq!(
            identity(|p| p.distinguished_name.push(DnType::OrganizationName, "org")),
            ClientIdentity::CertificateWithoutCn
        );

        // A UTF8String CN whose bytes are not UTF-8 (the signature no longer matters here).
        let mut der = cert_der(&ca.issue(Some("role-XX"), 9, |_| {}));
        let at = der.windows(7).position(|w| w == b"role-XX").unwrap();
        der[at + 5] = 0xff;
        der[at + 6] = 0xfe;
        assert_eq!(identity_from_certificate(&der), ClientIdentity::CertificateWithoutCn);
        assert_eq!(identity_from_certificate(b"not a certificate"), ClientIdentity::CertificateWithoutCn);
        assert_eq!(ClientIdentity::Role("r".into()).role(), Some("r"));
        assert_eq!(ClientIdentity::CertificateWithoutCn.role(), None);
    }

    // --- handshakes ---------------------------------------------------------------------------

    #[tokio::test]
    async fn valid_client_certificate_gives_its_cn_as_role() {
        let fx = Fixture::new();
        let client = fx.ca.issue(Some("billing"), 10, |_| {});
        let server = server_config(&fx.mtls(false)).unwrap();
        for tls12 in [false, true] {
            let (identity, alpn) =
                handshake_with(Arc::clone(&server), client_config(&fx.ca.pem, Some(&client), tls12)).await.unwrap();
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
        for client in [&no_cn, &empty_cn] {
            assert_eq!(
                handshake(&fx, &fx.mtls(false), Some(client)).await.unwrap(),
                ClientIdentity::CertificateWithoutCn
            );
        }
    }

    #[tokio::test]
    async fn clients_of_either_of_two_cas_are_accepted() {
        let fx = Fixture::new();
        let second = Ca::new("second CA");
        let settings =
            fx.settings(&[&fx.ca.pem, &second.pem], &[&fx.ca.crl(&[], |_| {}), &second.crl(&[5], |_| {})], false);
        let server = server_config(&settings).unwrap();
        for (ca, cn, serial) in [(&fx.ca, "one", 4), (&second, "two", 4)] {
            let client = ca.issue(Some(cn), serial, |_| {});
            let (identity, _) =
                handshake_with(Arc::clone(&server), client_config(&fx.ca.pem, Some(&client), false)).await.unwrap();
            assert_eq!(identity, ClientIdentity::Role(cn.into()));
        }
        let revoked = second.issue(Some("two"), 5, |_| {});
        let result = handshake_with(server, client_config(&fx.ca.pem, Some(&revoked), false)).await.map(|r| r.0);
        assert!(is_cert_error(&result, |e| matches!(e, CertificateError::Revoked)), "{result:?}");
    }

    #[tokio::test]
    async fn revocation_is_checked_per_ca_and_a_ca_without_a_crl_is_not_checked() {
        let fx = Fixture::new();
        let second = Ca::new("second CA");
        let settings = fx.settings(&[&fx.ca.pem, &second.pem], &[&fx.ca.crl(&[66], |_| {})], false);
        let server = server_config(&settings).unwrap();
        // Serial 66 is revoked by the first CA only; the second CA's 66 is another certificate.
        let of_second = second.issue(Some("two"), 66, |_| {});
        let (identity, _) =
            handshake_with(Arc::clone(&server), client_config(&fx.ca.pem, Some(&of_second), false)).await.unwrap();
        assert_eq!(identity, ClientIdentity::Role("two".into()));
        let of_first = fx.ca.issue(Some("one"), 66, |_| {});
        let result = handshake_with(server, client_config(&fx.ca.pem, Some(&of_first), false)).await.map(|r| r.0);
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
        let server = server_config(&fx.settings(&[&fx.ca.pem], &[&crl], false)).unwrap();
        let client = fx.ca.issue(Some("billing"), 10, |_| {});
        tokio::time::sleep(Duration::from_millis(5100)).await;
        let result = handshake_with(server, client_config(&fx.ca.pem, Some(&client), false)).await.map(|r| r.0);
        assert!(
            is_cert_error(&result, |e| matches!(
                e,
                CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. }
            )),
            "{result:?}"
        );
    }
}
