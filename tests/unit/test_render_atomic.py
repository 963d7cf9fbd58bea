"""Render's write path is atomic (issue 18 finding 2): the failure is injected *while*
write_tree writes, after some files of the new tree are already on disk, and the previous
tree must come through byte for byte. A write_tree that deletes the old tree and writes in
place fails every test here (checked by planting exactly that)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from builder.site import render
from builder.site.profile import load_profile


def digest(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def failing_after(n: int, exc: BaseException, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the (n+1)-th file write_tree creates fail, after n files were written."""
    written: list[str] = []
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: object, **kwargs: object) -> object:
        if len(written) >= n:
            os.close(fd)
            raise exc
        written.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fdopen(fd, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(render.os, "fdopen", fdopen)
    return written


@pytest.mark.parametrize(
    "exc", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["ENOSPC", "ctrl-c"]
)
@pytest.mark.parametrize("after", [1, 7])
def test_failure_during_write_keeps_old_tree(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, after: int
) -> None:
    target = render.render_site(load_profile("aws")).path
    before = digest(target)
    assert len(before) > after + 1
    written = failing_after(after, exc, monkeypatch)
    with pytest.raises(type(exc)):
        render.render_site(load_profile("aws", overrides=["wireguard.mtu=1380"]))
    assert len(written) == after  # the failure really came mid-write
    assert digest(target) == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["aws"]  # no temp left behind


def test_failure_during_first_write_leaves_no_tree(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_after(3, OSError(5, "Input/output error"), monkeypatch)
    with pytest.raises(OSError):
        render.render_site(load_profile("aws"))
    assert not (workdir / "build" / "aws").exists()
    assert list((workdir / "build").iterdir()) == []


def test_success_replaces_whole_tree(workdir: Path) -> None:
    target = render.render_site(load_profile("aws")).path
    stray = target / "files" / "stray-from-an-old-render"
    stray.write_text("x")
    render.render_site(load_profile("aws", overrides=["wireguard.mtu=1380"]))
    assert not stray.exists()
    assert '"mtu": 1380' in (target / "profile.json").read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["aws"]


KILLED_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from builder.site import render
    from builder.site.profile import load_profile
    real = os.fdopen
    count = 0
    def slow(fd, *a, **k):
        global count
        count += 1
        if count == 5:
            print("writing", flush=True)
            time.sleep(60)  # killed here, mid-write
        return real(fd, *a, **k)
    render.os.fdopen = slow
    render.render_site(load_profile("aws", overrides=["wireguard.mtu=1380"]))
    """
)


@pytest.mark.allow_subprocess
@pytest.mark.skipif(
    "mutants" in Path(render.__file__).parts,
    reason="under mutmut: a child process cannot run the mutated package on its own",
)
def test_kill_during_write_keeps_old_tree(workdir: Path) -> None:
    target = render.render_site(load_profile("aws")).path
    before = digest(target)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "SOURCE_DATE_EPOCH": "1767225600"}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD], cwd=workdir, env=env, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"writing\n"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert digest(target) == before


def test_temp_tree_is_hidden_beside_the_target(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # beside: os.replace is atomic only within one filesystem; hidden and *.part: an
    # interrupted render's leftovers are neither listed as a site tree nor committed
    target = workdir / "out" / "deep" / "aws"  # parents are created
    moves: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        moves.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(render.os, "replace", replace)
    render.render_site(load_profile("aws"), target)
    (src, dst), *_ = moves
    assert dst == target and src.parent == target.parent
    assert src.name.startswith(".aws.") and src.name.endswith(".part")
    assert (target.stat().st_mode & 0o7777) == 0o755


def test_manifest_is_canonical_json_and_the_result_says_what_was_written(workdir: Path) -> None:
    # README: the manifest is sorted JSON (indent 2, sorted keys), 0644; the secret-carrying
    # files are the token itself (overlay and ISO copy) and the three user-data carriers
    (workdir / "tok").write_text("site-token-value\n")
    result = render.render_site(load_profile("aws", overrides=["enrollment.site_token=file:tok"]))
    text = (result.path / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert ((result.path / "manifest.json").stat().st_mode & 0o777) == 0o644
    assert result.site == "aws" and result.path == workdir / "build" / "aws"
    assert result.files == json.loads(text)["files"]
    assert set(result.secret_files) == {
        "files/etc/nodeforge/enroll-token",
        "iso/nodeforge/files/etc/nodeforge/enroll-token",
        "cloud-init/user-data",
        "cloud-init/autoinstall.yaml",
        "iso/nocloud/user-data",
    }
