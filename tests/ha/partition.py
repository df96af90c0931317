"""A network partition of one node of `make test-ha`, on one loopback: each node's Patroni
(and the PostgreSQL it starts) runs in a cgroup (v2) of its own, and the partition attaches
to that cgroup two BPF programs of the kind `cgroup_skb` that drop every packet its
processes send or receive. Its etcd traffic, its clients', its replication and its REST API
all stop; what it does over its Unix socket (Patroni with its own PostgreSQL) goes on, as on
a host cut from the network. Nothing outside those cgroups is touched, and detaching the
programs (or removing the cgroup, once its processes are gone) heals it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from collections.abc import Iterator
from pathlib import Path

CGROUP2 = Path("/sys/fs/cgroup/unified")  # the v2 hierarchy of this host's hybrid layout

_SYS_BPF = 321  # x86_64
_BPF_PROG_LOAD, _BPF_PROG_ATTACH, _BPF_PROG_DETACH = 5, 8, 9
_BPF_PROG_TYPE_CGROUP_SKB = 8
_INGRESS, _EGRESS = 0, 1  # BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS
# r0 = 0 (drop); exit
_DROP_ALL = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    result = int(_libc.syscall(_SYS_BPF, cmd, attr, ctypes.sizeof(attr)))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"bpf({cmd}): {os.strerror(errno)}")
    return result


def _load_drop_all(attach_type: int) -> int:
    """A `cgroup_skb` program that drops every packet; its file descriptor."""
    insns = ctypes.create_string_buffer(_DROP_ALL, len(_DROP_ALL))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into(
        "<IIQQ",
        attr,
        0,
        _BPF_PROG_TYPE_CGROUP_SKB,
        len(_DROP_ALL) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
    )
    struct.pack_into("<I", attr, 68, attach_type)  # expected_attach_type
    return _bpf(_BPF_PROG_LOAD, attr)


def _attach(cgroup_fd: int, prog_fd: int, attach_type: int, detach: bool = False) -> None:
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIII", attr, 0, cgroup_fd, prog_fd, attach_type, 0)
    _bpf(_BPF_PROG_DETACH if detach else _BPF_PROG_ATTACH, attr)


def available() -> str | None:
    """None when a partition can be made here, else why not."""
    if not (CGROUP2 / "cgroup.procs").exists():
        return f"no cgroup v2 hierarchy at {CGROUP2}"
    try:
        os.close(_load_drop_all(_EGRESS))
    except OSError as exc:
        return f"cannot load a cgroup_skb program: {exc}"
    return None


def make_group(name: str) -> Path:
    """An empty cgroup for one node's processes."""
    group = CGROUP2 / name
    group.mkdir(parents=True, exist_ok=True)
    return group


def join(group: Path, pid: int) -> None:
    """Move `pid` into `group`; the processes it starts from then on are in it too."""
    (group / "cgroup.procs").write_text(str(pid))


def remove_groups(top: Path) -> None:
    """Remove `top` and the cgroups under it (their processes must be gone)."""
    for group in sorted(top.glob("**/"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            group.rmdir()


@contextlib.contextmanager
def partitioned(group: Path) -> Iterator[None]:
    """Every packet of `group`'s processes dropped, both ways, until the block ends."""
    cgroup_fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
    attached: list[tuple[int, int]] = []
    try:
        for attach_type in (_EGRESS, _INGRESS):
            prog_fd = _load_drop_all(attach_type)
            attached.append((prog_fd, attach_type))
            _attach(cgroup_fd, prog_fd, attach_type)
        yield
    finally:
        for prog_fd, attach_type in attached:
            with contextlib.suppress(OSError):
                _attach(cgroup_fd, prog_fd, attach_type, detach=True)
            os.close(prog_fd)
        os.close(cgroup_fd)
