"""The benchmark config declared once (issue 21, deliverable 6): the validated model is what the runner reads, each
split builds its own image source, every default lives in one place and every key has a description."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from image_folders import fashion_folder, folder_config
from tagood.bench import runner, schema
from tagood.bench.config import CLASSIC, builtin, load_config
from tagood.bench.sources import SPLIT_TYPES, FolderSplit, ListSplit, SplitError, build_source, parse_split
from tagood.errors import ConfigError


def _models() -> list[type[BaseModel]]:
    return [schema.BenchConfig, schema.BenchOptions, schema.PseudoOOD, *SPLIT_TYPES.values(),
            *dict.fromkeys(schema.BACKBONES.values())]


def test_every_key_has_a_one_line_description():
    for m in _models():
        for key, f in m.model_fields.items():
            assert f.description and "\n" not in f.description, f"{m.__name__}.{key} has no one-line description"


def test_load_config_returns_the_validated_model_with_its_defaults(tmp_path):
    cfg = load_config(folder_config(tmp_path / "b.toml", ["msp", "knn[k=3]"]))
    assert type(cfg) is schema.BenchConfig and type(cfg.train) is FolderSplit
    assert cfg.name == "b" and cfg.base_dir == tmp_path.resolve() and cfg.seed == 0 and cfg.batch_size == 64
    assert cfg.pseudo_ood == schema.PseudoOOD() and cfg.pseudo_ood.n == 600  # the one pseudo-OOD default
    assert cfg.backbone == schema.EfficientNetSpec() and cfg.backbone_spec() == {"name": "efficientnet-lite0"}
    assert cfg.options == schema.BenchOptions() and runner.stream_above_gb(cfg) == 8.0
    no_methods = tmp_path / "c.toml"
    no_methods.write_text("\n".join((tmp_path / "b.toml").read_text().splitlines()[1:]))
    assert load_config(no_methods).methods == CLASSIC


def test_builtin_configs_round_trip_through_a_file(tmp_path):
    cfg = builtin("fashion", quick=True)
    assert cfg.benchmark == "fashion" and cfg.quick and cfg.pseudo_ood.n == 120
    p = tmp_path / "f.toml"
    p.write_text('benchmark = "fashion"\nquick = true\nseed = 3\n')
    again = load_config(p)
    assert again.seed == 3 and again.base_dir == tmp_path.resolve()
    assert again.model_copy(update={"seed": 0}).to_json() == cfg.to_json()


def test_each_split_builds_its_own_source(tmp_path):
    fashion_folder(tmp_path / "imgs", {"trouser": 1, "bag": 8}, 3)
    (tmp_path / "list.txt").write_text("imgs/trouser/000.png 0\nimgs/bag/001.png 1\n")
    folder = parse_split({"type": "folder", "root": "imgs", "per_class": 2})
    assert type(folder) is FolderSplit and len(folder.source(tmp_path, seed=0, name="x")) == 4
    listed = parse_split({"type": "list", "file": "list.txt"})
    assert type(listed) is ListSplit and [s.label for s in listed.source(tmp_path).samples] == [0, 1]  # root: the list's folder
    ood = build_source({"type": "folder", "root": "imgs", "ood_labels": True}, tmp_path, name="o")
    assert ood.name == "o" and {s.label for s in ood.samples} == {-1}
    with pytest.raises(SplitError, match=r"^split 'o': unknown key 'rot' \(did you mean 'root'\?\)"):
        build_source({"type": "folder", "rot": "imgs"}, tmp_path, name="o")
    with pytest.raises(ConfigError, match="unknown split type"):
        parse_split({"type": "foldr", "root": "imgs"})


def test_assignments_are_validated():
    cfg = builtin("fashion", quick=True)
    cfg.backbone = {"name": "efficientnet-lite2"}
    assert type(cfg.backbone) is schema.EfficientNetSpec and cfg.backbone_spec() == {"name": "efficientnet-lite2"}
    cfg.options.stream_above_gb = -1
    assert cfg.options.stream_above_gb == "never" and runner.stream_above_gb(cfg) is None
    cfg.options.stream_above_gb = 0
    assert runner.stream_above_gb(cfg) == 0.0
    for bad in (lambda: setattr(cfg.options, "stream_mode", "both"), lambda: setattr(cfg, "methods", ["knn[k=0]"]),
                lambda: setattr(cfg, "ood", {"x": {"type": "mnist5k", "n": 0}})):
        with pytest.raises(ValidationError):
            bad()
    cfg.pseudo_ood = schema.PseudoOOD(of="mnist")
    with pytest.raises(ValidationError, match="pseudo_ood.of must name a split"):
        cfg.ood = {"digits": cfg.ood["digits"]}


def test_config_in_python_takes_base_dir(tmp_path):
    cfg = schema.BenchConfig(name="py", train={"type": "folder", "root": "tr"}, test={"type": "folder", "root": "te"},
                             ood={"o": {"type": "digits"}}, base_dir=tmp_path, pseudo_ood=None)
    assert cfg.base_dir == tmp_path and cfg.pseudo_ood is None and cfg.to_json()["pseudo_ood"] is None
    assert list(cfg.splits()) == ["train", "test", "o"]
    assert "base_dir" not in cfg.to_json() and Path(cfg.to_json()["train"]["root"]) == Path("tr")
