"""The TagOOD method: IND vocabulary, decomposition into object tokens, projector with EMA class
centres, scores, and its ablations as registered detectors (``tagood``, ``tagscore``, ``cs``, ``ce+cs``)."""

from tagood.tagood.decompose import TagRule, mean_tokens, select_tokens, token_mask
from tagood.tagood.detector import CECS, CS, TagOOD, TagScore
from tagood.tagood.projector import Projector
from tagood.tagood.scores import NO_TAG_SCORE, centre_score
from tagood.tagood.train import PRESETS, TrainConfig, ema_update, embed, train_projector
from tagood.tagood.vocabulary import Vocabulary, build_vocabulary

__all__ = ["CECS", "CS", "NO_TAG_SCORE", "PRESETS", "Projector", "TagOOD", "TagRule", "TagScore", "TrainConfig", "Vocabulary",
           "build_vocabulary", "centre_score", "ema_update", "embed", "mean_tokens", "select_tokens", "token_mask", "train_projector"]
