"""The classic detectors' API (issue 21): functional scores with known answers, one implementation behind the class
and the function, training-free detectors that score without fit, errors in API terms, options declared once
(validation, ``describe``, specs), ``check_data``, and save / load with bit-identical scores for every classic
detector. Scores are **higher = more OOD** throughout."""

from __future__ import annotations

import doctest
import functools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp, softmax

import tagood
from tagood import detectors
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.types import LinearHead
from tagood.detectors import ash, energy, featurenorm, knn, lhact, mahalanobis, maxlogit, msp, odin, persist, react, vim
from tagood.detectors.base import ContextError, NotFittedError
from tagood.detectors.head import fit_head
from tagood.detectors.options import OptionError
from tagood.errors import CheckpointError, ConfigError, InputError, TagoodError

#: The classic detectors (one module each under tagood.detectors).
CLASSIC = ["ash", "energy", "featurenorm", "knn", "lhact", "mahalanobis", "maxlogit", "msp", "odin", "react", "vim"]


class _Stream:
    """A minimal image stream: preprocessed images held in memory, served in batches."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, bs: int):
        for i in range(0, len(self.x), bs):
            yield self.x[i : i + bs]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 4)).eval()


@functools.cache
def _data(seed: int = 0, n: int = 80, d: int = 12, c: int = 4):
    """Labelled non-negative features with class structure, their head logits, block norms and images (built once:
    the tests only read them)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    x = np.abs(rng.normal(size=(n, d)) + 3 * np.eye(c, d)[y]).astype(np.float32)
    xt = np.abs(rng.normal(size=(25, d)) + 0.5).astype(np.float32)
    head = fit_head(FeatureSet(features=x, labels=y))
    train = FeatureSet(features=x, labels=y, logits=head(x), block_norms=np.abs(rng.normal(size=(n, 5))) + 1)
    test = FeatureSet(features=xt, logits=head(xt), block_norms=np.abs(rng.normal(size=(25, 5))) + 1,
                      images=_Stream(rng.normal(size=(25, 3, 4, 4)).astype(np.float32)))
    ctx = Context(head=head, model=_model(), pseudo_ood=FeatureSet(block_norms=np.abs(rng.normal(size=(30, 5))) + 1.5))
    return train, test, ctx


def test_classic_list_is_every_registered_detector_of_a_classic_module():
    classic = sorted(n for n in detectors.available() if detectors.get_class(n).__module__.count(".") == 2)
    assert classic == CLASSIC


# -- functional scores: known answers -------------------------------------------------------------------------
def test_energy_known_answer():
    z = np.array([[0.0, 0.0], [10.0, 0.0], [1.0, 2.0]])
    assert energy.score(z)[0] == pytest.approx(-math.log(2.0), abs=1e-15)
    assert energy.score(z)[1] == pytest.approx(-(10.0 + math.log1p(math.exp(-10.0))), abs=1e-14)
    assert energy.score(z[2:], temperature=2.0)[0] == pytest.approx(-2.0 * math.log(math.exp(0.5) + math.exp(1.0)), abs=1e-14)
    assert energy.score(z).dtype == np.float64


def test_msp_and_maxlogit_known_answers():
    z = np.array([[math.log(3.0), 0.0], [1.0, 5.0]])
    np.testing.assert_allclose(msp.score(z), [-0.75, -math.exp(5) / (math.exp(1) + math.exp(5))], rtol=1e-14)
    np.testing.assert_array_equal(maxlogit.score(np.array([[1.0, 5.0, -2.0]])), [-5.0])


def test_react_ash_lhact_known_answers():
    head = LinearHead(np.eye(2, dtype=np.float32), np.zeros(2, np.float32))
    # ReAct: clip at 2 -> logits [1, 2]
    assert react.score(np.array([[1.0, 3.0]]), head, clip=2.0)[0] == pytest.approx(-math.log(math.e + math.e**2), abs=1e-14)
    assert react.clip_value(np.arange(11.0).reshape(11, 1), 90) == pytest.approx(9.0)
    # ASH-B, percentile 80 of 10 units: the tied 1s at the cut are kept, each gets s1 / 3 = 5/3
    a = np.array([[3.0, 1.0, 1.0] + [0.0] * 7])
    w = np.zeros((2, 10), np.float32)
    w[0, 0], w[1, 1], w[1, 2] = 1.0, 1.0, 1.0
    got = ash.score(a, LinearHead(w, np.zeros(2, np.float32)), 80, "b")[0]
    assert got == pytest.approx(-math.log(math.exp(5 / 3) + math.exp(10 / 3)), abs=1e-12)
    # LHAct: unit 0 of [0..4] -> low 0.4, high 3.6; unit 1 constant 10
    train = np.array([[0.0, 10.0], [1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [4.0, 10.0]])
    low, high = lhact.unit_thresholds(train)
    np.testing.assert_allclose(low, [0.4, 10.0])
    np.testing.assert_allclose(high, [3.6, 10.0])
    h2 = LinearHead(np.array([[1.0, 0.0], [0.0, 0.1]], np.float32), np.array([0.0, 0.5], np.float32))
    np.testing.assert_allclose(lhact.rectify([[5.0, 12.0], [0.3, 9.0]], low, high), [[3.6, 10.0], [0.0, 0.0]])
    assert lhact.score([[5.0, 12.0]], h2, low, high)[0] == pytest.approx(-logsumexp([3.6, 1.5]), rel=1e-6)


def test_featurenorm_knn_mahalanobis_vim_known_answers():
    np.testing.assert_array_equal(featurenorm.score(np.array([[1.0, 5.0, 2.0]]), 1), [-5.0])
    np.testing.assert_allclose(featurenorm.norm_ratio([[2.0, 4.0]], [[1.0, 8.0]]), [2.0, 0.5])
    # KNN: unit bank rows e1, e2; the query [3, 0] normalises to e1
    bank = knn.make_bank(np.array([[2.0, 0.0], [0.0, 5.0]]))
    assert bank.dtype == np.float32
    np.testing.assert_allclose(knn.score([[3.0, 0.0]], bank, k=1), [0.0], atol=1e-6)
    np.testing.assert_allclose(knn.score([[3.0, 0.0]], bank, k=2), [math.sqrt(2.0)], rtol=1e-6)
    # Mahalanobis: two classes along x; the tied covariance is [[1, 0], [0, 0]] -> pinv the same
    means, prec = mahalanobis.fit_gaussians(np.array([[0.0, 0], [2, 0], [4, 4], [6, 4]]), np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(means, [[1.0, 0.0], [5.0, 4.0]])
    np.testing.assert_allclose(prec, [[1.0, 0.0], [0.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(mahalanobis.score([[2.0, 7.0]], means, prec), [1.0])  # (2-1)^2, the y axis ignored
    # ViM: residual space = the third axis, alpha = 2 -> 2 * 3 - logsumexp([1, 2])
    head = LinearHead(np.eye(2, 3, dtype=np.float32), np.zeros(2, np.float32))
    got = vim.score([[1.0, 2.0, 3.0]], head, np.zeros(3), np.array([[0.0], [0.0], [1.0]]), 2.0)[0]
    assert got == pytest.approx(6.0 - logsumexp([1.0, 2.0]), abs=1e-12)


def test_odin_functional_without_perturbation_is_msp():
    m = _model()
    x = np.random.default_rng(1).normal(size=(7, 3, 4, 4)).astype(np.float32)
    with torch.no_grad():
        logits = m(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(odin.score(x, m, temperature=1.0, epsilon=0.0, batch_size=3), -softmax(logits, 1).max(1),
                               rtol=1e-6)


def test_the_class_scores_with_its_functional_form():
    """One implementation: each fitted detector's scores are exactly its module's ``score`` on its fitted state."""
    train, test, ctx = _data()
    fitted = {n: detectors.create(n).fit(train, ctx) for n in CLASSIC}
    f, lg = test.features, test.logits
    want = {
        "msp": msp.score(lg), "maxlogit": maxlogit.score(lg), "energy": energy.score(lg),
        "react": react.score(f, ctx.head, fitted["react"].threshold), "ash": ash.score(f, ctx.head),
        "lhact": lhact.score(f, ctx.head, fitted["lhact"].low, fitted["lhact"].high),
        "featurenorm": featurenorm.score(test.block_norms, fitted["featurenorm"].selected),
        "knn": knn.score(f, knn.make_bank(train.features), k=50),
        "mahalanobis": mahalanobis.score(f, *mahalanobis.fit_gaussians(train.features, train.labels)),
        "vim": vim.score(f, ctx.head, *vim.fit_subspace(train.features, ctx.head)[:3]),
        "odin": odin.score(test.images.x, ctx.model),
    }
    assert set(want) == set(CLASSIC)
    for n in CLASSIC:
        np.testing.assert_array_equal(fitted[n].score(test), want[n], err_msg=n)


# -- training-free detectors, fit errors in API terms ---------------------------------------------------------
@pytest.mark.parametrize("name", CLASSIC)
def test_requires_fit_is_declared_and_honoured(name):
    train, test, ctx = _data()
    det = detectors.create(name)
    if name in ("msp", "maxlogit", "energy"):
        assert det.requires_fit is False
        np.testing.assert_array_equal(det.score(test.logits), detectors.create(name).fit(train, ctx).score(test))
    elif name == "odin":  # learns nothing, but needs its model
        assert det.requires_fit is False
        with pytest.raises(ContextError, match=r"attach\(tagood.Context\(model=\.\.\.\)\)"):
            det.score(test)
        np.testing.assert_array_equal(det.attach(ctx).score(test), detectors.create(name).fit(train, ctx).score(test))
    else:
        assert det.requires_fit is True
        with pytest.raises(NotFittedError, match=r"call det\.fit\(train") as e:
            det.score(test)
        assert isinstance(e.value, ConfigError) and "tagood.FeatureSet(" in str(e.value)
        with pytest.raises(NotFittedError):
            det.save(Path("/nonexistent-never-written"))


def test_head_detectors_without_a_head_name_the_api():
    train, test, ctx = _data()  # ctx.head = fit_head(train), as tagood bench fits it
    with pytest.raises(ContextError) as e:
        detectors.create("react").fit(FeatureSet(features=train.features))
    msg = str(e.value)
    assert "context=tagood.Context(head=tagood.fit_head(train))" in msg and "labels=..." in msg
    # with labels, the detector fits the benchmark's head itself (HeadDetector, shared by react, ash, lhact, vim):
    # the same scores as with that head given
    for name in ("react", "vim"):
        own = detectors.create(name).fit(FeatureSet(features=train.features, labels=train.labels))
        np.testing.assert_array_equal(own.head.weight, ctx.head.weight)
        np.testing.assert_array_equal(own.score(test), detectors.create(name).fit(train, ctx).score(test), err_msg=name)


def test_mahalanobis_without_labels_says_pass_labels():
    with pytest.raises(InputError) as e:
        detectors.create("mahalanobis").fit(np.ones((5, 3)))
    msg = str(e.value)
    assert "needs inputs ['labels']" in msg and "tagood.FeatureSet(features=..., labels=...)" in msg
    assert "backbone" not in msg  # a user with numpy features has nothing to re-extract


def test_other_context_and_input_errors():
    train, test, _ = _data()
    with pytest.raises(ContextError, match=r"pseudo_ood=tagood.FeatureSet\(block_norms=\.\.\.\)"):
        detectors.create("featurenorm").fit(train)
    with pytest.raises(ContextError, match=r"tagood.Context\(model=\.\.\.\)"):
        detectors.create("odin").fit(train)
    with pytest.raises(InputError, match="needs inputs"):
        detectors.create("energy").score(FeatureSet(features=test.features))
    with pytest.raises(tagood.TagoodError, match="unknown detector 'enrgy' \\(did you mean 'energy'\\?\\)"):
        detectors.create("enrgy")
    with pytest.raises(ConfigError, match="bad detector spec"):
        detectors.create("knn[k=3")


def test_knn_check_data_refuses_k_above_the_training_count_before_any_work():
    det = detectors.create("knn[k=50]")
    with pytest.raises(OptionError, match=r"option k=50 exceeds the 20 IND training samples; use knn\[k=20\]"):
        det.check_data(20)
    det.check_data(50)
    det.check_data(50_000, n_classes=10)
    with pytest.raises(OptionError, match="exceeds the 20"):  # fit runs the same check first
        det.fit(np.ones((20, 3)))
    for name in CLASSIC:  # nothing else has a size limit
        if name != "knn":
            detectors.create(name).check_data(1, 1)


# -- options declared once -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(detectors.available()))
def test_describe_lists_every_option_with_its_default_as_plain_text(name):
    cls = detectors.get_class(name)
    infos = detectors.describe(name)
    assert [i.name for i in infos] == list(cls.Options.model_fields)
    defaults = cls().hparams  # the constructor with no option: every default
    for i in infos:
        assert i.default == defaults[i.name], (name, i.name)
        assert i.type and i.description and not re.search(r"``|:[a-z]+:`", i.description), (name, i.name)
        assert "\n" not in i.description
    if name in CLASSIC:
        assert cls.paper and not re.search(r"``|:[a-z]+:`", cls.paper)


def test_describe_text_of_the_classic_options():
    rows = {(n, i.name): (i.type, i.default_text, i.constraint) for n in CLASSIC for i in detectors.describe(n)}
    assert rows == {
        ("ash", "percentile"): ("number", "90.0", "in [0, 100)"), ("ash", "variant"): ("one of 's', 'b', 'p'", "s", ""),
        ("energy", "temperature"): ("number", "1.0", "> 0"), ("featurenorm", "block"): ("integer or none", "none", ">= 0"),
        ("knn", "k"): ("integer", "50", ">= 1"), ("knn", "alpha"): ("number", "1.0", "in (0, 1]"),
        ("lhact", "low_percentile"): ("number", "10.0", "in [0, 100]"),
        ("lhact", "high_percentile"): ("number", "90.0", "in [0, 100]"),
        ("odin", "temperature"): ("number", "1000.0", "> 0"), ("odin", "epsilon"): ("number", "0.0014", ">= 0"),
        ("odin", "pixel_std"): ("number or list of numbers or none", "none", ""),
        ("odin", "batch_size"): ("integer or none", "none", ">= 1"), ("react", "percentile"): ("number", "90.0", "in (0, 100]"),
        ("vim", "dim"): ("integer or none", "none", ">= 1"),
    }


_VALUES = st.one_of(st.integers(-5, 200), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
                    st.sampled_from(["s", "b", "p", "x", "abc"]))


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(CLASSIC), data=st.data())
def test_every_entry_point_validates_through_the_one_declaration(name, data):
    """create(spec), create(**kw), the constructor and check_detector_options (the TOML path) accept exactly what
    the Options model accepts; an accepted spec survives a round trip through ``det.spec``."""
    cls = detectors.get_class(name)
    fields = list(cls.Options.model_fields)
    if not fields:
        with pytest.raises(OptionError, match="its options: none"):
            detectors.create(name, k=1)
        return
    opt = data.draw(st.sampled_from(fields))
    value = data.draw(_VALUES)
    try:
        model = cls.Options(**{opt: value})
    except Exception:  # noqa: BLE001 - pydantic's ValidationError or the model's own check
        model = None
    for make in (lambda: detectors.create(name, **{opt: value}), lambda: cls(**{opt: value}),
                 lambda: detectors.options.check_detector_options(name, cls, {opt: value})):
        if model is None:
            with pytest.raises(OptionError, match=f"detector '{name}'"):
                make()
        else:
            make()
    if model is not None:
        det = cls(**{opt: value})
        assert det.options == model and detectors.create(det.spec).options == model


def test_options_are_typed_frozen_and_cross_checked():
    det = detectors.create("knn", k=7)
    assert det.options.k == 7 and det.hparams == {"k": 7, "alpha": 1.0}
    with pytest.raises(Exception, match="frozen"):
        det.options.k = 3
    with pytest.raises(OptionError, match="low_percentile must be below high_percentile"):
        detectors.get_class("lhact")(low_percentile=50, high_percentile=50)
    assert detectors.create("knn[k=7,alpha=0.5]").spec == "knn[k=7,alpha=0.5]"
    assert detectors.get_class("knn")(k=7).spec == "knn[k=7]" and detectors.get_class("msp")().spec == "msp"


# -- save / load -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CLASSIC)
def test_save_load_round_trip_is_bit_identical(name, tmp_path):
    train, test, ctx = _data()
    specs = {"knn": "knn[k=5,alpha=0.5]", "vim": "vim[dim=4]", "ash": "ash[variant=b]", "odin": "odin[epsilon=0.002]"}
    spec = specs.get(name, name)
    det = detectors.create(spec).fit(train, ctx)
    before = det.score(test)
    d = det.save(tmp_path / "det")
    assert d == tmp_path / "det" and {p.name for p in d.iterdir()} == {"config.json", "manifest.json", "weights.safetensors"}
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["detector"] == name and cfg["spec"] == spec and cfg["format"] == persist.FORMAT
    assert cfg["options"] == det.options.model_dump(mode="json")
    loaded = detectors.load(d, context=Context(model=ctx.model) if name == "odin" else None)
    assert type(loaded) is type(det) and loaded.options == det.options and loaded.fitted
    np.testing.assert_array_equal(loaded.score(test), before)
    if name == "odin":  # its model is not state: loading without it says how to give it
        with pytest.raises(ContextError, match=r"load\(directory, context=tagood.Context\(model=\.\.\.\)\)"):
            detectors.load(d).score(test)


def test_training_free_detectors_save_without_fit(tmp_path):
    z = np.random.default_rng(0).normal(size=(6, 3))
    det = detectors.create("energy[temperature=2.5]")
    np.testing.assert_array_equal(detectors.load(det.save(tmp_path / "e")).score(z), det.score(z))


def test_saved_arrays_keep_their_dtype(tmp_path):
    train, _, ctx = _data()
    d = detectors.create("react").fit(train, ctx).save(tmp_path / "r")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["arrays"] == {"head.weight": {"dtype": "float32", "shape": [4, 12]},
                             "head.bias": {"dtype": "float32", "shape": [4]}}
    assert isinstance(cfg["state"]["threshold"], float)


def _saved(tmp_path: Path) -> Path:
    train, _, ctx = _data()
    return detectors.create("knn[k=3]").fit(train, ctx).save(tmp_path / "knn")


@pytest.mark.parametrize("damage,needle", [
    (lambda d: (d / "config.json").unlink(), "config.json not found"),
    (lambda d: (d / "weights.safetensors").unlink(), "weights.safetensors not found"),
    (lambda d: (d / "config.json").write_text("{not json hunter2"), "config.json is not valid JSON (line 1)"),
    (lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00"), "config.json is not a UTF-8 text file"),
    (lambda d: (d / "weights.safetensors").write_bytes(b"\x00" * 7), "weights.safetensors is damaged or not a safetensors file"),
    (lambda d: _edit(d, format="tagood-detector/1"), "config.json: key 'format'"),
    (lambda d: _edit(d, detectr="knn"), "unknown key 'detectr' (did you mean 'detector'?)"),
    (lambda d: _edit(d, detector="knnn"), "unknown detector 'knnn' (did you mean 'knn'?)"),
    (lambda d: _edit(d, options={"k": 0, "alpha": 1.0}), "its options do not fit this tagood's knn: detector 'knn': option k"),
    (lambda d: _edit(d, arrays={"bank": {"dtype": "float64", "shape": [80, 12]}}), "array 'bank' is float32 [80, 12]"),
    (lambda d: _edit(d, arrays={}), "unlisted arrays ['bank']"),
])
def test_load_errors_name_the_file(tmp_path, damage, needle):
    d = _saved(tmp_path)
    damage(d)
    with pytest.raises(CheckpointError) as e:
        detectors.load(d)
    assert needle in str(e.value) and str(d) in str(e.value) and "hunter2" not in str(e.value)
    assert isinstance(e.value, TagoodError)


def _edit(d: Path, **change) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(change)
    (d / "config.json").write_text(json.dumps(cfg))


def test_load_of_a_folder_that_is_not_there(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        detectors.load(tmp_path / "nothing")


def test_torch_state_dicts_travel_as_arrays():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    arrays = persist.module_arrays("proj", m)
    assert set(arrays) == {"proj.weight", "proj.bias"}
    m2 = torch.nn.Linear(3, 2)
    m2.load_state_dict(persist.module_state(arrays, "proj"))
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True))


# -- docstring examples ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [energy, msp, detectors.base, detectors.options])
def test_docstring_examples_run(module):
    res = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


def test_training_free_fit_records_the_split_without_hashing_its_arrays(monkeypatch) -> None:
    """MSP / Energy learn nothing from the training split: their fit records its size, labels, classes and field
    shapes but does not hash its features (that one SHA-256 pass was nearly all of their fit at ImageNet size); a
    detector that learns from the split (KNN) still hashes them in full."""
    import hashlib

    import numpy as np

    import tagood
    from tagood.detectors import manifest

    hashed: list[tuple[int, ...]] = []
    sha = manifest._array_sha256
    monkeypatch.setattr(manifest, "_array_sha256", lambda a, *k: hashed.append(a.shape) or sha(a, *k))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    train = tagood.FeatureSet(features=x, logits=rng.normal(size=(50, 3)), labels=np.arange(50) % 3)
    for spec in ("msp", "energy"):
        fp = tagood.create(spec).fit(train).fitted_on
        assert fp is not None and fp["n"] == 50 and fp["n_classes"] == 3 and "labels_sha256" in fp
        assert fp["fields"]["features"] == {"dtype": "float32", "shape": [50, 6]} and "sha256" not in fp
    assert hashed == []
    fp = tagood.create("knn[k=3]").fit(train).fitted_on
    assert hashed == [(50, 6)] and fp["sha256"] == hashlib.sha256(x.tobytes()).hexdigest()
