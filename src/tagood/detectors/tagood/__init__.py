"""The TagOOD method: IND vocabulary, decomposition into object tokens, projector with EMA class
centres, scores, and its ablations as registered detectors (``tagood``, ``tagscore``, ``cs``, ``ce+cs``)."""

from tagood.detectors.tagood.decompose import TagRule, mean_tokens, select_tokens, token_mask
from tagood.detectors.tagood.detector import CECS, CS, TagOOD, TagScore
from tagood.detectors.tagood.projector import Projector
from tagood.detectors.tagood.scores import NO_TAG_SCORE, centre_score
from tagood.detectors.tagood.train import PRESETS, TrainConfig, ema_update, embed, train_projector
from tagood.detectors.tagood.vocabulary import Vocabulary, build_vocabulary

__all__ = ["CECS", "CS", "NO_TAG_SCORE", "PRESETS", "Projector", "TagOOD", "TagRule", "TagScore", "TrainConfig", "Vocabulary",
           "build_vocabulary", "centre_score", "ema_update", "embed", "mean_tokens", "select_tokens", "token_mask", "train_projector"]
