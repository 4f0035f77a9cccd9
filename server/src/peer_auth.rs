//! Who may speak Raft to this node: the cluster secret, the cluster id, and
//! the proofs of the peer handshake (`protocol/src/peer.rs` describes the
//! exchange; `node/handshake.rs` runs it on connections).
//!
//! A proof is HMAC-SHA256, keyed by the cluster secret, over a transcript
//! that names the protocol version, which side is proving, the cluster id,
//! both node ids and both nonces. Each side's nonce is fresh per connection,
//! so a recorded proof is worth nothing on another connection; the side's
//! label keeps the answerer's proof from being sent back as the opener's.

use std::collections::BTreeSet;
use std::fmt;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use poncho_protocol::NodeId;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::durable;

/// A secret shorter than this (after trimming whitespace) is refused: it
/// could be guessed (32 hex digits are 128 bits). `openssl rand -hex 32`
/// gives 64 characters.
pub const MIN_SECRET_BYTES: usize = 32;
/// A secret file larger than this is refused: it is not a secret file.
pub const MAX_SECRET_BYTES: usize = 4096;
/// The file in a data directory that holds the node's cluster id.
pub const CLUSTER_ID_FILE: &str = "cluster-id";
/// The token a cluster id is derived from when `--initial-cluster-token` is
/// not given.
pub const DEFAULT_CLUSTER_TOKEN: &str = "poncho-cluster";

type HmacSha256 = Hmac<Sha256>;

/// A handshake nonce: 32 bytes from the operating system's generator.
pub type Nonce = [u8; 32];

/// The shared cluster secret. Neither `Debug` nor any error shows it.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

#[derive(Debug)]
pub enum SecretError {
    Read { path: PathBuf, error: io::Error },
    TooShort { path: PathBuf, bytes: usize },
    TooLong { path: PathBuf },
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::Read { path, error } => {
                write!(
                    f,
                    "cannot read the cluster secret file {}: {error}",
                    path.display()
                )
            }
            SecretError::TooShort { path, bytes } => write!(
                f,
                "the cluster secret in {} is {bytes} bytes; it must be at least \
                 {MIN_SECRET_BYTES} (make one with `openssl rand -hex 32 > FILE`)",
                path.display()
            ),
            SecretError::TooLong { path } => write!(
                f,
                "{} is larger than {MAX_SECRET_BYTES} bytes: not a cluster secret file",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SecretError {}

impl ClusterSecret {
    /// The secret in `path`: its contents without leading and trailing
    /// whitespace. Also returns a warning to log if others than the owner
    /// may read the file.
    pub fn load(path: &Path) -> Result<(ClusterSecret, Option<String>), SecretError> {
        let read_err = |error| SecretError::Read {
            path: path.to_path_buf(),
            error,
        };
        let file = fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        // Bounded by what is read, not by what metadata says (a device
        // reports 0 bytes and has no end).
        let mut bytes = Vec::new();
        io::Read::take(&file, MAX_SECRET_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(SecretError::TooLong {
                path: path.to_path_buf(),
            });
        }
        let secret = ClusterSecret::from_bytes(&bytes).map_err(|bytes| SecretError::TooShort {
            path: path.to_path_buf(),
            bytes,
        })?;
        let mode = meta.permissions().mode();
        let warning = (mode & 0o077 != 0).then(|| {
            format!(
                "the cluster secret file {} may be read by others than its owner (mode {:o}); \
                 `chmod 600` it",
                path.display(),
                mode & 0o777
            )
        });
        Ok((secret, warning))
    }

    /// The secret `bytes` hold, trimmed; its length if too short.
    pub fn from_bytes(bytes: &[u8]) -> Result<ClusterSecret, usize> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(trimmed.len());
        }
        Ok(ClusterSecret(trimmed.to_vec()))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length.
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

/// Which end of a connection a proof is made by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The node that opened the connection (it sent `PEER_HELLO`).
    Opener,
    /// The node that accepted it.
    Answerer,
}

/// What a proof is over: one handshake between `opener` and `answerer`.
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    pub cluster_id: &'a str,
    pub opener: NodeId,
    pub answerer: NodeId,
    pub opener_nonce: &'a Nonce,
    pub answerer_nonce: &'a Nonce,
}

impl Transcript<'_> {
    fn mac(&self, secret: &ClusterSecret, side: Side) -> HmacSha256 {
        let mut mac = secret.mac();
        mac.update(b"poncho peer handshake v1\0");
        // Both labels are 8 bytes.
        mac.update(match side {
            Side::Opener => b"opener\0\0",
            Side::Answerer => b"answerer",
        });
        mac.update(&(self.cluster_id.len() as u64).to_be_bytes());
        mac.update(self.cluster_id.as_bytes());
        mac.update(&self.opener.to_be_bytes());
        mac.update(&self.answerer.to_be_bytes());
        mac.update(self.opener_nonce);
        mac.update(self.answerer_nonce);
        mac
    }

    /// `side`'s proof, as hex for the wire.
    pub fn proof(&self, secret: &ClusterSecret, side: Side) -> String {
        to_hex(&self.mac(secret, side).finalize().into_bytes())
    }

    /// Whether `proof` (hex) is `side`'s proof; compared in constant time.
    pub fn verify(&self, secret: &ClusterSecret, side: Side, proof: &str) -> bool {
        match from_hex(proof) {
            Some(bytes) => self.mac(secret, side).verify_slice(&bytes).is_ok(),
            None => false,
        }
    }
}

/// A fresh nonce from the operating system.
pub fn fresh_nonce() -> Nonce {
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// 32 bytes from 64 lowercase hex digits.
pub fn from_hex(s: &str) -> Option<Nonce> {
    if !poncho_protocol::peer::is_handshake_hex(s) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// The id a brand-new cluster gets, the same on every member that starts
/// with the same flags: derived from `token` (`--initial-cluster-token`) and
/// the member ids. Not from the secret: the id is told to peers before they
/// prove anything, and must give nothing to guess the secret from. Like
/// etcd's, it tells clusters apart only as well as their tokens do: give
/// each cluster its own.
pub fn initial_cluster_id(token: &str, members: &BTreeSet<NodeId>) -> String {
    let mut hash = Sha256::new();
    hash.update(b"poncho cluster id v1\0");
    hash.update((token.len() as u64).to_be_bytes());
    hash.update(token.as_bytes());
    for id in members {
        hash.update(id.to_be_bytes());
    }
    to_hex(&hash.finalize()[..8])
}

#[derive(Debug)]
pub enum ClusterIdError {
    Io { path: PathBuf, error: io::Error },
    Corrupt { path: PathBuf },
}

impl fmt::Display for ClusterIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterIdError::Io { path, error } => {
                write!(f, "cannot read or write {}: {error}", path.display())
            }
            ClusterIdError::Corrupt { path } => write!(
                f,
                "{} does not hold a cluster id (1 to {} letters, digits, '-' or '_'); it was \
                 written by this node when its cluster was formed, so something else changed \
                 it: restore it from a backup of this data directory",
                path.display(),
                poncho_protocol::peer::MAX_CLUSTER_ID_LEN
            ),
        }
    }
}

impl std::error::Error for ClusterIdError {}

/// The cluster id recorded in `data_dir`, or, if none is (a new data
/// directory, or one from before cluster ids), `initial` written there
/// durably first. Returns the id and whether it was just recorded.
pub fn recorded_cluster_id(
    data_dir: &Path,
    initial: &str,
    fsync: bool,
) -> Result<(String, bool), ClusterIdError> {
    let path = data_dir.join(CLUSTER_ID_FILE);
    let io_err = |error| ClusterIdError::Io {
        path: path.clone(),
        error,
    };
    match fs::read(&path) {
        Ok(bytes) => {
            let id = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
            if !poncho_protocol::peer::is_cluster_id(id) {
                return Err(ClusterIdError::Corrupt { path });
            }
            Ok((id.to_string(), false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tmp = data_dir.join(format!("{CLUSTER_ID_FILE}.tmp"));
            let _ = fs::remove_file(&tmp);
            let mut file = durable::create_new(&tmp, false, &()).map_err(|f| io_err(f.source))?;
            file.write_all(format!("{initial}\n").as_bytes())
                .map_err(io_err)?;
            durable::replace(file, &tmp, &path, fsync, &()).map_err(|f| io_err(f.source))?;
            Ok((initial.to_string(), true))
        }
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::from_bytes(s.as_bytes()).unwrap()
    }

    fn transcript<'a>(opener_nonce: &'a Nonce, answerer_nonce: &'a Nonce) -> Transcript<'a> {
        Transcript {
            cluster_id: "abc",
            opener: 1,
            answerer: 2,
            opener_nonce,
            answerer_nonce,
        }
    }

    #[test]
    fn a_proof_verifies_only_for_its_secret_side_ids_cluster_and_nonces() {
        let k = secret("0123456789abcdef0123456789abcdef");
        let (n1, n2) = (fresh_nonce(), fresh_nonce());
        assert_ne!(n1, n2, "nonces are fresh");
        let t = transcript(&n1, &n2);
        let proof = t.proof(&k, Side::Opener);
        assert!(t.verify(&k, Side::Opener, &proof));
        // Another secret, the other side's label, other ids, another
        // cluster, other nonces: each refused.
        assert!(!t.verify(
            &secret("0123456789abcdef0123456789abcdeg"),
            Side::Opener,
            &proof
        ));
        assert!(!t.verify(&k, Side::Answerer, &proof));
        let swapped = Transcript {
            opener: 2,
            answerer: 1,
            ..t
        };
        assert!(!swapped.verify(&k, Side::Opener, &proof));
        let other_cluster = Transcript {
            cluster_id: "abd",
            ..t
        };
        assert!(!other_cluster.verify(&k, Side::Opener, &proof));
        let n3 = fresh_nonce();
        assert!(!transcript(&n1, &n3).verify(&k, Side::Opener, &proof));
        assert!(!transcript(&n3, &n2).verify(&k, Side::Opener, &proof));
        // Malformed proofs.
        assert!(!t.verify(&k, Side::Opener, ""));
        assert!(!t.verify(&k, Side::Opener, &proof.to_uppercase()));
        assert!(!t.verify(&k, Side::Opener, &proof[..62]));
    }

    #[test]
    fn hex_round_trips_and_rejects_what_is_not_64_lowercase_digits() {
        let n = fresh_nonce();
        assert_eq!(from_hex(&to_hex(&n)), Some(n));
        assert_eq!(from_hex(&"g".repeat(64)), None);
        assert_eq!(from_hex(&"a".repeat(63)), None);
    }

    #[test]
    fn a_secret_is_trimmed_must_be_long_enough_and_never_shown() {
        assert!(ClusterSecret::from_bytes(b"  short \n").is_err());
        let s = ClusterSecret::from_bytes(b"  0123456789abcdef0123456789abcdef \n").unwrap();
        assert_eq!(s.0, b"0123456789abcdef0123456789abcdef");
        assert_eq!(format!("{s:?}"), "ClusterSecret(..)");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, "tiny").unwrap();
        let err = ClusterSecret::load(&path).unwrap_err().to_string();
        assert!(err.contains("4 bytes") && !err.contains("tiny"), "{err}");
        fs::write(&path, "a-secret-long-enough-to-use-0123456789").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, warning) = ClusterSecret::load(&path).unwrap();
        assert!(warning.unwrap().contains("chmod 600"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ClusterSecret::load(&path).unwrap().1.is_none());
        // A device with no end is refused, not read for ever.
        let e = ClusterSecret::load(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(e, SecretError::TooLong { .. }), "{e}");
    }

    #[test]
    fn cluster_ids_differ_by_token_and_members_and_are_recorded_once() {
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let id = initial_cluster_id("t", &members);
        assert!(poncho_protocol::peer::is_cluster_id(&id));
        assert_eq!(id, initial_cluster_id("t", &members));
        assert_ne!(id, initial_cluster_id("u", &members));
        assert_ne!(id, initial_cluster_id("t", &[1, 2].into()));

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            recorded_cluster_id(dir.path(), "first", true).unwrap(),
            ("first".to_string(), true)
        );
        // Once recorded, what a later start would derive does not matter.
        assert_eq!(
            recorded_cluster_id(dir.path(), "second", true).unwrap(),
            ("first".to_string(), false)
        );
        fs::write(dir.path().join(CLUSTER_ID_FILE), "not an id!\n").unwrap();
        let err = recorded_cluster_id(dir.path(), "x", true).unwrap_err();
        assert!(matches!(err, ClusterIdError::Corrupt { .. }), "{err}");
    }
}
