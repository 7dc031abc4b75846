//! Passes a listening socket to a child the way systemd's socket activation does. Shared by
//! the test harness and the benchmarks (benches/kindler.rs includes this file by path).

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `listener` the child's fd 3 and sets LISTEN_FDS/LISTEN_FDNAMES, as systemd does
/// (LISTEN_PID is left out: the child's pid is not known before the fork).
pub fn pass_socket(cmd: &mut Command, listener: &TcpListener) {
    let fd = listener.as_raw_fd();
    cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "http");
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) are made.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // Already fd 3: only the close-on-exec flag has to go.
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
