//! A delay relay for the latency benchmark: listens on an address of its own
//! for each host and forwards every TCP connection to the host's same port,
//! holding each chunk of bytes for a fixed delay in each direction. The
//! kernel here has no netem, and this puts the same round-trip time in front
//! of every tool alike (hostenv, Ansible, OpenSSH and curl).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The relay: one listener per (address, port) pair. The delay can change
/// between runs; connections read it when they start.
pub struct Relay {
    delay: Arc<Mutex<Duration>>,
    stop: Arc<AtomicBool>,
    listeners: Vec<thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays `listen[i]:port` to `upstream[i]:port` for every port.
    pub fn start(pairs: &[(String, String)], ports: &[u16]) -> Relay {
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let stop = Arc::new(AtomicBool::new(false));
        let mut listeners = Vec::new();
        for (listen, upstream) in pairs {
            for &port in ports {
                let listener = TcpListener::bind((listen.as_str(), port))
                    .unwrap_or_else(|e| panic!("relay: bind {listen}:{port}: {e}"));
                listener.set_nonblocking(true).unwrap();
                let target: SocketAddr = format!("{upstream}:{port}").parse().unwrap();
                let (delay, stop) = (delay.clone(), stop.clone());
                listeners.push(thread::spawn(move || accept(listener, target, delay, stop)));
            }
        }
        Relay {
            delay,
            stop,
            listeners,
        }
    }

    /// The one-way delay for connections made from now on.
    pub fn set_delay(&self, one_way: Duration) {
        *self.delay.lock().unwrap() = one_way;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for listener in self.listeners.drain(..) {
            let _ = listener.join();
        }
    }
}

fn accept(
    listener: TcpListener,
    target: SocketAddr,
    delay: Arc<Mutex<Duration>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let one_way = *delay.lock().unwrap();
                thread::spawn(move || relay_connection(client, target, one_way));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn relay_connection(client: TcpStream, target: SocketAddr, one_way: Duration) {
    // The connection itself pays one round trip, as a real one would: the
    // SYN and the SYN-ACK each cross the delay before anything else moves.
    thread::sleep(one_way);
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    thread::sleep(one_way);
    client.set_nonblocking(false).unwrap();
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let pumps = [
        pump(
            client.try_clone().unwrap(),
            server.try_clone().unwrap(),
            one_way,
        ),
        pump(server, client, one_way),
    ];
    for pump in pumps {
        let _ = pump.join();
    }
}

/// Copies `from` to `to`, each chunk delivered `delay` after it was read; an
/// end of stream is passed on (after the same delay) as a half close.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) -> thread::JoinHandle<()> {
    let (send, receive) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        for (due, bytes) in receive {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if bytes.is_empty() {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            if to.write_all(&bytes).is_err() {
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => {
                    let _ = send.send((Instant::now() + delay, Vec::new()));
                    break;
                }
                Ok(n) => {
                    if send
                        .send((Instant::now() + delay, buffer[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        drop(send);
        let _ = writer.join();
    })
}
