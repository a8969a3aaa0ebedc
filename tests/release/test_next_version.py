"""semantic-release's dry run (`semantic-release --noop version`) computes the next version
from the Conventional Commits since the last `v*` tag, and changes nothing while doing it."""

import pytest

pytestmark = pytest.mark.release


def _only_tag(clone, version: str) -> None:
    """The clone as if `version` were its only release so far (an annotated tag on HEAD)."""
    for tag in clone.tags():
        clone.git("tag", "--delete", tag)
    clone.git("tag", "--annotate", f"v{version}", "--message", f"v{version}")


def _assert_unchanged(clone, head: str, tags) -> None:
    assert clone.git("status", "--porcelain") == ""
    assert clone.git("rev-parse", "HEAD") == head
    assert clone.tags() == tags


def test_first_release_is_1_0_0(clone):
    """No `v*` tag yet, as in the real repository before its first release: the history's feat
    and fix commits do not make it 0.x, the first release is 1.0.0 (allow_zero_version = false)."""
    for tag in clone.tags():
        clone.git("tag", "--delete", tag)
    head = clone.git("rev-parse", "HEAD")

    assert clone.dry_run_version() == "1.0.0"
    _assert_unchanged(clone, head, [])


@pytest.mark.parametrize("messages, expected", [
    (["fix: renew a token that ends in a newline"], "1.2.4"),
    (["perf: skip http.server on the fast path"], "1.2.4"),
    (["feat: a --quiet option"], "1.3.0"),
    (["feat(daemon): a --daemon-log option"], "1.3.0"),
    (["fix: one", "feat: two", "docs: three"], "1.3.0"),
    (["feat!: rename the INI key client_id"], "2.0.0"),
    (["fix(cli)!: usage errors exit 64"], "2.0.0"),
    (["fix: drop --legacy\n\nThe option did nothing since 1.1.\n\nBREAKING CHANGE: --legacy is gone."],
     "2.0.0"),
    (["feat: one", "fix: two\n\nBREAKING CHANGE: stdout is JSON now."], "2.0.0"),
], ids=["fix", "perf", "feat", "feat-scope", "highest-wins", "bang", "bang-scope",
        "breaking-footer", "breaking-footer-later"])
def test_next_version_after_a_release(clone, messages, expected):
    """fix and perf bump the patch, feat the minor, `!` or a BREAKING CHANGE footer the major."""
    _only_tag(clone, "1.2.3")
    for message in messages:
        clone.commit(message)
    head = clone.git("rev-parse", "HEAD")

    assert clone.dry_run_version() == expected
    _assert_unchanged(clone, head, ["v1.2.3"])


def test_no_release_without_fix_feat_or_breaking_change(clone):
    """docs, test, ci, build, chore, refactor and style commits alone release nothing."""
    _only_tag(clone, "1.2.3")
    for kind in ("docs", "test", "ci", "build", "chore", "refactor", "style"):
        clone.commit(f"{kind}: something that is not a release")
    head = clone.git("rev-parse", "HEAD")

    result = clone.semantic_release("--noop", "version")

    assert result.stdout.strip().splitlines()[0] == "1.2.3"
    assert "No release will be made" in result.stderr
    _assert_unchanged(clone, head, ["v1.2.3"])


def test_floating_tags_are_not_versions(clone):
    """`latest` and `v1`, moved by the release workflow, are not mistaken for releases."""
    _only_tag(clone, "1.2.3")
    clone.git("tag", "latest")
    clone.git("tag", "v1")
    clone.commit("fix: one more")

    assert clone.dry_run_version() == "1.2.4"
