"""Who is at the other end of a loopback connection: the uid owning the peer's socket (Linux).

Every listener serves only connections whose peer socket belongs to the user the daemon runs as
(docs/SECURITY.md, "What another local user can and cannot do"). Loopback TCP carries no
credentials, but the kernel knows the owner of every socket, and a connection accepted on
127.0.0.1 has its other end on this machine, in this network namespace:
- `sock_diag` (netlink) answers for one socket, looked up by its two addresses: about 10 µs,
  whatever the number of sockets; the first choice;
- `/proc/net/tcp` and `tcp6` list every socket (a client may have an IPv6 socket connected to
  `::ffff:127.0.0.1`): the fallback when netlink cannot answer. Generating the file costs
  milliseconds once thousands of sockets exist, so it is read in pieces and only up to the row.
Neither exists on macOS: `PeerLookup.available` is False there and the listeners serve every
local user, as docs/SECURITY.md says.
"""

import errno
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
_NL_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_DIAG_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2: family, protocol, ext, pad, states
_ALL_STATES = 0xFFFFFFFF
_NO_COOKIE = 0xFFFFFFFF
_UID_AT = _NL_HEADER.size + 4 + 48 + 12  # inet_diag_msg: 4 bytes, the socket id (48), expires/rqueue/wqueue, uid
PROC_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
READ_BYTES = 64 * 1024
Address = tuple[str, int]


class PeerLookup:
    """The owners of loopback peers, asked from one thread (it keeps a netlink socket of its own)."""

    def __init__(self, tables: tuple[str, ...] = PROC_TABLES):
        self.tables = tables
        self._netlink = _open_netlink()
        self._seq = 0
        self.available = self._netlink is not None or any(os.path.exists(path) for path in tables)

    def uid(self, local: Address, peer: Address) -> int | None:
        """The uid owning the peer's socket of the IPv4 connection accepted at `local` from `peer`; None
        when no socket matches (the client has gone) or the system cannot say (`available`)."""
        if self._netlink is not None:
            try:
                return self._ask_netlink(self._netlink, local, peer)
            except TimeoutError:  # a late answer (skipped when it comes): this once from the tables
                return self.from_tables(local, peer)
            except OSError:  # no sock_diag for TCP here (an old or locked-down kernel): the tables then
                self._netlink.close()
                self._netlink = None
        return self.from_tables(local, peer)

    def from_tables(self, local: Address, peer: Address) -> int | None:
        """`uid` from `/proc/net/tcp` and `tcp6`."""
        for path, v6 in zip(self.tables, (False, True), strict=True):
            uid = scan_table(path, row_key(local, peer, v6))
            if uid is not None:
                return uid
        return None

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None

    def _ask_netlink(self, netlink: socket.socket, local: Address, peer: Address) -> int | None:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        # The peer's socket: its own address is our peer's, its remote address ours.
        sockid = (struct.pack("!HH", peer[1], local[1]) + socket.inet_aton(peer[0]) + bytes(12)
                  + socket.inet_aton(local[0]) + bytes(12) + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE))
        request = _DIAG_REQUEST.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + sockid
        netlink.send(_NL_HEADER.pack(_NL_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST,
                                           self._seq, 0) + request)
        while True:
            answer = netlink.recv(8192)
            _, kind, _, seq, _ = _NL_HEADER.unpack_from(answer)
            if seq == self._seq:
                break  # an answer to an earlier question that timed out is skipped
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", answer, _NL_HEADER.size)[0]
            if code == errno.ENOENT:
                return None
            raise OSError(code, os.strerror(code))
        return struct.unpack_from("=I", answer, _UID_AT)[0]


def _open_netlink() -> socket.socket | None:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except (AttributeError, OSError):  # not Linux, or netlink refused
        return None
    sock.settimeout(0.1)  # the kernel answers at once; never wait long on the loop thread
    return sock


def _hex_address(host: str, v6: bool) -> str:
    """An IPv4 address as the kernel prints it in `/proc/net/tcp` (native-order words), or v4-mapped in `tcp6`."""
    if not v6:
        return f'{struct.unpack("=I", socket.inet_aton(host))[0]:08X}'
    return "".join(f"{word:08X}" for word in struct.unpack("=4I", socket.inet_pton(socket.AF_INET6, "::ffff:" + host)))


def row_key(local: Address, peer: Address, v6: bool) -> bytes:
    """The start of the peer socket's row, from its local address on: ` <peer> <local> `."""
    return (f" {_hex_address(peer[0], v6)}:{peer[1]:04X} {_hex_address(local[0], v6)}:{local[1]:04X} ").encode()


def uid_in(data: bytes, key: bytes) -> int | None:
    """The uid of the row holding `key` in `data` (a whole row), or None."""
    at = data.find(key)
    if at < 0:
        return None
    fields = data[at:data.find(b"\n", at) if b"\n" in data[at:] else len(data)].split()
    # local, remote, state, tx:rx queues, timer, retransmits, uid
    return int(fields[6]) if len(fields) > 6 and fields[6].isdigit() else None


def scan_table(path: str, key: bytes) -> int | None:
    """`uid_in` over the table at `path`, read in pieces and only until the row is whole."""
    try:
        with open(path, "rb", buffering=0) as table:
            data = b""
            while piece := table.read(READ_BYTES):
                data += piece
                end = data.rfind(b"\n") + 1
                uid = uid_in(data[:end], key)
                if uid is not None:
                    return uid
                data = data[end:]
    except OSError:
        return None
    return None
