"""KR-NFT: Knowledge Regularized Negative Feature Tuning (Zhu, Zhang, Jin, Zeng, Zhang, ACM MM 2025,
arXiv 2507.19847).

Text rows: the IND class prompts then negative labels mined from WordNet as in NegLabel
(:mod:`tagood.detectors.vlm.negmining`). The :class:`tagood.detectors.vlm.nft.NFT` module tunes every row per image.
Training (few-shot IND images): ``n_crops`` random-resized crops per image are embedded; the
``k_in`` crops most similar to the image's label prompt are surrogate IND, the ``k_out`` least
similar surrogate OOD (the abstract: "enhance the discrimination between ID and OOD sets" with only
few-shot IND data, so OOD must come from the IND images themselves: the views least like their label
are taken to be background / other content). With ``p_r(v) = softmax_r(logit_scale * cos(v, t'_r(v)))``
over all K IND + M negative tuned rows ``t'(v)`` (NFT conditioned on the input ``v`` itself), the loss is
``L = L_in + w_out * L_out + w_kr * L_kr`` (``w_out = 0.3``, ``w_kr = 10``, the public code's weights):

* ``L_in = mean_(v,y) -log p_y(v)`` over the few-shot full images and their surrogate-IND crops (label
  ``y``): IND classification *against the negative rows too*, so it both separates the IND classes and
  moves IND-looking inputs' mass from the negative rows onto the IND rows;
* ``L_out = mean_v -log sum_{r > K} p_r(v)`` over the surrogate-OOD crops: their mass is pushed onto the
  negative rows ("separating positive and negative features into distinct spaces");
* ``L_kr = 1 - mean_{v, r} cos(t'_r(v), t_r)`` over all rows (knowledge regularisation, "mitigating
  pre-trained knowledge forgetting"; zero at initialisation, where NFT is the identity).

The public code (github.com/ZhuWenjie98/KRNFT, ``krnft_trainer.py``) differs in four places, each
measured on ``fashion`` in one harness (average AUROC, trained; ours 52.0 there, untrained 57.7):
its L_in uses the top crops only, not the full image (49.5); its L_out *minimises* ``log sum_{r<=K}
p_r`` (unbounded below; 47.2); it splits the negatives into 10 groups and averages the losses over
softmaxes of [IND rows, one group] (48.6); it conditions NFT for all crops of an image on the image's
top-1 crop (54.2); all four together 44.6. The ``default`` preset keeps the forms above: bounded, and
consistent with scoring (ungrouped softmax, NFT conditioned on the scored input); the ``paper`` and ``official``
presets train in the script's form (options ``in_views``, ``l_out``, ``n_groups``, ``condition``).

Why training lowers AUROC on the ``fashion`` demo (48.5 trained vs 57.7 at ``epochs=0``; IND
accuracy of the tuned rows 25.7% -> 56.3%, so training works on its own objective): the surrogate-OOD
crops of 28x28 clothing items are still clothing to the stand-in encoder -- their mean nearest-neighbour
cosine is 0.974 to the IND test images but 0.918 / 0.925 to the MNIST / digits OOD sets -- so L_out lowers
the IND mass of IND test images (0.729 -> 0.713) while L_in raises that of the digit images (0.81 -> 0.87,
0.85 -> 0.89). More L_out hurts more (``w_out`` 0 / 0.3 / 3: 55.4 / 48.5 / 46.1); without L_out and L_kr,
L_in drives every image's IND share to 1.0 (AUROC 49.9). Choosing the surrogate-OOD crops by their
similarity to *any* IND prompt instead of the label's (55.0) or by IND-vs-negative margin (56.2), a
smaller lr (1e-4: 56.0) or a per-kind balanced L_kr (48.2) does not bring it above untrained. The
method's premise (least-label-like views = OOD-like) needs crops with real background or clutter;
``tests/test_krnft_known_answer.py`` builds such a case, where training raises both IND accuracy and
AUROC. On ``scenes`` (real-photo objects with distractors) training also loses (60.3 vs 64.1; IND
accuracy 49.3% -> 62.7%): there the surrogate-OOD crops are nearer the OOD sets and L_out helps
(``w_out`` 0 / 0.3 / 3: 60.8 / 60.3 / 62.5), but L_in alone raises every image's IND share (IND test
0.81 -> 0.96, scene-clutter 0.68 -> 0.89). (Commands: docs/methods/vision-language.md.)

Presets (option ``preset``, :data:`PRESETS`; the table of every setting with the public script's file and line:
docs/methods/krnft.md). ``default``: the forms above and the demo-sized values below. ``paper``: the paper's
few-shot setting and, where the paper is silent, the public training script (``scripts/ood/krnft/krnft_shot4_train.sh``
and the files it reads): 4 shots, 128 crops of the *original* image with random flips, top / bottom 32 ranked
by ``'a photo of a {}.'``, meta-network hidden ``E // int(512 / 64)`` (64 on CLIP ViT-B/16), AdamW lr 1e-5
constant with weight decay 0.01, 3 epochs at one image per step, prompts ``'the nice {}.'`` (IND, noun
negatives) and ``'This is a {} photo.'`` (adjective negatives), 10,500 negatives mined by sorted position with
nouns and adjectives apart, every crop conditioned on its image's top-1 crop, negatives in 10 groups, L_in
over the top crops only and the script's L_out (:mod:`tagood.detectors.vlm.krnft_train`). It fixes two defects
of the script's schedule: an epoch there visits a tenth of the images, and a seed reset inside the loss makes
every epoch after the first repeat the second's shuffle and crops. ``official`` keeps both defects and the
float16 rounding of the meta-networks' outputs: the script as it ran. ``tagood bench imagenet`` uses ``paper``;
the embedded benchmarks give their small-data values (crops, negatives) as options, which win over a preset.

Demo defaults here (16 shots, 32 crops, top/bottom 8, 10 epochs, lr 1e-3) keep CPU training well under a
minute for a few hundred images. The meta-networks read the image feature L2-normalised (:meth:`NFT.factors`
normalises any input row that is not a unit vector), so the library API takes raw or unit embeddings alike.
Score: softmax over all rows, sum of the IND probabilities = confidence ``S(x) = sum_{r <= K} p_r(x)``; ours is
``-S(x)``, **higher = more OOD**. Scoring is batched with the closed-form norm (no batch-size-1 limit).

Save / load through the common format (``det.save(directory)``, :func:`tagood.detectors.load`): the IND and negative
text rows, the negative words and the NFT weights are state; the dual encoder is not (scoring reads image
embeddings only), and the torch device comes from ``tagood.Context(device=...)`` at load time (or the ``device``
option).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from tagood.backbones.prompts import KRNFT_ADJ_TEMPLATE, KRNFT_SELECT_TEMPLATE, KRNFT_TEMPLATE
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.numeric import l2_normalize
from tagood.core.validation import NonNegFloat, NonNegInt, OpenFraction, PosFloat, PosInt
from tagood.detectors import persist
from tagood.detectors.base import NotFittedError
from tagood.detectors.registry import register
from tagood.detectors.vlm.base import FewShotDetector, FewShotOptions, few_shot_indices
from tagood.detectors.vlm.crops import encode_crops, encode_view_crops, subset_stream
from tagood.detectors.vlm.krnft_train import Views, epoch_plan, optimizer_step, script_hidden, train_views
from tagood.detectors.vlm.negmining import NegativeLabelOptions, negative_labels, negative_labels_by_position
from tagood.detectors.vlm.nft import NFT, RowBank
from tagood.errors import CheckpointError, InputError
from tagood.runtime.progress import progress_bar

log = logging.getLogger(__name__)

PAPER = ("Zhu, Zhang, Jin, Zeng & Zhang, Knowledge Regularized Negative Feature Tuning of Vision-Language Models for "
         "Out-of-Distribution Detection, ACM MM 2025 (arXiv 2507.19847)")


#: The options each preset fills when they are not given (``default``: none, the declared defaults). ``paper``: the
#: paper's few-shot setting (4 shots, 128 crops, top / bottom 32) and, where the paper is silent, the public script
#: (github.com/ZhuWenjie98/KRNFT 86cdbbd6, scripts/ood/krnft/krnft_shot4_train.sh and the files it reads), with
#: its two schedule defects fixed; ``official``: the script exactly (a tenth of the images per epoch, epochs after
#: the first repeating the second, float16 meta-network outputs). The table: docs/methods/krnft.md.
PAPER_PRESET: dict[str, Any] = {
    "shots": 4, "n_crops": 128, "k_in": 32, "k_out": 32, "epochs": 3, "lr": 1e-5, "meta_dim": 64, "weight_decay": 0.01,
    "lr_schedule": "constant", "template": KRNFT_TEMPLATE, "adj_template": KRNFT_ADJ_TEMPLATE,
    "select_template": KRNFT_SELECT_TEMPLATE, "n_neg": 10500, "mining": "position", "crops": "original",
    "crop_flip": True, "crop_redraw": True, "condition": "top1", "n_groups": 10, "in_views": "crops", "l_out": "script",
    "batch_images": 1, "w_out": 0.3, "w_kr": 10.0}
PRESETS: dict[str, dict[str, Any]] = {
    "default": {}, "paper": PAPER_PRESET,
    "official": {**PAPER_PRESET, "epoch_fraction": 0.1, "seed_reset": True, "half_meta": True}}
#: the options whose non-default values select the script-form training loop (:mod:`tagood.detectors.vlm.krnft_train`)
SCRIPT_FORM_DEFAULTS: dict[str, Any] = {"crops": "preprocessed", "crop_flip": False, "crop_redraw": False,
                                        "condition": "input", "n_groups": 1, "in_views": "full+crops", "l_out": "bounded",
                                        "epoch_fraction": 1.0, "seed_reset": False}


def select_crops(crop_embeds: np.ndarray, label_text: np.ndarray, k_in: int, k_out: int) -> tuple[np.ndarray, np.ndarray]:
    """KR-NFT's surrogate views: per image, the ``k_in`` crops most and ``k_out`` least similar to its label prompt.

    Args:
        crop_embeds: ``(n, n_crops, E)`` unit crop embeddings; ``label_text``: ``(n, E)`` each image's label embedding.
        k_in: surrogate-IND crops per image; ``k_out``: surrogate-OOD crops per image (0 = none).
    Returns:
        ``(n, k_in, E)`` and ``(n, k_out, E)`` crop embeddings.
    """
    sims = np.einsum("nce,ne->nc", crop_embeds, label_text)
    order = np.argsort(-sims, axis=1, kind="stable")
    take = lambda o: np.take_along_axis(crop_embeds, o[:, :, None], axis=1)  # noqa: E731
    return take(order[:, :k_in]), take(order[:, -k_out:] if k_out else order[:, :0])


def _column_sums(e: torch.Tensor, block: int = 16) -> torch.Tensor:
    """Column sums of a float32 (R,B) tensor in float64 precision at float32 speed: blocks of ``block``
    rows are summed in float32, the block sums in float64 (relative error ~2e-7 at R = 10,000; a
    whole float64 reduction converts every element and is ~20x slower on a CPU)."""
    r = (len(e) // block) * block
    out = e[:r].view(-1, block, e.shape[1]).sum(1).double().sum(0) if r else e.new_zeros(e.shape[1], dtype=torch.float64)
    return out + e[r:].double().sum(0) if r < len(e) else out


@register("krnft")
class KRNFT(FewShotDetector):
    """KR-NFT (Zhu et al., ACM MM 2025): minus the IND probability mass over the NFT-tuned IND and negative rows,
    higher = more OOD.

    Fit needs ``train.image_embeds`` + labels, ``context.dual_encoder`` / ``class_names``, and for the crops either
    ``train.extra["crop_embeds"]`` (precomputed ``(N, n_crops, E)``, aligned with ``train``) or ``train.images`` (an
    ImageStream in the dual encoder's preprocessing); a crop encoder other than ``dual_encoder.encode_images`` can be
    given as ``context.crop_encoder``.

    Inputs: ``requires = {"image_embeds"}`` (scoring); ``fit_requires = {"image_embeds", "labels"}`` plus the pixels
    (``FIT_IMAGES``): ``images`` unless ``extra["crop_embeds"]`` is given. ``fit`` checks all of them first and names
    what is missing. ``"images"`` is not in the class-level ``fit_requires`` because the benchmark runner answers that
    declaration with backbone-preprocessed images (the tagger's preprocessing) and builds ODIN's differentiable
    classifier for it; KR-NFT's images come from ``dual_encoder.attach``, which the runner applies to the training
    split of every vision-language method (crops in the dual encoder's preprocessing).
    """

    class Options(NegativeLabelOptions, FewShotOptions):
        n_crops: PosInt = Field(32, description="random-resized crops per few-shot image (the paper: 128)")
        k_in: PosInt = Field(8, description="crops most similar to the image's label prompt, taken as surrogate IND "
                                            "(the paper: 32)")
        k_out: NonNegInt = Field(8, description="crops least similar to it, taken as surrogate OOD (the paper: 32)")
        hidden: PosInt = Field(32, description="hidden width of the NFT meta-networks (overridden by meta_dim; the "
                                               "public script: 64)")
        epochs: NonNegInt = Field(10, description="training epochs (0 = untrained: the meta-networks' zero-initialised "
                                                  "last layers leave the text features as they are)")
        lr: PosFloat = Field(1e-3, description="AdamW learning rate, schedule lr_schedule (the public script: 1e-5, "
                                               "constant)")
        batch_size: PosInt = Field(64, description="surrogate-IND inputs per training step")
        w_out: NonNegFloat = Field(0.3, description="weight of L_out, the surrogate-OOD loss (the public code: 0.3)")
        w_kr: NonNegFloat = Field(10.0, description="weight of L_kr, the knowledge regularisation (the public code: 10)")
        score_batch: PosInt = Field(512, description="images per scoring batch")
        device: str | None = Field(None, description="torch device of training and scoring (none = the context's)")
        preset: Literal["default", "paper", "official"] = Field(
            "default", description="default (ours, the values shown), paper (the paper + the public script where the "
                                   "paper is silent, its defects fixed) or official (the public script exactly) for the "
                                   "options not given; see docs/methods/krnft.md")
        meta_dim: PosInt | None = Field(None, description="the public script's meta_dim: hidden width E // int(512 / "
                                                          "meta_dim), overriding hidden (presets: 64, i.e. 64 at E = 512)")
        weight_decay: NonNegFloat = Field(0.0, description="AdamW weight decay (presets: 0.01, AdamW's default)")
        lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="learning-rate schedule (presets: "
                                                                                 "constant)")
        mining: Literal["quantile", "position"] = Field(
            "quantile", description="negative mining: quantile (NegLabel's interpolated eta-quantile, all candidates "
                                    "together) or position (the value at int(0.95 K) of the sorted cosines, nouns and "
                                    "adjectives ranked apart in proportion; presets)")
        adj_template: str | None = Field(None, description="prompt of the adjective negatives under mining=position "
                                                           "(none = template; presets: 'This is a {} photo.')")
        select_template: str | None = Field(None, description="prompt of the label that ranks an image's crops (none = "
                                                              "the IND rows; presets: 'a photo of a {}.')")
        crops: Literal["preprocessed", "original"] = Field(
            "preprocessed", description="crops cut from the preprocessed picture or from the original (presets)")
        crop_flip: bool = Field(False, description="mirror half of the crops left-right (presets: true)")
        crop_redraw: bool = Field(False, description="fresh crops every epoch (presets: true)")
        condition: Literal["input", "top1"] = Field(
            "input", description="training: tune each view's text rows by the view itself (input) or every view of an "
                                 "image by its top-1 crop (top1; presets)")
        n_groups: PosInt = Field(1, description="training softmaxes over the IND rows and one of n_groups groups of "
                                                "negatives (presets: 10)")
        in_views: Literal["full+crops", "crops"] = Field(
            "full+crops", description="views of L_in: the few-shot images and their top crops, or the crops only (presets)")
        l_out: Literal["bounded", "script"] = Field(
            "bounded", description="L_out: bounded (-log of the negatives' share) or script (minimise log of the IND "
                                   "share; presets)")
        batch_images: PosInt = Field(1, description="images per step of the script-form training (presets: 1)")
        epoch_fraction: OpenFraction = Field(1.0, description="share of the images an epoch visits (official: 0.1, "
                                                              "the script's int(steps / 10))")
        seed_reset: bool = Field(False, description="every epoch after the first repeats the second's shuffle and "
                                                    "crops (official: the script's seed reset)")
        half_meta: bool = Field(False, description="round the meta-networks' outputs to float16 (official)")

        @model_validator(mode="before")
        @classmethod
        def _fill_from_preset(cls, data: Any) -> Any:
            if not isinstance(data, Mapping):
                return data
            fill = PRESETS.get(str(data.get("preset", "default")), {})
            return {**fill, **{k: v for k, v in data.items() if not (v is None and k in fill)}}

    options: Options
    paper: ClassVar[str] = PAPER
    requires: ClassVar[frozenset[str]] = frozenset({"image_embeds"})
    fit_requires: ClassVar[frozenset[str] | None] = frozenset({"image_embeds", "labels"})
    #: the pixels of the IND training images (for the random-resized crops); see the class docstring
    FIT_IMAGES: ClassVar[str] = "images"

    def _clear(self) -> None:
        super()._clear()
        self.neg_words: list[str] = []
        #: ``(M, E)`` float32 negative-label prompt embeddings
        self.neg_text: np.ndarray | None = None
        self.nft: NFT | None = None
        #: per epoch: the mean total loss and its terms ``in``, ``out``, ``kr``
        self.history: list[dict[str, float]] = []
        self._banks: tuple[tuple[str, int, int], RowBank, RowBank] | None = None

    # -- fitting -----------------------------------------------------------------------------------
    def fit(self, train: FeatureSet | np.ndarray, context: Context | None = None) -> KRNFT:
        """Train the NFT module on the IND training split (see the class docstring for what it must carry).

        Args:
            train: IND training samples with ``image_embeds``, ``labels`` and the pixels (``images``) or
                ``extra["crop_embeds"]``.
            context: ``tagood.Context(dual_encoder=..., class_names=[...])``; ``device``, ``crop_encoder`` optional.
        Returns:
            ``self``, fitted.
        """
        if isinstance(train, FeatureSet):
            need = set(self.fit_requires or ())
            if train.extra.get("crop_embeds") is None:  # precomputed crop embeddings stand in for the pixels
                need.add(self.FIT_IMAGES)
            missing = sorted(n for n in need if not train.has(n))
            if missing:
                hint = {"images": "the pixels for the random-resized crops: set train.images (an ImageStream in the dual "
                                  "encoder's preprocessing, e.g. via dual_encoder.attach(train, source)) or give "
                                  "precomputed crop embeddings in train.extra['crop_embeds']",
                        "labels": "the IND class of each training image (train.labels)",
                        "image_embeds": "dual-encoder image embeddings (dual_encoder.attach(train, source))"}
                raise InputError(f"krnft.fit needs inputs {missing} of the IND training split '{train.name}': "
                                 + "; ".join(f"{m}: {hint[m]}" for m in missing))
        super().fit(train, context)
        return self

    def _crop_embeds(self, train: FeatureSet, idx: np.ndarray, context: Context) -> np.ndarray:
        pre = train.extra.get("crop_embeds")
        if pre is not None:
            pre = np.asarray(pre, dtype=np.float32)
            if pre.ndim != 3 or len(pre) != len(train):
                raise InputError(f"krnft: train.extra['crop_embeds'] must be (N={len(train)}, n_crops, E), got {pre.shape}")
            return pre[idx]
        if train.images is None:
            raise InputError("krnft.fit needs images of the IND training split for its random-resized crops: set "
                             "train.images (an ImageStream, e.g. via dual_encoder.attach(train, source)) or give "
                             "precomputed crop embeddings in train.extra['crop_embeds']")
        encode = context.crop_encoder or self._encoder(context).encode_images
        images = train.images
        with progress_bar("KR-NFT crops", len(idx)) as advance:
            def counted() -> Iterator[np.ndarray]:
                for img in subset_stream(images, idx):
                    yield img
                    advance(1)
            return encode_crops(counted(), encode, self.options.n_crops, seed=self.options.seed)

    def _fit(self, train: FeatureSet, context: Context) -> None:
        super()._fit(train, context)
        enc = self._encoder(context)
        o = self.options
        assert self.text is not None and train.labels is not None
        if o.neg_words:
            from tagood.backbones.prompts import encode_prompts

            self.neg_words, self.neg_text = list(o.neg_words), encode_prompts(enc, o.neg_words, self.templates)
        elif o.mining == "position":
            self.neg_words, self.neg_text = negative_labels_by_position(
                enc, self.class_names, self.text, o.n_neg, self.templates[0], o.adj_template or self.templates[0],
                o.corpus, o.max_candidates, o.seed)
        else:
            self.neg_words, self.neg_text = negative_labels(enc, self.class_names, self.text, o.n_neg, o.eta, o.corpus,
                                                            self.templates[0], o.max_candidates, o.seed)
        idx = few_shot_indices(train.labels, o.shots, o.seed)
        labels = np.asarray(train.labels)[idx].astype(np.int64)
        label_text = self.text
        if o.select_template is not None:
            from tagood.backbones.prompts import encode_prompts

            label_text = encode_prompts(enc, self.class_names, [o.select_template])
        if self.script_form:
            self._fit_script(train, idx, labels, label_text, context)
            return
        crops = self._crop_embeds(train, idx, context)
        crops = l2_normalize(crops, dtype=crops.dtype)
        k_in, k_out = min(o.k_in, crops.shape[1]), min(o.k_out, max(crops.shape[1] - o.k_in, 0))
        ind_crops, ood_crops = select_crops(crops, label_text[labels], k_in, k_out)
        full = np.asarray(train.image_embeds, dtype=np.float32)[idx]
        x_in = np.concatenate([full, ind_crops.reshape(-1, crops.shape[-1])])
        y_in = np.concatenate([labels, np.repeat(labels, k_in)])
        x_out = ood_crops.reshape(-1, crops.shape[-1])
        self._train(x_in, y_in, x_out, context)

    @property
    def script_form(self) -> bool:
        """Whether training runs the public script's form (:mod:`tagood.detectors.vlm.krnft_train`): any of
        ``SCRIPT_FORM_DEFAULTS``' options away from its default (the presets ``paper`` and ``official``)."""
        return any(getattr(self.options, k) != v for k, v in SCRIPT_FORM_DEFAULTS.items())

    def _hidden(self, dim: int) -> int:
        o = self.options
        return script_hidden(dim, o.meta_dim) if o.meta_dim is not None else int(o.hidden)

    def _fit_script(self, train: FeatureSet, idx: np.ndarray, labels: np.ndarray, label_text: np.ndarray,
                    context: Context) -> None:
        """Cut the crops the epochs read, choose the surrogate views, train in the script's form."""
        o = self.options
        n = len(idx)
        plan = epoch_plan(n, o.epochs, o.batch_images, o.epoch_fraction, o.seed_reset, o.seed, o.crop_redraw)
        sets = sorted({ep.crop_set for ep in plan})
        dev = self._dev(context)
        torch.manual_seed(o.seed)
        assert self.text is not None and self.neg_text is not None
        self.nft = NFT(self.text.shape[1], self._hidden(self.text.shape[1]), half_meta=o.half_meta).to(dev)
        if not plan:  # epochs=0: untrained, the identity transform
            self.history = []
            self.nft.eval()
            return
        if train.extra.get("crop_embeds") is not None or o.crops == "preprocessed":
            if o.crop_redraw or o.crop_flip:
                log.warning("krnft: crop_redraw / crop_flip need crops=original cut from the images; using one set of "
                            "precomputed or preprocessed-image crops")
            crops = l2_normalize(self._crop_embeds(train, idx, context), dtype=np.float32)
            k_in, k_out = min(o.k_in, crops.shape[1]), min(o.k_out, max(crops.shape[1] - o.k_in, 0))
            ind_crops, ood_crops = select_crops(crops, label_text[labels], k_in, k_out)
            rows = {s_: np.arange(n) for s_ in sets}
        else:  # the original pictures, only the (crop set, image) pairs the epochs visit
            if train.images is None:
                raise InputError("krnft (crops=original) needs the images of the IND training split: set train.images "
                                 "(e.g. via dual_encoder.attach(train, source)) or give train.extra['crop_embeds']")
            need = sorted({(ep.crop_set, int(i)) for ep in plan for i in ep.order})
            encode = context.crop_encoder or self._encoder(context).encode_images
            k_in, k_out = min(o.k_in, o.n_crops), min(o.k_out, max(o.n_crops - o.k_in, 0))
            parts: list[tuple[np.ndarray, np.ndarray]] = []
            with progress_bar("KR-NFT crops", len(need)) as advance:
                for a in range(0, len(need), 256):  # the views chosen per block: all crops are never held at once
                    block = need[a : a + 256]
                    items = [(int(idx[i]), (int(o.seed), s_, int(idx[i]))) for s_, i in block]
                    crops = l2_normalize(encode_view_crops(train.images, items, encode, o.n_crops, flip=o.crop_flip,
                                                           progress=advance), dtype=np.float32)
                    parts.append(select_crops(crops, label_text[labels[[i for _, i in block]]], k_in, k_out))
            ind_crops, ood_crops = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            rows = {s_: np.full(n, -1, dtype=np.int64) for s_ in sets}
            for r, (s_, i) in enumerate(need):
                rows[s_][i] = r
        views = Views(ind=ind_crops, ood=ood_crops, row=rows, full=np.asarray(train.image_embeds, np.float32)[idx],
                      labels=labels)
        tp = torch.as_tensor(self.text, dtype=torch.float32, device=dev)
        tn = torch.as_tensor(self.neg_text, dtype=torch.float32, device=dev)
        log.info("KR-NFT (script form): %d steps over %d images, hidden %d", sum(-(-len(ep.order) // o.batch_images)
                 for ep in plan), n, self.nft.hidden)
        with progress_bar("KR-NFT training", o.epochs) as advance:
            self.history = train_views(
                self.nft, views, plan, tp, tn, self.logit_scale, lr=o.lr, weight_decay=o.weight_decay,
                schedule=o.lr_schedule, batch_images=o.batch_images, n_groups=o.n_groups, group_seed=o.seed,
                condition=o.condition, in_views=o.in_views, l_out_form=o.l_out, w_out=o.w_out, w_kr=o.w_kr,
                progress=advance)

    def _dev(self, context: Context | None = None) -> torch.device:
        return torch.device(self.options.device or (context.device if context is not None else "cpu"))

    def _attach(self, context: Context) -> None:
        """Check the dual encoder, if one is given, and move the NFT module to the device."""
        super()._attach(context)
        if self.nft is not None:
            self.nft.to(self._dev(context))

    def _train(self, x_in: np.ndarray, y_in: np.ndarray, x_out: np.ndarray, context: Context) -> None:
        o = self.options
        dev = self._dev(context)
        torch.manual_seed(o.seed)
        assert self.text is not None and self.neg_text is not None
        self.nft = NFT(self.text.shape[1], self._hidden(self.text.shape[1]), half_meta=o.half_meta).to(dev)
        tp = torch.as_tensor(self.text, dtype=torch.float32, device=dev)
        tn = torch.as_tensor(self.neg_text, dtype=torch.float32, device=dev)
        xi = torch.as_tensor(x_in, dtype=torch.float32, device=dev)
        yi = torch.as_tensor(y_in, dtype=torch.int64, device=dev)
        xo = torch.as_tensor(x_out, dtype=torch.float32, device=dev)
        opt = torch.optim.AdamW(self.nft.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        g = torch.Generator().manual_seed(o.seed)
        steps_per_epoch = max(1, int(np.ceil(len(xi) / o.batch_size)))
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs * steps_per_epoch)
                 if o.lr_schedule == "cosine" else None)
        k = tp.shape[0]
        scale = self.logit_scale
        self.history = []
        with progress_bar("KR-NFT training", o.epochs) as advance:
            for ep in range(o.epochs):
                perm_in = torch.randperm(len(xi), generator=g)
                perm_out = torch.randperm(len(xo), generator=g) if len(xo) else perm_in[:0]
                tot = {"loss": 0.0, "in": 0.0, "out": 0.0, "kr": 0.0}
                for s in range(steps_per_epoch):
                    bi = perm_in[s * o.batch_size : (s + 1) * o.batch_size]
                    n_o = int(np.ceil(len(xo) / steps_per_epoch)) if len(xo) else 0
                    bo = perm_out[s * n_o : (s + 1) * n_o]
                    v = torch.cat([xi[bi], xo[bo]])
                    cos = self.nft.cosines(v, tp, tn) * scale
                    l_in = F.cross_entropy(cos[: len(bi)], yi[bi])
                    if len(bo):
                        logp = torch.log_softmax(cos[len(bi) :], dim=1)
                        l_out = -torch.logsumexp(logp[:, k:], dim=1).mean()
                    else:
                        l_out = cos.new_zeros(())
                    l_kr = 1.0 - self.nft.kr_cosine(v, tp, tn).mean()
                    loss = l_in + o.w_out * l_out + o.w_kr * l_kr
                    optimizer_step(opt, sched, {"loss": loss, "in": l_in, "out": l_out, "kr": l_kr}, tot, steps_per_epoch)
                self.history.append(tot)
                log.debug("KR-NFT epoch %d: %s", ep, tot)
                advance(1)
        self.nft.eval()

    # -- scoring -----------------------------------------------------------------------------------
    def _row_banks(self, dev: torch.device) -> tuple[RowBank, RowBank]:
        """The IND and negative text rows prepared for scoring on ``dev`` (built once, reused)."""
        key = (str(dev), id(self.text), id(self.neg_text))
        if self._banks is None or self._banks[0] != key:
            tp = torch.as_tensor(self.text, dtype=torch.float32, device=dev)
            tn = torch.as_tensor(self.neg_text, dtype=torch.float32, device=dev)
            self._banks = (key, RowBank(tp), RowBank(tn))
        return self._banks[1], self._banks[2]

    def _module(self) -> NFT:
        if self.nft is None or self.text is None or self.neg_text is None:
            raise NotFittedError(self._not_fitted_text())
        return self.nft

    def confidence(self, image_embeds: np.ndarray) -> np.ndarray:
        """KR-NFT's confidence: the sum of the IND softmax probabilities over all tuned rows (batched).

        Args:
            image_embeds: ``(N, E)`` dual-encoder image embeddings.
        Returns:
            ``(N,)`` float64 confidences in ``[0, 1]``: **higher = more IND** (the score is its negative).
        """
        nft = self._module()
        dev = next(nft.parameters()).device
        bank_p, bank_n = self._row_banks(dev)
        x = np.asarray(image_embeds, dtype=np.float32)
        out = np.empty(len(x), dtype=np.float64)
        bs = self.options.score_batch
        with torch.inference_mode():
            for a in range(0, len(x), bs):
                v = torch.as_tensor(x[a : a + bs], device=dev)
                ap, cp, an, cn = nft.factors(v)
                zp = bank_p.scaled_cosines_t(v, ap, cp, self.logit_scale)  # (K,B) IND rows
                zn = bank_n.scaled_cosines_t(v, an, cn, self.logit_scale)  # (M,B) negative rows
                m = zp.amax(0) if zn.shape[0] == 0 else torch.maximum(zp.amax(0), zn.amax(0))
                s_in = _column_sums(zp.sub_(m).exp_())  # float32 exp, float64 sums
                s_out = _column_sums(zn.sub_(m).exp_())
                out[a : a + len(v)] = (s_in / (s_in + s_out)).cpu().numpy()
        return out

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert data.image_embeds is not None
        return -self.confidence(data.image_embeds)

    # -- persistence -------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``text``, ``neg_text`` and the NFT weights (``nft.<parameter>``); metadata: the negative words, the
        NFT's sizes and the training losses, besides :class:`VLMDetector`'s."""
        nft = self._module()
        arrays, meta = super()._state()
        assert self.neg_text is not None
        arrays["neg_text"] = self.neg_text
        arrays.update(persist.module_arrays("nft", nft))
        meta.update(neg_words=list(self.neg_words), dim=nft.dim, hidden=nft.hidden, half_meta=nft.half_meta,
                    history=list(self.history))
        return arrays, meta

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        super()._set_state(arrays, meta)
        self.neg_text = np.asarray(arrays["neg_text"])
        self.neg_words = [str(w) for w in meta["neg_words"]]
        self.history = [{str(k): float(v) for k, v in h.items()} for h in meta["history"]]
        self.nft = NFT(int(meta["dim"]), int(meta["hidden"]), half_meta=bool(meta.get("half_meta", False)))
        try:
            self.nft.load_state_dict(persist.module_state(arrays, "nft"))
        except RuntimeError as e:  # missing, unexpected or mis-shaped weights
            raise ValueError(f"the NFT weights do not fit dim {meta['dim']}, hidden {meta['hidden']}: {e}") from None
        self.nft.to(self._dev()).eval()
        self._banks = None

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> KRNFT:
        """Read a KR-NFT detector saved by ``det.save(directory)``. A thin wrapper kept for older callers: new code
        calls ``tagood.detectors.load(directory, context=tagood.Context(device=device))``.

        Args:
            directory: the saved detector's folder.
            device: the torch device it scores on.
        Returns:
            The fitted detector.
        """
        from tagood.detectors.base import load

        det = load(directory, Context(device=device))
        if not isinstance(det, cls):
            raise CheckpointError(f"{Path(directory) / persist.CONFIG} holds a '{det.name}' detector, not krnft")
        return det
