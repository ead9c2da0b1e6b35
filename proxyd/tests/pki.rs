//! Tests of the test PKI, through proxyd's TLS configuration.

use std::fs;

use proxyd::tls::{ClientIdentity, ServerIdentity, ServerTls, TlsSettings};
use rustls::CertificateError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use testkit::pki::*;

fn settings(pki: &TestPki, server: ServerIdentity) -> TlsSettings {
    TlsSettings {
        server_bundle: server,
        client_ca_files: vec![pki.ca_pem.clone(), pki.second_ca_pem.clone()],
        crl_files: vec![pki.crl.clone(), pki.second_ca_crl.clone()],
        allow_missing_role: false,
        role_from: Default::default(),
    }
}

#[test]
fn the_files_parse_and_proxyd_accepts_them() {
    let pki = TestPki::new();
    for path in [&pki.ca_pem, &pki.second_ca_pem, &pki.server_cert] {
        assert_eq!(CertificateDer::pem_file_iter(path).unwrap().count(), 1, "{}", path.display());
    }
    assert_eq!(CertificateDer::pem_file_iter(&pki.server_bundle).unwrap().count(), 1);
    PrivateKeyDer::from_pem_file(&pki.server_bundle).unwrap();
    PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();

    let crl = CertificateRevocationListDer::from_pem_file(&pki.crl).unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(&crl).unwrap();
    let serials: Vec<u64> = parsed.iter_revoked_certificates().map(|r| u64::try_from(r.serial()).unwrap()).collect();
    assert_eq!(serials, vec![REVOKED_SERIAL]);
    assert_eq!(parsed.issuer().to_string(), "CN=proxyd test CA");
    CertificateRevocationListDer::from_pem_file(&pki.second_ca_crl).unwrap();

    let client = pki.client(Some("billing"));
    assert_eq!(client.cn.as_deref(), Some("billing"));
    assert_eq!(fs::read_to_string(&client.cert_path).unwrap(), client.cert_pem);
    assert_eq!(fs::read_to_string(&client.key_path).unwrap(), client.key_pem);
    assert_ne!(pki.client(None).cert_path, client.cert_path, "every client gets its own files");

    ServerTls::new(&settings(&pki, ServerIdentity::Bundle(pki.server_bundle.clone()))).unwrap();
    let pair = ServerIdentity::CertAndKey { cert: pki.server_cert.clone(), key: pki.server_key.clone() };
    ServerTls::new(&settings(&pki, pair)).unwrap();
}

fn rustls_error(error: std::io::Error) -> rustls::Error {
    match error.into_inner().map(|inner| inner.downcast::<rustls::Error>()) {
        Some(Ok(error)) => *error,
        Some(Err(other)) => rustls::Error::General(other.to_string()),
        None => rustls::Error::General("I/O error without details".into()),
    }
}

/// Connects over loopback to a server with `proxyd`'s TLS configuration; the server's verdict.
async fn identity_over(pki: &TestPki, ip: &str, cert: Option<&ClientCert>) -> Result<ClientIdentity, rustls::Error> {
    let server_tls = ServerTls::new(&settings(pki, ServerIdentity::Bundle(pki.server_bundle.clone()))).unwrap();
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut stream = server_tls.acceptor().accept(socket).await.map_err(rustls_error)?;
        let identity = server_tls.client_identity(stream.get_ref().1)?;
        stream.write_all(b"ok").await.map_err(rustls_error)?;
        stream.shutdown().await.map_err(rustls_error)?;
        Ok(identity)
    });
    let name = match ip {
        "127.0.0.1" | "::1" => ServerName::from(address.ip()),
        _ => pki.server_name(),
    };
    let socket = TcpStream::connect(address).await.unwrap();
    if let Ok(mut stream) = pki.client_connector(cert).connect(name, socket).await {
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply).await;
    }
    server.await.unwrap()
}

#[tokio::test]
async fn the_certificates_do_what_their_names_say() {
    let pki = TestPki::new();
    let billing = pki.client(Some("billing"));
    assert_eq!(identity_over(&pki, "127.0.0.1", Some(&billing)).await, Ok(ClientIdentity::Role("billing".into())));
    if TcpListener::bind(("::1", 0)).await.is_ok() {
        assert_eq!(identity_over(&pki, "::1", Some(&billing)).await, Ok(ClientIdentity::Role("billing".into())));
    }
    let second = pki.second_ca_client(Some("second"));
    assert_eq!(identity_over(&pki, "localhost", Some(&second)).await, Ok(ClientIdentity::Role("second".into())));
    let anonymous = pki.client(None);
    assert_eq!(
        identity_over(&pki, "127.0.0.1", Some(&anonymous)).await,
        Ok(ClientIdentity::CertificateWithoutRole(proxyd::role::MissingRole::NoField))
    );

    let result = identity_over(&pki, "127.0.0.1", Some(&pki.revoked_client())).await;
    assert!(matches!(result, Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))), "{result:?}");
    let result = identity_over(&pki, "127.0.0.1", Some(&pki.expired_client())).await;
    assert!(
        matches!(result, Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }))),
        "{result:?}"
    );
    let result = identity_over(&pki, "127.0.0.1", Some(&pki.other_ca_client())).await;
    assert!(matches!(result, Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))), "{result:?}");
    let result = identity_over(&pki, "127.0.0.1", None).await;
    assert!(matches!(result, Err(rustls::Error::NoCertificatesPresented)), "{result:?}");
}
