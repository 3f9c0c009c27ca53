"""Bad input ends with one clear line and exit status 2, and never damages earlier results."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dfcil.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMOKE = str(CONFIGS / "smoke.yaml")
QUIET = ["--set", "runtime.progress=false"]


def fails(args: list[str], capsys, needle: str) -> None:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("dfcil: error: "), err
    assert needle in err, err


def test_methods_lists_baselines(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("finetune", "lwf", "joint", "lwfmc", "ewc", "mas", "pass", "dgr"):
        assert any(line.startswith(name) and len(line.split()) > 2 for line in out.splitlines())
    from dfcil.methods import METHODS

    # method facts live on the method: only the upper bound and DGR (whose generator learned from the
    # old tasks' real images: the memory a model file does not carry) need the old data
    assert [name for name, cls in METHODS.items() if cls.needs_old_data] == ["joint", "dgr"]
    assert [name for name, cls in METHODS.items() if cls.upper_bound] == ["joint"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", SMOKE, "--set", "train.epochz=2"], "unknown config key 'train.epochz'"),
        (["run", SMOKE, "--set", "train.batch_size=1"], "train.batch_size: must be >= 2"),
        (["run", SMOKE, "--set", "scenario.num_tasks=3"], "cannot be split into 3 equal tasks"),
        (["run", SMOKE, "--set", "runtime.checkpoint_every_s=-1"], "runtime.checkpoint_every_s: must be a number"),
        (["run", "/nonexistent/config.yaml"], "cannot read config"),
        (["run"], "give a CONFIG file or --resume"),
        (["run", "--resume", "/nonexistent/run"], "is not a dfcil run directory"),
    ],
)
def test_config_errors(args, needle, capsys, tmp_path):
    fails(args + ["-o", str(tmp_path / "out")] if "--resume" not in args else args, capsys, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"# caf\xe9 au lait\nextends: SMOKE\n", "not a UTF-8 text file (byte 5: 0xe9)"),  # a Latin-1 comment
        (b"\x95\x00\x13safetensors", "not a UTF-8 text file"),  # a model given as the config
        (b"\x00\x00", "a binary file"),
        (b"# only a comment\n\n", "the config is empty"),
        (b"", "the config is empty"),
        (b"extends: SMOKE\ntrain:\n  lr: .inf\n", "train.lr: expected a finite number, got inf"),
    ],
)
def test_unusable_config_files_are_refused_in_one_line(content, needle, capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_bytes(content.replace(b"SMOKE", SMOKE.encode()))
    fails(["run", str(config), "-o", str(tmp_path / "out"), *QUIET], capsys, needle)
    fails(["run", SMOKE, "--set", "train.lr=.nan", "-o", str(tmp_path / "out"), *QUIET], capsys, "finite")
    assert not (tmp_path / "out").exists()


def test_unusable_suite_files_are_refused_in_one_line(capsys, tmp_path):
    suite = tmp_path / "suite.yaml"
    for content, needle in ((b"name: x  # \xe9\n", "not a UTF-8 text file (byte 11: 0xe9)"),
                            (b"# nothing yet\n", "the suite is empty")):
        suite.write_bytes(content)
        fails(["suite", str(suite), "-o", str(tmp_path / "out"), "--dry-run"], capsys, needle)
    assert not (tmp_path / "out").exists()


def test_missing_data_root(capsys, tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    monkeypatch.delenv("DFCIL_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    requested = []

    def offline(url, timeout=None):
        requested.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    # no data root: CIFAR-100 is fetched into the default data directory; offline, it says what to do
    fails(["run", SMOKE, "-o", str(tmp_path / "out"), *QUIET], capsys,
          "could not download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")
    assert requested == ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"]
    fails(["run", SMOKE, "-o", str(tmp_path / "out"), *QUIET], capsys, f"into {tmp_path / 'xdg' / 'dfcil'}")
    fails(["run", SMOKE, "-o", str(tmp_path / "out"), *QUIET], capsys, "or set DFCIL_DATA")
    assert list((tmp_path / "xdg" / "dfcil").iterdir()) == []  # nothing half-downloaded
    fails(["run", SMOKE, "-o", str(tmp_path / "out"), "--set", f"data.root={tmp_path}", *QUIET], capsys, "cifar")
    assert not (tmp_path / "out").exists()


def test_run_directory_protection(cifar, capsys, tmp_path):
    run_dir = tmp_path / "run"
    small = ["--set", "data.train_per_class=40"]
    assert main(["run", SMOKE, "-o", str(run_dir), *QUIET, *small]) == 0
    capsys.readouterr()
    before = (run_dir / "metrics.json").read_bytes()

    fails(["run", SMOKE, "-o", str(run_dir), *QUIET], capsys, "already holds a run")
    fails(["run", "--resume", str(run_dir), "--set", "train.lr=0.2"], capsys, "train.lr: 0.05 in the run directory, 0.2 requested")
    fails(["run", SMOKE, "--resume", str(run_dir), "--set", "seed=3", *small], capsys, "seed: 0 in the run directory, 3 requested")
    assert (run_dir / "metrics.json").read_bytes() == before

    # a checkpoint copied in from another run is refused
    other = tmp_path / "other"
    assert main(["run", SMOKE, "-o", str(other), "--set", "seed=1", *QUIET, *small]) == 0
    capsys.readouterr()
    (run_dir / "metrics.json").unlink()
    shutil.copy(other / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.pt")
    fails(["run", "--resume", str(run_dir)], capsys, "(seed: 1 in the checkpoint, 0 in the config)")
    # config.yaml edited after the run started: the message names the key
    (other / "metrics.json").unlink()
    edited = (other / "config.yaml").read_text().replace("lr: 0.05", "lr: 0.07")
    assert edited != (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(edited)
    fails(["run", "--resume", str(other)], capsys, "(train.lr: 0.05 in the checkpoint, 0.07 in the config)")

    # a truncated checkpoint is reported, not trained over
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"\x80\x02garbage")
    fails(["run", "--resume", str(run_dir)], capsys, "cannot read checkpoint")
    fails(["run", "--resume", str(run_dir)], capsys, f"--first-task-from {run_dir})")  # what to do instead


def test_corrupt_image_is_named(capsys, tmp_path, monkeypatch):
    from PIL import Image

    for split in ("train", "test"):
        for name in ("a", "b"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "ok.png")
    (tmp_path / "data" / "train" / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    monkeypatch.setenv("DFCIL_CACHE", str(tmp_path / "cache"))
    args = ["run", SMOKE, "-o", str(tmp_path / "out"), "--set", f"data.root={tmp_path / 'data'}",
            "--set", "data.dataset=imagefolder", "--set", "data.image_size=32", "--set", "scenario.subset=2", *QUIET]
    fails(args, capsys, "broken.jpg")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_names_the_real_run_directory_to_resume(cifar, capsys, tmp_path, monkeypatch):
    from dfcil.engine.trainer import Trainer

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", interrupted)
    run_dir = tmp_path / "my-run"
    assert main(["run", SMOKE, "-o", str(run_dir), *QUIET]) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"[dfcil] run directory {run_dir}"  # said when the run starts
    assert err[-1] == f"dfcil: interrupted; continue with `dfcil run --resume {run_dir}`"
