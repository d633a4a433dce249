//! CURVE security for sockets: certificate files, key pairs, and the options
//! that make a socket a CURVE client or server (ZeroMQ RFC 26).
//!
//! Files are czmq's and pyzmq's (`proto::cert`): `NAME.key` public,
//! `NAME.key_secret` both keys, readable only by its owner (a secret file
//! others may read is refused: [`crate::secret`]).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use proto::cert::{Certificate, Key};

use crate::secret::{self, Exposed, Place};

/// What a CURVE client needs: its own key pair, and the server's public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientKeys {
    pub public: Key,
    pub secret: Key,
    pub server: Key,
}

/// What a CURVE server needs: its own key pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerKeys {
    pub public: Key,
    pub secret: Key,
}

#[derive(Debug, thiserror::Error)]
pub enum CertFileError {
    #[error("cannot read the certificate {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("certificate {path}: {source}")]
    Parse { path: PathBuf, source: proto::cert::CertError },
    #[error(
        "{path} is a public certificate; this needs the secret one (NAME.key_secret, made with `keygen`)"
    )]
    NoSecret { path: PathBuf },
    #[error("{path} already exists: keys are never overwritten (remove it first if you mean to replace it)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot make a key pair: {0} (is libzmq built with libsodium?)")]
    Keygen(zmq::Error),
    // Not transparent: `Exposed` stays in the source chain (exit 78).
    #[error("{0}")]
    Exposed(#[from] Exposed),
}

/// Reads a public certificate file. A file of the same name in
/// `$CREDENTIALS_DIRECTORY` wins: that is how systemd's `LoadCredential=`
/// hands a root-owned secret key to a service's dynamic user, as the
/// packaged units do.
pub fn read_certificate(path: &Path) -> Result<Certificate, CertFileError> {
    let path = secret::credential(path).unwrap_or_else(|| path.into());
    let text = std::fs::read_to_string(&path)
        .map_err(|source| CertFileError::Read { path: path.clone(), source })?;
    Certificate::parse(&text).map_err(|source| CertFileError::Parse { path, source })
}

/// Reads a secret certificate file (`NAME.key_secret`, or the credential of
/// that name) as a key pair; refused if others may read it.
pub fn read_key_pair(path: &Path) -> Result<ServerKeys, CertFileError> {
    let (path, place) = match secret::credential(path) {
        Some(credential) => (credential, Place::Credentials),
        None => (path.to_path_buf(), Place::Disk),
    };
    // Read, then judge: a public certificate given here is "not the secret
    // one" (the user's mistake), not "too open" (it is meant to be open).
    let (text, mode) =
        secret::read_with_mode(&path).map_err(|source| CertFileError::Read { path: path.clone(), source })?;
    let cert =
        Certificate::parse(&text).map_err(|source| CertFileError::Parse { path: path.clone(), source })?;
    let Some(secret) = cert.secret else { return Err(CertFileError::NoSecret { path }) };
    secret::check_mode(&path, mode, place)?;
    Ok(ServerKeys { public: cert.public, secret })
}

/// Client keys from this side's secret certificate and the server's public one.
pub fn read_client_keys(own_secret: &Path, server_public: &Path) -> Result<ClientKeys, CertFileError> {
    let own = read_key_pair(own_secret)?;
    let server = read_certificate(server_public)?.public;
    Ok(ClientKeys { public: own.public, secret: own.secret, server })
}

/// A new key pair from libzmq (libsodium's random source).
pub fn generate() -> Result<ServerKeys, CertFileError> {
    let pair = zmq::CurveKeyPair::new().map_err(CertFileError::Keygen)?;
    Ok(ServerKeys { public: Key(pair.public_key), secret: Key(pair.secret_key) })
}

/// Writes a new key pair as `dir/NAME.key` and `dir/NAME.key_secret` (mode
/// 0600), never replacing either. Returns both paths. Missing directories
/// are made 0700 whatever the umask; an existing one that others may write
/// is left alone, with a warning.
pub fn write_new_pair(
    dir: &Path,
    name: &str,
    generated_by: &str,
) -> Result<(PathBuf, PathBuf), CertFileError> {
    let public_path = dir.join(format!("{name}.key"));
    let secret_path = dir.join(format!("{name}.key_secret"));
    for path in [&public_path, &secret_path] {
        if path.exists() {
            return Err(CertFileError::Exists { path: path.clone() });
        }
    }
    let warning = secret::create_private_dir(dir)
        .map_err(|source| CertFileError::Write { path: dir.into(), source })?;
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    let keys = generate()?;
    let cert = Certificate {
        public: keys.public,
        secret: Some(keys.secret),
        metadata: vec![("name".into(), name.into())],
    };
    // The secret first: if it cannot be written, no public half is left behind.
    write_new(&secret_path, &cert.secret_text(generated_by), 0o600)?;
    write_new(&public_path, &cert.public_text(generated_by), 0o644)?;
    Ok((public_path, secret_path))
}

/// Creates `path` with `mode`; fails if it exists (O_EXCL), so a key is never overwritten.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), CertFileError> {
    let error = |source| CertFileError::Write { path: path.into(), source };
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(
        |e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CertFileError::Exists { path: path.into() },
            _ => error(e),
        },
    )?;
    file.write_all(text.as_bytes()).and_then(|_| file.sync_all()).map_err(error)
}

/// Makes `socket` a CURVE client of the server whose public key is in `keys`.
/// Call before `connect`.
pub fn make_client(socket: &zmq::Socket, keys: &ClientKeys) -> zmq::Result<()> {
    socket.set_curve_serverkey(&keys.server.0)?;
    socket.set_curve_publickey(&keys.public.0)?;
    socket.set_curve_secretkey(&keys.secret.0)
}

/// Bytes CURVE adds to each frame on the wire (the MESSAGE command's name,
/// nonce, flags and MAC: 33), rounded up. libzmq applies `ZMQ_MAXMSGSIZE` to
/// the encrypted frame, so a CURVE server allows this much more to keep its
/// configured limit a limit on what peers send, not on its encryption.
pub const FRAME_OVERHEAD: i64 = 64;

/// Makes `socket` a CURVE server that asks the ZAP handler about each peer,
/// naming itself `domain` in the request. Call before `bind`.
pub fn make_server(socket: &zmq::Socket, keys: &ServerKeys, domain: &str) -> zmq::Result<()> {
    socket.set_curve_server(true)?;
    socket.set_curve_secretkey(&keys.secret.0)?;
    socket.set_zap_domain(domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_pairs_are_private_readable_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (public, secret) = write_new_pair(dir.path(), "pump-1", "test").unwrap();
        assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        let pair = read_key_pair(&secret).unwrap();
        assert_eq!(read_certificate(&public).unwrap().public, pair.public);
        assert!(matches!(read_key_pair(&public), Err(CertFileError::NoSecret { .. })));
        let before = std::fs::read(&secret).unwrap();
        assert!(matches!(write_new_pair(dir.path(), "pump-1", "test"), Err(CertFileError::Exists { .. })));
        assert_eq!(std::fs::read(&secret).unwrap(), before);
    }

    #[test]
    fn a_secret_others_may_read_is_refused_and_a_public_one_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let (public, secret) = write_new_pair(&dir.path().join("keys"), "hub", "test").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key_pair(&secret).unwrap_err();
        assert!(matches!(e, CertFileError::Exposed(_)), "{e}");
        assert!(e.to_string().contains(&format!("chmod 600 {}", secret.display())), "{e}");
        let source = std::error::Error::source(&e).expect("the chain holds the cause");
        assert!(source.is::<Exposed>(), "binaries find it there to exit 78");
        assert!(matches!(read_client_keys(&secret, &public), Err(CertFileError::Exposed(_))));
        // A public certificate is meant to be readable: that is not the problem with it.
        assert!(matches!(read_key_pair(&public), Err(CertFileError::NoSecret { .. })));
        assert!(read_certificate(&public).is_ok());
    }

    #[test]
    fn a_curve_client_reaches_a_curve_server() {
        let ctx = zmq::Context::new();
        let server_keys = generate().unwrap();
        let client_pair = generate().unwrap();
        let server = ctx.socket(zmq::REP).unwrap();
        make_server(&server, &server_keys, "test").unwrap();
        server.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = server.get_last_endpoint().unwrap().unwrap();
        let client = ctx.socket(zmq::REQ).unwrap();
        let keys =
            ClientKeys { public: client_pair.public, secret: client_pair.secret, server: server_keys.public };
        make_client(&client, &keys).unwrap();
        client.connect(&endpoint).unwrap();
        client.send("ping", 0).unwrap();
        assert_eq!(server.poll(zmq::POLLIN, 5000).unwrap(), 1, "the handshake completes");
        assert_eq!(server.recv_bytes(0).unwrap(), b"ping");
    }
}
