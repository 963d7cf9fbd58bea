"""Hostile profile documents (issue 14, finding 7): refused quickly, in bounded memory.

A YAML document can expand without bound through aliases ("billion laughs": nine levels
of ten aliases each stand for 10^9 strings in a 1 KB file) or nest deeper than any parser
stack. Each case runs in a forked child with an address-space limit and a CPU-time limit,
so a regression fails the test instead of taking the machine down.

"Quickly" is measured in the child's own CPU time, not wall-clock time: a loaded machine
(other builds, other test runs) stretches the wall clock but not the work the loader does,
so the bound means the same on an idle laptop and on a CI box at load 30.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from pathlib import Path
from typing import Any

import pytest

from builder.errors import BuilderError
from builder.site.profile import load_profile

MEMORY_LIMIT = 1 << 30  # 1 GiB of address space for the child
CPU_LIMIT = 20  # CPU seconds before the kernel stops the child (SIGXCPU, then SIGKILL)
FAST = 5.0  # CPU seconds: a refusal must come well within this (it takes well under 1 s)
HANG = 600.0  # wall-clock seconds: only a child blocked on something else gets this far


def billion_laughs() -> str:
    lines = ["target: iso", 'lol0: &a0 ["lol", "lol", "lol", "lol", "lol",'
             ' "lol", "lol", "lol", "lol", "lol"]']  # fmt: skip
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"lol{i}: &a{i} [{refs}]")
    lines.append("kernel: {modules: *a9}")
    return "\n".join(lines) + "\n"


def deep_nesting(depth: int = 10_000) -> str:
    return "target: iso\ndescription: " + "[" * depth + "]" * depth + "\n"


def deep_block_mappings(depth: int = 1_000) -> str:
    return "".join(f"{' ' * i}k{i}:\n" for i in range(depth)) + " " * depth + "x: 1\n"


def _child(conn: Any, site: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT, CPU_LIMIT + 5))
    t0 = time.process_time()
    try:
        load_profile(site)
    except BuilderError as exc:
        result = ("error", type(exc).__name__, exc.message, getattr(exc, "problems", None))
    except BaseException as exc:  # a traceback in real life: the test fails on it
        result = ("crash", type(exc).__name__, str(exc)[:200], None)
    else:
        result = ("loaded", "", "", None)
    conn.send((result, time.process_time() - t0))


def load_in_child(site: str) -> tuple[tuple[Any, ...], float]:
    """Load ``site`` in a forked child: its result and the CPU seconds the load took."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, site))
    proc.start()
    child.close()  # the child's end is the child's: EOF here when it dies without a word
    try:
        if not parent.poll(HANG):
            pytest.fail(f"loading {site} did not finish within {HANG:g} s (blocked?)")
        try:
            result, cpu = parent.recv()
        except EOFError:
            proc.join()
            pytest.fail(
                f"loading {site} killed the child (exit {proc.exitcode}): more than "
                f"{CPU_LIMIT} s of CPU (SIGXCPU/SIGKILL) or {MEMORY_LIMIT >> 20} MiB"
            )
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
    return result, cpu


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (billion_laughs(), "profiles/bomb.yaml: line 6, column "),
        (deep_nesting(), "profiles/bomb.yaml: line 2, column "),
        (deep_block_mappings(), "profiles/bomb.yaml: line "),
    ],
    ids=["billion-laughs", "deep-flow-nesting", "deep-block-nesting"],
)
def test_hostile_yaml_is_refused_quickly(workdir: Path, text: str, expected: str) -> None:
    (workdir / "profiles" / "bomb.yaml").write_text(text)
    (status, kind, message, problems), cpu_seconds = load_in_child("bomb")
    assert (status, kind) == ("error", "ValidationError"), (kind, message)
    assert len(problems) == 1 and problems[0].startswith(expected), problems
    assert ("expands to more than 100000 values" in problems[0]) == (text == billion_laughs())
    assert cpu_seconds < FAST


def test_nesting_limit_message(workdir: Path) -> None:
    (workdir / "profiles" / "bomb.yaml").write_text(deep_nesting(100))
    (status, _, _, problems), _ = load_in_child("bomb")
    assert status == "error"
    assert problems == [
        "profiles/bomb.yaml: line 2, column 77: nested deeper than 64 levels "
        "(a profile needs a handful)"
    ]


def test_oversized_file_is_refused(workdir: Path) -> None:
    (workdir / "profiles" / "big.yaml").write_text("target: iso\n" + "# padding\n" * 200_000)
    (status, kind, message, problems), _ = load_in_child("big")
    assert (status, kind) == ("error", "ValidationError"), message
    assert problems == [
        "profiles/big.yaml: larger than 1048576 bytes; a profile is a few kilobytes"
    ]


def test_an_ordinary_anchor_still_works(workdir: Path) -> None:
    (workdir / "profiles" / "anchors.yaml").write_text(
        "extends: aws\ntime_sync: {servers: &ntp [a.example, b.example]}\n"
        "crio: {insecure_registries: *ntp}\n"
    )
    profile = load_profile("anchors")
    assert profile.get("crio.insecure_registries") == ("a.example", "b.example")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "null\n", "~\n"])
def test_empty_profile_is_refused_with_a_hint(workdir: Path, text: str) -> None:
    (workdir / "profiles" / "empty.yaml").write_text(text)
    with pytest.raises(BuilderError) as exc:
        load_profile("empty")
    assert exc.value.message == "profiles/empty.yaml: the profile is empty"
    assert exc.value.hint is not None and "extends:" in exc.value.hint


def test_hostile_yaml_through_the_cli_exits_2(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from builder import cli

    (workdir / "profiles" / "bomb.yaml").write_text(deep_nesting())
    with pytest.raises(SystemExit) as exc:
        cli.main(["show", "bomb"])
    _, err = capsys.readouterr()
    assert exc.value.code == 2
    assert "profiles/bomb.yaml: line 2, column" in err
    assert "Traceback" not in err


def test_hostile_set_value_is_refused(workdir: Path) -> None:
    from builder.errors import ValidationError
    from builder.site.profile import parse_overrides

    levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    with pytest.raises(ValidationError) as exc:
        parse_overrides([f"kernel.modules=[{', '.join(levels)}]"])
    assert exc.value.problems[0].startswith("--set: kernel.modules: line 1, column ")
    assert "expands to more than 100000 values" in exc.value.problems[0]
