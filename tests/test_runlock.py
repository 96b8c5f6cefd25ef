"""One study per run dir (`wsisum/runlock.py`): a second study on a busy run dir is one line and
exit 1; a stale lock (dead pid, or no heartbeat, also from another host) is taken over with one line;
a killed study's lock does not stop its resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.apps import run_app
from tests.conftest import REPO
from wsisum.errors import InputError
from wsisum.runlock import LOCK_FILE, RunLock, describe

HOLD = "import sys; from wsisum.runlock import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()"
KILLED = "import os, sys; from wsisum.runlock import RunLock; RunLock(sys.argv[1]).acquire(); os._exit(0)"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding `run_dir`'s lock until its stdin closes (a study in another terminal)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _busy_line(run_dir: Path) -> str:
    info = json.loads((run_dir / LOCK_FILE).read_text())
    return f"error: {run_dir}: another study is running here ({describe(info)}); wait for it or use another run_dir"


def _dead_lock(run_dir: Path) -> dict:
    """The lock a `kill -9`ed study leaves: its file, naming a pid that no longer runs."""
    subprocess.run([sys.executable, "-c", KILLED, str(run_dir)], check=True, env=_env())
    return json.loads((run_dir / LOCK_FILE).read_text())


def test_a_second_study_on_a_busy_run_dir_is_one_line(tmp_path: Path) -> None:
    """The real `wsisum-pipeline` entry on a run dir another study holds: exit 1, one line, no
    traceback, nothing written; the holder's lock is untouched and goes when it ends."""
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        lock_before = (run_dir / LOCK_FILE).read_text()
        proc = run_app(
            "pipeline", "experiment=tiny", f"run_dir={run_dir}", f"cohort.root={tmp_path / 'c'}", "cohort.preset=null",
            cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [_busy_line(run_dir)], proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        assert (run_dir / LOCK_FILE).read_text() == lock_before
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # no stage, no study.json
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0 and not (run_dir / LOCK_FILE).exists()


@pytest.mark.parametrize("app", ["train", "evaluate"])
def test_a_named_train_or_evaluate_run_dir_takes_one_run(tmp_path: Path, app: str) -> None:
    """`hydra.run.dir=R` names the run dir (a resumable or requeued run): a second run there is one line."""
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        proc = run_app(app, f"data.root={tmp_path / 'c'}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [_busy_line(run_dir)], proc.stderr
    finally:
        holder.communicate("", timeout=30)


def test_a_dead_pid_lock_is_taken_over_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    dead = _dead_lock(run_dir)
    with RunLock(run_dir) as lock:
        now = json.loads((run_dir / LOCK_FILE).read_text())
        assert now["pid"] == os.getpid() and now["token"] == lock.token
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {run_dir}: taking over a stale lock ({describe(dead)}: its process is gone)"]
    assert not (run_dir / LOCK_FILE).exists()


def _foreign_lock(run_dir: Path, age_s: float) -> dict:
    """A lock written on another node (its pid means nothing here), last refreshed `age_s` ago."""
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"host": "other-node", "pid": 999_999, "since": "2024-01-01T00:00:00+00:00", "token": "x"}
    (run_dir / LOCK_FILE).write_text(json.dumps(info))
    then = time.time() - age_s
    os.utime(run_dir / LOCK_FILE, (then, then))
    return info


def test_a_lock_from_another_host_goes_stale_by_heartbeat_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    info = _foreign_lock(run_dir, age_s=5)  # its pid is not running here, but it is another host's pid
    with pytest.raises(InputError, match="another study is running here"):
        RunLock(run_dir, stale_after_s=60).acquire()
    _foreign_lock(run_dir, age_s=120)
    with RunLock(run_dir, stale_after_s=60):
        pass
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: {run_dir}: taking over a stale lock ({describe(info)}: no heartbeat for 12")


def test_the_heartbeat_keeps_a_live_study_fresh(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with RunLock(run_dir, heartbeat_s=0.05, stale_after_s=0.5):
        time.sleep(1.0)  # twice the staleness: only the heartbeat keeps it
        with pytest.raises(InputError, match=f"pid {os.getpid()} on host {socket.gethostname()} since "):
            RunLock(run_dir, stale_after_s=0.5).acquire()
    assert not (run_dir / LOCK_FILE).exists()


def test_contenders_for_a_stale_lock_have_one_winner(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    _foreign_lock(run_dir, age_s=120)
    start, won, refused = threading.Barrier(8), [], []

    def contend() -> None:
        lock = RunLock(run_dir, stale_after_s=60)
        start.wait()
        try:
            won.append(lock.acquire())
        except InputError:
            refused.append(lock)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert json.loads((run_dir / LOCK_FILE).read_text())["token"] == won[0].token
    assert capsys.readouterr().err.count("taking over a stale lock") == 1
    won[0].release()
    assert sorted(p.name for p in run_dir.iterdir()) == []  # no takeover guard or stale copy left


def test_the_lock_goes_on_an_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), RunLock(tmp_path):
        raise RuntimeError("a stage crashed")
    assert not (tmp_path / LOCK_FILE).exists()


def _pipeline_args(tmp_path: Path, cohort: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "wsisum.apps.pipeline", "experiment=tiny", f"run_dir={tmp_path / 'run'}",
        f"cohort.root={cohort}", "cohort.preset=null", "summarize.samplers=[random]", "summarize.budgets=[8]",
        "evaluate.tasks=[syn_brca]", "retrieve.enabled=false", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_two_studies_on_one_run_dir_the_first_finishes(tiny_cohort: Path, tmp_path: Path) -> None:
    """Two real studies two seconds apart (the first kept busy evaluating): the second is one line
    and exit 1, the first finishes with its report."""
    args = _pipeline_args(tmp_path, tiny_cohort, "evaluate.overrides=['replicas.max_epochs=60','replicas.patience=60']")
    first = subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "run" / LOCK_FILE
    while not lock.exists() and first.poll() is None:
        time.sleep(0.1)
    time.sleep(2)
    second = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert first.poll() is None, "the first study ended before the second started: make it longer"
    out, err = first.communicate(timeout=600)
    assert second.returncode == 1 and second.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'run'}: ")
    assert "another study is running here (pid" in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0, err[-3000:]
    assert "report: " in out and (tmp_path / "run" / "report" / "report.html").is_file()
    assert not lock.exists()


@pytest.mark.slow
def test_a_killed_study_leaves_its_lock_and_the_rerun_resumes(tiny_cohort: Path, tmp_path: Path) -> None:
    """kill -9 after its first finished stage: the lock names a dead pid; the same command takes it
    over (one line), reuses the finished stages and writes the report."""
    args = _pipeline_args(tmp_path, tiny_cohort)
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    stages_dir = tmp_path / "run" / ".stages"
    deadline = time.time() + 300
    while not list(stages_dir.glob("*.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the study ended before it was killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.stem.replace("__", "/") for p in stages_dir.glob("*.json")}
    dead = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert dead["pid"] == proc.pid and finished
    again = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"taking over a stale lock ({describe(dead)}: its process is gone)" in again.stderr
    stages = json.loads((tmp_path / "run" / "study.json").read_text())["stages"]
    assert {stages[k] for k in finished} == {"reused"} and "ran" in stages.values()
    assert (tmp_path / "run" / "report" / "report.html").is_file() and not (tmp_path / "run" / LOCK_FILE).exists()
