"""One study per run dir: a lock file that names its holder (host, pid, start time), kept fresh by a
heartbeat, and taken over when its holder is gone.

Why not `flock`/`fcntl`: run dirs live on NFS and Lustre, where those locks may be unavailable
(`ENOLCK`), local to one client (Lustre mounted without `-o flock`), or silently granted to two hosts
at once. So the lock is a file created atomically: the holder writes its JSON to a unique temp file
and hard-links it to `LOCK_FILE`; `link(2)` fails with EEXIST when the name exists, atomically on
every NFS version (unlike `O_EXCL` on NFSv2), and a reader never sees a half-written lock. A lost NFS
reply can make a retried link report EEXIST although it worked: the temp file's link count (2) says so.

A holder that dies cannot remove its file, so while it runs a thread refreshes the file's mtime every
`heartbeat_s`. A lock is stale when its pid is gone on this host, or (from any host, and the only
test for another host) when it has not been refreshed for `stale_after_s`. Taking one over is
race-safe: a contender first creates a `.takeover` file (atomically, as above), re-reads the lock,
and renames it away only if it is still the stale one it judged; then it creates its own lock like
anyone else, so of several contenders exactly one wins and the others see the winner's lock.

`WSISUM_LOCK_HEARTBEAT_S` and `WSISUM_LOCK_STALE_S` set the two intervals (tests shorten them).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from wsisum.errors import InputError, print_error

LOCK_FILE = ".wsisum.lock"  # in the run dir (a study dir, or a named wsisum-train / wsisum-evaluate run dir)
TAKEOVER_SUFFIX = ".takeover"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # 20 missed heartbeats: survives a slow NFS server and clock skew between hosts
TAKEOVER_GRACE_S = 60.0  # a `.takeover` file older than this was left by a contender that died mid-takeover


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if not value else float(value)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return True
    return True


def _create(path: Path, payload: dict[str, Any]) -> bool:
    """Create `path` holding `payload` unless it exists: temp file + link(2), atomic on NFS/Lustre."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return os.stat(tmp).st_nlink == 2  # a retried NFS link whose first reply was lost
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _read(path: Path) -> tuple[dict[str, Any], float] | None:
    """The lock's holder and its last heartbeat (mtime); None when there is no lock (any more)."""
    try:
        mtime = path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        info = {}  # not written by this module: judged by its heartbeat (mtime) only
    return (info if isinstance(info, dict) else {}), mtime


def describe(info: dict[str, Any]) -> str:
    """`pid P on host H since T`, as the one-line messages name a holder."""
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('since', '?')}"


class RunLock:
    """`with RunLock(run_dir):` holds `run_dir`'s lock, or raises an `InputError` naming its holder.

    Released on leaving the block (also on an exception or `SystemExit`) and, should the block be
    skipped, at interpreter exit; a `kill -9` leaves the file, which the next run takes over.
    """

    def __init__(self, run_dir: str | Path, heartbeat_s: float | None = None, stale_after_s: float | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.heartbeat_s = (
            heartbeat_s if heartbeat_s is not None else _env_seconds("WSISUM_LOCK_HEARTBEAT_S", HEARTBEAT_S)
        )
        self.stale_after_s = (
            stale_after_s if stale_after_s is not None else _env_seconds("WSISUM_LOCK_STALE_S", STALE_AFTER_S)
        )
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def stale_reason(self, info: dict[str, Any], mtime: float) -> str | None:
        """Why the lock `info` (last refreshed at `mtime`) is stale, or None while its holder lives."""
        pid = info.get("pid")
        if info.get("host") == self.host and isinstance(pid, int) and not _pid_alive(pid):
            return "its process is gone"
        age = time.time() - mtime
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s"
        return None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "host": self.host,
            "pid": os.getpid(),
            "since": datetime.now().astimezone().isoformat(timespec="seconds"),
            "token": self.token,
        }
        for _ in range(20):  # each round either wins, refuses, or saw the lock change under it
            if _create(self.path, payload):
                self.held = True
                self._start_heartbeat()
                atexit.register(self.release)
                return self
            seen = _read(self.path)
            if seen is None:
                continue  # released in between: try again
            reason = self.stale_reason(*seen)
            if reason is None:
                raise InputError(
                    self.run_dir,
                    f"another study is running here ({describe(seen[0])}); wait for it or use another run_dir",
                )
            self._take_over(seen[0], reason)
        raise InputError(self.run_dir, "could not take the run dir's lock (it keeps changing); try again")

    def _take_over(self, info: dict[str, Any], reason: str) -> None:
        """Remove the stale lock `info`, unless another contender is at it or it changed meanwhile."""
        guard = self.path.with_name(self.path.name + TAKEOVER_SUFFIX)
        if not _create(guard, {"host": self.host, "pid": os.getpid()}):
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > TAKEOVER_GRACE_S:
                    guard.unlink()  # left by a contender killed mid-takeover
            time.sleep(0.05)  # another contender is taking over: its new lock decides
            return
        try:
            now = _read(self.path)
            if now is None or now[0].get("token") != info.get("token"):
                return  # released or already replaced: the next round sees what is there
            aside = self.path.with_name(f"{self.path.name}.stale.{uuid.uuid4().hex}")
            os.rename(self.path, aside)
            os.unlink(aside)
            print_error(f"{self.run_dir}: taking over a stale lock ({describe(info)}: {reason})", prefix="warning")
        finally:
            with contextlib.suppress(OSError):
                guard.unlink()

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="wsisum-runlock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            seen = _read(self.path)
            if seen is None or seen[0].get("token") != self.token:
                return  # taken over (this run was presumed dead): never touch another's lock
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Remove the lock if it is still this run's; safe to call twice (and from atexit)."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            atexit.unregister(self.release)
        seen = _read(self.path)
        if seen is not None and seen[0].get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_lock(run_dir: str | Path | None) -> contextlib.AbstractContextManager[RunLock | None]:
    """`RunLock(run_dir)`; a no-op for `None` (a run dir nobody else can name) and in the extra
    processes of a distributed run (DDP ranks > 0, which Lightning starts with the same command and
    run dir: their rank 0 holds the lock)."""
    ranks = (os.environ.get(k, "0") for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))
    if run_dir is None or any(r.strip() not in ("", "0") for r in ranks):
        return contextlib.nullcontext()
    return RunLock(run_dir)


def named_run_dir(cfg: Any) -> Path | None:
    """The run dir of a single `wsisum-train` / `wsisum-evaluate` run when the user named it, i.e. when
    another run could name it too: `hydra.run.dir` set to anything without `${now:...}` (on the command
    line or in a config, as `ckpt_path=auto` resumes need), or `paths.output_dir=` given. The default
    run dir is time-stamped per run and a sweep's job dirs are numbered per sweep: None, no lock."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return None
    pattern = str(OmegaConf.to_container(hydra_cfg.run, resolve=False).get("dir", ""))
    out = Path(str(cfg.paths.output_dir))
    if "${now:" not in pattern or out.resolve() != Path(hydra_cfg.runtime.output_dir).resolve():
        return out
    return None


@contextlib.contextmanager
def named_run_dir_lock(cfg: Any) -> Iterator[None]:
    """`wsisum-train` / `wsisum-evaluate`: hold `named_run_dir(cfg)`'s lock (if any) for the block; a
    busy one is the one `error:` line and exit 1, before any work."""
    lock = run_lock(named_run_dir(cfg))
    try:
        lock.__enter__()
    except InputError as err:
        print_error(err)
        raise SystemExit(1) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)
