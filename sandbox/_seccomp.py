"""A seccomp-BPF filter for the program process (Linux x86-64 only).

Loaded by the worker by file path (the worker runs with ``python -I`` and does not import
the ``sandbox`` package). Only the standard library is used.

The filter is an allowlist of behaviour expressed as a denylist of system calls, because a
Python interpreter with numpy needs a large and version-dependent set of harmless calls
(mmap, futex, brk, read, ...). What it denies is what an escape needs:

* new processes and programs: fork, vfork, clone without CLONE_THREAD, clone3, execve(at);
* the network: socket, socketpair, connect, bind, listen, accept(4);
* writing the file system: open/openat with a write, create or truncate flag, creat,
  rename, unlink, mkdir, rmdir, link, symlink, chmod, chown, truncate, mknod;
* reaching other processes and the kernel: ptrace, process_vm_readv/writev, kill, tkill,
  mount, unshare, setns, bpf, io_uring, userfaultfd, module and kexec loading.

A denied call fails with an errno (EPERM, or ENOSYS for clone3/openat2 so that libc
falls back to the checked variant); a foreign architecture or x32 call kills the process.
"""

from __future__ import annotations

import ctypes
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

EPERM, EACCES, ENOSYS = 1, 13, 38

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

CLONE_THREAD = 0x00010000
# O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND on Linux x86-64.
OPEN_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000

# x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
DENIED_EPERM = {
    "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53,
    "fork": 57, "vfork": 58, "execve": 59, "kill": 62, "rt_sigqueueinfo": 129, "tgkill": 234,
    "rt_tgsigqueueinfo": 297,
    "truncate": 76, "ftruncate": 77, "rename": 82, "mkdir": 83, "rmdir": 84, "creat": 85,
    "link": 86, "unlink": 87, "symlink": 88, "chmod": 90, "fchmod": 91, "chown": 92,
    "fchown": 93, "lchown": 94, "ptrace": 101, "mknod": 133, "personality": 135,
    "chroot": 161, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
    "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176, "tkill": 200,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
    "mkdirat": 258, "mknodat": 259, "fchownat": 260, "unlinkat": 263, "renameat": 264,
    "linkat": 265, "symlinkat": 266, "fchmodat": 268, "unshare": 272, "accept4": 288,
    "perf_event_open": 298, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
    "finit_module": 313, "renameat2": 316, "memfd_create": 319, "kexec_file_load": 320,
    "bpf": 321, "execveat": 322, "userfaultfd": 323, "pidfd_send_signal": 424,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "pidfd_getfd": 438, "mount_setattr": 442, "fchmodat2": 452,
}
DENIED_ENOSYS = {"clone3": 435, "openat2": 437}
NR_OPEN, NR_OPENAT, NR_CLONE = 2, 257, 56

# BPF opcodes.
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
RET_K = 0x06
# Offsets in struct seccomp_data: nr (u32), arch (u32), ip (u64), args[6] (u64 each).
OFF_NR, OFF_ARCH = 0, 4


def _arg_low(i: int) -> int:
    return 16 + 8 * i  # little-endian: the low 32 bits come first


def supported() -> bool:
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


def build_filter() -> list[tuple[int, int, int, int]]:
    """The filter program as (code, jt, jf, k) instructions."""
    allow = ("ret", SECCOMP_RET_ALLOW)
    kill = ("ret", SECCOMP_RET_KILL_PROCESS)
    eperm = ("ret", SECCOMP_RET_ERRNO | EPERM)
    eacces = ("ret", SECCOMP_RET_ERRNO | EACCES)
    enosys = ("ret", SECCOMP_RET_ERRNO | ENOSYS)
    # Symbolic program: ("jeq"/"jge"/"jset", k, true_label, false_label) or ("ld", off) or
    # ("label", name) or a return tuple; jumps are resolved below (forward only, as BPF needs).
    prog: list = [
        ("ld", OFF_ARCH),
        ("jeq", AUDIT_ARCH_X86_64, None, "kill"),
        ("ld", OFF_NR),
        ("jge", X32_SYSCALL_BIT, "kill", None),
        ("jeq", NR_OPEN, "open", None),
        ("jeq", NR_OPENAT, "openat", None),
        ("jeq", NR_CLONE, "clone", None),
    ]
    for nr in sorted(DENIED_EPERM.values()):
        prog.append(("jeq", nr, "eperm", None))
    for nr in sorted(DENIED_ENOSYS.values()):
        prog.append(("jeq", nr, "enosys", None))
    prog += [
        allow,
        ("label", "open"), ("ld", _arg_low(1)), ("jset", OPEN_WRITE_FLAGS, "eacces", None), allow,
        ("label", "openat"), ("ld", _arg_low(2)), ("jset", OPEN_WRITE_FLAGS, "eacces", None), allow,
        ("label", "clone"), ("ld", _arg_low(0)), ("jset", CLONE_THREAD, None, "eperm"), allow,
        ("label", "eperm"), eperm,
        ("label", "eacces"), eacces,
        ("label", "enosys"), enosys,
        ("label", "kill"), kill,
    ]
    # Resolve labels to instruction indices.
    positions: dict[str, int] = {}
    index = 0
    for item in prog:
        if item[0] == "label":
            positions[item[1]] = index
        else:
            index += 1
    out: list[tuple[int, int, int, int]] = []
    for item in prog:
        kind = item[0]
        if kind == "label":
            continue
        here = len(out)
        if kind == "ld":
            out.append((LD_W_ABS, 0, 0, item[1]))
        elif kind == "ret":
            out.append((RET_K, 0, 0, item[1]))
        else:
            code = {"jeq": JEQ_K, "jge": JGE_K, "jset": JSET_K}[kind]
            _, k, t_label, f_label = item
            jt = 0 if t_label is None else positions[t_label] - here - 1
            jf = 0 if f_label is None else positions[f_label] - here - 1
            if not (0 <= jt <= 255 and 0 <= jf <= 255):
                raise ValueError("seccomp filter jump out of range")
            out.append((code, jt, jf, k))
    return out


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Installer:
    """The filter, assembled ahead of time so that installing it costs two system calls."""

    def __init__(self) -> None:
        if not supported():
            raise OSError("seccomp filter is only built for Linux x86-64")
        instructions = build_filter()
        raw = b"".join(struct.pack("<HBBI", *ins) for ins in instructions)
        self._buf = ctypes.create_string_buffer(raw, len(raw))
        self._prog = _SockFprog(len(instructions), ctypes.cast(self._buf, ctypes.c_void_p))
        self._libc = ctypes.CDLL(None, use_errno=True)

    def install(self) -> None:
        """Installs the filter on the calling thread (program processes are single-threaded).
        Raises OSError where the kernel refuses."""
        ul = ctypes.c_ulong
        if self._libc.prctl(PR_SET_NO_NEW_PRIVS, ul(1), ul(0), ul(0), ul(0)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if self._libc.prctl(PR_SET_SECCOMP, ul(SECCOMP_MODE_FILTER), ctypes.byref(self._prog), ul(0), ul(0)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def install() -> None:
    Installer().install()
