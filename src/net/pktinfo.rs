//! Replying to a UDP datagram from the address it was sent to. A socket bound to `0.0.0.0`
//! or `[::]` lets the kernel pick a reply's source address by routing, which on a
//! multi-homed host (secondary addresses, a VIP, several IPv6 addresses) need not be the
//! address the client sent to; a client whose socket is connected then drops the reply.
//! On Linux, `IP_PKTINFO` / `IPV6_RECVPKTINFO` tell [`recv_from`] each datagram's
//! destination, and [`send_to`] sends the reply from it (`sendmsg` with the same control
//! message), as irtt and quinn-udp do. Elsewhere they are plain `recv_from` / `send_to`.

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// The local end a datagram arrived on (opaque: only [`send_to`] reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local(imp::Info);

/// Ask the kernel for each datagram's destination address. Failing is not fatal: replies
/// then leave from the address routing picks, as before.
///
/// # Errors
/// `setsockopt` refused the option.
pub fn enable(socket: &UdpSocket) -> io::Result<()> {
    imp::enable(socket)
}

/// Receive a datagram into `buf`: its length, its source, and the local address it was
/// sent to when the kernel said so.
///
/// # Errors
/// The receive failed.
pub async fn recv_from(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<Local>)> {
    imp::recv_from(socket, buf).await
}

/// Send `buf` to `to`, from `local` when given (the address the request was sent to).
///
/// # Errors
/// The send failed.
pub async fn send_to(
    socket: &UdpSocket,
    buf: &[u8],
    to: SocketAddr,
    local: Option<Local>,
) -> io::Result<usize> {
    match local {
        Some(Local(info)) => imp::send_from(socket, buf, to, info).await,
        None => socket.send_to(buf, to).await,
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd as _;

    use tokio::io::Interest;
    use tokio::net::UdpSocket;

    use super::Local;

    /// What a control message said, kept as the family it came in (a dual-stack socket
    /// gets `IP_PKTINFO` for IPv4 datagrams, `IPV6_PKTINFO` for IPv6 ones).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Info {
        V4 { local: Ipv4Addr },
        V6 { local: Ipv6Addr, ifindex: u32 },
    }

    /// Room for one control message of either kind (u64s: the buffer must be aligned
    /// for `cmsghdr`).
    type Control = [u64; 8];

    fn set(socket: &UdpSocket, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: `on` is a live c_int and the length passed is its size; a bad fd or an
        // option the socket does not support only makes the call fail.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&raw const on).cast::<libc::c_void>(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn enable(socket: &UdpSocket) -> io::Result<()> {
        match socket.local_addr()? {
            SocketAddr::V4(_) => set(socket, libc::IPPROTO_IP, libc::IP_PKTINFO),
            SocketAddr::V6(_) => {
                set(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)?;
                // IPv4 datagrams on a dual-stack socket; refused on a v6-only one.
                let _ = set(socket, libc::IPPROTO_IP, libc::IP_PKTINFO);
                Ok(())
            }
        }
    }

    fn to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match libc::c_int::from(storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in, which it is
                // large and aligned enough for.
                let sin = unsafe { &*(std::ptr::from_ref(storage).cast::<libc::sockaddr_in>()) };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { &*(std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>()) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    u32::from_be(sin6.sin6_flowinfo),
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    fn from_std(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: sockaddr_storage is plain integers; all zeros is a valid (empty) value.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match addr {
            SocketAddr::V4(v4) => {
                // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
                let sin =
                    unsafe { &mut *(std::ptr::from_mut(&mut storage).cast::<libc::sockaddr_in>()) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe {
                    &mut *(std::ptr::from_mut(&mut storage).cast::<libc::sockaddr_in6>())
                };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_flowinfo = v6.flowinfo().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                sin6.sin6_scope_id = v6.scope_id();
                size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as libc::socklen_t)
    }

    fn recv_once(
        socket: &UdpSocket,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<Local>)> {
        // SAFETY (all the zeroed values here): plain C structs of integers and pointers,
        // for which all zeros is valid (null pointers, zero lengths).
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let mut control: Control = [0; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&raw mut storage).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<Control>() as _;
        // SAFETY: every pointer in `msg` points at a live buffer of the length given
        // beside it, and all of them outlive the call.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &raw mut msg, 0) };
        let len = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        let from = to_std(&storage)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))?;
        let mut local = None;
        // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
        // `msg_controllen`; each message's data is read unaligned as the struct its
        // level and type name.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            while !cmsg.is_null() {
                let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
                let data = libc::CMSG_DATA(cmsg);
                if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                    let info = data.cast::<libc::in_pktinfo>().read_unaligned();
                    local = Some(Local(Info::V4 {
                        local: Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr)),
                    }));
                } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                    let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                    local = Some(Local(Info::V6 {
                        local: Ipv6Addr::from(info.ipi6_addr.s6_addr),
                        ifindex: info.ipi6_ifindex,
                    }));
                }
                cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
            }
        }
        // A multicast or unspecified destination is no address to answer from.
        let local = local.filter(|Local(info)| {
            let ip = match info {
                Info::V4 { local } => IpAddr::V4(*local),
                Info::V6 { local, .. } => IpAddr::V6(*local),
            };
            !ip.is_unspecified() && !ip.is_multicast()
        });
        Ok((len, from, local))
    }

    fn send_once(socket: &UdpSocket, buf: &[u8], to: SocketAddr, info: Info) -> io::Result<usize> {
        let (mut storage, name_len) = from_std(to);
        let mut control: Control = [0; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as in `recv_once`.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&raw mut storage).cast();
        msg.msg_namelen = name_len;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size. The control buffer (64 bytes) holds one
        // header plus either pktinfo struct (at most 20 bytes), so CMSG_FIRSTHDR is not
        // null and the data written stays inside it; the kernel reads `msg` only during
        // the call, while every buffer it points at is alive.
        let n = unsafe {
            let data_len = match info {
                Info::V4 { .. } => size_of::<libc::in_pktinfo>(),
                Info::V6 { .. } => size_of::<libc::in6_pktinfo>(),
            } as u32;
            msg.msg_controllen = libc::CMSG_SPACE(data_len) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            if cmsg.is_null() {
                return Err(io::Error::other("no room for a control message"));
            }
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(cmsg);
            match info {
                Info::V4 { local } => {
                    (*cmsg).cmsg_level = libc::IPPROTO_IP;
                    (*cmsg).cmsg_type = libc::IP_PKTINFO;
                    let mut pktinfo: libc::in_pktinfo = zeroed();
                    pktinfo.ipi_spec_dst.s_addr = u32::from(local).to_be();
                    data.cast::<libc::in_pktinfo>().write_unaligned(pktinfo);
                }
                Info::V6 { local, ifindex } => {
                    (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                    (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                    let mut pktinfo: libc::in6_pktinfo = zeroed();
                    pktinfo.ipi6_addr.s6_addr = local.octets();
                    pktinfo.ipi6_ifindex = ifindex;
                    data.cast::<libc::in6_pktinfo>().write_unaligned(pktinfo);
                }
            }
            libc::sendmsg(socket.as_raw_fd(), &raw const msg, 0)
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    pub async fn recv_from(
        socket: &UdpSocket,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<Local>)> {
        socket
            .async_io(Interest::READABLE, || recv_once(socket, buf))
            .await
    }

    pub async fn send_from(
        socket: &UdpSocket,
        buf: &[u8],
        to: SocketAddr,
        info: Info,
    ) -> io::Result<usize> {
        socket
            .async_io(Interest::WRITABLE, || send_once(socket, buf, to, info))
            .await
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::net::SocketAddr;

    use tokio::net::UdpSocket;

    use super::Local;

    /// Never made off Linux.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Info {}

    pub fn enable(_socket: &UdpSocket) -> io::Result<()> {
        Ok(())
    }

    pub async fn recv_from(
        socket: &UdpSocket,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<Local>)> {
        let (len, from) = socket.recv_from(buf).await?;
        Ok((len, from, None))
    }

    pub async fn send_from(
        _socket: &UdpSocket,
        _buf: &[u8],
        _to: SocketAddr,
        info: Info,
    ) -> io::Result<usize> {
        match info {}
    }
}
