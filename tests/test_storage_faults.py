"""A cache or Prefect home that cannot be written (read-only, not permitted, full): one line naming the file, the
cause and the setting to change, exit 2, no traceback, nothing finished lost; the commands that only read
(`status`, `compare`, `recommend`) work on a read-only cache. The folders are made read-only for real: by
permissions when the tests run as an ordinary user, by a read-only bind mount when they run as root (root
ignores permissions); the full disk is a 256 KiB tmpfs (root only)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows import cli
from lagcl.errors import storage_error
from tests.test_flow import ONLY_PREPARE
from tests.test_recommend import finished_run


def _sh(*args: str) -> bool:
    return subprocess.run(args, capture_output=True).returncode == 0


@contextmanager
def read_only(folder: Path):
    """`folder` as a real read-only folder (a path whose writes fail with EROFS or EACCES)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield folder
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    view = folder.with_name(folder.name + "-ro")
    view.mkdir()
    if not (_sh("mount", "--bind", str(folder), str(view)) and _sh("mount", "-o", "remount,ro,bind", str(view))):
        _sh("umount", str(view))
        pytest.skip("running as root without permission to mount: no way to make a folder read-only here")
    try:
        yield view
    finally:
        _sh("umount", str(view))


def pipeline(repo: Path, cache: Path, prefect: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(prefect), "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    args = [sys.executable, "-m", "flows.cli", "run", "--set", f"cache_dir={cache}",
            "--set", f"data.path={repo / 'cache' / 'raw' / 'ml-100k'}"]
    for s in (*ONLY_PREPARE, *extra):
        args += ["--set", s]
    return subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)


def test_status_compare_and_recommend_read_a_read_only_cache(tmp_path, capsys):
    finished_run(tmp_path)
    with read_only(tmp_path / "cache") as cache:
        for argv in (["status"], ["compare"], ["recommend", "--user", "U3", "--n", "3"]):
            assert cli.main([*argv, "--set", f"cache_dir={cache}", "--set", "recommend.n=20",
                             *[x for s in ("augment", "groups", "rerank") for x in ("--set", f"pipeline.stages.{s}=false")]
                             ]) == 0, argv
    out = capsys.readouterr().out
    assert "complete" in out and "1." in out


def test_a_run_on_a_read_only_cache_ends_in_one_line_naming_the_file_and_cache_dir(repo_root, tmp_path):
    assert pipeline(repo_root, tmp_path / "cache", tmp_path / "prefect").returncode == 0
    with read_only(tmp_path / "cache") as cache:
        ro = pipeline(repo_root, cache, tmp_path / "prefect", "data.kcore=4")  # a new prepare folder to write
    assert ro.returncode == 2, ro.stderr[-3000:]
    err = ro.stderr.strip().splitlines()
    line = next(x for x in err if x.startswith("error: "))
    assert line.startswith(f"error: cannot write {cache}/ml-100k/prepare/")
    assert "point cache_dir at a writable folder" in line and "finished stages are kept" in line
    assert "Traceback" not in ro.stdout + ro.stderr


def test_a_full_disk_ends_in_one_line_and_leaves_no_temporary_file(repo_root, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not _sh("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)):
        pytest.skip("a small full disk needs a tmpfs mount (root with mount permission)")
    try:
        full = pipeline(repo_root, disk, tmp_path / "prefect")
        left = [p for p in disk.rglob(".*tmp-*")]
    finally:
        _sh("umount", str(disk))
    assert full.returncode == 2, full.stderr[-3000:]
    line = next(x for x in full.stderr.splitlines() if x.startswith("error: "))
    assert "(no space left on the device): free space there" in line and "Traceback" not in full.stderr
    assert left == []


def test_a_prefect_home_that_cannot_be_written_is_one_line_before_prefect_starts(repo_root, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with read_only(home) as ro:
        run = pipeline(repo_root, tmp_path / "cache", ro / "prefect")
    assert run.returncode == 2
    line = next(x for x in run.stderr.splitlines() if x.startswith("error: "))
    assert f"Prefect's home {ro / 'prefect'} is not writable: set PREFECT_HOME to a writable folder" in line
    assert "Traceback" not in run.stderr


def test_only_storage_errors_become_a_storage_error():
    assert storage_error(OSError(28, "No space left on device", "/c/x.parquet")) is not None
    assert "cache_dir" in str(storage_error(PermissionError(13, "Permission denied", "/c/x")))
    assert storage_error(FileNotFoundError(2, "No such file", "/c/x")) is None
    assert storage_error(ValueError("x")) is None
