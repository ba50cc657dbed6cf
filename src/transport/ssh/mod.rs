//! The SSH transport: connect with timeouts, check the host key, authenticate,
//! and run commands whose stdin may carry secret bytes. One session per host,
//! reused for every step. Only this module and `health` touch the network.
//! The lock's own channel is `lock_channel`, a bastion's tunnel `tunnel`.

pub(crate) mod lock_channel;
mod tunnel;

use lock_channel::Heartbeat;
use tunnel::tunnel;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::time::{Duration, Instant};

use base64::Engine;
use ssh2::{
    Channel, CheckResult, HashType, KnownHostFileKind, KnownHostKeyFormat, MethodType, Session,
};

use crate::protocol::error::{ErrorKind, HostError, Result};
use crate::protocol::request::HostKeyPolicy;
use crate::settings::known_hosts::{host_key_preference, read_known_hosts};
use crate::settings::names::HostName;
use crate::settings::secret::{ExposeSecret, SecretString};
use crate::settings::ssh::{Auth, KnownHosts, SshConfig, UserCertificate};
use crate::settings::HostSettings;

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

/// The most a command's output may hold (queries, `describe`, an install).
const COMMAND_OUTPUT_LIMIT: usize = 1 << 20;

/// The most an HTTP answer through a host's SSH session may hold before its status line.
const HTTP_HEAD_LIMIT: usize = 64 * 1024;

/// How one read from a host is bounded: what it is (for messages), when it
/// must be over, the most it takes, and whether waits beat the lock (never
/// while reading the lock's own channel).
pub(super) struct Reading<'w> {
    pub what: &'w str,
    pub deadline: Instant,
    pub limit: usize,
    pub beat: bool,
}

/// An authenticated session to one host. After authentication it runs
/// non-blocking, so that while a command runs, the host lock's heartbeat
/// (see `lock.rs`) keeps going on its own channel of the same session.
pub struct Connection {
    /// The host this session reaches, as its messages name it.
    host: HostName,
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

const POLL: Duration = Duration::from_millis(1);
/// The longest wait for the socket before looking again (and beating).
const WAIT_AT_MOST: Duration = Duration::from_millis(20);

/// Why a write to a channel stopped: the socket stayed full past the
/// deadline (already the host's error), or the write itself failed.
enum WriteFailed {
    Waiting(HostError),
    Io(std::io::Error),
}

impl WriteFailed {
    /// The host's error, `what` naming the write that failed.
    fn into_error(self, host: &str, what: &str) -> HostError {
        match self {
            WriteFailed::Waiting(error) => error,
            WriteFailed::Io(error) => lost(host, what, error),
        }
    }
}

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
            host: host.name.clone(),
            session,
            socket,
            io_timeout: config.io_timeout,
            lock: RefCell::new(None),
        })
    }

    /// Runs `command` with `stdin`; the command line itself never holds a secret.
    pub fn exec(&self, command: &str, stdin: &[u8]) -> Result<Output, HostError> {
        self.exec_with_timeout(command, stdin, self.io_timeout)
    }

    /// Like `exec`, with its own bound for commands that take their time (restarts).
    pub fn exec_with_timeout(
        &self,
        command: &str,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, HostError> {
        let host = self.host.as_str();
        let deadline = Instant::now() + timeout;
        let mut channel = self.start(command, stdin, deadline)?;
        self.retry("sending data", deadline, || channel.send_eof())?;
        let (stdout, stderr) = self.read_all(&mut channel, deadline)?;
        self.retry("closing a command", deadline, || channel.wait_close())?;
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
    fn start(&self, command: &str, stdin: &[u8], deadline: Instant) -> Result<Channel, HostError> {
        let host = self.host.as_str();
        let mut channel = self.retry("cannot open a channel", deadline, || {
            self.session.channel_session()
        })?;
        self.retry("cannot start a command", deadline, || channel.exec(command))?;
        self.write_all(&mut channel, &[stdin], deadline, true)
            .map_err(|failed| failed.into_error(host, "sending data"))?;
        Ok(channel)
    }

    /// Writes `parts` to `channel` one after the other, in chunks of at most
    /// [`UPLOAD_CHUNK`] bytes, waiting while its window is full (and beating
    /// the lock meanwhile when `beat`: never while writing the lock's own
    /// channel). The error is what failed, for the caller's message.
    fn write_all(
        &self,
        channel: &mut Channel,
        parts: &[&[u8]],
        deadline: Instant,
        beat: bool,
    ) -> Result<(), WriteFailed> {
        #[cfg(feature = "fault-injection")]
        let mut paused = false;
        for part in parts {
            let mut written = 0;
            while written < part.len() {
                // A test may cut the connection here, partway through an upload.
                #[cfg(feature = "fault-injection")]
                if written > 0 && !paused {
                    paused = true;
                    crate::fault::pause_before(self.host.as_str(), "mid-upload");
                }
                let end = part.len().min(written + UPLOAD_CHUNK);
                match channel.write(&part[written..end]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let waited = if beat {
                            self.idle(deadline)
                        } else {
                            self.wait_for_socket(deadline)
                        };
                        waited.map_err(WriteFailed::Waiting)?;
                    }
                    Err(e) => return Err(WriteFailed::Io(e)),
                }
            }
        }
        Ok(())
    }

    /// Reads stdout and stderr to their end.
    fn read_all(
        &self,
        channel: &mut Channel,
        deadline: Instant,
    ) -> Result<(Vec<u8>, Vec<u8>), HostError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let reading = Reading {
            what: "reading output",
            deadline,
            limit: COMMAND_OUTPUT_LIMIT,
            beat: true,
        };
        self.drain(channel, (&mut stdout, &mut stderr), &reading, |_| false)?;
        Ok((stdout, stderr))
    }

    /// Reads stdout and stderr until the channel ends or `enough(stdout)`,
    /// within `reading`'s deadline and limit, both checked on every turn
    /// whether data flows or not. stderr is always drained too: libssh2 sees
    /// the end of a channel only once everything before it has been read.
    fn drain(
        &self,
        channel: &mut Channel,
        (stdout, stderr): (&mut Vec<u8>, &mut Vec<u8>),
        reading: &Reading,
        enough: impl Fn(&[u8]) -> bool,
    ) -> Result<(), HostError> {
        let host = self.host.as_str();
        let what = reading.what;
        let mut buffer = [0u8; 16 * 1024];
        while !enough(stdout) {
            if Instant::now() > reading.deadline {
                return Err(lost(host, what, "timed out"));
            }
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
            if stdout.len() + stderr.len() > reading.limit {
                return Err(HostError::new(
                    ErrorKind::HostAnswerTooLarge,
                    format!(
                        "`{host}`: {what}: the host sent more than {} bytes, the most hostenv reads there",
                        reading.limit
                    ),
                ));
            }
            if channel.eof() && !progressed {
                break;
            }
            if !progressed {
                if reading.beat {
                    self.idle(reading.deadline)?;
                } else {
                    self.wait_for_socket(reading.deadline)?;
                }
            }
        }
        Ok(())
    }

    /// Retries a libssh2 call until it stops saying "again", beating meanwhile.
    fn retry<T>(
        &self,
        what: &str,
        deadline: Instant,
        mut call: impl FnMut() -> Result<T, ssh2::Error>,
    ) -> Result<T, HostError> {
        let host = self.host.as_str();
        loop {
            match call() {
                Ok(value) => return Ok(value),
                Err(e) if again(&e) => self.idle(deadline)?,
                Err(e) => return Err(lost(host, what, e)),
            }
        }
    }

    /// Waits until the socket is ready in the direction libssh2 is blocked on
    /// (or a short while), keeping the lock alive; fails past `deadline`.
    fn idle(&self, deadline: Instant) -> Result<(), HostError> {
        self.beat();
        self.wait_for_socket(deadline)
    }

    /// Waits for the socket as `idle` does, without beating (for the lock's
    /// own channel, which is being written anyway).
    fn wait_for_socket(&self, deadline: Instant) -> Result<(), HostError> {
        let host = self.host.as_str();
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
}

impl Connection {
    /// `GET path` on `host:port` as seen from this host, through a direct-tcpip
    /// channel; returns the HTTP status.
    pub fn http_get(
        &self,
        host: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<u16, String> {
        let deadline = Instant::now() + timeout;
        let mut channel = self
            .retry("opening a tunnel", deadline, || {
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
                    self.idle(deadline).map_err(|e| e.message)?
                }
                Err(e) => return Err(format!("connection failed: {}", e.kind())),
            }
        }
        // Only the status line counts: read until it ends, within a bound
        // and the deadline whatever the host sends, looking at new bytes only.
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        let mut line_ended = false;
        while !line_ended {
            if Instant::now() > deadline {
                return Err("timed out".to_string());
            }
            match channel.read(&mut buffer) {
                Ok(0) if channel.eof() => break,
                Ok(0) => self.idle(deadline).map_err(|_| "timed out".to_string())?,
                Ok(n) => {
                    line_ended = buffer[..n].contains(&b'\n');
                    response.extend_from_slice(&buffer[..n]);
                    if !line_ended && response.len() > HTTP_HEAD_LIMIT {
                        return Err(format!(
                            "no HTTP status line in the first {HTTP_HEAD_LIMIT} bytes"
                        ));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.idle(deadline).map_err(|_| "timed out".to_string())?
                }
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

fn millis(duration: Duration) -> u32 {
    duration.as_millis().min(u32::MAX as u128) as u32
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
