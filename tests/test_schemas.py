"""Schemas at the edge (issue 12, deliverable 5): detector options, TOML benchmark configs and saved
detector files are checked against one declaration each, before any work, with messages that name the
file / option and never quote a file's contents."""

from __future__ import annotations

import inspect
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from tagood import detectors
from tagood.bench.config import BUILTIN, ConfigError, builtin, load_config
from tagood.bench.schema import BenchConfig, validate_config
from tagood.core.validation import PosInt, SchemaError
from tagood.detectors.options import DetectorOptions, OptionError, check_detector_options
from tagood.pipeline.meta import validate_detector_meta

SECRET = "hunter2-secret-value"


# -- detector options ---------------------------------------------------------------------------------
def test_every_detector_declares_its_options_once():
    """Each registered detector's options are the fields of its ``Options`` model, and only there: no ``__init__``
    takes a named option (the base refuses to define such a class), and every option has a one-line description."""
    for name in detectors.available():
        cls = detectors.get_class(name)
        assert issubclass(cls.Options, DetectorOptions), name
        for klass in cls.__mro__:
            init = vars(klass).get("__init__")
            if init is not None and klass.__module__.startswith("tagood.detectors."):
                params = inspect.signature(init).parameters.values()
                named = [p for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]
                assert not named, f"{name}: {klass.__name__}.__init__ takes options {named}; declare them in Options"
        for f, info in cls.Options.model_fields.items():
            assert info.description, f"{name}: option {f} has no description"


def test_an_init_with_named_options_is_refused_when_the_class_is_defined():
    from tagood.detectors.base import Detector

    with pytest.raises(TypeError, match="declare options once"):
        class Twice(Detector):  # noqa: F841 - defining it is the test
            def __init__(self, width: int = 3) -> None:
                super().__init__(width=width)

            def _score(self, data):  # pragma: no cover - never scored
                return np.zeros(len(data))


def test_literal_choices_match_the_detectors_constants():
    from typing import get_args

    from tagood.detectors.ash import VARIANTS
    from tagood.detectors.tagood.config import PRESETS
    from tagood.detectors.tagood.scores import SCORES
    from tagood.detectors.tagood.tagbase import NO_TAG_RULES
    from tagood.detectors.tagood.vocabulary import VOCAB_RULES
    from tagood.detectors.vlm.adaneg import PROXIES

    def choices(name, field):
        return set(get_args(detectors.get_class(name).Options.model_fields[field].annotation)) - {type(None)}

    assert choices("tagood", "score") == set(SCORES)
    assert choices("tagood", "preset") == set(PRESETS)
    assert choices("cs", "no_tag") == set(NO_TAG_RULES)
    assert choices("tagscore", "vocab") == {"auto", *VOCAB_RULES}
    assert choices("adaneg", "proxies") == set(PROXIES)
    assert choices("ash", "variant") == set(VARIANTS)


@pytest.mark.parametrize("spec,needle", [
    ("knn[k=0]", "option k is a number (default 50), got 0: input should be greater than or equal to 1"),
    ("knn[k=2.7]", "option k is a number (default 50), got 2.7: input should be a valid integer"),
    ("knn[k=true]", "true/false is not a number"),
    ("knn[alpha=0]", "option alpha"),
    ("react[percentile=150]", "option percentile is a number (default 90.0), got 150: input should be less than or equal to 100"),
    ("ash[percentile=100]", "option percentile is a number (default 90.0), got 100: input should be less than 100"),
    ("tagood[tau=nan]", "option tau is a number (default 0.5), got nan: must be a finite number"),
    ("cs[tau=inf]", "must be a finite number"),
    ("tagood[epochs=-2]", "option epochs is a number (default 15), got -2"),
    ("krnft[epochs=-2]", "detector 'krnft': option epochs is a number (default 10), got -2"),
    ("locoop[epochs=-1]", "detector 'locoop': option epochs"),
    ("tagood[lr=0]", "option lr"),
    ("energy[temperature=0]", "option temperature"),
    ("odin[epsilon=-0.1]", "option epsilon"),
    ("lhact[low_percentile=90,high_percentile=10]", "low_percentile must be below high_percentile"),
    ("tagood[dim=30,heads=8]", "dim must be a multiple of heads"),
    ("cs[no_tag=maybe]", "input should be 'auto', 'ood' or 'fallback'"),
    ("tagood[score=cosin]", "input should be 'cosine', 'chunk', 'euclid' or 'kl'"),
    ("neglabel[eta=1.5]", "option eta"),
    ("adaneg[memleng=0]", "option memleng"),
])
def test_bad_option_values_are_refused_at_create(spec, needle):
    with pytest.raises(OptionError) as e:
        detectors.create(spec)
    assert needle in str(e.value)
    assert str(e.value).startswith(("detector '", "unknown"))


@pytest.mark.parametrize("spec,needle", [
    ("tagood[epoch=3]", "has no option epoch (did you mean 'epochs'?)"),
    ("knn[kk=3]", "has no option kk (did you mean 'k'?)"),
    ("react[percentil=95]", "has no option percentil (did you mean 'percentile'?)"),
    ("mcm[foo=1]", "detector 'mcm' has no option foo; its options: template, templates, tau"),
    ("msp[k=1]", "detector 'msp' has no option k; its options: none"),
])
def test_unknown_options_get_a_suggestion(spec, needle):
    with pytest.raises(OptionError, match="unknown .* options") as e:
        detectors.create(spec)
    assert needle in str(e.value)


def test_unknown_detector_gets_a_suggestion():
    with pytest.raises(KeyError, match=r"unknown detector 'knnn' \(did you mean 'knn'\?\)"):
        detectors.create("knnn[k=3]")


def test_valid_options_pass_in_their_declared_type():
    det = detectors.create("knn[k=2.0]")
    assert det.options.k == 2 and isinstance(det.options.k, int) and isinstance(det.hparams["k"], int)
    assert detectors.create("knn", k=np.int64(7)).options.k == 7
    assert detectors.create("react[percentile=100]").hparams["percentile"] == 100
    assert detectors.create("krnft[epochs=0]").options.epochs == 0  # untrained KR-NFT (README's trained-vs-untrained rows)
    assert detectors.create("csp[max_sim=1.01]").options.max_sim == 1.01  # above 1 lifts CSP's near-duplicate cut
    assert detectors.create("tagood[epochs=3.0,per_class=auto]").options.epochs == 3
    assert detectors.create("odin", pixel_std=(0.2, 0.3, 0.25)).hparams["pixel_std"] == (0.2, 0.3, 0.25)
    assert detectors.create("cs[tag_threshold=null]").options.tag_threshold is None
    with pytest.raises(OptionError, match="pixel_std"):
        detectors.create("odin", pixel_std=[0.2, -1.0, 0.3])


@settings(max_examples=60, deadline=None)
@given(k=st.integers(-5, 10**6))
def test_knn_k_accepted_iff_positive(k):
    cls = detectors.get_class("knn")
    if k >= 1:
        assert check_detector_options("knn", cls, {"k": k}) == {"k": k}
    else:
        with pytest.raises(OptionError, match="option k"):
            check_detector_options("knn", cls, {"k": k})


@settings(max_examples=80, deadline=None)
@given(p=st.floats(allow_nan=True, allow_infinity=True))
def test_react_and_ash_percentile_ranges(p):
    ok_react = math.isfinite(p) and 0 < p <= 100
    ok_ash = math.isfinite(p) and 0 <= p < 100
    for name, ok in (("react", ok_react), ("ash", ok_ash)):
        cls = detectors.get_class(name)
        if ok:
            assert check_detector_options(name, cls, {"percentile": p})["percentile"] == p
        else:
            with pytest.raises(OptionError, match="option percentile"):
                check_detector_options(name, cls, {"percentile": p})


def test_a_plugin_detector_is_checked_against_its_options():
    from tagood.detectors.base import Detector
    from tagood.detectors.registry import _REGISTRY, register

    @register("plugin-test-only")
    class Plugin(Detector):
        class Options(DetectorOptions):
            width: PosInt = Field(3, description="a width")

        def _score(self, data):  # pragma: no cover - never scored
            return np.zeros(len(data))

    try:
        assert detectors.create("plugin-test-only[width=5]").hparams["width"] == 5
        assert Plugin(width=4).options.width == 4 and Plugin().options.width == 3
        with pytest.raises(OptionError, match="has no option widht \\(did you mean 'width'\\?\\)"):
            detectors.create("plugin-test-only[widht=5]")
        with pytest.raises(OptionError, match=r"option width is a number \(default 3\), got 'abc'"):
            detectors.create("plugin-test-only[width=abc]")
        with pytest.raises(OptionError, match="option width"):
            Plugin(width=0)  # the constructor validates too: one place
        assert [(o.name, o.default, o.constraint) for o in detectors.describe("plugin-test-only")] == [("width", 3, ">= 1")]
    finally:
        _REGISTRY.pop("plugin-test-only", None)


def test_a_plain_number_field_is_refused_in_an_options_model():
    """Options must use the validated value types (which refuse true/false and NaN), never a bare int / float."""
    with pytest.raises(TypeError, match="value types of tagood.core.validation"):
        class Bad(DetectorOptions):  # noqa: F841 - defining it is the test
            x: float = 1.0


# -- benchmark configs --------------------------------------------------------------------------------
GOOD = '''name = "t"
methods = ["msp", "knn[k=5]"]
seed = 0
[train]
type = "folder"
root = "data/train"
per_class = 3
[test]
type = "folder"
root = "data/val"
[ood.tex]
type = "folder"
root = "data/dtd"
'''


def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bench.toml"
    p.write_text(text)
    return p


def test_good_config_and_every_builtin_pass():
    for name in BUILTIN:
        for quick in (True, False):
            cfg = builtin(name, quick)
            again = validate_config(cfg.to_json(), "builtin")
            assert isinstance(cfg, BenchConfig) and again == cfg and again.to_json() == cfg.to_json()


def test_good_config_loads(tmp_path):
    cfg = load_config(_cfg(tmp_path, GOOD))
    assert cfg.methods == ["msp", "knn[k=5]"] and cfg.train.per_class == 3 and cfg.base_dir == tmp_path.resolve()


@pytest.mark.parametrize("old,new,needles", [
    ("seed = 0", 'seed = "abc"', ["key 'seed'", "valid integer", "(got text)"]),
    ("per_class = 3", 'per_class = "many"', ["key 'train.per_class'", "valid integer"]),
    ('root = "data/val"', "root = 42", ["key 'test.root'", "valid string", "(got an integer)"]),
    ("seed = 0", "seed = 0\nbatch_size = 0", ["key 'batch_size'", "greater than or equal to 1"]),
    ("seed = 0", "seed = -1", ["key 'seed'", "greater than or equal to 0"]),
    ("seed = 0", "sed = 0", ["unknown key 'sed' (did you mean 'seed'?)", "allowed at the top level"]),
    ("per_class = 3", "per_clas = 3", ["unknown key 'train.per_clas' (did you mean 'per_class'?)"]),
    ('type = "folder"\nroot = "data/dtd"', 'type = "foldr"\nroot = "data/dtd"',
     ["key 'ood.tex'", "unknown split type (did you mean 'folder'?)"]),
    ('type = "folder"\nroot = "data/dtd"', 'root = "data/dtd"', ["key 'ood.tex'", "a split needs 'type'"]),
    ('knn[k=5]', 'knn[k=0]', ["key 'methods[1]'", "detector 'knn': option k"]),
    ('knn[k=5]', 'knnn[k=5]', ["key 'methods[1]'", "unknown detector 'knnn' (did you mean 'knn'?)"]),
    ('knn[k=5]', 'react[percentile=150]', ["detector 'react': option percentile"]),
    ("seed = 0", "seed = 0\n[backbone]\nname = \"ram\"\ncheckpoint = \"x\"\nattention_layr = 1",
     ["unknown key 'backbone.attention_layr' (did you mean 'attention_layer'?)"]),
    ("seed = 0", "seed = 0\n[backbone]\nname = \"efficientnet-lit0\"", ["unknown backbone (did you mean 'efficientnet-lite0'?)"]),
    ("seed = 0", "seed = 0\n[options]\nshard_sise = 3", ["unknown key 'options.shard_sise' (did you mean 'shard_size'?)"]),
    ("seed = 0", "seed = 0\n[options]\nstream_mode = \"both\"", ["key 'options.stream_mode'", "'joint' or 'per_set'"]),
    ("seed = 0", "seed = 0\n[options.method_defaults.knn]\nk = 2.5", ["detector 'knn': option k"]),
    ("seed = 0", "seed = 0\n[pseudo_ood]\nof = \"trian\"", ["pseudo_ood.of must name a split: train, test, tex"]),
    ("seed = 0", "seed = 0\n[pseudo_ood]\nn = 0", ["key 'pseudo_ood.n'"]),
])
def test_bad_configs_name_the_file_and_key(tmp_path, old, new, needles):
    assert old in GOOD
    p = _cfg(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(str(p)), msg
    for n in needles:
        assert n in msg, msg


@pytest.mark.parametrize("text,needle", [
    (GOOD.split("[ood.tex]")[0], "missing [ood] section"),
    (GOOD.replace("[test]", "[tset]"), "unknown key 'tset' (did you mean 'test'?)"),
    ('benchmark = "fashon"\n', "unknown built-in benchmark (did you mean 'fashion'?)"),
    ('benchmark = "scenes"\nquick = "yes"\n', "key 'quick' must be true or false"),
    ('benchmark = "scenes"\nquick = true\nmethods = ["msp", "energy[temperature=-1]"]\n',
     "detector 'energy': option temperature"),
])
def test_more_bad_configs(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(_cfg(tmp_path, text))
    assert needle in str(e.value)


def test_builtin_override_config_is_validated_and_loads(tmp_path):
    cfg = load_config(_cfg(tmp_path, 'benchmark = "scenes"\nquick = true\nmethods = ["msp", "knn[k=3]"]\nseed = 2\n'))
    assert cfg.seed == 2 and cfg.benchmark == "scenes" and cfg.quick is True and cfg.methods == ["msp", "knn[k=3]"]


@pytest.mark.parametrize("old,new", [("seed = 0", f'seed = "{SECRET}"'), ('root = "data/val"', f'root = ["{SECRET}"]'),
                                     ("seed = 0", f"{SECRET} = 1"), ("knn[k=5]", f"knn[k={SECRET}]")])
def test_config_errors_do_not_quote_values(tmp_path, old, new):
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, GOOD.replace(old, new, 1)))
    if new.startswith(SECRET):  # an unknown key is named: it is the key, not a value
        assert f"unknown key '{SECRET}'" in str(e.value)
    else:
        assert SECRET not in str(e.value)
        if "knn[" in new:  # an option value in a config's method spec is described by its type
            assert "detector 'knn': option k is a number (default 50), got text" in str(e.value)


def test_config_that_is_not_toml_or_text(tmp_path):
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(p)
    passwd = Path("/etc/passwd")
    if passwd.is_file():
        first = passwd.read_text().splitlines()[0]
        with pytest.raises(ConfigError) as e:
            load_config(passwd)
        assert first not in str(e.value) and first.split(":")[0] + ":" not in str(e.value)


# -- saved detectors (tagood.json) -------------------------------------------------------------------------
META = {"method": "tagood[epochs=1]", "backbone": {"name": "efficientnet-lite0", "id": "b", "weights_hash": "w",
                                                   "spec": {"name": "efficientnet-lite0"}},
        "dual_encoder": None, "classes": ["coat", "shoe"], "threshold": 0.25, "no_tag_rule": "ood", "target_tpr": 0.95,
        "heldout_tpr": 0.96, "heldout_no_tag_fraction": 0.0, "threshold_degenerate": False, "warnings": [], "n_train": 10,
        "n_heldout": 2, "streamed": [], "failed_images": []}


@pytest.mark.parametrize("change,needle", [
    ({"threshold": float("nan")}, "'threshold' must be a finite number (got NaN)"),
    ({"threshold": float("-inf")}, "'threshold' must be a finite number (got infinity)"),
    ({"threshold": SECRET}, "'threshold' must be a finite number (got text)"),
    ({"threshold": None}, "'threshold' must be a finite number (got null)"),
    ({"classes": []}, "key 'classes'"),
    ({"no_tag_rule": SECRET}, "key 'no_tag_rule'"),
    ({"treshold": 1.0}, "unknown key 'treshold' (did you mean 'threshold'?)"),
    ({"method": SECRET}, "'method' must name a registered detector"),
    ({"method": 3}, "'method' must name a registered detector such as 'tagood' or 'tagood[tau=0.25]' (got an integer)"),
    ({"backbone": {"name": "x", "id": "y"}}, "missing key 'backbone.weights_hash'"),
])
def test_detector_meta_schema(change, needle):
    bad = {**META, **change}
    with pytest.raises(SchemaError) as e:
        validate_detector_meta(bad, "det/tagood.json")
    assert str(e.value).startswith("det/tagood.json: ") and needle in str(e.value) and SECRET not in str(e.value)
    assert validate_detector_meta(META, "x").threshold == 0.25


def _saved_dir(tmp_path: Path, meta: dict) -> Path:
    from safetensors.numpy import save_file

    d = tmp_path / "det"
    d.mkdir()
    save_file({"centres": np.eye(2, dtype=np.float32)}, str(d / "weights.safetensors"))
    (d / "tagood.json").write_text(json.dumps(meta))
    from tagood.detectors.persist import seal

    seal(d)  # a hand-made folder: vouch for its files (the manifest check itself: tests/test_reliability_saved.py)
    return d


def test_library_check_detector_dir(tmp_path):
    """fitscore.check_detector_dir is the one check `tagood score` and score_images share."""
    from tagood.pipeline.fitscore import DetectorFileError, check_detector_dir, score_images

    d = _saved_dir(tmp_path, META)
    assert check_detector_dir(d)["threshold"] == 0.25
    (d / "tagood.json").write_text(json.dumps(META).replace('"threshold": 0.25', '"threshold": NaN'))
    for call in (lambda: check_detector_dir(d), lambda: score_images(d, [tmp_path])):
        with pytest.raises(DetectorFileError, match=r"tagood.json: 'threshold' must be a finite number"):
            call()
    (d / "tagood.json").write_text(json.dumps(META))
    (d / "weights.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(DetectorFileError, match="weights.safetensors is damaged or not a safetensors file"):
        score_images(d, [tmp_path])
    (d / "tagood.json").write_text(f"{SECRET}")
    with pytest.raises(DetectorFileError, match="is not valid JSON") as e:
        check_detector_dir(d)
    assert SECRET not in str(e.value)


# -- readers that never echo file contents ---------------------------------------------------------------
def test_ram_threshold_reader_names_the_line_only(tmp_path):
    from tagood.backbones.ram_convert import RAMCheckpointError, read_thresholds

    p = tmp_path / "thr.txt"
    p.write_text(f"0.7\n0.8\n{SECRET}\n")
    with pytest.raises(RAMCheckpointError, match=r"line 3: not a number") as e:
        read_thresholds(p, 3)
    assert SECRET not in str(e.value)
    p.write_text("0.7\nnan\n0.6\n")
    with pytest.raises(RAMCheckpointError, match=r"line 2: not a finite number"):
        read_thresholds(p, 3)
    p.write_text("0.7\n\n0.8\n")
    assert read_thresholds(p, 2).tolist() == pytest.approx([0.7, 0.8])
    passwd = Path("/etc/passwd")
    if passwd.is_file():
        with pytest.raises(RAMCheckpointError) as e:
            read_thresholds(passwd, 3)
        assert passwd.read_text().splitlines()[0] not in str(e.value) and ":x:" not in str(e.value)


def test_clip_from_pretrained_refuses_a_pickle_itself(tmp_path):
    pytest.importorskip("transformers")
    from tagood.backbones.clip import CLIPDualEncoder, CLIPLoadError

    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip"}))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (clip / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CLIPLoadError, match="pytorch_model.bin, a pickle file"):
        CLIPDualEncoder.from_pretrained(clip)
    assert not marker.exists()


def test_vocabulary_reader_names_row_and_column_only(tmp_path):
    from tagood.detectors.tagood.vocabulary import Vocabulary

    p = tmp_path / "vocab.tsv"
    head = "class\tclass_name\ttag_id\ttag_name\tfrequency\n"
    p.write_text(head + "0\tcoat\t3\tt3\t5\n1\tshoe\t" + SECRET + "\tt4\t2\n")
    with pytest.raises(ValueError, match=r"row 3: column tag_id is not an integer") as e:
        Vocabulary.load(p, 2)
    assert SECRET not in str(e.value) and "coat" not in str(e.value)
    p.write_text(head + "0\tcoat\t3\tt3\t5\n1\tshoe\t\t" + SECRET + "\t2\n")
    with pytest.raises(ValueError, match=r"row 3: no tag_id, and column tag_name names no tag") as e:
        Vocabulary.load(p, 2, tag_names=[f"t{i}" for i in range(10)])
    assert SECRET not in str(e.value)
    p.write_text(head + "0\tcoat\t3\tt3\t5\n1\tshoe\t\tt4\t2\n")
    assert Vocabulary.load(p, 2, tag_names=[f"t{i}" for i in range(10)]).class_tags == [[3], [4]]
    passwd = Path("/etc/passwd")
    if passwd.is_file():
        with pytest.raises(ValueError, match="no column 'class'") as e:
            Vocabulary.load(passwd, 2)
        assert ":x:" not in str(e.value) and passwd.read_text().splitlines()[0] not in str(e.value)
