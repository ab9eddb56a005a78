//! Kernel receive times of TCP reads: `SO_TIMESTAMPNS` on the socket and `recvmsg` for its
//! `SCM_TIMESTAMPNS` control message, which carries when a read's (last) bytes reached the
//! socket (`CLOCK_REALTIME`). Elsewhere, or when the kernel attaches no stamp, a read is
//! timed when it returns.
//!
//! Shared by the sim (its truth file's arrival times) and replay (its response reads), so
//! both sides of a fidelity measurement time bytes the same way, whatever their own busy
//! cores are doing. Safe code only: nix's `setsockopt` and `recvmsg`, tokio's readiness.

use std::io;
use std::task::{Context, Poll};

use tokio::io::ReadBuf;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Turns receive stamps on for a listener (best effort): the sockets it accepts inherit
/// the option, so a request that arrives before its connection is accepted is stamped too.
pub fn enable_on_listener(listener: &TcpListener) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(listener, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = listener;
        Ok(())
    }
}

/// The wall clock and the monotonic clock read together: the monotonic reads on either
/// side of the wall-clock read bound the pairing error, and a pair split by a preemption
/// (which would skew every stamp of the connection) is taken again.
#[cfg(target_os = "linux")]
fn clock_pair() -> (std::time::SystemTime, Instant) {
    let mut best: Option<(std::time::Duration, std::time::SystemTime, Instant)> = None;
    for _ in 0..5 {
        let before = Instant::now();
        let wall = std::time::SystemTime::now();
        let gap = before.elapsed();
        if best.is_none_or(|(g, _, _)| gap < g) {
            best = Some((gap, wall, before + gap / 2));
        }
        if gap < std::time::Duration::from_micros(20) {
            break;
        }
    }
    let (_, wall, mono) = best.unwrap_or_else(|| {
        (
            Default::default(),
            std::time::SystemTime::now(),
            Instant::now(),
        )
    });
    (wall, mono)
}

/// Per-connection state for stamped reads of one TCP stream.
pub struct KernelRx {
    /// The wall clock and the monotonic clock read together, to turn the kernel's
    /// wall-clock stamps into `Instant`s (sampled once per connection).
    #[cfg(target_os = "linux")]
    wall_at: std::time::SystemTime,
    #[cfg(target_os = "linux")]
    mono_at: Instant,
    /// Room for one `SCM_TIMESTAMPNS`; `None` when the option could not be set.
    #[cfg(target_os = "linux")]
    cmsg: Option<Vec<u8>>,
}

impl KernelRx {
    /// Turns receive stamps on for `stream` (best effort) and pairs the clocks.
    #[cfg(target_os = "linux")]
    pub fn new(stream: &TcpStream) -> KernelRx {
        use nix::sys::socket::{setsockopt, sockopt};
        let on = setsockopt(stream, sockopt::ReceiveTimestampns, &true).is_ok();
        let (wall_at, mono_at) = clock_pair();
        KernelRx {
            wall_at,
            mono_at,
            cmsg: on.then(|| nix::cmsg_space!(nix::sys::time::TimeSpec)),
        }
    }

    /// Reads are timed when they return (no kernel stamps on this OS).
    #[cfg(not(target_os = "linux"))]
    pub fn new(_stream: &TcpStream) -> KernelRx {
        KernelRx {}
    }

    /// Reads into `buf`; returns when the bytes reached the socket (never later than
    /// now).
    #[cfg(target_os = "linux")]
    pub fn poll_read(
        &mut self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<Instant>> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::AsRawFd;
        let Some(cmsg) = self.cmsg.as_mut() else {
            return read_timed_on_return(stream, cx, buf);
        };
        loop {
            std::task::ready!(stream.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            let fd = stream.as_raw_fd();
            let got = stream.try_io(tokio::io::Interest::READABLE, || {
                let mut iov = [io::IoSliceMut::new(dst)];
                let msg = recvmsg::<()>(fd, &mut iov, Some(cmsg.as_mut_slice()), MsgFlags::empty())
                    .map_err(io::Error::from)?;
                let mut at = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmTimestampns(ts) = c {
                            at = Some(ts);
                        }
                    }
                }
                Ok((msg.bytes, at))
            });
            match got {
                Ok((n, at)) => {
                    buf.advance(n);
                    let now = Instant::now();
                    return Poll::Ready(Ok(at.map_or(now, |ts| self.instant(ts).min(now))));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads into `buf`; returns when the read returned.
    #[cfg(not(target_os = "linux"))]
    pub fn poll_read(
        &mut self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<Instant>> {
        read_timed_on_return(stream, cx, buf)
    }

    /// The monotonic instant of a kernel wall-clock stamp.
    #[cfg(target_os = "linux")]
    fn instant(&self, ts: nix::sys::time::TimeSpec) -> Instant {
        let since_epoch = std::time::Duration::new(
            ts.tv_sec().max(0) as u64,
            ts.tv_nsec().clamp(0, 999_999_999) as u32,
        );
        let wall = std::time::UNIX_EPOCH + since_epoch;
        match wall.duration_since(self.wall_at) {
            Ok(after) => self.mono_at + after,
            Err(before) => self
                .mono_at
                .checked_sub(before.duration())
                .unwrap_or(self.mono_at),
        }
    }
}

/// A plain read, timed when it returns (no kernel stamp to be had).
fn read_timed_on_return(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<Instant>> {
    let poll = tokio::io::AsyncRead::poll_read(std::pin::Pin::new(stream), cx, buf);
    poll.map_ok(|()| Instant::now())
}
