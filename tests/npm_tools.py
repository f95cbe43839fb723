"""The coding-agent CLIs the tests run for real (Claude Code, Gemini CLI, Codex), each
installed from npm at test set-up, pinned, under the worktree's ``.cache/npm``
(gitignored, kept between runs). Without npm, or when the install fails, the test fails
and says why: it never skips, these tests are how each CLI's support is proven."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.proxy_harness import REPO

NPM_ROOT = REPO / ".cache" / "npm"


def npm_install(package: str, version: str, prefix: Path, *, what: str,
                node: str = "", save: bool = False) -> None:
    """``npm install package@version`` into ``prefix``. ``what`` names the tool in the
    failure, ``node`` the Node.js it needs (e.g. " (20 or later)"); ``save`` records it
    in the prefix's package.json (a prefix shared with nothing else needs not)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"npm is not on PATH: it is needed to install {what} "
                    f"({package}@{version}) for this test; install Node.js{node} "
                    "and npm (Debian: apt-get install nodejs npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit",
                           "--no-fund", *(() if save else ("--no-save",)),
                           "--loglevel=error", f"{package}@{version}"],
                          capture_output=True, text=True, timeout=280)
    if done.returncode != 0:
        pytest.fail(f"npm could not install {package}@{version} "
                    f"(exit {done.returncode}):\n{done.stderr[-2000:]}")


def version_output(binary: Path, home: Path, env: Mapping[str, str]) -> str | None:
    """What ``binary --version`` prints (``HOME`` at ``home``, plus ``env``); None when
    it is not installed or does not answer."""
    if not binary.exists():
        return None
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=60, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                              "HOME": str(home), **env})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 and out.stdout else None
