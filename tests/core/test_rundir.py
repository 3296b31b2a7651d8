"""One process at a time in a run directory: a lock held for the run's whole life, released when the holder
exits or dies, and a clear refusal naming the holder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ift.cli import main
from ift.errors import EXIT_RECIPE, RunDirectoryInUse
from ift.rundir import LOCK_FILE, RunDirectory, hold_run_directory, prepare_output_dir

HOLD = (
    "import sys, time; from ift.rundir import hold_run_directory\n"
    "with hold_run_directory(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)\n"
)

RECIPE = (
    '[[data]]\nsource = "jsonl"\npath = "d.jsonl"\n[model]\ntokenizer = "byte-level"\nfrom_config = { model_type = '
    '"llama", hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2 }\n'
)


@pytest.fixture
def holder(tmp_path: Path):
    """Another process holding tmp_path/run."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_second_process_is_refused_with_the_holders_pid_host_and_start(tmp_path: Path, holder):
    with pytest.raises(RunDirectoryInUse) as info:
        with hold_run_directory(tmp_path / "run"):
            pass
    message = str(info.value)
    assert f"pid {holder.pid} on {socket.gethostname()}" in message and "started 20" in message
    assert str(tmp_path / "run") in message and info.value.exit_code == EXIT_RECIPE
    with pytest.raises(RunDirectoryInUse):  # the run directory itself takes the lock too (ift used as a library)
        RunDirectory(tmp_path / "run")


def test_the_lock_of_a_killed_process_is_free_again(tmp_path: Path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with hold_run_directory(tmp_path / "run"):
        info = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid()


def test_the_same_process_may_nest_and_overwrite_keeps_its_lock(tmp_path: Path):
    run = tmp_path / "run"
    with hold_run_directory(run):
        (run / "old.txt").write_text("x")
        prepare_output_dir(run, overwrite=True)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]
        directory = RunDirectory(run)  # nested in the same process: no conflict with itself
        directory.close()
        check = subprocess.run([sys.executable, "-c", HOLD, str(run)], capture_output=True, text=True, timeout=60)
        assert check.returncode != 0 and "RunDirectoryInUse" in check.stderr  # still held after the nested close


def test_ift_run_into_a_directory_in_use_exits_with_the_documented_code(tmp_path: Path, holder, capsys):
    (tmp_path / "d.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    (tmp_path / "r.toml").write_text(RECIPE)
    for extra in ([], ["--overwrite"]):
        assert main(["run", str(tmp_path / "r.toml"), "-o", str(tmp_path / "run"), *extra]) == EXIT_RECIPE
        assert f"in use by another ift process (pid {holder.pid}" in capsys.readouterr().err
    assert (tmp_path / "run" / LOCK_FILE).is_file()  # --overwrite deleted nothing of the other process's


def test_resuming_a_directory_in_use_is_refused_too(tmp_path: Path, holder, capsys):
    (tmp_path / "run" / "status.json").write_text('{"status": "running"}')
    (tmp_path / "d.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    (tmp_path / "r.toml").write_text(RECIPE)
    assert main(["run", str(tmp_path / "r.toml"), "-o", str(tmp_path / "run"), "--resume"]) == EXIT_RECIPE
    assert f"in use by another ift process (pid {holder.pid}" in capsys.readouterr().err
