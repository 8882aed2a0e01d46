"""Names from a suite never steer where files go or what the terminal shows; a report replaces
what the previous report of its folder wrote, and only that; a committed report needs --force."""

from __future__ import annotations

import json
import subprocess

import pytest

from harness.cli import main
from harness.report_folder import MANIFEST

TINY = """suite: {name}
defaults: {{optimizer: adam, lr: 4.0e-3, batch_size: 512, epochs: 2, threads: 1}}
grid:
  method: [{method}]
  dataset: [ib12]
  architecture: [mi_mlp]
"""


def suite_text(name: str = "tiny", method: str = "std") -> str:
    return TINY.format(name=json.dumps(name), method=method)


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", ["../../somewhere", "/tmp/abs", "a/b", ".hidden", "..",
                                  "red\x1b[31m", "evil\u202etxt.exe", "tab\tname", "x" * 200])
def test_unsafe_suite_names_are_refused(write_suite, tmp_path, capsys, name):
    suite = write_suite(suite_text(name))
    before = files_under(tmp_path)
    for command in (["validate", str(suite)], ["report", str(suite)], ["run", str(suite)]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "suite" in err and "e.g. `suite: " in err
        assert err.isascii() and "\x1b" not in err and "\t" not in err.rstrip("\n")
    assert files_under(tmp_path) == before  # nothing written anywhere


@pytest.mark.parametrize("where", ["label", "stage", "setting"])
def test_control_characters_in_names_are_refused(write_suite, capsys, where):
    text = {"label": suite_text(method='{name: std, label: "a\\u202eb"}'),
            "stage": suite_text() + 'stages:\n  "A\\x1b[2J": {}\n',
            "setting": suite_text() + 'settings:\n  "s\\u2066": {}\n'}[where]
    assert main(["validate", str(write_suite(text))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "control or invisible" in err and err.isascii()


def test_report_replaces_only_what_the_previous_report_wrote(write_suite, tmp_path, capsys):
    suite = write_suite(suite_text())
    out = tmp_path / "out"
    assert main(["report", str(suite), "--out", str(out)]) == 0
    first = files_under(out)
    assert "README.md" in first and MANIFEST in first
    # a stale figure the previous report wrote, and a file a person put there
    (out / "figures").mkdir(exist_ok=True)
    (out / "figures" / "renamed-setting-final.png").write_bytes(b"old")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"].append("figures/renamed-setting-final.png")
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / "notes.txt").write_text("mine")
    assert main(["report", str(suite), "--out", str(out)]) == 0
    after = files_under(out)
    assert "figures/renamed-setting-final.png" not in after
    assert "notes.txt" in after and (out / "notes.txt").read_text() == "mine"
    assert set(after) == set(first) | {"notes.txt"}


def test_report_written_before_manifests_loses_its_stale_files(write_suite, tmp_path):
    suite = write_suite(suite_text())
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "old-final.png").write_bytes(b"old")
    (out / "artifacts" / "x").mkdir(parents=True)
    (out / "artifacts" / "x" / "img.png").write_bytes(b"old")
    (out / "keep.md").write_text("mine")
    assert main(["report", str(suite), "--out", str(out)]) == 0
    after = files_under(out)
    assert "figures/old-final.png" not in after and not (out / "artifacts").exists()
    assert "keep.md" in after


def test_manifest_cannot_delete_outside_the_folder(write_suite, tmp_path):
    suite = write_suite(suite_text())
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / MANIFEST).write_text(json.dumps({"files": ["../victim.txt", str(victim)]}))
    assert main(["report", str(suite), "--out", str(out)]) == 0
    assert victim.read_text() == "keep"


def test_committed_report_needs_force(write_suite, tmp_path, capsys):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(git[:5] + ["init", "-q", str(tmp_path)], check=True)
    suite = write_suite(suite_text())
    assert main(["report", str(suite)]) == 0  # the default folder: reports/tiny
    subprocess.run(git + ["add", "reports"], check=True)
    subprocess.run(git + ["commit", "-qm", "report"], check=True)
    readme = tmp_path / "reports" / "tiny" / "README.md"
    before = readme.read_text()
    capsys.readouterr()
    assert main(["report", str(suite)]) == 2
    err = capsys.readouterr().err
    assert "committed to git" in err and "--force" in err and err.count("\n") == 1
    assert readme.read_text() == before
    assert main(["report", str(suite), "--force"]) == 0
