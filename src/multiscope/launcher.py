"""Start helper processes by forking one that has already imported their libraries.

``python -m multiscope.catalog_server`` spends ~3 of its ~3.6 CPU-s of start-up
importing tiled's server (``tiled.catalog`` alone pulls in dask.dataframe, pandas,
xarray, sparse and numba) before it serves anything, at every new data directory. A
*launcher* imports those modules once and forks a child per start; the child calls
the module's ``main(argv)`` (what its ``__main__`` block calls) with the caller's
arguments, environment, working directory and file descriptors, in its own session,
and shows the command line ``python -m module ...`` would have in ``ps``. A forked
catalog server was healthy after 0.65-0.8 CPU-s (decision 0037).

The launcher is an optimisation only. :func:`launch` returns None when none answers
(and starts one in the background for the next caller); the caller then starts its
process the plain way. One launcher runs per user, Python, multiscope source tree,
preload list and import-relevant environment: its socket is named by a hash of
them, so no caller gets a child of code older than its own (an edited source file
gives a new launcher; the old one stops once idle). A launcher that imports
multiscope from another place than its caller's stops at once.

Protocol, over a ``SOCK_SEQPACKET`` Unix socket in a directory only the user can
enter (peers checked by uid):

- request: one JSON message ``{"module", "argv", "env", "cwd", "fds"}`` (``module``
  must define ``main(argv)``) carrying
  the caller's descriptors (``SCM_RIGHTS``), which the child gets at the numbers
  listed in ``fds`` (as ``subprocess``'s ``pass_fds`` does), stdin from /dev/null;
- reply: ``{"pid": N}`` once the child is forked, or ``{"error": "..."}``.

The launcher reaps its children and stops ``idle`` seconds after its last child
ended and its last request, or once its socket is removed or replaced.

Only the standard library is imported at module level (``setproctitle`` in children).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = [
    "DEFAULT_IDLE_S",
    "DIR_ENV",
    "DISABLE_ENV",
    "IDLE_ENV",
    "LaunchOutcomeUnknownError",
    "command_line",
    "launch",
    "socket_path",
    "stop_all",
]

DISABLE_ENV = "MULTISCOPE_LAUNCHER"  # "0": always start processes the plain way
IDLE_ENV = "MULTISCOPE_LAUNCHER_IDLE_S"
DIR_ENV = "MULTISCOPE_LAUNCHER_DIR"  # where the sockets and logs go
DEFAULT_IDLE_S = 600.0
CONNECT_TIMEOUT_S = 2.0
# A busy launcher on a loaded machine answers late; past this the caller cannot
# tell whether its child was forked (LaunchOutcomeUnknownError).
REPLY_TIMEOUT_S = 30.0
_MAX_MESSAGE = 1 << 20
_MAX_FDS = 16
# Variables read while modules import (thread pools, JIT caches, import paths): a
# launcher started under other values would give its children the wrong ones.
# (HDF5 reads HDF5_USE_FILE_LOCKING at every file open, so it is not among them; a
# session sets it, and a key with it gave a worker a second pair of launchers.)
_IMPORT_ENV_PREFIXES = (
    "PYTHON", "OMP_", "OPENBLAS_", "MKL_", "NUMBA_", "NUMEXPR_", "CAPROTO_",
)  # fmt: skip
# A socket's path holds at most 107 bytes (sun_path); a longer one fails only at bind.
_MAX_SOCKET_PATH = 100
_MODULE = "multiscope.launcher"


class LaunchOutcomeUnknownError(RuntimeError):
    """The request reached the launcher but no reply came: a child may or may not run."""


def _runtime_dir() -> Path | None:
    """A directory only this user can enter, for the sockets; None if there is none.

    ``$MULTISCOPE_LAUNCHER_DIR`` if set (the tests give each worker one), else
    ``multiscope-UID`` in ``$XDG_RUNTIME_DIR`` or the temporary directory.
    """
    chosen = os.environ.get(DIR_ENV)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(chosen) if chosen else Path(base) / f"multiscope-{os.getuid()}"
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        path.mkdir(mode=0o700)
    try:
        info = path.lstat()
    except OSError:
        return None
    # Someone else's directory, or one others can enter, would let them take the socket.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return path


def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def _tree_stamp(package: Path) -> list:
    """Size and mtime of every source file of ``package``: an edit makes a new launcher.

    An editor's lock file (``.#name.py``, a dangling link) or a file deleted during the
    walk is left out.
    """
    stamps = []
    for path in package.rglob("*.py"):
        if path.name.startswith("."):
            continue
        try:
            info = path.stat()
        except OSError:
            continue
        stamps.append((str(path.relative_to(package)), info.st_size, info.st_mtime_ns))
    return sorted(stamps)


def _source_stamp() -> list:
    return _tree_stamp(_package_dir())


def _package_stamp(preload: tuple[str, ...]) -> list:
    """Where each preloaded top-level package lives, and its version.

    An installed package's ``__init__.py`` is rewritten by an upgrade; a source tree
    (an editable install, such as ``sim_devices``) is stamped file by file.
    """
    import importlib.util

    stamps: list = []
    for top in sorted({name.split(".")[0] for name in preload}):
        spec = importlib.util.find_spec(top)
        origin = spec.origin if spec is not None else None
        if not origin or not os.path.exists(origin):
            stamps.append((top, origin))
            continue
        installed = any(
            part.endswith(("site-packages", "dist-packages")) for part in Path(origin).parts
        )
        if installed or Path(origin).name != "__init__.py":
            stamps.append((top, origin, os.stat(origin).st_mtime_ns))
        else:
            stamps.append((top, origin, _tree_stamp(Path(origin).parent)))
    return stamps


def idle_seconds() -> float:
    """How long a launcher waits with no child and no request: ``$MULTISCOPE_LAUNCHER_IDLE_S``."""
    try:
        return max(1.0, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)))
    except ValueError:
        return DEFAULT_IDLE_S


def _origins(preload: tuple[str, ...]) -> dict[str, str | None]:
    """Where each preloaded top-level package is imported from, by this process."""
    import importlib.util

    origins = {}
    for top in sorted({name.split(".")[0] for name in preload} | {"multiscope"}):
        spec = importlib.util.find_spec(top)
        origins[top] = spec.origin if spec is not None else None
    return origins


def socket_path(preload: tuple[str, ...]) -> Path | None:
    """The socket of the launcher for ``preload`` and this interpreter, code and environment.

    None when there is no safe place for it (see :func:`_runtime_dir`) or its path
    would be too long for a socket.
    """
    directory = _runtime_dir()
    if directory is None:
        return None
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_IMPORT_ENV_PREFIXES))
    key = json.dumps(
        [
            sys.executable,
            sys.version,
            str(_package_dir()),
            env,
            list(preload),
            _source_stamp(),
            _package_stamp(preload),
        ]
    )
    path = directory / f"launcher-{hashlib.sha256(key.encode()).hexdigest()[:20]}.sock"
    return path if len(os.fsencode(path)) <= _MAX_SOCKET_PATH else None


# ---------------------------------------------------------------------------- caller side
def launch(
    module: str,
    argv: list[str],
    *,
    preload: tuple[str, ...],
    env: dict[str, str],
    fds: dict[int, int],
    idle_s: float | None = None,
    cwd: str | None = None,
) -> int | None:
    """Run ``python -m module *argv`` as a child of the launcher for ``preload``.

    Parameters
    ----------
    module : str
        A module with a ``main(argv)`` function, which its ``__main__`` block calls.
    argv : list of str
        Its arguments (``sys.argv[1:]``).
    preload : tuple of str
        Modules the launcher imports before it forks (best effort: one that fails to
        import is left out and logged).
    env : dict
        The child's whole environment.
    fds : dict
        Child descriptor number -> our descriptor (1 and 2 for its stdout and
        stderr; others as ``pass_fds`` would pass them). Stdin is /dev/null.
    idle_s : float, optional
        How long a launcher this call starts waits, with no child and no request,
        before it stops (default: :func:`idle_seconds`).
    cwd : str, optional
        The child's working directory (default: ours).

    Returns
    -------
    int or None
        The child's PID (not our child: do not wait for it), or None when no
        launcher took the request: start the process the plain way.

    Raises
    ------
    LaunchOutcomeUnknownError
        The launcher got the request and did not answer in time.
    """
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    try:
        path = socket_path(preload)
    except OSError:  # e.g. a source file unreadable: the plain way still works
        return None
    if path is None:
        return None
    request = {
        "module": module,
        "argv": list(argv),
        "env": dict(env),
        "cwd": cwd or os.getcwd(),
        "fds": list(fds),
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(path))
        except OSError:  # none runs (or a dead one's socket): start one for the next caller
            with contextlib.suppress(OSError):
                _start_launcher(path, preload, idle_seconds() if idle_s is None else idle_s)
            return None
        try:
            socket.send_fds(sock, [json.dumps(request).encode()], list(fds.values()))
        except OSError:
            return None  # nothing was sent, so nothing started
        sock.settimeout(REPLY_TIMEOUT_S)
        try:
            reply = json.loads(sock.recv(_MAX_MESSAGE))
        except (OSError, ValueError) as exc:
            raise LaunchOutcomeUnknownError(
                f"no answer from the launcher at {path}: {exc}"
            ) from exc
    if isinstance(reply, dict) and isinstance(reply.get("pid"), int):
        return reply["pid"]
    return None  # refused (its reason is in the launcher's log)


def stop_all() -> int:
    """Stop every launcher whose socket is in this process's socket directory.

    Their sockets are removed: each stops within a second, and its children run on.
    Returns how many sockets were removed.
    """
    directory = _runtime_dir()
    removed = 0
    for path in directory.glob("launcher-*.sock") if directory is not None else ():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _start_launcher(path: Path, preload: tuple[str, ...], idle_s: float) -> None:
    """Start the launcher for ``path`` in the background; it gives way if one already runs."""
    log_path = path.with_suffix(".log")
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > 1 << 20:  # keep the log of a long-lived machine small
            log_path.unlink()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        subprocess.Popen(
            # -P: no working directory on sys.path, where another multiscope could shadow ours
            [
                sys.executable,
                "-P",
                "-m",
                _MODULE,
                str(path),
                "--idle",
                str(idle_s),
                "--preload",
                ",".join(preload),
                "--origins",
                json.dumps(_origins(preload)),
            ],
            cwd="/",  # pins no directory of the caller's
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # shared by every caller: a Ctrl-C here leaves it
        )
    finally:
        os.close(log)


# ---------------------------------------------------------------------------- launcher side
def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} launcher {os.getpid()}: {message}", flush=True)


def _preload(modules: list[str]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a child imports what it needs anyway
            _log(f"preload of {name} failed ({exc!r}); its children import it themselves")


def _serve(path: Path, preload: list[str], idle_s: float) -> None:  # pragma: no cover - launcher
    """Accept requests on ``path`` until idle; fork one child per request."""
    lock_fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another launcher for the same key runs (or is starting)
    # Import before binding: a caller that connects gets a launcher ready to fork.
    _preload(preload)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead launcher's socket (we hold the lock, so none serves it)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(16)
    inode = path.stat().st_ino
    # A child's end wakes the loop, which reaps it at once: until then a killed child
    # is a zombie, and a caller waiting for its PID to vanish would wait on.
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the signal reaches the fd
    _log(f"serving {path} with {len(sys.modules)} modules imported")
    children: set[int] = set()
    last_activity = time.monotonic()
    try:
        while True:
            _reap(children)
            if children:
                last_activity = time.monotonic()
            elif time.monotonic() - last_activity > idle_s:
                _log("idle: stopping")
                _unlink_if(path, inode)  # no new caller finds it
                break
            try:
                if path.stat().st_ino != inode:
                    break  # replaced by another launcher
            except FileNotFoundError:
                break  # removed (stop_all): stop serving
            ready = select.select([listener, wake_r], [], [], 1.0)[0]
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            if listener in ready:
                connection, _ = listener.accept()
                with connection:
                    pid = _handle(connection, listener, (lock_fd, wake_r, wake_w))
                if pid is not None:
                    children.add(pid)
                last_activity = time.monotonic()
        # Callers already queued get their child, not a connection closed unanswered.
        while select.select([listener], [], [], 0)[0]:
            connection, _ = listener.accept()
            with connection:
                _handle(connection, listener, (lock_fd, wake_r, wake_w))
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        _unlink_if(path, inode)
        listener.close()
        os.close(lock_fd)


def _unlink_if(path: Path, inode: int) -> None:
    """Remove the socket at ``path`` if it is still ours (``inode``)."""
    with contextlib.suppress(OSError):
        if path.stat().st_ino == inode:
            path.unlink()


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)


def _handle(
    connection: socket.socket, listener: socket.socket, own_fds: tuple[int, ...]
) -> int | None:
    """Read one request from ``connection``, fork its child and answer with its PID."""
    connection.settimeout(10.0)
    fds: list[int] = []
    try:
        creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            raise PermissionError(f"request from uid {uid}")
        message, fds, _flags, _address = socket.recv_fds(connection, _MAX_MESSAGE, _MAX_FDS)
        request = json.loads(message)
        targets = [int(fd) for fd in request["fds"]]
        if len(targets) != len(fds):
            raise ValueError(f"{len(fds)} descriptors for {len(targets)} targets")
        # A target the launcher's imports hold open (a database, say) would be
        # overwritten under them in the child: refused, the caller starts it plainly.
        ours = {connection.fileno(), listener.fileno(), *own_fds, *fds}
        for target in targets:
            if target > 2 and target not in ours and _is_open(target):
                raise ValueError(f"descriptor {target} is in use in the launcher")
        module, argv = str(request["module"]), [str(arg) for arg in request["argv"]]
        env = {str(k): str(v) for k, v in request["env"].items()}
        cwd = str(request["cwd"])
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            _run_child(
                module,
                argv,
                env,
                cwd,
                dict(zip(targets, fds, strict=True)),
                close=(connection.fileno(), listener.fileno(), *own_fds),
            )
        connection.sendall(json.dumps({"pid": pid}).encode())
        _log(f"started {pid}: -m {module} {' '.join(argv)}")
        return pid
    except Exception as exc:  # noqa: BLE001 - one bad request must not stop the launcher
        _log(f"request refused: {exc!r}")
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps({"error": repr(exc)}).encode())
        return None
    finally:
        for fd in fds:  # the child has its copies; ours would hold the caller's locks
            os.close(fd)


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def _run_child(  # pragma: no cover - runs in the forked child
    module: str,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    fds: dict[int, int],
    close: tuple[int, ...],
) -> None:
    """Become ``python -m module *argv``; never returns."""
    code: int = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # its own session, as start_new_session=True gives
        for fd in close:
            os.close(fd)
        # Move the received descriptors above every target first, then onto their targets.
        floor = max([*fds, *fds.values(), 2]) + 1
        moved = {target: fcntl.fcntl(fd, fcntl.F_DUPFD, floor) for target, fd in fds.items()}
        for fd in fds.values():
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for target, fd in moved.items():
            os.dup2(fd, target)
            os.close(fd)
        # Before the environment changes: setproctitle finds the room for the title
        # by walking the original environment block.
        _set_title([sys.executable, "-m", module, *argv])
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import importlib

        sys.argv = [module, *argv]
        importlib.import_module(module).main(argv)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - report it as an uncaught exception would be
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        import atexit
        import threading

        # What interpreter shutdown does, in its order: join the non-daemon threads
        # (and run threading's own exit hooks), then the atexit functions.
        with contextlib.suppress(BaseException):
            threading._shutdown()
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _set_title(command: list[str]) -> None:  # pragma: no cover - runs in the forked child
    """Show the child's own command line in ``ps`` and ``/proc/PID/cmdline``.

    The title is one string, quoted as a shell would (:func:`shlex.join`), so
    :func:`command_line` gives back the arguments exactly.
    """
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(shlex.join(command))


def command_line(pid: int) -> list[str] | None:
    """The arguments process ``pid`` was started with, or shows (a launcher's child).

    ``/proc/PID/cmdline`` holds NUL-separated arguments, or one title string (see
    :func:`_set_title`). None if it cannot be read (gone, or no ``/proc``).
    """
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    parts = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    if len(parts) == 1 and " " in parts[0]:
        try:
            return shlex.split(parts[0])
        except ValueError:
            return parts
    return parts


def main(args: list[str] | None = None) -> None:  # pragma: no cover - the launcher process
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    parser.add_argument("socket", type=Path)
    parser.add_argument("--idle", type=float, required=True)
    parser.add_argument("--preload", default="")
    parser.add_argument("--origins", type=json.loads, required=True)
    options = parser.parse_args(args)
    preload = [m for m in options.preload.split(",") if m]
    # Before importing anything: a package found elsewhere than by the caller (another
    # checkout on the caller's sys.path) would give its children other code.
    found = _origins(tuple(preload))
    if found != options.origins:
        _log(f"packages found at {found}, the caller's at {options.origins}: stopping")
        sys.exit(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _serve(options.socket, preload, options.idle)


if __name__ == "__main__":  # pragma: no cover
    main()
