//! Where the workers run: threads of one process, or a cluster of processes that connect to one
//! another over TCP before anything is read.
//!
//! The connections are made here rather than by timely, which retries a refused connection and
//! polls for an awaited one once a second: processes started together lost about a second each
//! time a cluster formed (in B1, a fifth of a 2M-event run; after a pod restarts, a second more
//! before billing resumes). Here a refused connection is retried after 10 ms, doubling to
//! 250 ms, and an awaited one is looked for every 5 ms. The sockets, and what each process says
//! first on one, are timely's: the process with the higher index connects and sends its index.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::communication::Hooks;

/// How to run: threads per process, and the cluster if more than one process.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub threads: usize,
    pub process: usize,
    /// `host:port` of every process; empty for a single process.
    pub addresses: Vec<String>,
    /// How long a process of a cluster waits for every other to connect. A peer that died
    /// before the cluster formed would otherwise be waited for forever (connections are
    /// retried).
    pub join_timeout: Duration,
}

/// What timely's workers are built from: one allocator per worker thread, and what must live as
/// long as they run (a cluster's send and receive threads).
pub(crate) type Communication = (Vec<AllocatorBuilder>, Box<dyn std::any::Any + Send>);

impl Cluster {
    /// How long a process waits for its peers unless configured (`workers.join_timeout`).
    pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(60);

    pub fn local(threads: usize) -> Cluster {
        Cluster {
            threads: threads.max(1),
            process: 0,
            addresses: Vec::new(),
            join_timeout: Cluster::DEFAULT_JOIN_TIMEOUT,
        }
    }

    /// The workers' communication; for a cluster, once every process is connected.
    pub(crate) fn communication(&self) -> Result<Communication, String> {
        if self.addresses.len() <= 1 {
            let config = if self.threads > 1 {
                timely::CommunicationConfig::Process(self.threads)
            } else {
                timely::CommunicationConfig::Thread
            };
            return config.try_build();
        }
        let sockets = connect(&self.addresses, self.process).map_err(|e| {
            format!(
                "process {} cannot join the cluster at {}: {e}",
                self.process, self.addresses[self.process]
            )
        })?;
        let hooks = Hooks::default();
        let local = ProcessBuilder::new_typed_vector(
            self.threads,
            hooks.refill.clone(),
            hooks.spill.clone(),
        );
        let (builders, guard) =
            initialize_networking_from_sockets(local, sockets, self.process, self.threads, hooks)
                .map_err(|e| format!("cannot start the cluster's network threads: {e}"))?;
        Ok((
            builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
            Box::new(guard),
        ))
    }
}

/// A socket to every other process, by process index (`None` at `me`): connected to each lower
/// one, accepted from each higher one.
fn connect(addresses: &[String], me: usize) -> std::io::Result<Vec<Option<TcpStream>>> {
    // Bind before connecting out, so a higher process finds this one listening as early as can be.
    let listener = TcpListener::bind(addresses[me].as_str())?;
    let lower = addresses[..me].to_vec();
    let outgoing = std::thread::spawn(move || {
        lower
            .iter()
            .map(|address| connect_to(address, me))
            .collect::<std::io::Result<Vec<_>>>()
    });
    let incoming = accept_from(&listener, me, addresses.len());
    let mut sockets: Vec<Option<TcpStream>> = outgoing
        .join()
        .map_err(|_| std::io::Error::other("connecting to the other processes panicked"))??
        .into_iter()
        .map(Some)
        .collect();
    sockets.push(None);
    sockets.extend(incoming?.into_iter().map(Some));
    Ok(sockets)
}

/// Connects to a lower process, retrying until it listens, and says who this is.
fn connect_to(address: &str, me: usize) -> std::io::Result<TcpStream> {
    let mut wait = Duration::from_millis(10);
    loop {
        match TcpStream::connect(address) {
            Ok(mut stream) => {
                stream.set_nodelay(true)?;
                stream.write_all(&(me as u64).to_be_bytes())?;
                tracing::debug!(process = me, peer = address, "connected");
                return Ok(stream);
            }
            Err(e) => {
                tracing::debug!(process = me, peer = address, error = %e, "peer not listening yet; retrying");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// Accepts a connection from every higher process; each says its index first.
fn accept_from(
    listener: &TcpListener,
    me: usize,
    processes: usize,
) -> std::io::Result<Vec<TcpStream>> {
    listener.set_nonblocking(true)?;
    let mut accepted: Vec<Option<TcpStream>> = (me + 1..processes).map(|_| None).collect();
    while accepted.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut stream, from)) => {
                stream.set_nonblocking(false)?;
                stream.set_nodelay(true)?;
                let mut index = [0u8; 8];
                stream.read_exact(&mut index)?;
                let peer = u64::from_be_bytes(index) as usize;
                let slot = peer
                    .checked_sub(me + 1)
                    .and_then(|i| accepted.get_mut(i))
                    .filter(|s| s.is_none())
                    .ok_or_else(|| {
                        std::io::Error::other(format!(
                            "{from} says it is process {peer}, which is not a higher process \
                             still awaited: give every process the same hostfile"
                        ))
                    })?;
                tracing::debug!(process = me, peer, "accepted");
                *slot = Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(accepted.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_addresses(n: usize) -> Vec<String> {
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        listeners
            .iter()
            .map(|l| l.local_addr().expect("addr").to_string())
            .collect()
    }

    #[test]
    fn every_process_gets_a_socket_to_every_other_whatever_order_they_start_in() {
        let addresses = free_addresses(3);
        // The highest first: it must retry until the lower ones listen.
        let handles: Vec<_> = [2usize, 0, 1]
            .into_iter()
            .map(|me| {
                let addresses = addresses.clone();
                std::thread::sleep(Duration::from_millis(30));
                std::thread::spawn(move || (me, connect(&addresses, me).expect("joins")))
            })
            .collect();
        let mut joined: Vec<(usize, Vec<Option<TcpStream>>)> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        // Each writes on every socket who it is and who it thinks the other end is; then each
        // reads what the other end wrote, which must be the mirror.
        for (me, sockets) in &mut joined {
            assert_eq!(sockets.len(), 3);
            assert!(
                sockets[*me].is_none(),
                "process {me} has no socket to itself"
            );
            for (peer, socket) in sockets.iter_mut().enumerate() {
                if let Some(s) = socket {
                    s.write_all(&[*me as u8, peer as u8]).expect("write");
                }
            }
        }
        for (me, sockets) in &mut joined {
            for (peer, socket) in sockets.iter_mut().enumerate() {
                if let Some(s) = socket {
                    let mut said = [0u8; 2];
                    s.read_exact(&mut said).expect("read");
                    assert_eq!(
                        said,
                        [peer as u8, *me as u8],
                        "process {me}'s socket {peer}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_peer_claiming_an_index_not_awaited_is_refused_by_name() {
        let addresses = free_addresses(2);
        let address = addresses[0].clone();
        let impostor = std::thread::spawn(move || connect_to(&address, 0));
        let err = connect(&addresses, 0).expect_err("process 0 awaits only process 1");
        assert!(
            err.to_string().contains("says it is process 0")
                && err.to_string().contains("hostfile"),
            "{err}"
        );
        impostor.join().expect("thread").expect("it connected");
    }
}
