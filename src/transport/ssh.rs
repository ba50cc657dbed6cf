//! The SSH transport: connect with timeouts, check the host key, authenticate,
//! and run commands whose stdin may carry secret bytes. One session per host,
//! reused for every step. Only this module and `health` touch the network.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use ssh2::{
    Channel, CheckResult, HashType, KnownHostFileKind, KnownHostKeyFormat, MethodType, Session,
};

use crate::prepare::secret::{self, EnvLookup, ExposeSecret, SecretString};
use crate::protocol::error::{Error, ErrorKind, HostError, Result};
use crate::protocol::request::{HostKeyPolicy, Ssh};
use crate::settings::HostSettings;
use crate::transport::certificate::Certificate;

pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_IO_TIMEOUT_MS: u64 = 30_000;

/// How hostenv proves who it is.
pub enum Auth {
    KeyFile {
        path: PathBuf,
        passphrase: Option<SecretString>,
        certificate: Option<UserCertificate>,
    },
    KeyContent {
        key: SecretString,
        passphrase: Option<SecretString>,
        certificate: Option<UserCertificate>,
    },
    Agent,
}

/// An OpenSSH user certificate offered with the key: its text, the file it
/// came from (if any), and what it allows.
pub struct UserCertificate {
    pub text: String,
    pub path: Option<PathBuf>,
    pub parsed: Certificate,
}

/// Where known host keys come from.
pub enum KnownHosts {
    File(PathBuf),
    Content(String),
}

/// Everything needed to reach any host of a deployment, resolved before the first connection.
pub struct SshConfig {
    pub auth: Auth,
    pub known_hosts: KnownHosts,
    pub policy: HostKeyPolicy,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    /// The bastion to tunnel through, with its own settings.
    pub jump: Option<Box<(HostSettings, SshConfig)>>,
}

/// Where the request says a key, its certificate and the known host keys come
/// from: the shape of the `ssh` settings, checked without reading a variable.
struct Sources<'a> {
    auth: AuthSource<'a>,
    certificate: Option<CertificateSource<'a>>,
    known_hosts: KnownHostsSource<'a>,
}

enum AuthSource<'a> {
    /// The NAME of a variable holding a key file's path.
    KeyFile(&'a str),
    /// The NAME of a variable holding a base64 key.
    KeyContent(&'a str),
    Agent,
}

enum CertificateSource<'a> {
    File(&'a str),
    Content(&'a str),
}

enum KnownHostsSource<'a> {
    File(&'a str),
    Content(&'a str),
    Default,
}

impl<'a> Sources<'a> {
    fn of(ssh: &'a Ssh, at: &str) -> Result<Sources<'a>> {
        let invalid = |field: &str, message: &str| {
            Error::invalid(
                ErrorKind::InvalidSetting,
                format!("{at}/ssh{field}"),
                message.to_string(),
            )
        };
        let certificate = match (&ssh.certificate_file_env, &ssh.certificate_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "/certificateEnv",
                    "set at most one of `certificateFileEnv` and `certificateEnv`",
                ))
            }
            (Some(name), None) => Some(CertificateSource::File(name)),
            (None, Some(name)) => Some(CertificateSource::Content(name)),
            (None, None) => None,
        };
        let auth = match (&ssh.identity_file_env, &ssh.identity_env, ssh.agent) {
            (Some(name), None, None | Some(false)) => AuthSource::KeyFile(name),
            (None, Some(name), None | Some(false)) => AuthSource::KeyContent(name),
            (None, None, Some(true)) if certificate.is_some() => {
                return Err(invalid(
                    "/agent",
                    "the agent offers its own certificates; leave out `certificateFileEnv` and `certificateEnv`",
                ))
            }
            (None, None, Some(true)) => AuthSource::Agent,
            _ => {
                return Err(invalid(
                    "",
                    "set exactly one of `identityFileEnv`, `identityEnv` and `agent: true`",
                ))
            }
        };
        let known_hosts = match (&ssh.known_hosts, &ssh.known_hosts_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "/knownHostsEnv",
                    "set at most one of `knownHosts` and `knownHostsEnv`",
                ))
            }
            (Some(path), None) => KnownHostsSource::File(path),
            (None, Some(name)) => KnownHostsSource::Content(name),
            (None, None) => KnownHostsSource::Default,
        };
        Ok(Sources {
            auth,
            certificate,
            known_hosts,
        })
    }
}

/// The bastion's own settings, each falling back to the hosts' ones, and the bastion as a host.
fn bastion(ssh: &Ssh) -> Option<(Ssh, HostSettings)> {
    let jump = ssh.jump.as_ref()?;
    let mut own = ssh.clone();
    own.jump = None;
    own.user = jump.user.clone().or(ssh.user.clone());
    own.port = jump.port;
    if jump.identity_file_env.is_some() || jump.identity_env.is_some() || jump.agent.is_some() {
        own.identity_file_env = jump.identity_file_env.clone();
        own.identity_env = jump.identity_env.clone();
        own.agent = jump.agent;
        own.passphrase_env = jump.passphrase_env.clone();
        own.certificate_file_env = jump.certificate_file_env.clone();
        own.certificate_env = jump.certificate_env.clone();
    }
    if jump.known_hosts.is_some() || jump.known_hosts_env.is_some() {
        own.known_hosts = jump.known_hosts.clone();
        own.known_hosts_env = jump.known_hosts_env.clone();
    }
    let host = HostSettings {
        name: jump.host.clone(),
        port: jump.port.unwrap_or(22),
        user: own
            .user
            .clone()
            .unwrap_or_else(|| crate::settings::DEFAULT_USER.into()),
        instances: None,
    };
    Some((own, host))
}

/// Checks what `SshConfig::from_request` would reject without reading the
/// variables that hold credentials (for a `check` run in which they are not
/// bound): which sources are set, and a named known_hosts file.
pub fn check_settings(ssh: Option<&Ssh>, at: &str) -> Result<()> {
    let ssh = ssh.cloned().unwrap_or_default();
    if let Some((own, _)) = bastion(&ssh) {
        check_settings(Some(&own), &format!("{at}/ssh/jump"))?;
    }
    if let KnownHostsSource::File(path) = Sources::of(&ssh, at)?.known_hosts {
        known_hosts_file(path, at)?;
    }
    Ok(())
}

fn known_hosts_file(path: &str, at: &str) -> Result<PathBuf> {
    let path = PathBuf::from(path);
    read_known_hosts(&path).map_err(|problem| {
        Error::invalid(
            ErrorKind::InvalidSetting,
            format!("{at}/ssh/knownHosts"),
            problem,
        )
    })?;
    Ok(path)
}

impl SshConfig {
    /// Reads the credentials the request names; a problem rejects the request.
    pub fn from_request(ssh: Option<&Ssh>, at: &str, env: &dyn EnvLookup) -> Result<SshConfig> {
        let ssh = ssh.cloned().unwrap_or_default();
        let jump = match bastion(&ssh) {
            Some((own, host)) => {
                let config = SshConfig::from_request(Some(&own), &format!("{at}/ssh/jump"), env)?;
                Some(Box::new((host, config)))
            }
            None => None,
        };
        let sources = Sources::of(&ssh, at)?;
        let invalid = |field: &str, message: String| {
            Error::invalid(
                ErrorKind::InvalidSetting,
                format!("{at}/ssh/{field}"),
                message,
            )
        };
        let variable = |field: &str, name: &str| -> Result<SecretString> {
            secret::from_env(env, name, false).map_err(|problem| invalid(field, problem.message))
        };
        // A variable holding base64 text (Bitbucket variables cannot hold newlines).
        let decoded = |field: &str, name: &str, what: &str| -> Result<String> {
            let encoded = variable(field, name)?;
            secret::decode_base64(encoded.expose_secret())
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    invalid(
                        field,
                        format!("environment variable `{name}` is not {what}"),
                    )
                })
        };
        let passphrase = match &ssh.passphrase_env {
            // Jenkins binds a key's passphrase variable empty when it has none.
            Some(name) if env.get(name).is_some_and(|v| v.is_empty()) => None,
            Some(name) => Some(variable("passphraseEnv", name)?),
            None => None,
        };
        let certificate = |text: String, path: Option<PathBuf>, field: &str| {
            let parsed = Certificate::parse(&text).ok_or_else(|| {
                invalid(
                    field,
                    "not an OpenSSH user certificate (a `-cert.pub` file)".into(),
                )
            })?;
            Ok::<_, Error>(UserCertificate { text, path, parsed })
        };
        let named_certificate = match sources.certificate {
            Some(CertificateSource::File(name)) => {
                let path = PathBuf::from(variable("certificateFileEnv", name)?.expose_secret());
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        "certificateFileEnv",
                        format!("the certificate named by `{name}` cannot be read: {e}"),
                    )
                })?;
                Some(certificate(text, Some(path), "certificateFileEnv")?)
            }
            Some(CertificateSource::Content(name)) => {
                let text = decoded("certificateEnv", name, "a base64 certificate")?;
                Some(certificate(text, None, "certificateEnv")?)
            }
            None => None,
        };
        let auth = match sources.auth {
            AuthSource::KeyFile(name) => {
                let path = PathBuf::from(variable("identityFileEnv", name)?.expose_secret());
                // As OpenSSH does: a certificate beside the key is offered with it.
                let beside = PathBuf::from(format!("{}-cert.pub", path.display()));
                let certificate = match named_certificate {
                    Some(named) => Some(named),
                    None => match std::fs::read_to_string(&beside) {
                        Ok(text) => Some(certificate(text, Some(beside), "identityFileEnv")?),
                        Err(_) => None,
                    },
                };
                Auth::KeyFile {
                    path,
                    passphrase,
                    certificate,
                }
            }
            AuthSource::KeyContent(name) => Auth::KeyContent {
                key: SecretString::from(decoded("identityEnv", name, "a base64 private key")?),
                passphrase,
                certificate: named_certificate,
            },
            AuthSource::Agent => Auth::Agent,
        };
        let known_hosts = match sources.known_hosts {
            KnownHostsSource::File(path) => KnownHosts::File(known_hosts_file(path, at)?),
            KnownHostsSource::Content(name) => {
                let content = decoded("knownHostsEnv", name, "base64 known_hosts content")?;
                check_known_hosts(&content).map_err(|problem| {
                    invalid(
                        "knownHostsEnv",
                        format!("environment variable `{name}`: {problem}"),
                    )
                })?;
                KnownHosts::Content(content)
            }
            KnownHostsSource::Default => {
                let home = env
                    .get("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/root"));
                KnownHosts::File(home.join(".ssh/known_hosts"))
            }
        };
        Ok(SshConfig {
            auth,
            known_hosts,
            policy: ssh.host_key_policy.unwrap_or(HostKeyPolicy::Strict),
            connect_timeout: Duration::from_millis(
                ssh.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
            ),
            io_timeout: Duration::from_millis(ssh.io_timeout_ms.unwrap_or(DEFAULT_IO_TIMEOUT_MS)),
            jump,
        })
    }
}

/// What a remote command returned.
pub struct Output {
    pub status: i32,
    /// May hold secret bytes (a file read back); never logged, zeroed when dropped.
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Drop for Output {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.stdout);
    }
}

/// The most one write to a channel offers (libssh2 takes less when its window is smaller).
const UPLOAD_CHUNK: usize = 32 * 1024;

/// An authenticated session to one host. After authentication it runs
/// non-blocking, so that while a command runs, the host lock's heartbeat
/// (see `lock.rs`) keeps going on its own channel of the same session.
pub struct Connection {
    session: Session,
    /// The session's own socket, duplicated, to wait on without busy polling.
    socket: Socket,
    io_timeout: Duration,
    lock: RefCell<Option<Heartbeat>>,
}

/// The transport under a session: a TCP connection, or a tunnel through a bastion.
enum Socket {
    Tcp(TcpStream),
    Tunnel(UnixStream),
}

impl std::os::fd::AsFd for Socket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Socket::Tcp(tcp) => tcp.as_fd(),
            Socket::Tunnel(unix) => unix.as_fd(),
        }
    }
}

/// What the lock step answered: whether this run holds the lock (else the
/// holder or the failure), and how the host program described itself first
/// (None from a program that does not).
pub struct Held {
    pub verdict: Result<(), String>,
    pub description: Option<String>,
}

/// Where the lock step's description ends in `out`: the description and the
/// offset after it, (None, 0) when the answer has none, or None while it is
/// still arriving.
fn description_end(out: &[u8]) -> Option<(Option<String>, usize)> {
    const HEAD: &[u8] = b"describe ";
    if !out.starts_with(HEAD) {
        let could_be = out.len() < HEAD.len() && HEAD.starts_with(out);
        return (!could_be).then_some((None, 0));
    }
    let newline = out.iter().position(|b| *b == b'\n')?;
    let length: usize = std::str::from_utf8(&out[HEAD.len()..newline])
        .ok()?
        .parse()
        .ok()?;
    let end = newline + 1 + length;
    (out.len() >= end).then(|| {
        (
            Some(String::from_utf8_lossy(&out[newline + 1..end]).into_owned()),
            end,
        )
    })
}

/// A lock holder's answer: its exit code and where its stdout and stderr lie.
type Answer = (i32, std::ops::Range<usize>, std::ops::Range<usize>);

/// One answer of the lock holder in `out`: `done CODE OUTLEN ERRLEN\n` and
/// where its stdout and stderr lie; None while it is still arriving; the
/// first line (cut short) when it is not an answer.
fn lock_answer(out: &[u8]) -> Result<Option<Answer>, String> {
    let Some(end) = out.iter().position(|b| *b == b'\n') else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&out[..end]);
    let fields: Vec<&str> = line.split(' ').collect();
    let parsed = match fields.as_slice() {
        ["done", code, stdout, stderr] => match (code.parse(), stdout.parse(), stderr.parse()) {
            (Ok(code), Ok(stdout), Ok(stderr)) => Some((code, stdout, stderr)),
            _ => None,
        },
        _ => None,
    };
    let (code, stdout, stderr): (i32, usize, usize) =
        parsed.ok_or_else(|| line.chars().take(80).collect::<String>())?;
    let start = end + 1;
    Ok((out.len() >= start + stdout + stderr).then(|| {
        (
            code,
            start..start + stdout,
            start + stdout..start + stdout + stderr,
        )
    }))
}

/// A request's first lines for the lock holder (`host/lock.rs`): `x` or `&`
/// (only after the one before it succeeded), the step's words, the length of
/// the stdin that follows.
fn request_head(marker: u8, words: &[String], stdin_len: usize) -> String {
    format!("{}{}\n{stdin_len}\n", marker as char, words.join(" "))
}

/// A step sent to the lock holder before the run asked for its answer: its
/// words and a digest of its stdin, so that only the very same step (a
/// stage of the same file) takes that answer.
#[derive(PartialEq, Eq)]
struct SentAhead {
    words: Vec<String>,
    stdin: [u8; 32],
}

impl SentAhead {
    fn new(words: &[String], stdin: &[u8]) -> SentAhead {
        use sha2::Digest;
        SentAhead {
            words: words.to_vec(),
            stdin: sha2::Sha256::digest(stdin).into(),
        }
    }
}

/// The channel that holds a host lock, and when it last heard from us.
struct Heartbeat {
    channel: Channel,
    last: Instant,
    /// The holder's unasked answer to `read SERVICE`, until the run asks.
    read: Option<Output>,
    /// Steps sent ahead whose answers are not read yet, oldest first.
    ahead: std::collections::VecDeque<SentAhead>,
    /// What arrived after the last answer read: the next answers' first bytes.
    pending: zeroize::Zeroizing<Vec<u8>>,
    /// Why the channel no longer lines requests up with answers (a write or
    /// read that failed partway): every later step fails with it.
    broken: Option<String>,
}

/// How often the lock holder on the host hears from hostenv; it gives up the
/// lock after 30 s without a beat (`host/lock.rs`).
const BEAT_EVERY: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(1);
/// The longest wait for the socket before looking again (and beating).
const WAIT_AT_MOST: Duration = Duration::from_millis(20);

fn lost(host: &str, what: &str, error: impl std::fmt::Display) -> HostError {
    HostError::new(
        ErrorKind::ConnectionLost,
        format!("`{host}`: {what}: {error}"),
    )
}

/// libssh2's "try again" in non-blocking mode.
fn again(error: &ssh2::Error) -> bool {
    error.code() == ssh2::ErrorCode::Session(-37)
}

impl Connection {
    pub fn open(host: &HostSettings, config: &SshConfig) -> Result<Connection, HostError> {
        let name = &host.name;
        let failed =
            |what: String| HostError::new(ErrorKind::ConnectFailed, format!("`{name}`: {what}"));
        let resolve = || {
            (name.as_str(), host.port)
                .to_socket_addrs()
                .map_err(|e| failed(format!("cannot resolve: {e}")))?
                .next()
                .ok_or_else(|| failed("resolves to no address".into()))
        };
        let mut session = Session::new().map_err(|e| failed(e.to_string()))?;
        let duplicate = |e: std::io::Error| failed(format!("cannot duplicate the socket: {e}"));
        let socket = match &config.jump {
            None => {
                let tcp = TcpStream::connect_timeout(&resolve()?, config.connect_timeout)
                    .map_err(|e| failed(format!("cannot connect to port {}: {e}", host.port)))?;
                // Small writes (a file, then end-of-file) must not wait for Nagle's delayed ACK.
                let _ = tcp.set_nodelay(true);
                let ours = tcp.try_clone().map_err(duplicate)?;
                session.set_tcp_stream(tcp);
                Socket::Tcp(ours)
            }
            // Behind a bastion, the bastion resolves and connects.
            Some(jump) => {
                let tunnel = tunnel(&jump.0, &jump.1, name, host.port)?;
                let ours = tunnel.try_clone().map_err(duplicate)?;
                session.set_tcp_stream(tunnel);
                Socket::Tunnel(ours)
            }
        };
        session.set_timeout(millis(config.connect_timeout));

        let text = match &config.known_hosts {
            KnownHosts::File(path) => read_known_hosts(path).map_err(|problem| {
                HostError::new(ErrorKind::HostKeyUnknown, format!("`{name}`: {problem}"))
            })?,
            // Content was checked when the request was read.
            KnownHosts::Content(content) => content.clone(),
        };
        if let Some(preference) = host_key_preference(&text, name, host.port) {
            session
                .method_pref(MethodType::HostKey, &preference)
                .map_err(|e| failed(format!("host key preference: {e}")))?;
        }
        session
            .handshake()
            .map_err(|e| failed(format!("SSH handshake failed: {e}")))?;
        check_host_key(&session, name, host.port, config, &text)?;

        session.set_timeout(millis(config.io_timeout));
        let user = &host.user;
        let refused = |e: ssh2::Error| {
            HostError::new(
                ErrorKind::AuthFailed,
                format!(
                    "`{name}`: the key for `{user}` was refused: {}",
                    e.message()
                ),
            )
        };
        let offered = match &config.auth {
            Auth::KeyFile { certificate, .. } | Auth::KeyContent { certificate, .. } => {
                certificate.as_ref()
            }
            Auth::Agent => None,
        };
        if let Some(certificate) = offered {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if let Some(why) = certificate.parsed.unusable_for(user, now) {
                return Err(HostError::new(
                    ErrorKind::CertificateUnusable,
                    format!("`{name}`: {why}"),
                ));
            }
        }
        match &config.auth {
            Auth::KeyFile {
                path,
                passphrase,
                certificate,
            } => match certificate {
                // libssh2 offers the certificate when it is given as the public key.
                Some(UserCertificate {
                    path: Some(cert_path),
                    ..
                }) => session.userauth_pubkey_file(
                    user,
                    Some(cert_path),
                    path,
                    passphrase.as_ref().map(|p| p.expose_secret()),
                ),
                Some(certificate) => {
                    let key = std::fs::read_to_string(path)
                        .map(SecretString::from)
                        .map_err(|e| {
                            HostError::new(
                                ErrorKind::AuthFailed,
                                format!(
                                    "`{name}`: the key `{}` cannot be read: {e}",
                                    path.display()
                                ),
                            )
                        })?;
                    session.userauth_pubkey_memory(
                        user,
                        Some(&certificate.text),
                        key.expose_secret(),
                        passphrase.as_ref().map(|p| p.expose_secret()),
                    )
                }
                None => session.userauth_pubkey_file(
                    user,
                    None,
                    path,
                    passphrase.as_ref().map(|p| p.expose_secret()),
                ),
            }
            .map_err(refused)?,
            Auth::KeyContent {
                key,
                passphrase,
                certificate,
            } => session
                .userauth_pubkey_memory(
                    user,
                    certificate.as_ref().map(|c| c.text.as_str()),
                    key.expose_secret(),
                    passphrase.as_ref().map(|p| p.expose_secret()),
                )
                .map_err(refused)?,
            Auth::Agent => session.userauth_agent(user).map_err(refused)?,
        }
        if !session.authenticated() {
            return Err(HostError::new(
                ErrorKind::AuthFailed,
                format!("`{name}`: not authenticated as `{user}`"),
            ));
        }
        session.set_blocking(false);
        Ok(Connection {
            session,
            socket,
            io_timeout: config.io_timeout,
            lock: RefCell::new(None),
        })
    }

    /// Runs `command` with `stdin`; the command line itself never holds a secret.
    pub fn exec(&self, host: &str, command: &str, stdin: &[u8]) -> Result<Output, HostError> {
        self.exec_with_timeout(host, command, stdin, self.io_timeout)
    }

    /// Like `exec`, with its own bound for commands that take their time (restarts).
    pub fn exec_with_timeout(
        &self,
        host: &str,
        command: &str,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, HostError> {
        let deadline = Instant::now() + timeout;
        let mut channel = self.start(host, command, stdin, deadline)?;
        self.retry(host, "sending data", deadline, || channel.send_eof())?;
        let (stdout, stderr) = self.read_all(host, &mut channel, deadline)?;
        self.retry(host, "closing a command", deadline, || channel.wait_close())?;
        let status = channel
            .exit_status()
            .map_err(|e| lost(host, "reading an exit status", e))?;
        Ok(Output {
            status,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Starts `command` and writes `stdin` to it, leaving the channel open.
    /// Writes go in chunks of at most [`UPLOAD_CHUNK`] bytes.
    fn start(
        &self,
        host: &str,
        command: &str,
        stdin: &[u8],
        deadline: Instant,
    ) -> Result<Channel, HostError> {
        let mut channel = self.retry(host, "cannot open a channel", deadline, || {
            self.session.channel_session()
        })?;
        self.retry(host, "cannot start a command", deadline, || {
            channel.exec(command)
        })?;
        let mut written = 0;
        #[cfg(feature = "fault-injection")]
        let mut paused = false;
        while written < stdin.len() {
            // A test may cut the connection here, partway through an upload.
            #[cfg(feature = "fault-injection")]
            if written > 0 && !paused {
                paused = true;
                crate::fault::pause_before(host, "mid-upload");
            }
            let end = stdin.len().min(written + UPLOAD_CHUNK);
            match channel.write(&stdin[written..end]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.idle(host, deadline)?
                }
                Err(e) => return Err(lost(host, "sending data", e)),
            }
        }
        Ok(channel)
    }

    /// Reads stdout and stderr to their end.
    fn read_all(
        &self,
        host: &str,
        channel: &mut Channel,
        deadline: Instant,
    ) -> Result<(Vec<u8>, Vec<u8>), HostError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        self.drain(
            host,
            "reading output",
            channel,
            (&mut stdout, &mut stderr),
            deadline,
            |_| false,
            true,
        )?;
        Ok((stdout, stderr))
    }

    /// Reads stdout and stderr until the channel ends or `enough(stdout)`.
    /// stderr is always drained too: libssh2 sees the end of a channel only
    /// once everything before it has been read. Waits beat the lock, unless
    /// `beat` is false (reading the lock's own channel).
    #[allow(clippy::too_many_arguments)]
    fn drain(
        &self,
        host: &str,
        what: &str,
        channel: &mut Channel,
        (stdout, stderr): (&mut Vec<u8>, &mut Vec<u8>),
        deadline: Instant,
        enough: impl Fn(&[u8]) -> bool,
        beat: bool,
    ) -> Result<(), HostError> {
        let mut buffer = [0u8; 16 * 1024];
        while !enough(stdout) {
            let mut progressed = false;
            for (stream, into) in [(0, &mut *stdout), (1, &mut *stderr)] {
                match channel.stream(stream).read(&mut buffer) {
                    Ok(0) => {}
                    Ok(n) => {
                        into.extend_from_slice(&buffer[..n]);
                        progressed = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(lost(host, what, e)),
                }
            }
            if channel.eof() && !progressed {
                break;
            }
            if !progressed {
                if beat {
                    self.idle(host, deadline)?;
                } else {
                    self.wait_for_socket(host, deadline)?;
                }
            }
        }
        Ok(())
    }

    /// Retries a libssh2 call until it stops saying "again", beating meanwhile.
    fn retry<T>(
        &self,
        host: &str,
        what: &str,
        deadline: Instant,
        mut call: impl FnMut() -> Result<T, ssh2::Error>,
    ) -> Result<T, HostError> {
        loop {
            match call() {
                Ok(value) => return Ok(value),
                Err(e) if again(&e) => self.idle(host, deadline)?,
                Err(e) => return Err(lost(host, what, e)),
            }
        }
    }

    /// Waits until the socket is ready in the direction libssh2 is blocked on
    /// (or a short while), keeping the lock alive; fails past `deadline`.
    fn idle(&self, host: &str, deadline: Instant) -> Result<(), HostError> {
        self.beat();
        self.wait_for_socket(host, deadline)
    }

    /// Waits for the socket as `idle` does, without beating (for the lock's
    /// own channel, which is being written anyway).
    fn wait_for_socket(&self, host: &str, deadline: Instant) -> Result<(), HostError> {
        let now = Instant::now();
        if now > deadline {
            return Err(lost(host, "waiting for the host", "timed out"));
        }
        let flags = match self.session.block_directions() {
            ssh2::BlockDirections::Inbound => PollFlags::IN,
            ssh2::BlockDirections::Outbound => PollFlags::OUT,
            ssh2::BlockDirections::Both => PollFlags::IN | PollFlags::OUT,
            ssh2::BlockDirections::None => {
                std::thread::sleep(POLL);
                return Ok(());
            }
        };
        let wait = WAIT_AT_MOST.min(deadline - now);
        let timeout = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        if let Socket::Tcp(tcp) = &self.socket {
            // Answer the host's small segments at once: with a delayed ACK its
            // Nagle holds the next one back by ~40 ms (seen on the lock's reply).
            let _ = rustix::net::sockopt::set_tcp_quickack(tcp, true);
        }
        let mut fds = [PollFd::new(&self.socket, flags)];
        let _ = poll(&mut fds, Some(&timeout));
        Ok(())
    }

    /// Lets go of the host lock: the holder on the host sees its stdin close
    /// and exits, releasing the flock. Nothing to do when none is held.
    pub fn release_lock(&self, host: &str) {
        let Some(mut heartbeat) = self.lock.borrow_mut().take() else {
            return;
        };
        let deadline = Instant::now() + self.io_timeout;
        let _ = self.retry(host, "releasing the lock", deadline, || {
            heartbeat.channel.send_eof()
        });
        let _ = self.retry(host, "releasing the lock", deadline, || {
            heartbeat.channel.close()
        });
    }

    /// Runs the host program's step `words` with `stdin` on the lock's own
    /// channel (`host/lock.rs`): one round trip, where a command of its own
    /// costs two or three; a step sent ahead with these words only waits for
    /// its answer. None when this connection holds no lock.
    pub fn run_on_lock(
        &self,
        host: &str,
        words: &[String],
        stdin: &[u8],
        timeout: Option<Duration>,
    ) -> Option<Result<Output, HostError>> {
        let mut lock = self.lock.borrow_mut();
        let heartbeat = lock.as_mut()?;
        if words.first().is_some_and(|w| w == "read") && words.len() == 2 && stdin.is_empty() {
            if let Some(read) = heartbeat.read.take() {
                return Some(Ok(read));
            }
        }
        let deadline = Instant::now() + timeout.unwrap_or(self.io_timeout);
        // Answers come in the order the steps went. A step sent ahead only
        // waits for its answer; any other goes at once, then the answers
        // still due before its own are read and let go (their steps were
        // no longer wanted: one before them failed, or they tidy up).
        let this = SentAhead::new(words, stdin);
        if !heartbeat.ahead.contains(&this) {
            if let Err(error) = self.send(host, heartbeat, b'x', words, stdin, deadline) {
                return Some(Err(error));
            }
            heartbeat.ahead.push_back(SentAhead::new(words, stdin));
        }
        while let Some(sent) = heartbeat.ahead.pop_front() {
            let answer = self.read_answer(host, heartbeat, deadline);
            if sent == this || answer.is_err() {
                return Some(answer);
            }
        }
        Some(Err(lost(
            host,
            "the lock's channel",
            "a step went unanswered",
        )))
    }

    /// Sends `steps` to the lock holder at once, each after the first to run
    /// only if the one before it succeeded; their answers are read when the
    /// run takes each step (`run_on_lock`). For steps that always follow each
    /// other: one round trip for all. False when this connection holds no lock.
    pub fn send_ahead(&self, host: &str, steps: &[(Vec<String>, &[u8])]) -> bool {
        let mut lock = self.lock.borrow_mut();
        let Some(heartbeat) = lock.as_mut() else {
            return false;
        };
        let deadline = Instant::now() + self.io_timeout;
        for (index, (words, stdin)) in steps.iter().enumerate() {
            let marker = if index == 0 { b'x' } else { b'&' };
            // A failure breaks the channel; the step that reads it says so.
            if self
                .send(host, heartbeat, marker, words, stdin, deadline)
                .is_err()
            {
                break;
            }
            heartbeat.ahead.push_back(SentAhead::new(words, stdin));
        }
        true
    }

    /// Writes one request (`marker` is `x`, or `&` for "only after the one
    /// before it succeeded"); a write that fails partway breaks the channel.
    fn send(
        &self,
        host: &str,
        heartbeat: &mut Heartbeat,
        marker: u8,
        words: &[String],
        stdin: &[u8],
        deadline: Instant,
    ) -> Result<(), HostError> {
        if let Some(why) = &heartbeat.broken {
            return Err(lost(host, "the lock's channel", why));
        }
        let head = request_head(marker, words, stdin.len());
        #[cfg(feature = "fault-injection")]
        let mut paused = false;
        for part in [head.as_bytes(), stdin] {
            let mut written = 0;
            while written < part.len() {
                // A test may cut the connection here, partway through an upload.
                #[cfg(feature = "fault-injection")]
                if written > 0 && !paused {
                    paused = true;
                    crate::fault::pause_before(host, "mid-upload");
                }
                let end = part.len().min(written + UPLOAD_CHUNK);
                let wrote = match heartbeat.channel.write(&part[written..end]) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        self.wait_for_socket(host, deadline).map(|()| 0)
                    }
                    Err(e) => Err(lost(host, "sending a step on the lock's channel", e)),
                };
                match wrote {
                    Ok(n) => written += n,
                    Err(error) => {
                        heartbeat.broken = Some("a step was cut off partway".into());
                        return Err(error);
                    }
                }
            }
        }
        heartbeat.last = Instant::now();
        Ok(())
    }

    /// Reads one `done CODE OUTLEN ERRLEN\n` answer and that many bytes of
    /// stdout and stderr from the lock's channel, starting with what came
    /// after the last one; what comes after this one is kept for the next.
    /// `drain` does not beat here: a beat would write to this very channel.
    fn read_answer(
        &self,
        host: &str,
        heartbeat: &mut Heartbeat,
        deadline: Instant,
    ) -> Result<Output, HostError> {
        if let Some(why) = &heartbeat.broken {
            return Err(lost(host, "the lock's channel", why));
        }
        let mut answer = std::mem::take(&mut heartbeat.pending);
        let mut noise = Vec::new();
        let drained = self.drain(
            host,
            "reading a step's answer on the lock's channel",
            &mut heartbeat.channel,
            (&mut answer, &mut noise),
            deadline,
            |out| !matches!(lock_answer(out), Ok(None)),
            false,
        );
        if let Err(error) = drained {
            // A late answer would be taken for the next step's.
            heartbeat.broken = Some("an answer did not come in time".into());
            return Err(error);
        }
        match lock_answer(&answer) {
            Ok(Some((status, out, err))) => {
                heartbeat.pending = zeroize::Zeroizing::new(answer[err.end..].to_vec());
                Ok(Output {
                    status,
                    stdout: answer[out].to_vec(),
                    stderr: String::from_utf8_lossy(&answer[err]).into_owned(),
                })
            }
            Ok(None) => Err(lost(host, "the lock holder", "ended before it answered")),
            Err(line) => {
                heartbeat.broken = Some("an answer was not one".into());
                Err(HostError::new(
                    ErrorKind::RemoteCommandFailed,
                    format!("`{host}`: the lock holder answered `{line}`"),
                ))
            }
        }
    }

    /// Sends the lock holder its heartbeat when one is due.
    pub fn beat(&self) {
        let mut lock = self.lock.borrow_mut();
        if let Some(heartbeat) = lock.as_mut() {
            if heartbeat.last.elapsed() >= BEAT_EVERY {
                // A beat that would block is simply tried again at the next idle moment.
                if heartbeat.channel.write(b"h").is_ok_and(|n| n == 1) {
                    heartbeat.last = Instant::now();
                }
            }
        }
    }

    /// Runs the lock holder (`host/lock.rs`): it answers `acquired`, or first
    /// `held-by WHO` while another run has the lock; then we wait up to `wait`
    /// for `acquired`. Once acquired the channel stays open, holding the lock,
    /// until the connection ends; a run that stops waiting closes it. `with_lock`
    /// are steps sent with the command, for the holder to take once the lock
    /// is its own (their answers are read as with `send_ahead`).
    pub fn hold(
        &self,
        host: &str,
        command: &str,
        holder: &str,
        wait: Duration,
        with_lock: &[(Vec<String>, &[u8])],
    ) -> Result<Held, HostError> {
        // The holder line, then steps for once the lock is ours: they travel
        // with the command and cost no round trip of their own.
        let mut stdin = zeroize::Zeroizing::new(format!("{holder}\n").into_bytes());
        for (words, input) in with_lock {
            stdin.extend_from_slice(request_head(b'x', words, input.len()).as_bytes());
            stdin.extend_from_slice(input);
        }
        let answer_by = Instant::now() + self.io_timeout;
        let mut channel = self.start(host, command, &stdin, answer_by)?;
        let (mut answer, mut errors) = (Vec::new(), Vec::new());
        // The holder describes itself first (`describe N` and N bytes), then
        // answers `held-by WHO` or `acquired`.
        self.drain(
            host,
            "waiting for the lock",
            &mut channel,
            (&mut answer, &mut errors),
            answer_by,
            |out| description_end(out).is_some_and(|(_, end)| out[end..].contains(&b'\n')),
            true,
        )?;
        let (description, start) = description_end(&answer).unwrap_or((None, 0));
        let acquired = move |out: &[u8]| {
            out[start.min(out.len())..]
                .split(|b| *b == b'\n')
                .any(|l| l == b"acquired")
        };
        let first = String::from_utf8_lossy(&answer[start.min(answer.len())..])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let verdict = 'verdict: {
            if first.starts_with("held-by ") && !acquired(&answer) {
                let give_up = Instant::now() + wait;
                let waited = self.drain(
                    host,
                    "waiting for the lock",
                    &mut channel,
                    (&mut answer, &mut errors),
                    give_up,
                    acquired,
                    true,
                );
                match waited {
                    Err(_) if Instant::now() >= give_up => {
                        // Closing the channel ends the waiting holder on the host.
                        drop(channel);
                        break 'verdict Err(first);
                    }
                    Err(error) => return Err(error),
                    Ok(()) if !acquired(&answer) => break 'verdict Err(first),
                    Ok(()) => {}
                }
            }
            if acquired(&answer) {
                let mut heartbeat = Heartbeat {
                    channel,
                    last: Instant::now(),
                    read: None,
                    ahead: Default::default(),
                    pending: Default::default(),
                    broken: None,
                };
                // A holder that describes itself answers `read` unasked
                // right after `acquired`.
                if description.is_some() {
                    let tail = &answer[start.min(answer.len())..];
                    let after = tail
                        .windows(9)
                        .position(|w| w == b"acquired\n")
                        .map(|at| tail[at + 9..].to_vec())
                        .unwrap_or_default();
                    // The file's first bytes may be here: not left behind.
                    zeroize::Zeroize::zeroize(&mut answer);
                    let answer_by = Instant::now() + self.io_timeout;
                    heartbeat.pending = zeroize::Zeroizing::new(after);
                    let read = self.read_answer(host, &mut heartbeat, answer_by)?;
                    heartbeat.read = Some(read);
                    // One that describes itself takes the steps sent with it.
                    heartbeat.ahead = with_lock
                        .iter()
                        .map(|(words, stdin)| SentAhead::new(words, stdin))
                        .collect();
                }
                *self.lock.borrow_mut() = Some(heartbeat);
                break 'verdict Ok(());
            }
            let errors = String::from_utf8_lossy(&errors).into_owned();
            Err(if first.is_empty() {
                errors
                    .lines()
                    .find(|l| !l.contains("unable to resolve host"))
                    .unwrap_or("no answer")
                    .to_string()
            } else {
                first
            })
        };
        Ok(Held {
            verdict,
            description,
        })
    }
}

impl Connection {
    /// `GET path` on `host:port` as seen from this host, through a direct-tcpip
    /// channel; returns the HTTP status.
    pub fn http_get(
        &self,
        label: &str,
        host: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<u16, String> {
        let deadline = Instant::now() + timeout;
        let mut channel = self
            .retry(label, "opening a tunnel", deadline, || {
                self.session.channel_direct_tcpip(host, port, None)
            })
            .map_err(|e| e.message)?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        let mut written = 0;
        while written < request.len() {
            match channel.write(&request.as_bytes()[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.idle(label, deadline).map_err(|e| e.message)?
                }
                Err(e) => return Err(format!("connection failed: {}", e.kind())),
            }
        }
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        while !response.contains(&b'\n') {
            match channel.read(&mut buffer) {
                Ok(0) if channel.eof() => break,
                Ok(0) => self
                    .idle(label, deadline)
                    .map_err(|_| "timed out".to_string())?,
                Ok(n) => response.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self
                    .idle(label, deadline)
                    .map_err(|_| "timed out".to_string())?,
                Err(e) => return Err(format!("connection failed: {}", e.kind())),
            }
        }
        let _ = channel.close();
        let line = String::from_utf8_lossy(&response);
        line.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| "connection failed: no HTTP answer".to_string())
    }
}

/// A stream to `host:port` through the bastion: a socket pair whose far end a
/// thread joins to a direct-tcpip channel of the bastion's session. The thread
/// (and the bastion connection) ends when either side closes.
fn tunnel(
    bastion: &HostSettings,
    config: &SshConfig,
    host: &str,
    port: u16,
) -> Result<UnixStream, HostError> {
    let via = Connection::open(bastion, config).map_err(|e| {
        HostError::new(
            e.kind,
            format!("through the bastion `{}`: {}", bastion.name, e.message),
        )
    })?;
    let deadline = Instant::now() + config.connect_timeout;
    let channel = via
        .retry(&bastion.name, "opening a tunnel", deadline, || {
            via.session.channel_direct_tcpip(host, port, None)
        })
        .map_err(|e| {
            HostError::new(
                ErrorKind::ConnectFailed,
                format!(
                    "`{host}`: the bastion `{}` cannot reach port {port}: {}",
                    bastion.name, e.message
                ),
            )
        })?;
    let (near, far) = UnixStream::pair()
        .map_err(|e| HostError::new(ErrorKind::ConnectFailed, format!("`{host}`: {e}")))?;
    far.set_nonblocking(true)
        .map_err(|e| HostError::new(ErrorKind::ConnectFailed, format!("`{host}`: {e}")))?;
    std::thread::spawn(move || relay(via, channel, far));
    Ok(near)
}

/// Copies bytes both ways between a local socket and a channel until one closes.
fn relay(via: Connection, mut channel: Channel, mut local: UnixStream) {
    let mut to_remote: Vec<u8> = Vec::new();
    let mut to_local: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        let moved = (|| {
            let from_local = pull(&mut local, &mut to_remote, &mut buffer)?;
            let to_channel = push(&mut channel, &mut to_remote)?;
            let from_channel = match pull(&mut channel, &mut to_local, &mut buffer)? {
                Some(0) if channel.eof() => return Err(()),
                other => other,
            };
            let to_socket = push(&mut local, &mut to_local)?;
            if from_local == Some(0) {
                return Err(());
            }
            Ok([from_local, to_channel, from_channel, to_socket]
                .iter()
                .any(|n| n.is_some_and(|n| n > 0)))
        })();
        match moved {
            Err(()) => break,
            Ok(false) => std::thread::sleep(POLL),
            Ok(true) => {}
        }
    }
    drop(channel);
    drop(via);
}

/// Reads what is there into `into` (bounded): Some(bytes read, 0 at the end),
/// None when nothing is ready, Err when the stream broke.
fn pull(
    source: &mut impl Read,
    into: &mut Vec<u8>,
    buffer: &mut [u8],
) -> Result<Option<usize>, ()> {
    if into.len() >= buffer.len() {
        return Ok(None);
    }
    match source.read(buffer) {
        Ok(n) => {
            into.extend_from_slice(&buffer[..n]);
            Ok(Some(n))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(_) => Err(()),
    }
}

/// Writes what it can of `from`: Some(bytes written), None when nothing could go.
fn push(sink: &mut impl Write, from: &mut Vec<u8>) -> Result<Option<usize>, ()> {
    if from.is_empty() {
        return Ok(None);
    }
    match sink.write(from) {
        Ok(n) => {
            from.drain(..n);
            Ok(Some(n))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(_) => Err(()),
    }
}

fn millis(duration: Duration) -> u32 {
    duration.as_millis().min(u32::MAX as u128) as u32
}

/// A known_hosts file's text. Only a file that does not exist counts as empty
/// (`acceptNew` then records the first host); a file that cannot be read, or
/// is not text, refuses every host rather than trusting every key.
pub fn read_known_hosts(path: &std::path::Path) -> std::result::Result<String, String> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map_err(|_| format!("known_hosts `{}` is not a text file", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(format!("cannot read known_hosts `{}`: {e}", path.display())),
    };
    check_known_hosts(&text)
        .map_err(|problem| format!("known_hosts `{}`: {problem}", path.display()))?;
    Ok(text)
}

/// Every line is a comment, blank, or `HOSTS KEYTYPE BASE64 [COMMENT]` whose
/// key blob names its own type. libssh2 passes over lines it cannot read, so
/// a file that is not known_hosts would otherwise count as empty and
/// `acceptNew` would trust every host. `@cert-authority` and `@revoked` lines
/// cannot be checked through libssh2: ignoring a revocation would trust a
/// revoked key, so they refuse too.
pub fn check_known_hosts(text: &str) -> std::result::Result<(), String> {
    const KEY_TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = number + 1;
        if let Some(marker) = line
            .split_whitespace()
            .next()
            .filter(|w| w.starts_with('@'))
        {
            return Err(format!(
                "line {at}: `{marker}` entries cannot be checked by hostenv; keep them in another known_hosts"
            ));
        }
        let mut fields = line.split_whitespace();
        let (Some(_hosts), Some(kind), Some(key)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("line {at} is not `HOSTS KEYTYPE KEY`"));
        };
        if !KEY_TYPES.contains(&kind) {
            return Err(format!("line {at}: `{kind}` is not a host key type"));
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| format!("line {at}: the key is not base64"))?;
        let named = blob
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            .and_then(|n| blob.get(4..4 + n));
        if named != Some(kind.as_bytes()) {
            return Err(format!("line {at}: the key is not an `{kind}` key"));
        }
    }
    Ok(())
}

/// Whether a known_hosts host field names this host: a plain pattern list
/// (`name`, `[name]:port`), or a hashed entry (`|1|salt|hash`, `ssh-keygen -H`:
/// HMAC-SHA1 of the name under the salt).
fn names_host(field: &str, host: &str, port: u16) -> bool {
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    if let Some(hashed) = field.strip_prefix("|1|") {
        let engine = &base64::engine::general_purpose::STANDARD;
        let Some((salt, hash)) = hashed.split_once('|') else {
            return false;
        };
        let (Ok(salt), Ok(hash)) = (engine.decode(salt), engine.decode(hash)) else {
            return false;
        };
        use hmac::Mac;
        let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
            return false;
        };
        mac.update(name.as_bytes());
        return mac.verify_slice(&hash).is_ok();
    }
    field.split(',').any(|n| n == name)
}

/// The key types known_hosts records for this host, as libssh2 method names, so
/// the server is asked for a key we can check (libssh2 reports "mismatch" when
/// the only entry is of another type than the one offered).
fn host_key_preference(known_hosts: &str, host: &str, port: u16) -> Option<String> {
    let mut methods: Vec<&str> = Vec::new();
    for line in known_hosts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(names), Some(kind)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !names_host(names, host, port) {
            continue;
        }
        let names: &[&str] = match kind {
            "ssh-ed25519" => &["ssh-ed25519"],
            "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => &[
                "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
            ],
            "ssh-rsa" => &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
            _ => &[],
        };
        for name in names {
            if !methods.contains(name) {
                methods.push(name);
            }
        }
    }
    (!methods.is_empty()).then(|| methods.join(","))
}

fn fingerprint(session: &Session) -> String {
    session
        .host_key_hash(HashType::Sha256)
        .map(|hash| {
            format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
            )
        })
        .unwrap_or_else(|| "an unknown fingerprint".into())
}

fn check_host_key(
    session: &Session,
    host: &str,
    port: u16,
    config: &SshConfig,
    text: &str,
) -> Result<(), HostError> {
    let (key, key_type) = session.host_key().ok_or_else(|| {
        HostError::new(
            ErrorKind::ConnectFailed,
            format!("`{host}` offered no host key"),
        )
    })?;
    let mut known = session
        .known_hosts()
        .map_err(|e| HostError::new(ErrorKind::ConnectFailed, format!("`{host}`: {e}")))?;
    // libssh2 reads one known_hosts line per call.
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        known
            .read_str(line, KnownHostFileKind::OpenSSH)
            .map_err(|e| {
                HostError::new(
                    ErrorKind::HostKeyUnknown,
                    format!(
                        "known_hosts line {} cannot be read: {}",
                        number + 1,
                        e.message()
                    ),
                )
            })?;
    }
    match known.check_port(host, port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => Err(HostError::new(
            ErrorKind::HostKeyChanged,
            format!(
                "`{host}` offered a host key ({}) other than the one known_hosts records; refusing",
                fingerprint(session)
            ),
        )),
        CheckResult::NotFound if config.policy == HostKeyPolicy::AcceptNew => {
            record_new_key(&mut known, host, port, key, key_type, config).map_err(|e| {
                HostError::new(
                    ErrorKind::HostKeyUnknown,
                    format!("`{host}`: cannot record its key: {e}"),
                )
            })
        }
        CheckResult::NotFound => Err(HostError::new(
            ErrorKind::HostKeyUnknown,
            format!(
                "`{host}` offered a host key ({}) that known_hosts does not record",
                fingerprint(session)
            ),
        )),
        CheckResult::Failure => Err(HostError::new(
            ErrorKind::HostKeyUnknown,
            format!("`{host}`: the host key check failed"),
        )),
    }
}

fn record_new_key(
    known: &mut ssh2::KnownHosts,
    host: &str,
    port: u16,
    key: &[u8],
    key_type: ssh2::HostKeyType,
    config: &SshConfig,
) -> std::result::Result<(), String> {
    let format = match key_type {
        ssh2::HostKeyType::Rsa => KnownHostKeyFormat::SshRsa,
        ssh2::HostKeyType::Dss => KnownHostKeyFormat::SshDss,
        ssh2::HostKeyType::Ecdsa256 => KnownHostKeyFormat::Ecdsa256,
        ssh2::HostKeyType::Ecdsa384 => KnownHostKeyFormat::Ecdsa384,
        ssh2::HostKeyType::Ecdsa521 => KnownHostKeyFormat::Ecdsa521,
        ssh2::HostKeyType::Ed25519 => KnownHostKeyFormat::Ed25519,
        ssh2::HostKeyType::Unknown => return Err("unknown key type".into()),
    };
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    known
        .add(&name, key, "added by hostenv (acceptNew)", format)
        .map_err(|e| e.to_string())?;
    if let KnownHosts::File(path) = &config.known_hosts {
        // Appended, not rewritten: other runs may be recording their hosts too.
        let line = known
            .hosts()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|h| h.name() == Some(name.as_str()))
            .find_map(|h| known.write_string(&h, KnownHostFileKind::OpenSSH).ok());
        if let Some(line) = line {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| e.to_string())?;
            writeln!(file, "{}", line.trim_end()).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::description_end;

    #[test]
    fn the_lock_steps_description_is_found_whole_or_not_at_all() {
        let answer = b"describe 13\nhostenv-host\nacquired\n";
        assert_eq!(
            description_end(answer),
            Some((Some("hostenv-host\n".to_string()), 25))
        );
        assert_eq!(&answer[25..], b"acquired\n");
        // Still arriving: the head, or the text.
        assert_eq!(description_end(b"descr"), None);
        assert_eq!(description_end(b"describe 12\nhost"), None);
        // A program that does not describe itself.
        assert_eq!(description_end(b"acquired\n"), Some((None, 0)));
        assert_eq!(description_end(b"acq"), Some((None, 0)));
    }

    use super::*;

    #[test]
    fn hashed_entries_steer_the_key_type_like_plain_ones() {
        // `ssh-keygen -H` of `10.0.0.5 ecdsa-sha2-nistp256 ...` and of `[10.0.0.5]:2222 ssh-ed25519 ...`.
        let salt = [7u8; 20];
        let hashed = |name: &str| {
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
            mac.update(name.as_bytes());
            let engine = &base64::engine::general_purpose::STANDARD;
            format!(
                "|1|{}|{}",
                engine.encode(salt),
                engine.encode(mac.finalize().into_bytes())
            )
        };
        let known = format!(
            "{} ecdsa-sha2-nistp256 AAAA\n{} ssh-ed25519 AAAA\n",
            hashed("10.0.0.5"),
            hashed("[10.0.0.5]:2222")
        );
        assert_eq!(
            host_key_preference(&known, "10.0.0.5", 22).as_deref(),
            Some("ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521")
        );
        assert_eq!(
            host_key_preference(&known, "10.0.0.5", 2222).as_deref(),
            Some("ssh-ed25519")
        );
        assert_eq!(host_key_preference(&known, "10.0.0.6", 22), None);
        assert!(!names_host("|1|not-base64|x", "10.0.0.5", 22));
    }

    #[test]
    fn a_known_hosts_file_is_checked_line_by_line() {
        let engine = &base64::engine::general_purpose::STANDARD;
        let blob = |kind: &str| {
            let mut blob = (kind.len() as u32).to_be_bytes().to_vec();
            blob.extend_from_slice(kind.as_bytes());
            blob.extend_from_slice(&[0, 0, 0, 1, 7]);
            engine.encode(blob)
        };
        let good = format!(
            "# comment\n\n10.0.0.5 ssh-ed25519 {} host\n|1|c2FsdA==|aGFzaA== ssh-rsa {}\n",
            blob("ssh-ed25519"),
            blob("ssh-rsa")
        );
        assert_eq!(check_known_hosts(&good), Ok(()));
        for (bad, says) in [
            (
                "this is not a known_hosts line".to_string(),
                "`is` is not a host key type",
            ),
            ("10.0.0.5 ssh-ed25519".to_string(), "line 2 is not"),
            ("10.0.0.5 ssh-ed25519 !!!".to_string(), "not base64"),
            (
                format!("10.0.0.5 ssh-ed25519 {}", blob("ssh-rsa")),
                "not an `ssh-ed25519` key",
            ),
            (
                format!("@revoked * ssh-ed25519 {}", blob("ssh-ed25519")),
                "`@revoked`",
            ),
            (
                format!(
                    "@cert-authority *.internal ssh-ed25519 {}",
                    blob("ssh-ed25519")
                ),
                "`@cert-authority`",
            ),
        ] {
            let problem = check_known_hosts(&format!("# ok\n{bad}\n")).unwrap_err();
            assert!(problem.contains(says), "{bad}: {problem}");
        }
    }

    #[test]
    fn only_a_missing_known_hosts_counts_as_empty() {
        let dir = std::env::temp_dir().join(format!("hostenv-kh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_known_hosts(&dir.join("absent")).unwrap(), "");
        let binary = dir.join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        assert!(read_known_hosts(&binary)
            .unwrap_err()
            .contains("not a text file"));
        // A directory cannot be read as a file: refused, not empty.
        assert!(read_known_hosts(&dir).unwrap_err().contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
