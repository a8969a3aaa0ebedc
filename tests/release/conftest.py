"""Release tests: semantic-release and the build, on a throw-away clone of this repository.

Nothing here writes to the real repository: each test works in a `git clone --no-local` under
tmp_path whose `origin` is a bare repository beside it, with its own git identity, HOME and
global config, and with pip's indexes switched off (everything comes from the `release` extra
installed with the `test` extra, so the tests run offline).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SEMANTIC_RELEASE = VENV_BIN / "semantic-release"

# The files that decide what a release does. Their working-tree state is laid over the clone
# (as one `chore:` commit, which bumps nothing), so the tests check the configuration being
# edited and not only the last commit.
RELEASE_INPUTS = ("pyproject.toml", "CHANGELOG.md", "README.md", "oci_upst_session_manager.py",
                  ".release")

# Variables that would make semantic-release or git act on something outside the clone:
# GitHub Actions outputs and tokens, another repository or identity, a global git config.
_FOREIGN_PREFIXES = ("GIT_", "GITHUB_", "GH_", "GITLAB_", "GITEA_", "BITBUCKET_", "PSR_")


@dataclass
class Clone:
    path: Path
    env: Dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), cwd=self.path, env=self.env, capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=timeout)
        if check:
            assert result.returncode == 0, (
                f"{' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def git(self, *args: str) -> str:
        return self.run("git", *args).stdout.strip()

    def commit(self, message: str) -> None:
        self.git("commit", "--quiet", "--allow-empty", "-m", message)

    def tags(self) -> List[str]:
        return sorted(self.git("tag", "--list").split())

    def semantic_release(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(str(SEMANTIC_RELEASE), *args, check=check)

    def dry_run_version(self) -> str:
        """`semantic-release --noop version`: the version it would release, changing nothing."""
        result = self.semantic_release("--noop", "version")
        return result.stdout.strip().splitlines()[0]


def _environment(home: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}
    env.update({
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        # The build command runs `python -m build`: this venv's python, with its pinned tools.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PIP_NO_INDEX": "1",
        "TERM": "dumb",
        "NO_COLOR": "1",
    })
    return env


def make_clone(base: Path) -> Clone:
    """A clone of REPO in base/woci, on branch main, with the working tree's release inputs."""
    assert SEMANTIC_RELEASE.exists(), (
        f"{SEMANTIC_RELEASE} is missing: install the test extra (`make test` does)")
    shallow = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--is-shallow-repository"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert shallow == "false", (
        "the release tests need the whole history (`git fetch --unshallow`; in GitHub Actions "
        "`fetch-depth: 0`)")
    home = base / "home"
    home.mkdir()
    env = _environment(home)
    path = base / "woci"
    subprocess.run(["git", "clone", "--quiet", "--no-local", str(REPO), str(path)], env=env,
                   check=True, capture_output=True, timeout=120)
    clone = Clone(path=path, env=env)
    clone.git("config", "user.name", "Release Test")
    clone.git("config", "user.email", "release-test@example.invalid")
    clone.git("config", "commit.gpgsign", "false")
    clone.git("config", "tag.gpgsign", "false")
    # A push, should anything ever try one, lands in tmp_path and never in REPO.
    origin = base / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(origin)], env=env, check=True)
    clone.git("remote", "set-url", "origin", str(origin))
    clone.git("checkout", "--quiet", "-B", "main")
    for name in RELEASE_INPUTS:
        source, target = REPO / name, path / name
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        elif source.exists():
            shutil.copy2(source, target)
    clone.git("add", "--all", "--", *RELEASE_INPUTS)
    if clone.run("git", "diff", "--cached", "--quiet", check=False).returncode:
        clone.commit("chore: the working tree's release configuration")
    return clone


def real_repo_state() -> str:
    """What a stray write to REPO would change: its tags (branches move under other worktrees)."""
    return subprocess.run(["git", "-C", str(REPO), "tag", "--list"], capture_output=True,
                          text=True, check=True).stdout


@pytest.fixture(scope="session")
def base_clone(tmp_path_factory) -> Clone:
    before = real_repo_state()
    clone = make_clone(tmp_path_factory.mktemp("release"))
    yield clone
    assert real_repo_state() == before, "a release test changed the real repository's tags"


@pytest.fixture
def clone(base_clone, tmp_path) -> Clone:
    """A private copy of the base clone for one test, so tests never see each other's commits."""
    path = tmp_path / "woci"
    shutil.copytree(base_clone.path, path, symlinks=True)
    home = tmp_path / "home"
    home.mkdir()
    return Clone(path=path, env=_environment(home))
