//! A test PKI, generated fresh for each test and written as PEM files to a
//! temporary directory: a CA that issues the server certificate and client
//! certificates, a second client CA, a CRL from each, and an untrusted CA.
//!
//! Test use only: the private keys are written unprotected.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Serial number of the certificate that `crl` lists.
/// The serial of the certificate every CRL of this PKI revokes.
pub const REVOKED_SERIAL: u64 = 1000;

/// Certificates, keys and CRLs on disk, and the CAs that can issue more.
#[derive(Debug)]
pub struct TestPki {
    pub dir: tempfile::TempDir,
    /// The CA: issuer of the server certificate and of [`TestPki::client`] certificates.
    pub ca_pem: PathBuf,
    /// A second client CA, for deployments that trust two.
    pub second_ca_pem: PathBuf,
    /// Server chain and key in one file (`--tls-server-bundle-file`).
    pub server_bundle: PathBuf,
    /// Server chain alone (`tls.cert_file`); valid for 127.0.0.1, ::1 and localhost.
    pub server_cert: PathBuf,
    /// Server key alone (`tls.key_file`).
    pub server_key: PathBuf,
    /// The CA's CRL; it lists [`TestPki::revoked_client`].
    pub crl: PathBuf,
    /// The second CA's CRL, empty. Optional: a client CA without a CRL is simply not revocation-checked.
    pub second_ca_crl: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    second_ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
    revoked: ClientCert,
    next_serial: AtomicU64,
}

/// A client certificate and its key, in memory and on disk.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// The subject CN, if the certificate has one.
    pub cn: Option<String>,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl ClientCert {
    /// The chain to present: just the certificate (its CA is a trust anchor).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("client certificate PEM")]
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("client key PEM")
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = new_ca("proxyd test CA");
        let second_ca = new_ca("proxyd second test CA");
        let other_ca = new_ca("untrusted test CA");

        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".into(), "::1".into(), "localhost".into()]).expect("server names");
        params.distinguished_name = name("proxyd test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(SerialNumber::from(1u64));
        params.use_authority_key_identifier_extension = true;
        let server_cert = params.signed_by(&server_key, &ca).expect("server certificate").pem();

        let write = |file: &str, contents: &str| {
            let path = dir.path().join(file);
            fs::write(&path, contents).expect("write test PKI file");
            path
        };
        let revoked = issue(dir.path(), &ca, Some("revoked"), REVOKED_SERIAL, |_| {});
        TestPki {
            ca_pem: write("ca.pem", &ca.pem()),
            second_ca_pem: write("second-ca.pem", &second_ca.pem()),
            server_bundle: write("server-bundle.pem", &format!("{server_cert}{}", server_key.serialize_pem())),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key.serialize_pem()),
            crl: write("ca.crl.pem", &crl(&ca, &[REVOKED_SERIAL])),
            second_ca_crl: write("second-ca.crl.pem", &crl(&second_ca, &[])),
            revoked,
            ca,
            second_ca,
            other_ca,
            next_serial: AtomicU64::new(REVOKED_SERIAL + 1),
            dir,
        }
    }

    /// A client certificate from the CA (clientAuth), with subject CN `cn` (none if `None`).
    pub fn client(&self, cn: Option<&str>) -> ClientCert {
        issue(self.dir.path(), &self.ca, cn, self.serial(), |_| {})
    }

    /// A client certificate from the CA with subject CN `cn`, adjusted by
    /// `edit` (other subject fields, SANs) before it is signed.
    pub fn client_with(&self, cn: Option<&str>, edit: impl FnOnce(&mut CertificateParams)) -> ClientCert {
        issue(self.dir.path(), &self.ca, cn, self.serial(), edit)
    }

    /// A server certificate (serverAuth) from the CA for `names` (DNS names
    /// or IP addresses), for origins that clients reach through the proxy.
    pub fn server_for(&self, names: &[&str]) -> ClientCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        issue(self.dir.path(), &self.ca, names.first().map(String::as_str), self.serial(), |params| {
            params.subject_alt_names = CertificateParams::new(names.clone()).expect("server names").subject_alt_names;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        })
    }

    /// A client certificate from the second CA.
    pub fn second_ca_client(&self, cn: Option<&str>) -> ClientCert {
        issue(self.dir.path(), &self.second_ca, cn, self.serial(), |_| {})
    }

    /// A client certificate from the CA, CN `revoked`, listed in [`TestPki::crl`].
    pub fn revoked_client(&self) -> ClientCert {
        self.revoked.clone()
    }

    /// A client certificate from the CA, CN `expired`, valid only in the year 2000.
    pub fn expired_client(&self) -> ClientCert {
        issue(self.dir.path(), &self.ca, Some("expired"), self.serial(), |params| {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        })
    }

    /// A client certificate, CN `other`, from a CA that `proxyd` is never told about.
    pub fn other_ca_client(&self) -> ClientCert {
        issue(self.dir.path(), &self.other_ca, Some("other"), self.serial(), |_| {})
    }

    /// A TLS client (ring provider, ALPN `http/1.1`) that trusts the test CA
    /// and presents `cert` when asked.
    pub fn client_connector(&self, cert: Option<&ClientCert>) -> TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(self.ca.der().to_vec())).expect("test CA as a root");
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let mut config = match cert {
            None => builder.with_no_client_auth(),
            Some(cert) => builder.with_client_auth_cert(cert.chain(), cert.key()).expect("client certificate"),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// The name to connect to: the server certificate is valid for it.
    pub fn server_name(&self) -> ServerName<'static> {
        ServerName::try_from("localhost").expect("server name")
    }

    fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    name
}

fn new_ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate")
}

fn issue(
    dir: &Path,
    ca: &CertifiedIssuer<'static, KeyPair>,
    cn: Option<&str>,
    serial: u64,
    edit: impl FnOnce(&mut CertificateParams),
) -> ClientCert {
    let mut params = CertificateParams::default();
    params.distinguished_name = cn.map_or_else(DistinguishedName::new, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(SerialNumber::from(serial));
    params.use_authority_key_identifier_extension = true;
    edit(&mut params);
    let key = KeyPair::generate().expect("client key");
    let cert_pem = params.signed_by(&key, ca).expect("client certificate").pem();
    let key_pem = key.serialize_pem();
    let cert_path = dir.join(format!("client-{serial}.pem"));
    let key_path = dir.join(format!("client-{serial}-key.pem"));
    fs::write(&cert_path, &cert_pem).expect("write client certificate");
    fs::write(&key_path, &key_pem).expect("write client key");
    ClientCert { cn: cn.map(str::to_owned), cert_pem, key_pem, cert_path, key_path }
}

fn crl(ca: &CertifiedIssuer<'static, KeyPair>, revoked: &[u64]) -> String {
    CertificateRevocationListParams {
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
    }
    .signed_by(ca)
    .expect("CRL")
    .pem()
    .expect("CRL PEM")
}
