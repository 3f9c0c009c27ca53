"""Config loading: extends, --set overrides, strict keys, types and ranges; resolving: method
options and split checks."""

import json
from pathlib import Path

import pytest

from dfcil.config import apply_overrides, fingerprint, load_config, load_yaml_tree, recorded_network_revision
from dfcil.errors import ConfigError
from dfcil.experiment import load_experiment, parse_experiment
from dfcil.yamlio import load_file

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_configs_are_valid():
    for path in sorted(CONFIGS.rglob("*.yaml")):
        config = load_experiment(path).config
        assert config.train.epochs >= 1, path


def test_extends_and_overrides():
    config = load_config(CONFIGS / "cifar100" / "b0_n5.yaml", ["method.name=lwf", "train.epochs=3", "method.temperature=4"])
    assert config.scenario.num_tasks == 5
    assert config.train.epochs == 3
    assert config.train.milestones == [80, 120]
    assert config.method == {"name": "lwf", "temperature": 4}


def test_switching_method_drops_other_options():
    data = apply_overrides({"method": {"name": "lwf", "temperature": 3.0}}, ["method.name=finetune"])
    assert data["method"] == {"name": "finetune"}
    parse_experiment(data)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epoch=3"], "unknown config key 'train.epoch'"),
        (["bogus=1"], "unknown config key 'bogus'"),
        (["train.epochs=abc"], "train.epochs: expected an integer"),
        (["train.lr=-0.1"], "train.lr: must be > 0"),
        (["train.precision=fp16"], "train.precision: expected one of"),
        (["train.milestones=[120, 80]"], "train.milestones"),
        (["method.name=nope"], "unknown method 'nope'"),
        (["method.name=lwf", "method.temperature=0"], "method.temperature: must be > 0"),
        (["method.name=lwf", "method.tempreature=2"], "unknown config key 'method.tempreature'"),
        (["scenario.num_tasks=7"], "cannot be split into 7 equal tasks"),
        (["scenario.num_tasks=101"], "101 tasks for only 100 classes"),
        (["scenario.base_classes=50", "scenario.num_tasks=4"], "cannot be split into 3 equal tasks"),
        (["scenario.base_classes=100", "scenario.num_tasks=2"], "leaves no class"),
        (["scenario.subset=200"], "needs 200 classes but the dataset has 100"),
        (["runtime.device=tpu"], "runtime.device"),
        (["runtime.tensorboard=maybe"], "runtime.tensorboard: expected"),
        (["runtime.tensorboard.dir=x"], "runtime.tensorboard"),
        (["data.dataset=mnist"], "data.dataset: expected one of"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_experiment(CONFIGS / "cifar100" / "base.yaml", overrides)


def test_set_requires_key_value():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["train.epochs"])


def test_fingerprint_ignores_runtime_only():
    base = load_config(CONFIGS / "smoke.yaml")
    assert fingerprint(base) == fingerprint(load_config(CONFIGS / "smoke.yaml", ["runtime.progress=false"]))
    assert fingerprint(base) == fingerprint(load_config(CONFIGS / "smoke.yaml", ["runtime.tensorboard=true"]))
    assert fingerprint(base) != fingerprint(load_config(CONFIGS / "smoke.yaml", ["seed=1"]))


def test_extends_cycle_and_bad_yaml(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml_tree(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml_tree(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml_tree(tmp_path / "missing.yaml")


def test_numbers_as_people_write_them(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-3 as a string; configs, suites and --set read it as a number."""
    from dfcil.yamlio import safe_load

    assert safe_load("a: 1e-3\nb: 1E5\nc: -2.5e+2\nd: 1.0e-3\ne: 10\nf: 0x1F\ng: 1e\nh: v1e5") == {
        "a": 0.001, "b": 100000.0, "c": -250.0, "d": 0.001, "e": 10, "f": 31, "g": "1e", "h": "v1e5"}
    assert isinstance(safe_load("10"), int)
    (tmp_path / "c.yaml").write_text("extends: " + str(CONFIGS / "smoke.yaml") + "\ntrain:\n  lr: 1e-3\n")
    assert load_config(tmp_path / "c.yaml").train.lr == pytest.approx(1e-3)
    assert load_config(CONFIGS / "smoke.yaml", ["train.lr=2e-2"]).train.lr == pytest.approx(0.02)


def test_keys_added_later_leave_the_fingerprints_of_earlier_runs_unchanged():
    # the fingerprints these configs had before train.optimizer existed (runs made then resume,
    # are adopted by suites and share their first task by them)
    before = {"mini.yaml": "f26fbd8a0443a807", "cifar100/b0_n5.yaml": "c421e2453de39364",
              "smoke.yaml": "6f4b76ef17e15daf"}
    for name, expected in before.items():
        config = load_config(CONFIGS / name)
        assert config.train.optimizer == "sgd" and fingerprint(config) == expected, name
        explicit = parse_experiment(apply_overrides(load_yaml_tree(CONFIGS / name), ["train.optimizer=sgd"])).config
        assert fingerprint(explicit) == expected
        adam = parse_experiment(apply_overrides(load_yaml_tree(CONFIGS / name), ["train.optimizer=adam"])).config
        assert fingerprint(adam) != expected


def test_recorded_network_revision_reads_the_revision_a_committed_run_was_trained_with():
    # two committed mini runs with the same network key (resnet32/rdfcil): one made before its
    # forward lost the ReLUs after the residual additions (revision 1), one after (revision 2)
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    for run, expected in ((results / "mini" / "rdfcil-s0", 1),
                          (results / "suites" / "mini-rev2" / "method-rdfcil__seed-0", 2)):
        written = load_file(run / "config.yaml")
        recorded = json.loads((run / "run.json").read_text())["fingerprint"]
        assert recorded_network_revision(written, recorded) == expected, run
        assert load_config(run / "config.yaml").model.network_revision == 2  # what the config builds today
        written["train"]["lr"] = written["train"]["lr"] / 2  # an edited config matches no revision
        assert recorded_network_revision(written, recorded) is None
