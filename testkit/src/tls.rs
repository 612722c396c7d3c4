//! A throwaway PKI for TLS tests: a CA, a server certificate for
//! `localhost`/`127.0.0.1` and a client certificate, all signed by the CA
//! and written as PEM files, the way a Kubernetes TLS Secret is mounted.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// PEM files in a temporary folder, removed when dropped.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Generates the CA and the two leaf certificates.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the test PKI");
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "cqrs-bank test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();

        for (name, usage) in
            [("server", ExtendedKeyUsagePurpose::ServerAuth), ("client", ExtendedKeyUsagePurpose::ClientAuth)]
        {
            let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Self { dir }
    }

    /// The CA certificate both sides verify the other with.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server certificate (SANs `localhost`, `127.0.0.1`) and its key.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.dir.path().join("server.crt"), self.dir.path().join("server.key"))
    }

    /// The client certificate and its key, for mutual TLS.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.dir.path().join("client.crt"), self.dir.path().join("client.key"))
    }

    /// The contents of `path`, for APIs that take PEM text.
    pub fn pem(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }
}
