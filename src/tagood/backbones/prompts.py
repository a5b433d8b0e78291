"""Prompt templates and prompt encoding shared by the vision-language OOD methods.

MCM (Ming et al., NeurIPS 2022), GL-MCM (Miyai et al., 2023), NegLabel (Jiang et al., ICLR 2024)
and KR-NFT (Zhu et al., ACM MM 2025) all use CLIP's single prompt ``"a photo of a {}."``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tagood.core.numeric import l2_normalize

#: CLIP's zero-shot single prompt, used by MCM / GL-MCM / NegLabel / KR-NFT.
DEFAULT_TEMPLATE = "a photo of a {}."

#: CLIP's 7-template ImageNet prompt ensemble (Radford et al., ICML 2021; the subset of its 80
#: templates chosen in CLIP's prompt-engineering notebook). On the offline dual encoder it raises
#: zero-shot accuracy on Fashion-MNIST classes 0-5 from 25.0% (single prompt) to 33.8% (see
#: tagood.backbones.offline). Name it in a method spec as ``templates=clip7``.
CLIP_ENSEMBLE_7 = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                   "a {} in a video game.", "art of the {}.", "a photo of the small {}.")

#: KR-NFT's public code (github.com/ZhuWenjie98/KRNFT, 86cdbbd6): the IND labels' and noun negatives' prompt
#: (``--network.backbone.text_prompt nice``, ``openood/networks/clip_krnft.py:421-422``), the adjective negatives'
#: prompt (``clip_krnft.py:543``) and the prompt that ranks a training image's crops (``krnft_trainer.py:184``).
KRNFT_TEMPLATE = "the nice {}."
KRNFT_ADJ_TEMPLATE = "This is a {} photo."
KRNFT_SELECT_TEMPLATE = DEFAULT_TEMPLATE

#: Named template lists accepted wherever a method takes ``templates``.
NAMED_TEMPLATES = {"clip7": CLIP_ENSEMBLE_7, "single": (DEFAULT_TEMPLATE,)}


def resolve_templates(templates: str | Sequence[str] | None, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """The template list of a method: ``templates`` (a list, or a name in ``NAMED_TEMPLATES``) or ``[template]``."""
    if templates is None or (not isinstance(templates, str) and not list(templates)):
        return [template]
    if isinstance(templates, str):
        if templates in NAMED_TEMPLATES:
            return list(NAMED_TEMPLATES[templates])
        if "{}" in templates:
            return [templates]
        raise ValueError(f"unknown template list {templates!r}; named lists: {', '.join(sorted(NAMED_TEMPLATES))}, "
                         "or give a list of templates with a '{}' placeholder")
    return [str(t) for t in templates]


def clean_name(name: str) -> str:
    """A class name as prompt text: underscores to spaces, surrounding space stripped."""
    return str(name).replace("_", " ").strip()


def fill(names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """``template`` filled with each (cleaned) name; the template needs a ``{}`` placeholder."""
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} needs a '{{}}' placeholder")
    return [template.format(clean_name(n)) for n in names]


def encode_prompts(encoder: Any, names: Sequence[str], templates: Sequence[str] = (DEFAULT_TEMPLATE,)) -> np.ndarray:
    """One L2-normalised text embedding per name: templates filled, encoded, averaged, renormalised.

    Uses ``encoder.encode_texts`` (the :class:`tagood.backbones.dual_encoder.DualEncoder` protocol).
    """
    templates = list(templates)
    if not templates:
        raise ValueError("encode_prompts needs at least one template")
    for tpl in templates:
        if "{}" not in tpl:
            raise ValueError(f"prompt template {tpl!r} needs a '{{}}' placeholder")
    texts = [tpl.format(clean_name(n)) for n in names for tpl in templates]
    e = np.asarray(encoder.encode_texts(texts), dtype=np.float64).reshape(len(names), len(templates), -1).mean(axis=1)
    return l2_normalize(e).astype(np.float32)
