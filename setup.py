"""Build hook only (the metadata is in pyproject.toml): copy the top-level cloud-init/,
packer/ and profiles/ into the wheel as ``builder/_data/`` so an installed ``builder`` has
its templates, Packer files, scripts and example profiles (``builder.paths`` finds them).

An editable install skips the copy: it reads the checkout's top-level directories.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# directory -> the files of it that are product (no caches, no editor leftovers)
SHIPPED = {
    "cloud-init": ("*.j2",),
    "packer": ("*.pkr.hcl", "*.sh"),
    "profiles": ("*.yaml", "*.pem"),
}


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "builder" / "_data"
        for top, patterns in SHIPPED.items():
            for pattern in patterns:
                for src in sorted((HERE / top).rglob(pattern)):
                    out = dest / top / src.relative_to(HERE / top)
                    self.mkpath(str(out.parent))
                    self.copy_file(str(src), str(out))
        commit = _git_commit()
        if commit:  # builder.buildinfo reports it where there is no checkout to ask
            (dest / "commit").write_text(commit + "\n")


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


setup(cmdclass={"build_py": BuildPyWithData})
