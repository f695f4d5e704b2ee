//! Zero-downtime upgrade: a new edge process takes the listening sockets
//! over from the running one, as HAProxy and Envoy do.
//!
//! The running edge serves `[upgrade] socket` (Unix, 0600). A new process
//! started with the same config connects to it at start and receives
//! duplicates of every listening socket (the public pairs and the admin
//! listener) with SCM_RIGHTS, adopts them instead of binding, applies its
//! table, closes the inherited sockets its table does not need, and once
//! ready writes `ready`. Only then does the old process stop accepting and
//! drain its open tunnels. The listening sockets are
//! never closed in between, so a connection arriving at any moment is
//! queued on a socket one of the two processes accepts from: none is
//! refused, and no tunnel is cut (each stays with the process that
//! accepted it until it ends or `drain_timeout_ms` passes).
//!
//! The control API moves too: from the moment a handoff begins the old
//! process refuses pushes (UNAVAILABLE: the agent retries and reconnects
//! to the socket path, which the new process has bound by then), and at
//! the handoff it shuts its control server down. The table version goes
//! with the sockets, so versions keep growing across the upgrade.
//!
//! Wire format: a sequence of messages, each one line of JSON
//! `{"addrs": ["[::1]:443", "admin", …]}` carrying as many descriptors, in
//! the same order, and a final `{"done": true, "table_version": N}` (a
//! missing `table_version` reads as 0); then the new process answers
//! `ready\n`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use sendfd::{RecvWithFd, SendWithFd};
use serde::{Deserialize, Serialize};

/// The kernel's limit of descriptors per SCM_RIGHTS message is 253.
const FDS_PER_MESSAGE: usize = 200;
const ADMIN: &str = "admin";
/// How long the old process waits for the new one to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Serialize, Deserialize)]
struct Message {
    #[serde(default)]
    addrs: Vec<String>,
    #[serde(default)]
    done: bool,
    /// The old process's live table version (in the `done` message).
    #[serde(default, skip_serializing_if = "is_zero")]
    table_version: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Listening sockets received from the previous process.
#[derive(Debug)]
pub(crate) struct Handoff {
    pub listeners: HashMap<SocketAddr, TcpListener>,
    pub admin: Option<TcpListener>,
    /// The table version the previous process served: this one continues
    /// after it.
    pub table_version: u64,
    stream: UnixStream,
}

impl Handoff {
    /// Tells the previous process to stop accepting and drain.
    pub(crate) fn ready(mut self) -> std::io::Result<()> {
        self.stream.write_all(b"ready\n")
    }
}

/// New process: takes the listeners of the process serving `path`, or
/// `None` if no edge is running there.
pub(crate) fn take_over(path: &Path) -> std::io::Result<Option<Handoff>> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut pending: Vec<u8> = Vec::new();
    let mut fds: std::collections::VecDeque<RawFd> = std::collections::VecDeque::new();
    let mut handoff = Handoff {
        listeners: HashMap::new(),
        admin: None,
        table_version: 0,
        stream,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut fd_buf = [0 as RawFd; 253];
    loop {
        let (n, m) = handoff.stream.recv_with_fd(&mut buf, &mut fd_buf)?;
        fds.extend(&fd_buf[..m]);
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "upgrade: previous edge hung up",
            ));
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let message: Message = serde_json::from_slice(&line)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if message.done {
                handoff.table_version = message.table_version;
                return Ok(Some(handoff));
            }
            for addr in message.addrs {
                let fd = fds.pop_front().ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "upgrade: fewer fds than addresses",
                    )
                })?;
                let listener = owned(fd);
                if addr == ADMIN {
                    handoff.admin = Some(listener);
                } else {
                    let addr = addr.parse().map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{addr}: {e}"))
                    })?;
                    handoff.listeners.insert(addr, listener);
                }
            }
        }
    }
}

/// A descriptor just received by `recvmsg` is owned by no one else.
fn owned(fd: RawFd) -> TcpListener {
    #[allow(unsafe_code)]
    // SAFETY: `fd` was created for this process by SCM_RIGHTS in
    // `recv_with_fd` and is taken exactly once (popped from the queue).
    unsafe {
        TcpListener::from_raw_fd(fd)
    }
}

/// Old process: binds `path` (0600) for the next upgrade.
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    crate::control::bind_private(path)
}

/// What the old process hands over, and how it freezes its own changes.
pub(crate) trait Handover {
    /// Duplicates of the listening sockets, by wire name.
    fn sockets(&self) -> std::io::Result<Vec<(String, TcpListener)>>;
    /// A handoff begins: stop taking table changes; the live version.
    fn begin(&self) -> u64;
    /// The handoff failed: take changes again.
    fn cancel(&self);
}

/// Old process: serves one handoff at a time until a new process reports
/// ready. Blocking: run it on a blocking thread.
pub(crate) fn serve(listener: UnixListener, handover: &impl Handover) {
    loop {
        let Ok((mut stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let table_version = handover.begin();
        match hand_over(&mut stream, handover, table_version) {
            Ok(()) => {
                tracing::info!(
                    "upgrade: the new edge is ready; this process stops accepting and drains"
                );
                return;
            }
            Err(e) => {
                handover.cancel();
                tracing::error!(error = %e, "upgrade handoff failed; still serving");
            }
        }
    }
}

fn hand_over(
    stream: &mut UnixStream,
    handover: &impl Handover,
    table_version: u64,
) -> std::io::Result<()> {
    let sockets = handover.sockets()?;
    tracing::info!(
        listeners = sockets.len(),
        "upgrade: handing listeners to a new edge process"
    );
    for chunk in sockets.chunks(FDS_PER_MESSAGE) {
        let message = Message {
            addrs: chunk.iter().map(|(a, _)| a.clone()).collect(),
            done: false,
            table_version: 0,
        };
        let mut line = serde_json::to_vec(&message).expect("a message serialises");
        line.push(b'\n');
        let fds: Vec<RawFd> = chunk.iter().map(|(_, l)| l.as_raw_fd()).collect();
        send_all(stream, &line, &fds)?;
    }
    let done = Message {
        addrs: Vec::new(),
        done: true,
        table_version,
    };
    let mut line = serde_json::to_vec(&done).expect("a message serialises");
    line.push(b'\n');
    send_all(stream, &line, &[])?;
    stream.set_read_timeout(Some(READY_TIMEOUT))?;
    let mut answer = String::new();
    BufReader::new(&*stream).read_line(&mut answer)?;
    if answer.trim() == "ready" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "new edge answered {answer:?}"
        )))
    }
}

/// Sends `bytes` with `fds` attached to the first part.
fn send_all(stream: &mut UnixStream, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let sent = stream.send_with_fd(bytes, fds)?;
    stream.write_all(&bytes[sent..])
}

/// `admin` as the wire name of the admin listener.
pub(crate) fn admin_name() -> String {
    ADMIN.to_owned()
}

/// SIGUSR2: starts the binary at the path this process was started from
/// (a package upgrade has replaced it) with the same arguments; it takes
/// the listeners over through the upgrade socket, and this process drains.
pub(crate) fn spawn_successor() {
    let mut args = std::env::args_os();
    let Some(program) = args.next() else {
        tracing::error!("upgrade: no argv[0]; cannot start a successor");
        return;
    };
    match std::process::Command::new(&program).args(args).spawn() {
        Ok(child) => {
            tracing::info!(pid = child.id(), program = ?program, "upgrade: started a successor")
        }
        Err(e) => {
            tracing::error!(program = ?program, error = %e, "upgrade: cannot start a successor")
        }
    }
}
