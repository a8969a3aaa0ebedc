"""What a release writes and builds, on a throw-away clone: `semantic-release version` with the
commit, tag, push and GitHub release switched off stamps the version, updates CHANGELOG.md and
runs the build command (sdist and wheel, `twine check`); the wheel, installed alone into a fresh
venv, answers `woci --version` with the version the dry run reported."""

import subprocess
import sys
import tarfile
import zipfile
from datetime import datetime, timezone
from email.parser import Parser

import pytest

from tests.release.conftest import make_clone

pytestmark = pytest.mark.release

UNRELEASED = "## [Unreleased]"


def _today() -> str:
    # The same clock semantic-release dates a release with.
    return datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d")


def _release_locally(clone):
    """`semantic-release version` up to the build, leaving out commit, tag, push and GitHub."""
    return clone.semantic_release("version", "--no-commit", "--no-tag", "--no-push",
                                  "--no-vcs-release")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A clone with one `fix:` commit more than the real repository, released locally."""
    clone = make_clone(tmp_path_factory.mktemp("build"))
    clone.commit("fix: a release is due")
    changelog_before = (clone.path / "CHANGELOG.md").read_text()
    version = clone.dry_run_version()
    days = {_today()}
    result = _release_locally(clone)
    days.add(_today())
    return clone, version, changelog_before, days, result


def test_build_command_makes_the_sdist_and_the_wheel(released):
    clone, version, _, _, result = released
    dist = sorted(p.name for p in (clone.path / "dist").iterdir())

    assert dist == [f"woci-{version}-py3-none-any.whl", f"woci-{version}.tar.gz"]
    assert "twine check" in result.stdout + result.stderr
    check = clone.run(sys.executable, "-m", "twine", "check", "--strict",
                      *(f"dist/{name}" for name in dist))
    assert check.stdout.count("PASSED") == 2


def test_the_dists_carry_the_version_and_the_dependencies(released):
    clone, version, _, _, _ = released
    with zipfile.ZipFile(clone.path / "dist" / f"woci-{version}-py3-none-any.whl") as wheel:
        metadata = Parser().parsestr(
            wheel.read(f"woci-{version}.dist-info/METADATA").decode())
        entry_points = wheel.read(f"woci-{version}.dist-info/entry_points.txt").decode()
        module = wheel.read("oci_upst_session_manager.py").decode()
    with tarfile.open(clone.path / "dist" / f"woci-{version}.tar.gz") as sdist:
        pkg_info = Parser().parsestr(
            sdist.extractfile(f"woci-{version}/PKG-INFO").read().decode())
        sdist_module = sdist.extractfile(f"woci-{version}/oci_upst_session_manager.py").read()

    assert metadata["Name"] == "woci"
    assert metadata["Version"] == pkg_info["Version"] == version
    assert metadata["Requires-Python"] == ">=3.9"
    assert metadata["License-Expression"] == "UPL-1.0"
    runtime = sorted(r.split(">=")[0] for r in metadata.get_all("Requires-Dist") if "extra ==" not in r)
    assert runtime == ["PyJWT", "cryptography", "requests"]
    assert "woci = oci_upst_session_manager:entry_point" in entry_points
    assert "oci-upst-session-manager = oci_upst_session_manager:entry_point" in entry_points
    assert f'__version__ = "{version}"' in module
    assert f'__version__ = "{version}"'.encode() in sdist_module


def test_the_release_changes_only_the_version_line_and_the_changelog(released):
    clone, version, _, _, _ = released
    changed = sorted(line[3:] for line in clone.git("status", "--porcelain").splitlines())

    assert changed == ["CHANGELOG.md", "oci_upst_session_manager.py"]
    diff = clone.git("diff", "--cached", "--unified=0", "--", "oci_upst_session_manager.py")
    lines = [line for line in diff.splitlines()
             if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert len(lines) == 2 and lines[0].startswith('-__version__ = "'), diff
    assert lines[1] == f'+__version__ = "{version}"'


def test_the_unreleased_section_becomes_the_release(released):
    """Keep a Changelog: the Unreleased lines move under `## [X.Y.Z] - date`, a new empty
    Unreleased section opens above, and the rest of the file is unchanged."""
    clone, version, before, days, _ = released
    after = (clone.path / "CHANGELOG.md").read_text()
    head, rest = before.split(UNRELEASED, 1)
    notes, older = (rest.split("\n## [", 1) + [""])[:2]
    notes = notes.strip() or "### Fixed\n\n- a release is due"
    older = f"\n## [{older}" if older else ""

    assert after in {f"{head}{UNRELEASED}\n\n## [{version}] - {day}\n\n{notes}\n{older}"
                     for day in days}


def test_an_empty_unreleased_section_lists_the_commits(clone):
    """No lines under Unreleased: the release's feat, fix and perf commits and its breaking
    changes become the notes, so that no release goes out without any."""
    changelog = clone.path / "CHANGELOG.md"
    changelog.write_text("# Changelog\n\n## [Unreleased]\n\n## [1.2.3] - 2026-01-02\n\n"
                         "### Added\n\n- Everything.\n")
    clone.git("add", "CHANGELOG.md")
    clone.commit("chore: release 1.2.3")
    for tag in clone.tags():
        clone.git("tag", "--delete", tag)
    clone.git("tag", "--annotate", "v1.2.3", "--message", "v1.2.3")
    for message in ("feat(daemon): a --daemon-log option", "fix: renew a token that ends in a newline",
                    "docs: a word", "perf: a faster start",
                    "feat!: rename the INI key\n\nBREAKING CHANGE: client_id is oci_client_id now."):
        clone.commit(message)
    day = _today()

    clone.semantic_release("version", "--no-commit", "--no-tag", "--no-push", "--no-vcs-release",
                           "--skip-build")

    text = changelog.read_text()
    assert text in {
        "# Changelog\n\n## [Unreleased]\n\n"
        f"## [2.0.0] - {d}\n\n"
        "### Added\n\n"
        "- rename the INI key\n"
        "- **daemon**: a --daemon-log option\n\n"
        "### Changed\n\n"
        "- BREAKING: client_id is oci_client_id now.\n"
        "- a faster start\n\n"
        "### Fixed\n\n"
        "- renew a token that ends in a newline\n\n"
        "## [1.2.3] - 2026-01-02\n\n### Added\n\n- Everything.\n" for d in {day, _today()}}
    # Rendering again for a version that has its section already changes nothing.
    clone.semantic_release("changelog")
    assert changelog.read_text() == text


def test_the_wheel_alone_in_a_fresh_venv_prints_the_version(released, tmp_path):
    clone, version, _, _, _ = released
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = clone.path / "dist" / f"woci-{version}-py3-none-any.whl"
    # --no-deps: `woci --version` imports nothing outside the standard library, and pip stays
    # offline (the dependencies are checked in the wheel's metadata above).
    clone.run(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
              "--no-deps", str(wheel))

    for script in ("woci", "oci-upst-session-manager"):
        result = subprocess.run([str(venv / "bin" / script), "--version"], capture_output=True,
                                text=True, timeout=30, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"woci {version}\n"
