"""The TagOOD method (Li et al., "TagOOD: A Novel Approach to Out-of-Distribution Detection via Vision-Language
Representations and Class Center Learning", ACM MM 2024) and its ablations, as registered detectors: ``tagood``,
``cs``, ``ce+cs`` and ``tagscore``. Scores: higher = more OOD.

Modules, one concept each:

* :mod:`~tagood.detectors.tagood.vocabulary`: the IND vocabulary (rules, file format, held-out fit);
* :mod:`~tagood.detectors.tagood.selection`: choices on held-out IND training images (vocabulary rule and size by
  cross-validation, the no-tag rule);
* :mod:`~tagood.detectors.tagood.memo`: vocabularies shared by the detectors fitted with one ``Context``;
* :mod:`~tagood.detectors.tagood.decompose`: object tokens from tags and attention;
* :mod:`~tagood.detectors.tagood.inputs`: the FeatureSet fields they read, checked present;
* :mod:`~tagood.detectors.tagood.projector`, :mod:`~tagood.detectors.tagood.config` (training options, presets),
  :mod:`~tagood.detectors.tagood.train`: the projector and its training with EMA class centres;
* :mod:`~tagood.detectors.tagood.scores`: scores against class centres;
* the detectors: :mod:`~tagood.detectors.tagood.tagbase` (shared options, vocabulary at fit, saved state),
  :mod:`~tagood.detectors.tagood.tagscore`, :mod:`~tagood.detectors.tagood.centres` (scoring against centres),
  :mod:`~tagood.detectors.tagood.method` (TagOOD), :mod:`~tagood.detectors.tagood.ablations` (CS, (CE)+CS).
"""

from tagood.detectors.tagood.ablations import CECS, CS
from tagood.detectors.tagood.centres import CentreDetector, CentreOptions, class_means
from tagood.detectors.tagood.config import DETECTOR_PRESETS, PRESETS, TrainConfig, TrainOptions
from tagood.detectors.tagood.decompose import TagRule, mean_tokens, select_tokens, token_mask
from tagood.detectors.tagood.memo import VocabularyMemo
from tagood.detectors.tagood.method import TagOOD
from tagood.detectors.tagood.projector import Projector
from tagood.detectors.tagood.scores import NO_TAG_SCORE, SCORES, centre_score
from tagood.detectors.tagood.selection import choose_no_tag, select_vocabulary
from tagood.detectors.tagood.tagbase import NO_TAG_RULES, PAPER, TagDetector
from tagood.detectors.tagood.tagscore import TagScore
from tagood.detectors.tagood.train import ema_update, embed, train_projector
from tagood.detectors.tagood.vocabulary import VOCAB_RULES, Vocabulary, VocabularyError, build_vocabulary

__all__ = ["CECS", "CS", "DETECTOR_PRESETS", "NO_TAG_RULES", "NO_TAG_SCORE", "PAPER", "PRESETS", "SCORES", "CentreDetector",
           "CentreOptions", "Projector", "TagDetector", "TagOOD", "TagRule", "TagScore", "TrainConfig", "TrainOptions",
           "VOCAB_RULES", "Vocabulary", "VocabularyError", "VocabularyMemo", "build_vocabulary", "centre_score",
           "choose_no_tag", "class_means", "ema_update", "embed", "mean_tokens", "select_tokens", "select_vocabulary",
           "token_mask", "train_projector"]
