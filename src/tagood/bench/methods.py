"""The method lists of the benchmarks: which detectors a config runs when it names none, and which the
built-in and ImageNet benchmarks run."""

from __future__ import annotations

#: Classic detectors of the foundation issue, in the order the tables list them (a config's default ``methods``).
CLASSIC = ["msp", "maxlogit", "energy", "odin", "react", "ash", "lhact", "featurenorm", "knn", "mahalanobis", "vim"]
#: TagOOD and its ablations (TagOOD paper Tables 3-5).
TAGOOD = ["tagscore", "cs", "ce+cs", "tagood"]
TAGOOD_SWEEP = ["tagood[tau=0]", "tagood[tau=0.25]", "tagood[tau=0.75]", "tagood[test_tokens=all]", "tagood[score=chunk]",
                "tagood[score=euclid]", "tagood[score=kl]", "tagood[tags=gt]", "cs[tau=0]", "cs[tau=0.25]", "cs[tau=0.75]",
                "cs[test_tokens=all]"]
#: Vision-language methods (paper defaults on CLIP for ImageNet; see ``tagood.bench.config.VLM_DEMO_DEFAULTS``).
VLM = ["mcm", "glmcm", "neglabel", "csp", "adaneg", "locoop", "krnft"]
#: The TagOOD paper's Table 1 baselines and TagOOD. ODIN back-propagates through the tagger (RAM's Swin
#: encoder / CLIP's vision tower, ``torch_module()``) and the IND head; FeatureNorm reads the tagger's
#: ``block_norms`` (every Swin / ViT block) and picks its block on jigsaw-shuffled training images.
IMAGENET_METHODS = ["msp", "maxlogit", "energy", "odin", "react", "ash", "lhact", "featurenorm", "knn[k=1000]", "mahalanobis",
                    "vim", "tagscore", "cs", "ce+cs[preset=paper]", "tagood[preset=paper]"]


def default_methods() -> list[str]:
    """The methods of the built-in benchmarks: classic baselines, TagOOD and its ablations, and the
    vision-language methods on the offline dual encoder."""
    return CLASSIC + TAGOOD + VLM
