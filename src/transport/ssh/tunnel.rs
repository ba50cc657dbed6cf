//! A host behind a bastion: a local socket joined to a direct-tcpip channel
//! of the bastion's session.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use std::time::Instant;

use ssh2::Channel;

use super::{Connection, POLL};
use crate::protocol::error::{ErrorKind, HostError, Result};
use crate::settings::ssh::SshConfig;
use crate::settings::HostSettings;

/// A stream to `host:port` through the bastion: a socket pair whose far end a
/// thread joins to a direct-tcpip channel of the bastion's session. The thread
/// (and the bastion connection) ends when either side closes.
pub(super) fn tunnel(
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
        .retry("opening a tunnel", deadline, || {
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
