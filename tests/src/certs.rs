//! Test certificates, made per run: a CA, and leaves it signs for nodes and
//! clients (valid, expired, or for another address), written as PEM files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA: its certificate file, and what it needs to sign leaves.
pub struct TestCa {
    pub cert_file: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
}

/// A leaf's certificate and key files.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).expect("a CA certificate");
        let cert_file = dir.join(format!("{name}.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write the CA");
        TestCa {
            cert_file,
            cert,
            key,
            dir: dir.to_path_buf(),
        }
    }

    /// A leaf named `name` (its common name) for `sans` (IP addresses or DNS
    /// names), valid now.
    pub fn leaf(&self, name: &str, sans: &[&str]) -> Leaf {
        self.make_leaf(name, name, sans, false)
    }

    /// A leaf like [`TestCa::leaf`], its files named `file` (several leaves
    /// may then share a common name).
    pub fn leaf_as(&self, file: &str, name: &str, sans: &[&str]) -> Leaf {
        self.make_leaf(file, name, sans, false)
    }

    /// A leaf like [`TestCa::leaf`] that expired in 2001.
    pub fn expired_leaf(&self, name: &str, sans: &[&str]) -> Leaf {
        self.make_leaf(name, name, sans, true)
    }

    fn make_leaf(&self, file: &str, name: &str, sans: &[&str], expired: bool) -> Leaf {
        let key = KeyPair::generate().expect("a leaf key");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a leaf certificate");
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write the leaf");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write the key");
        std::fs::set_permissions(&leaf.key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the key");
        leaf
    }
}
