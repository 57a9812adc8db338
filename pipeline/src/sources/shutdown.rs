//! What stops a running pipeline from outside: SIGTERM (what Kubernetes, systemd and `kill`
//! send) and SIGINT (Ctrl-C).
//!
//! A pipeline reading Kafka stops gracefully: its readers finish the epoch they are reading,
//! the run writes and commits it, every process of a cluster stops at the same committed point
//! (the request travels through the dataflow's stop relay), and `meterflow run` exits 0. The
//! next start resumes exactly there. Anywhere else — before the pipeline reads, while it
//! switches catalogs, on a second signal, or on a run reading files (which resumes from its last
//! commit anyway) — the signal stops the process at once with status 128 + signal, as SIGKILL
//! would: what was not committed is deleted and read again on the next start.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

/// The last signal received and not yet acted on (0: none). Set by the handler, which may do
/// nothing but store an atomic.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The flags of the run that stops gracefully now (`None`: a signal stops the process at once).
static GRACEFUL: Mutex<Option<Requests>> = Mutex::new(None);

#[derive(Clone)]
struct Requests {
    stop: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
}

extern "C" fn on_signal(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Takes over SIGTERM and SIGINT for this process (once), and starts the thread that acts on
/// them. Until [`graceful`] arms a run, a signal stops the process at once.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe; the
            // sigaction struct is fully initialised (zeroed, then the handler set).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(watch)
            .expect("cannot start the signal thread");
    });
}

fn watch() {
    let mut received = 0;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let signal = RECEIVED.swap(0, Ordering::SeqCst);
        if signal == 0 {
            continue;
        }
        received += 1;
        let armed = GRACEFUL.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match armed {
            Some(r) if received == 1 => {
                tracing::info!(
                    signal = name(signal),
                    "shutting down: finishing the epoch being read, then committing it; \
                     a second signal stops at once"
                );
                r.shutdown.store(true, Ordering::SeqCst);
                r.stop.store(true, Ordering::SeqCst);
            }
            _ => {
                crate::say!(
                    "meterflow: stopped by {} at once: a run writing to ClickHouse resumes \
                     from its last commit when started again; tables written as files by this \
                     run are incomplete: run it again",
                    name(signal)
                );
                std::process::exit(128 + signal);
            }
        }
    }
}

fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}

/// While the returned guard lives, a signal stops this run gracefully by setting `stop` and
/// `shutdown` (see [`meterflow_operators::dataflow::Execution`]).
pub fn graceful(stop: Arc<AtomicBool>, shutdown: Arc<AtomicBool>) -> Graceful {
    *GRACEFUL.lock().unwrap_or_else(|e| e.into_inner()) = Some(Requests { stop, shutdown });
    Graceful
}

/// Disarms the graceful stop when dropped.
pub struct Graceful;

impl Drop for Graceful {
    fn drop(&mut self) {
        *GRACEFUL.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
