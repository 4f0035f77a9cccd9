//! A process on a pseudo-terminal, as a person would run it: the pty is the
//! controlling terminal of the process's own session, so the process is in
//! the terminal's foreground process group, the one a terminal sends
//! Ctrl-C's SIGINT to.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Waits for `child` up to `timeout`; kills it and fails the test after.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not finish within {timeout:?}", child.id());
        }
        sleep(Duration::from_millis(10));
    }
}

pub struct Pty {
    /// `None` once [`hang_up`](Self::hang_up) closed it.
    master: Option<std::fs::File>,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    /// Tells the reader to close its copy of the master side.
    closing: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// How much of `output` earlier expectations consumed.
    seen: usize,
}

impl Pty {
    /// Runs `cmd` with the pty as its stdin, stdout, stderr and controlling
    /// terminal (200 columns, 40 rows).
    pub fn spawn(mut cmd: Command) -> Pty {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;

        let mut master_fd: libc::c_int = -1;
        let mut slave_fd: libc::c_int = -1;
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two fds; the null pointers ask for no name
        // and default terminal settings.
        let rc = unsafe {
            libc::openpty(
                &mut master_fd,
                &mut slave_fd,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        for fd in [master_fd, slave_fd] {
            // SAFETY: fcntl on fds we own. Close-on-exec, as a terminal
            // emulator opens them: no process started here (nor what it
            // starts) keeps the terminal open but through its stdio.
            let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            assert_eq!(rc, 0, "fcntl: {}", std::io::Error::last_os_error());
        }
        // SAFETY: both fds are fresh from openpty and owned by nobody else.
        let master = unsafe { OwnedFd::from_raw_fd(master_fd) };
        let slave = unsafe { OwnedFd::from_raw_fd(slave_fd) };

        cmd.stdin(Stdio::from(slave.try_clone().expect("dup slave")))
            .stdout(Stdio::from(slave.try_clone().expect("dup slave")))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec: make
        // the pty the controlling terminal of a new session.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on a pty");
        drop(cmd); // closes our copies of the slave side

        let master = std::fs::File::from(master);
        let mut source = master.try_clone().expect("dup master");
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&output);
        let closing = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&closing);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::SeqCst) {
                let mut poll = libc::pollfd {
                    fd: source.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd for an fd this thread owns.
                if unsafe { libc::poll(&mut poll, 1, 20) } <= 0 {
                    continue;
                }
                // EIO once the last process holding the slave side exits.
                match source.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.lock().expect("output").extend_from_slice(&buf[..n]),
                }
            }
        });
        Pty {
            master: Some(master),
            child,
            output,
            closing,
            reader: Some(reader),
            seen: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Types `keys`.
    pub fn send(&mut self, keys: &str) {
        self.master
            .as_mut()
            .expect("the terminal is open")
            .write_all(keys.as_bytes())
            .expect("write to pty");
    }

    /// Closes the terminal, as closing its window does: the kernel hangs up
    /// the session (SIGHUP to its leader and foreground group; reads and
    /// writes on it fail from then on).
    pub fn hang_up(&mut self) {
        self.master = None;
        self.closing.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Does what the terminal does on Ctrl-C while its line discipline
    /// makes signals of it (any time but while a line editor reads keys in
    /// raw mode): SIGINT to its foreground process group. Returns that
    /// group.
    pub fn interrupt(&mut self) -> libc::pid_t {
        // SAFETY: tcgetpgrp on an fd we own; kill(2) of the group it names.
        let fd = self
            .master
            .as_ref()
            .expect("the terminal is open")
            .as_raw_fd();
        let group = unsafe { libc::tcgetpgrp(fd) };
        assert!(group > 0, "tcgetpgrp: {}", std::io::Error::last_os_error());
        // SAFETY: as above.
        let rc = unsafe { libc::kill(-group, libc::SIGINT) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        group
    }

    /// Everything printed so far, with terminal escape sequences removed.
    pub fn screen(&self) -> String {
        strip_ansi(&self.output.lock().expect("output"))
    }

    /// Waits up to `timeout` until `text` appears after what was already
    /// matched; returns what appeared up to the end of `text`.
    pub fn expect_within(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            let fresh = screen.get(self.seen..).unwrap_or("");
            if let Some(at) = fresh.find(text) {
                let matched = fresh[..at + text.len()].to_string();
                self.seen += at + text.len();
                return matched;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{text:?} did not appear; the terminal shows, after {} chars:\n{}",
                    self.seen, fresh
                );
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// [`expect_within`](Self::expect_within) 5 s.
    pub fn expect(&mut self, text: &str) -> String {
        self.expect_within(text, Duration::from_secs(5))
    }

    pub fn wait(&mut self) -> ExitStatus {
        wait_bounded(&mut self.child, Duration::from_secs(5))
    }

    pub fn wait_within(&mut self, timeout: Duration) -> ExitStatus {
        wait_bounded(&mut self.child, timeout)
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes CSI (`ESC [ ... final`) and other two-byte escapes, and `\r`.
pub fn strip_ansi(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}
