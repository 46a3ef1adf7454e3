//! Password authentication of Postgres clients on the primary: PostgreSQL's `md5`
//! method and SCRAM-SHA-256 (RFC 5802 / RFC 7677, without channel binding), the
//! server side of both, independent of the wire library (see [`crate::pg`] for the
//! glue).
//!
//! Passwords come from the cluster file ([`crate::config::User`]): in clear (both
//! methods work; the SCRAM verifier is derived once at start with a random salt and
//! 4096 iterations) or as PostgreSQL stores them: `md5<hex>` or
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
//!
//! An unknown user goes through the same exchange as a known one (with a salt derived
//! from a per-process key and the name, as PostgreSQL's mock authentication does) and
//! fails at the same point with the same error, so a client cannot tell unknown users
//! from wrong passwords. Nothing here logs or returns a password.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::{AuthMethod, User};

/// The SASL mechanism name clients are offered.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// PBKDF2 iterations of verifiers derived from cleartext passwords (PostgreSQL's
/// default `scram_iterations`).
pub const SCRAM_ITERATIONS: u32 = 4096;
const SCRAM_SALT_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of every length: this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Compares in time independent of where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| AuthError::Internal(format!("no randomness: {e}")))?;
    Ok(b)
}

/// PBKDF2-HMAC-SHA256 with one output block: SCRAM's `Hi()`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (o, x) in out.iter_mut().zip(&u) {
            *o ^= x;
        }
    }
    out
}

/// SASLprep of a password, or the password itself when it is not valid UTF-8 or
/// SASLprep refuses it (what PostgreSQL and libpq do).
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// Whether `s` is a PostgreSQL MD5 password hash (`md5` and 32 hex digits).
pub fn is_md5_hash(s: &str) -> bool {
    s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks the form of a configured password without deriving anything: a
/// `SCRAM-SHA-256$` verifier must parse (anything else is an MD5 hash or a cleartext
/// password).
///
/// # Errors
/// What is malformed (never the value).
pub fn check_password_form(password: &str) -> Result<(), String> {
    if password.starts_with("SCRAM-SHA-256$") {
        ScramVerifier::parse(password)?;
    }
    Ok(())
}

/// `md5` + hex(md5(password + user)): what PostgreSQL stores for the md5 method.
pub fn md5_hash(user: &str, password: &str) -> String {
    let mut v = password.as_bytes().to_vec();
    v.extend_from_slice(user.as_bytes());
    format!("md5{:x}", md5::compute(&v))
}

/// A SCRAM-SHA-256 verifier: what the server needs to check a client (and prove
/// itself) without knowing the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(<redacted>)")
    }
}

impl ScramVerifier {
    /// The verifier of `password` with `salt` and `iterations`.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let salted = hi(&normalize(password), salt, iterations.max(1));
        let client_key = hmac(&salted, &[b"Client Key"]);
        ScramVerifier {
            iterations: iterations.max(1),
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// Parses PostgreSQL's text form
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts).
    ///
    /// # Errors
    /// A description of what is malformed (never the value).
    pub fn parse(s: &str) -> Result<ScramVerifier, String> {
        let bad = |w: &str| Err(format!("malformed SCRAM-SHA-256 verifier ({w})"));
        let Some(rest) = s.strip_prefix("SCRAM-SHA-256$") else {
            return bad("prefix");
        };
        let Some((iter_salt, keys)) = rest.split_once('$') else {
            return bad("missing '$'");
        };
        let (Some((iters, salt)), Some((stored, server))) =
            (iter_salt.split_once(':'), keys.split_once(':'))
        else {
            return bad("missing ':'");
        };
        let Ok(iterations) = iters.parse::<u32>() else {
            return bad("iterations");
        };
        if iterations == 0 {
            return bad("iterations");
        }
        let Ok(salt) = B64.decode(salt) else {
            return bad("salt");
        };
        let key = |k: &str| -> Option<[u8; 32]> { B64.decode(k).ok()?.try_into().ok() };
        let (Some(stored_key), Some(server_key)) = (key(stored), key(server)) else {
            return bad("keys");
        };
        if salt.is_empty() {
            return bad("salt");
        }
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// PostgreSQL's text form (see [`ScramVerifier::parse`]).
    pub fn to_text(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// What the primary knows about one user's password.
#[derive(Clone)]
pub enum Credential {
    /// From a cleartext password: either method works.
    Both {
        /// `md5<hex>` as for [`md5_hash`].
        md5: String,
        /// The derived SCRAM verifier.
        scram: ScramVerifier,
    },
    /// An MD5 hash: the md5 method only.
    Md5(String),
    /// A SCRAM verifier: SCRAM-SHA-256 only.
    Scram(ScramVerifier),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

impl Credential {
    /// The credential of a configured user. A cleartext password gets a SCRAM
    /// verifier with a fresh random salt.
    ///
    /// # Errors
    /// A malformed SCRAM verifier, or no randomness for the salt.
    pub fn from_config(u: &User) -> Result<Credential, String> {
        let p = &u.password;
        if p.starts_with("SCRAM-SHA-256$") {
            return ScramVerifier::parse(p).map(Credential::Scram);
        }
        if is_md5_hash(p) {
            return Ok(Credential::Md5(p.to_ascii_lowercase()));
        }
        let salt: [u8; SCRAM_SALT_LEN] = random().map_err(|e| e.to_string())?;
        Ok(Credential::Both {
            md5: md5_hash(&u.name, p),
            scram: ScramVerifier::derive(p, &salt, SCRAM_ITERATIONS),
        })
    }

    fn md5(&self) -> Option<&str> {
        match self {
            Credential::Both { md5, .. } | Credential::Md5(md5) => Some(md5),
            Credential::Scram(_) => None,
        }
    }

    fn scram(&self) -> Option<&ScramVerifier> {
        match self {
            Credential::Both { scram, .. } | Credential::Scram(scram) => Some(scram),
            Credential::Md5(_) => None,
        }
    }
}

/// Why an authentication exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Wrong password or unknown user (SQLSTATE 28P01); the same for both.
    #[error("password authentication failed")]
    Failed,
    /// The client broke the protocol (SQLSTATE 08P01).
    #[error("{0}")]
    Protocol(String),
    /// The server could not proceed (SQLSTATE XX000).
    #[error("{0}")]
    Internal(String),
}

/// The users of the primary and how they authenticate; built once at start.
pub struct Authenticator {
    method: AuthMethod,
    users: HashMap<String, Credential>,
    mock_key: [u8; 32],
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("method", &self.method)
            .field("users", &self.users.len())
            .finish()
    }
}

/// What the server asks the client for first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `AuthenticationMD5Password` with this salt.
    Md5([u8; 4]),
    /// `AuthenticationSASL` offering [`SCRAM_SHA_256`].
    Sasl,
}

/// What to do after a client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send `AuthenticationSASLContinue` with this data and wait for the next message.
    Continue(String),
    /// Authenticated. For SCRAM, send `AuthenticationSASLFinal` with this data first.
    Done(Option<String>),
}

/// One connection's authentication exchange in progress.
#[derive(Debug)]
pub enum Exchange {
    /// Waiting for the md5 response.
    Md5 {
        /// The salt sent.
        salt: [u8; 4],
        /// The stored hash (None: unknown user).
        stored: Option<String>,
    },
    /// Waiting for SCRAM's client-first message.
    ScramFirst {
        /// The verifier (a mock one for an unknown user).
        verifier: ScramVerifier,
        /// Whether the user exists.
        known: bool,
    },
    /// Waiting for SCRAM's client-final message.
    ScramFinal {
        /// The verifier.
        verifier: ScramVerifier,
        /// Whether the user exists.
        known: bool,
        /// The client's GS2 header (`n,,` or `y,,`).
        gs2_header: String,
        /// client-first-message-bare.
        client_first_bare: String,
        /// server-first-message.
        server_first: String,
        /// Client and server nonce.
        nonce: String,
    },
    /// Finished (or failed): no further message is expected.
    Over,
}

impl Authenticator {
    /// The authenticator of the cluster file's `[primary]` settings.
    ///
    /// # Errors
    /// Malformed password entries (the message names the user, never the password).
    pub fn new(method: AuthMethod, users: &[User]) -> Result<Authenticator, String> {
        let mut map = HashMap::new();
        for u in users {
            let c = Credential::from_config(u).map_err(|e| format!("user {:?}: {e}", u.name))?;
            map.insert(u.name.clone(), c);
        }
        Ok(Authenticator {
            method,
            users: map,
            mock_key: random().map_err(|e| e.to_string())?,
        })
    }

    /// Trust: everyone gets in without a password.
    pub fn trust() -> Authenticator {
        Authenticator {
            method: AuthMethod::Trust,
            users: HashMap::new(),
            mock_key: [0; 32],
        }
    }

    /// The configured method.
    pub fn method(&self) -> AuthMethod {
        self.method
    }

    /// A SCRAM verifier that looks like a real one for `user` (stable per process)
    /// but matches no password.
    fn mock_verifier(&self, user: &str) -> ScramVerifier {
        let salt = hmac(&self.mock_key, &[b"salt\0", user.as_bytes()]);
        ScramVerifier {
            iterations: SCRAM_ITERATIONS,
            salt: salt[..SCRAM_SALT_LEN].to_vec(),
            stored_key: hmac(&self.mock_key, &[b"stored\0", user.as_bytes()]),
            server_key: hmac(&self.mock_key, &[b"server\0", user.as_bytes()]),
        }
    }

    /// Starts authenticating `user`: what to ask for, and the exchange to feed the
    /// client's answers to. `None` under trust.
    ///
    /// # Errors
    /// No randomness.
    pub fn begin(&self, user: &str) -> Result<Option<(Challenge, Exchange)>, AuthError> {
        let cred = self.users.get(user);
        let scram = |v: Option<&ScramVerifier>| {
            let (verifier, known) = match v {
                Some(v) => (v.clone(), true),
                None => (self.mock_verifier(user), false),
            };
            (Challenge::Sasl, Exchange::ScramFirst { verifier, known })
        };
        Ok(match self.method {
            AuthMethod::Trust => None,
            AuthMethod::ScramSha256 => Some(scram(cred.and_then(Credential::scram))),
            // As PostgreSQL: a user with only a SCRAM verifier is asked for SCRAM.
            AuthMethod::Md5 => match cred {
                Some(Credential::Scram(v)) => Some(scram(Some(v))),
                _ => {
                    let salt = random::<4>()?;
                    let stored = cred.and_then(Credential::md5).map(str::to_string);
                    Some((Challenge::Md5(salt), Exchange::Md5 { salt, stored }))
                }
            },
        })
    }
}

fn protocol<T>(m: &str) -> Result<T, AuthError> {
    Err(AuthError::Protocol(m.to_string()))
}

/// A printable SCRAM nonce: ASCII 0x21..=0x7e except ','.
fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

impl Exchange {
    /// Whether the next client message is a SASLInitialResponse.
    pub fn wants_sasl_initial(&self) -> bool {
        matches!(self, Exchange::ScramFirst { .. })
    }

    /// Whether the next client message is a SASLResponse.
    pub fn wants_sasl_response(&self) -> bool {
        matches!(self, Exchange::ScramFinal { .. })
    }

    /// Feeds the client's next message: the md5 password message's text, or the
    /// data of a SASL (initial) response.
    ///
    /// # Errors
    /// [`AuthError::Failed`] for a wrong password or an unknown user,
    /// [`AuthError::Protocol`] for malformed messages.
    pub fn step(&mut self, msg: &[u8]) -> Result<Step, AuthError> {
        match std::mem::replace(self, Exchange::Over) {
            Exchange::Md5 { salt, stored } => {
                // The client sends "md5" + md5(hex(md5(password + user)) + salt). An
                // unknown user costs the same work and fails the same way.
                let known = stored.is_some();
                let stored = stored.unwrap_or_else(|| format!("md5{}", "0".repeat(32)));
                let mut v = stored.as_bytes().get(3..).unwrap_or_default().to_vec();
                v.extend_from_slice(&salt);
                let expected = format!("md5{:x}", md5::compute(&v));
                if ct_eq(expected.as_bytes(), msg) && known {
                    Ok(Step::Done(None))
                } else {
                    Err(AuthError::Failed)
                }
            }
            Exchange::ScramFirst { verifier, known } => {
                let Ok(text) = std::str::from_utf8(msg) else {
                    return protocol("malformed SCRAM message (not UTF-8)");
                };
                let (gs2_header, bare) = split_gs2(text)?;
                let mut attrs = bare.split(',');
                let user = attrs.next().unwrap_or_default();
                if user.starts_with("m=") {
                    return protocol("SCRAM mandatory extensions are not supported");
                }
                if !user.starts_with("n=") {
                    return protocol("malformed SCRAM message (no user name)");
                }
                let Some(cnonce) = attrs.next().and_then(|a| a.strip_prefix("r=")) else {
                    return protocol("malformed SCRAM message (no nonce)");
                };
                if !valid_nonce(cnonce) {
                    return protocol("malformed SCRAM message (bad nonce)");
                }
                let snonce = B64.encode(random::<18>()?);
                let nonce = format!("{cnonce}{snonce}");
                let server_first = format!(
                    "r={nonce},s={},i={}",
                    B64.encode(&verifier.salt),
                    verifier.iterations
                );
                *self = Exchange::ScramFinal {
                    verifier,
                    known,
                    gs2_header: gs2_header.to_string(),
                    client_first_bare: bare.to_string(),
                    server_first: server_first.clone(),
                    nonce,
                };
                Ok(Step::Continue(server_first))
            }
            Exchange::ScramFinal {
                verifier,
                known,
                gs2_header,
                client_first_bare,
                server_first,
                nonce,
            } => {
                let Ok(text) = std::str::from_utf8(msg) else {
                    return protocol("malformed SCRAM message (not UTF-8)");
                };
                let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
                    return protocol("malformed SCRAM message (no proof)");
                };
                let mut attrs = without_proof.split(',');
                let cbind = attrs.next().and_then(|a| a.strip_prefix("c="));
                match cbind.and_then(|c| B64.decode(c).ok()) {
                    Some(c) if c == gs2_header.as_bytes() => {}
                    _ => return protocol("SCRAM channel binding check failed"),
                }
                match attrs.next().and_then(|a| a.strip_prefix("r=")) {
                    Some(r) if r == nonce => {}
                    _ => return protocol("SCRAM nonce mismatch"),
                }
                let Some(proof) = B64.decode(proof).ok().filter(|p| p.len() == 32) else {
                    return protocol("malformed SCRAM message (bad proof)");
                };
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let client_signature = hmac(&verifier.stored_key, &[auth_message.as_bytes()]);
                let mut client_key = [0u8; 32];
                for (k, (p, s)) in client_key
                    .iter_mut()
                    .zip(proof.iter().zip(&client_signature))
                {
                    *k = p ^ s;
                }
                let ok = ct_eq(&sha256(&client_key), &verifier.stored_key);
                if !(ok && known) {
                    return Err(AuthError::Failed);
                }
                let server_signature = hmac(&verifier.server_key, &[auth_message.as_bytes()]);
                Ok(Step::Done(Some(format!(
                    "v={}",
                    B64.encode(server_signature)
                ))))
            }
            Exchange::Over => protocol("no authentication in progress"),
        }
    }
}

/// Splits a SCRAM client-first message into its GS2 header and the bare message.
fn split_gs2(text: &str) -> Result<(&str, &str), AuthError> {
    match text.as_bytes().first() {
        Some(b'n') | Some(b'y') => {}
        Some(b'p') => {
            return protocol("SCRAM channel binding is not supported (no TLS)");
        }
        _ => return protocol("malformed SCRAM message (GS2 header)"),
    }
    if text.as_bytes().get(1) != Some(&b',') {
        return protocol("malformed SCRAM message (GS2 header)");
    }
    let Some(end) = text[2..].find(',').map(|i| i + 2) else {
        return protocol("malformed SCRAM message (GS2 header)");
    };
    if end != 2 {
        return protocol("SCRAM authorization identities are not supported");
    }
    Ok((&text[..=end], &text[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str) -> User {
        User {
            name: name.into(),
            password: password.into(),
        }
    }

    /// A client's side of SCRAM-SHA-256 (as libpq computes it).
    fn client_final(password: &str, first_bare: &str, server_first: &str) -> String {
        let mut parts = server_first.split(',');
        let nonce = parts.next().unwrap().strip_prefix("r=").unwrap();
        let salt = B64
            .decode(parts.next().unwrap().strip_prefix("s=").unwrap())
            .unwrap();
        let iters: u32 = parts.next().unwrap()[2..].parse().unwrap();
        let salted = hi(&normalize(password), &salt, iters);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored = sha256(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{first_bare},{server_first},{without_proof}");
        let sig = hmac(&stored, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    fn scram(a: &Authenticator, name: &str, password: &str) -> Result<Step, AuthError> {
        let (ch, mut ex) = a.begin(name)?.unwrap();
        assert_eq!(ch, Challenge::Sasl);
        let bare = "n=,r=rOprNGfwEbeRWgbNEkqO";
        let Step::Continue(server_first) = ex.step(format!("n,,{bare}").as_bytes())? else {
            panic!("no server-first");
        };
        ex.step(client_final(password, bare, &server_first).as_bytes())
    }

    #[test]
    fn pbkdf2_matches_rfc7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1, 64), first block.
        let got = hi(b"passwd", b"salt", 1);
        assert_eq!(
            hex::encode(got),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn scram_accepts_the_right_password_only() {
        let a = Authenticator::new(AuthMethod::ScramSha256, &[user("alice", "s3cret")]).unwrap();
        let Step::Done(Some(v)) = scram(&a, "alice", "s3cret").unwrap() else {
            panic!("no server signature");
        };
        assert!(v.starts_with("v="));
        assert_eq!(scram(&a, "alice", "wrong"), Err(AuthError::Failed));
        assert_eq!(scram(&a, "mallory", "s3cret"), Err(AuthError::Failed));
        // The stored verifier form works as well as the cleartext password.
        let v = ScramVerifier::derive("s3cret", b"0123456789abcdef", 4096).to_text();
        assert_eq!(ScramVerifier::parse(&v).unwrap().to_text(), v);
        let b = Authenticator::new(AuthMethod::ScramSha256, &[user("alice", &v)]).unwrap();
        assert!(matches!(
            scram(&b, "alice", "s3cret"),
            Ok(Step::Done(Some(_)))
        ));
        assert_eq!(scram(&b, "alice", "s3creT"), Err(AuthError::Failed));
    }

    #[test]
    fn scram_rejects_malformed_messages_without_panicking() {
        let a = Authenticator::new(AuthMethod::ScramSha256, &[user("u", "p")]).unwrap();
        for first in [
            "",
            "n",
            "n,",
            "x,,n=,r=a",
            "p=tls-server-end-point,,n=,r=abc",
            "n,a=bob,n=,r=x",
            "n,,",
            "n,,m=ext,n=,r=x",
            "n,,n=",
            "n,,n=,r=",
            "n,,n=,r=a,b",
            "\u{7f}",
        ] {
            let (_, mut ex) = a.begin("u").unwrap().unwrap();
            let r = ex.step(first.as_bytes());
            if first == "n,,n=,r=a,b" {
                assert!(r.is_ok(), "extensions after the nonce are allowed");
            } else {
                assert!(matches!(r, Err(AuthError::Protocol(_))), "{first:?}: {r:?}");
            }
        }
        for fin in [
            "",
            "c=biws",
            "c=biws,r=abc,p=",
            "c=eSws,r=abc,p=AAAA",
            "p=,,,",
        ] {
            let (_, mut ex) = a.begin("u").unwrap().unwrap();
            assert!(ex.step(b"n,,n=,r=abc").is_ok());
            assert!(
                matches!(ex.step(fin.as_bytes()), Err(AuthError::Protocol(_))),
                "{fin:?}"
            );
        }
        assert!(matches!(
            Exchange::Over.step(b"x"),
            Err(AuthError::Protocol(_))
        ));
        for bad in [
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$0:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$4096:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$x:AAAA$a:b",
        ] {
            assert!(ScramVerifier::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn md5_accepts_the_right_password_only() {
        let hashed = md5_hash("bob", "pw");
        for stored in ["pw", hashed.as_str()] {
            let a = Authenticator::new(AuthMethod::Md5, &[user("bob", stored)]).unwrap();
            let answer = |name: &str, pw: &str| {
                let (ch, mut ex) = a.begin(name).unwrap().unwrap();
                let Challenge::Md5(salt) = ch else {
                    panic!("md5 expected")
                };
                let inner = md5_hash(name, pw);
                let mut v = inner.as_bytes()[3..].to_vec();
                v.extend_from_slice(&salt);
                ex.step(format!("md5{:x}", md5::compute(&v)).as_bytes())
            };
            assert_eq!(answer("bob", "pw"), Ok(Step::Done(None)));
            assert_eq!(answer("bob", "pW"), Err(AuthError::Failed));
            assert_eq!(answer("eve", "pw"), Err(AuthError::Failed));
        }
        // md5 with a SCRAM-only user falls back to SCRAM, as in PostgreSQL.
        let v = ScramVerifier::derive("pw", b"salt-salt-salt!!", 4096).to_text();
        let a = Authenticator::new(AuthMethod::Md5, &[user("bob", &v)]).unwrap();
        assert_eq!(a.begin("bob").unwrap().unwrap().0, Challenge::Sasl);
        assert!(Authenticator::trust().begin("x").unwrap().is_none());
    }
}
