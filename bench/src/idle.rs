//! `--idle N --stalled M`: connections held open to the server through the
//! run and never used, M of them stopped halfway through a request line,
//! as a crowd of pooled connections and slow or hostile clients would. The
//! measured clients show what they cost everyone else.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The start of a request, never finished.
const HALF_LINE: &[u8] = br#"{"msg_type":"SET","payload":{"key":"stalled","val"#;
/// Descriptors the generator needs besides the idle connections.
const OWN_FDS: u64 = 256;

pub struct Idle {
    streams: Vec<TcpStream>,
    pub stalled: usize,
}

/// How the idle connections ended the run.
pub struct IdleState {
    pub open: usize,
    /// Closed by the server, or answered by it (an error before closing).
    pub closed: usize,
}

impl Idle {
    /// Opens `count` connections to `server`; the first `stalled` send half
    /// a request line.
    pub fn open(
        server: SocketAddr,
        count: usize,
        stalled: usize,
        clients: usize,
    ) -> Result<Idle, String> {
        if count == 0 {
            return Ok(Idle {
                streams: Vec::new(),
                stalled: 0,
            });
        }
        raise_open_file_limit(count as u64 + clients as u64 + OWN_FDS)?;
        let mut streams = Vec::with_capacity(count);
        for i in 0..count {
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
                .map_err(|e| format!("idle connection {i} to {server}: {e}"))?;
            if i < stalled {
                stream
                    .write_all(HALF_LINE)
                    .map_err(|e| format!("stalled connection {i}: {e}"))?;
            }
            streams.push(stream);
        }
        Ok(Idle {
            streams,
            stalled: stalled.min(count),
        })
    }

    pub fn count(&self) -> usize {
        self.streams.len()
    }

    /// Which connections the server has closed (or written to) by now.
    pub fn state(&self) -> IdleState {
        let mut closed = 0;
        let mut byte = [0u8; 1];
        for stream in &self.streams {
            let _ = stream.set_nonblocking(true);
            match stream.peek(&mut byte) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                _ => closed += 1,
            }
        }
        IdleState {
            open: self.streams.len() - closed,
            closed,
        }
    }
}

/// Raises the soft open-file limit to `needed`, within the hard limit.
pub fn raise_open_file_limit(needed: u64) -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on one rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
        }
        if limit.rlim_cur < needed {
            limit.rlim_cur = needed.min(limit.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
            }
        }
    }
    if limit.rlim_cur < needed {
        return Err(format!(
            "{needed} open files needed; the hard limit is {} (ulimit -Hn)",
            limit.rlim_max
        ));
    }
    Ok(())
}
