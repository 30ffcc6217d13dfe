"""The state directory's edges found by audit 8 (state): what the disk or a neighbour can put in the exporter's way
at start, and `--once` with a state directory. Real exporter processes and the simulator over loopback; failures
injected through the project's failing-syscall layer or a real resource limit, never a mock."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog

from bench.common import child_env
from exporter import statefile
from exporter.simulator import ProviderSpec, Simulator
from tests.harness import ExporterThread, make_settings, parse_samples, value
from tests.test_state_dir import FailingOps

P = "openai"


def _failed(exp: ExporterThread) -> float | None:
    return value(exp.samples(), "bifrost_batch_finished_total", provider=P, status="failed")


def _once(url: str, state_dir: Path, fsize: int | None = None) -> tuple[float | None, str]:
    """`--once` in a child process (with RLIMIT_FSIZE `fsize`: every write to a file past it fails with EFBIG, as
    on a full volume); the failed count it printed and its log."""

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = child_env({"BIFROST_EXPORTER_BIFROST_URL": url, "BIFROST_EXPORTER_PROVIDERS": P,
                     "BIFROST_EXPORTER_STATE_DIR": str(state_dir), "BIFROST_EXPORTER_LOG_FORMAT": "logfmt"})  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--once"], env=env, capture_output=True, text=True, timeout=60,
        preexec_fn=limit,
    )  # fmt: skip
    return value(
        parse_samples(out.stdout), "bifrost_batch_finished_total", provider=P, status="failed"
    ), out.stderr


def _three_failed(sim: Simulator, state_dir: Path) -> float | None:
    """A first exporter that counts three failures and saves them; what it showed last."""
    now = int(time.time())
    for i in range(3):
        sim.add_batch(P, batch_id=f"b{i}", status="in_progress", created_at=now - 100)
    with ExporterThread(make_settings(sim.url, [P], state_dir=state_dir)) as a:
        a.poll()
        a.samples()  # scraped: the counts that follow show at once
        for i in range(3):
            sim.set_status(P, f"b{i}", "failed")
        a.poll()
        return _failed(a)


def test_a_fresh_start_does_not_take_the_old_journal_for_its_own(tmp_path: Path) -> None:
    """A damaged base is refused at start (state_unusable, a fresh start); its journal stays on disk until the
    fresh state's first compaction replaces it. That compaction stopped between its base and its journal (a full
    disk at the journal's temporary) left a new base beside the old journal: with the same generation number, the
    next start replayed the old records onto the new base, and three failures the fresh process never had came
    back (audit 8, state F2)."""
    state_dir = tmp_path / "state"
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as sim:
        settings = make_settings(sim.url, [P], state_dir=state_dir)
        assert _three_failed(sim, state_dir) == 3
        base = statefile.base_path(state_dir, P)
        data = bytearray(base.read_bytes())
        data[len(data) // 2] ^= 0xFF  # bit rot
        base.write_bytes(bytes(data))
        with structlog.testing.capture_logs() as logs, ExporterThread(settings) as b:
            assert any(e["event"] == "state_unusable" for e in logs)
            poller = b.exporter.poller
            poller.durable.file_ops = FailingOps("mkstemp#2", errno.ENOSPC)  # the journal's temporary
            b.poll()
            poller.durable.file_ops = statefile.REAL_FILE_OPS
            fresh = _failed(b)
        with ExporterThread(settings) as c:
            restarted = _failed(c)
            c.poll()
            after = _failed(c)
    assert fresh == 0
    assert restarted in (None, 0) and after == 0, (restarted, after)


@pytest.mark.parametrize("name", [f"ledger-{P}.base", f"ledger-{P}.journal", f"ledger-{P}.json"])
def test_a_fifo_at_a_state_name_is_refused_not_waited_on(tmp_path: Path, name: str) -> None:
    """Opened without O_NONBLOCK, a FIFO blocked the start until a writer came: no log line, no /metrics, no exit
    (audit 8, state F3). It is not a regular file, as a planted symlink is not."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.mkfifo(state_dir / name)
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as sim:
        try:
            _, log = _once(sim.url, state_dir)
        except subprocess.TimeoutExpired:
            pytest.fail(f"--once still running after 60 s with a FIFO at {name}")
    assert "state_unusable" in log or "state_marker_unusable" in log, log[-2000:]
    assert "is not a regular file" in log


def test_a_lock_taken_but_not_written_still_restores_the_state(tmp_path: Path) -> None:
    """flock succeeded (this process owns the directory) but the holder line could not be written (EFBIG here, EIO
    or a quota in life): the state was neither read nor written, counters restarted at 0 and the next healthy start
    counted the old totals again (audit 8, state F4). The holder line is information only."""
    state_dir = tmp_path / "state"
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as sim:
        before = _three_failed(sim, state_dir)
        failing, log = _once(sim.url, state_dir, fsize=4)
        healthy, _ = _once(sim.url, state_dir)
    assert before == failing == healthy == 3, (before, failing, healthy, log[-2000:])
    assert "state_dir_unusable" not in log


def test_once_prints_what_it_counted(tmp_path: Path) -> None:
    """`--once` is read by no Prometheus: the hold that shows a restarted process's counts at their restored values
    first (for increase()) only hid this run's counts; it printed the totals of the run before (audit 8, state
    F6)."""
    state_dir = tmp_path / "state"
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as sim:
        now = int(time.time())
        for i in range(3):
            sim.add_batch(P, batch_id=f"b{i}", status="in_progress", created_at=now - 100)
        first, _ = _once(sim.url, state_dir)
        for i in range(3):
            sim.set_status(P, f"b{i}", "failed")
        second, _ = _once(sim.url, state_dir)
    assert (first, second) == (0, 3)


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False)


def test_a_read_error_names_the_file_and_the_exporter_carries_on(tmp_path: Path) -> None:
    """A real EIO: the state on an ext4 image on a loop device, the device then cut short below the base's first
    block (as a bad sector or a failing network volume answers). The read raised out of the start (`startup_failed`
    naming the listen address, exit 1: a crash loop in a pod); it is one `state_unusable` line naming the file, and
    the exporter serves on as without state (audit 8, state F1). Needs root and a loop device; skipped elsewhere."""
    if os.geteuid() != 0 or any(
        _run("which", tool).returncode for tool in ("losetup", "mkfs.ext4", "filefrag")
    ):
        pytest.skip("needs root, losetup, mkfs.ext4 and filefrag")
    image, mnt = tmp_path / "img", tmp_path / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(64 << 20)
    assert _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-b", "4096", str(image)).returncode == 0
    attached = _run("losetup", "-f", "--show", str(image))
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    loop = attached.stdout.strip()
    try:
        if _run("mount", loop, str(mnt)).returncode != 0:
            pytest.skip("cannot mount the loop device here")
        try:
            with (mnt / "filler").open("wb") as f:  # the state's blocks land above 40 MiB
                f.write(b"\0" * (40 << 20))
            state_dir = mnt / "state"
            with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as sim:
                assert _three_failed(sim, state_dir) == 3
                os.sync()
                extents = _run("filefrag", "-v", str(statefile.base_path(state_dir, P))).stdout
                first_block = int(next(ln.split()[3] for ln in extents.splitlines() if ln.strip().startswith("0:"))
                                  .rstrip(".:"))  # fmt: skip
                with image.open("r+b") as f:
                    f.truncate((first_block - 4) * 4096)
                assert _run("losetup", "-c", loop).returncode == 0
                for name in statefile.base_path(state_dir, P), statefile.journal_path(state_dir, P):
                    fd = os.open(name, os.O_RDONLY)  # drop the cached pages: the next read goes to the device
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    os.close(fd)
                printed, log = _once(sim.url, state_dir)
        finally:
            _run("umount", "-l", str(mnt))
    finally:
        _run("losetup", "-d", loop)
    assert printed is not None, log[-2000:]  # served (printed) on as without state
    unusable = [line for line in log.splitlines() if "state_unusable" in line]
    assert unusable and str(statefile.base_path(state_dir, P)) in unusable[0], log[-2000:]
    assert "startup_failed" not in log


def test_a_record_that_cannot_be_applied_keeps_the_good_ones_before_it(tmp_path: Path) -> None:
    """A journal record whole and checksummed whose content this exporter cannot apply (a writer's bug, a hand
    edit): the whole state was thrown away, the base and every good record with it, with a warning naming no file
    (audit 8, state F5). It is damage at that record: the state is that of the last good one, named by its file."""
    state_dir = tmp_path / "state"
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as sim:
        assert _three_failed(sim, state_dir) == 3
        good = statefile.read(state_dir, P)
        assert good is not None
        with statefile.journal_path(state_dir, P).open("ab") as f:
            # settled ids first converted, then one that cannot be: nothing of the record may land
            f.write(
                statefile.json_record({"head": {"seq": 10**6}, "settled": [[7, 1.0], ["not-a-key", 1.0]]})
            )
        restored = statefile.read(state_dir, P)
        printed, log = _once(sim.url, state_dir)
    assert restored is not None and restored.damage and restored.dropped_bytes > 0 and not restored.torn
    assert restored.records == good.records and restored.state.get("seq") == good.state.get("seq")
    assert printed == 3, log[-2000:]
    damaged = [line for line in log.splitlines() if "state_journal_damaged" in line]
    assert damaged and f"ledger-{P}.journal" in damaged[0], log[-2000:]
