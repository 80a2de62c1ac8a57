//! The two kernel objects a worker sleeps on: an epoll set (level-triggered) holding every
//! device it reads plus an eventfd that others write to wake it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A counter that is readable while non-zero (`eventfd(2)`), non-blocking.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a descriptor we now own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one: whoever polls the descriptor wakes up.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local u64 to a descriptor we own. A full counter
        // (EAGAIN) is already readable, which is all a signal has to achieve.
        unsafe {
            libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Resets the counter to zero (not readable any more); returns whether it was signalled.
    pub fn clear(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a local u64 from a descriptor we own.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        n == 8 && v > 0
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A level-triggered epoll set; each registered descriptor carries a `u64` token.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: no pointers; a non-negative result is a descriptor we now own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: `fd` was just returned by epoll_create1.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    /// Watches `fd` for input.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` lives across the call; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (a descriptor that was already closed is not an error).
    pub fn remove(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; failure (EBADF, ENOENT) leaves nothing to undo.
        unsafe {
            libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev);
        }
    }

    /// Waits until something is ready or `timeout_ms` pass (-1: no limit); returns the tokens
    /// of the ready descriptors. An interrupted wait returns no tokens.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<impl Iterator<Item = u64> + '_> {
        // SAFETY: the kernel writes at most `events.len()` entries into our buffer.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        let n = if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            0
        } else {
            n as usize
        };
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eventfd_wakes_an_epoll_wait_until_cleared() {
        let ev = EventFd::new().unwrap();
        let mut ep = Epoll::new(4).unwrap();
        ep.add(ev.as_raw_fd(), 7).unwrap();
        assert_eq!(ep.wait(0).unwrap().count(), 0, "nothing signalled yet");
        ev.signal();
        ev.signal();
        assert_eq!(ep.wait(1000).unwrap().collect::<Vec<_>>(), vec![7]);
        // Level-triggered: still ready until read.
        assert_eq!(ep.wait(0).unwrap().collect::<Vec<_>>(), vec![7]);
        assert!(ev.clear());
        assert!(!ev.clear(), "a second read finds it cleared");
        assert_eq!(ep.wait(0).unwrap().count(), 0);
        ep.remove(ev.as_raw_fd());
        ev.signal();
        assert_eq!(
            ep.wait(0).unwrap().count(),
            0,
            "removed descriptors are not reported"
        );
    }
}
