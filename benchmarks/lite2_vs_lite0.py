"""EfficientNet-Lite2 vs Lite0 on real photos: top-1 on labelled photos (two Lite2 resize choices)
and extraction speed (preprocess + forward per image) measured side by side in one run.

Photos: scikit-learn's and scikit-image's bundled photos and photographic Tux Paint stamps
(Debian ``tuxpaint-stamps-default``; composited on white) whose ImageNet class is unambiguous.

    OMP_NUM_THREADS=1 TAGOOD_HOME=/tmp/th .venv/bin/python benchmarks/lite2_vs_lite0.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tagood.backbones.efficientnet import LITE2, EfficientNetLite, EfficientNetLite0, EfficientNetLite2, LiteVariant

STAMPS = Path("/usr/share/tuxpaint/stamps")
#: (image, accepted ImageNet class names)
STAMP_LABELS = {
    "animals/birds/pink_flamingo.png": {"flamingo"}, "animals/birds/ostrich.png": {"ostrich"},
    "animals/birds/peacock.png": {"peacock"}, "animals/birds/pelican.png": {"pelican"},
    "animals/birds/hen.png": {"hen"}, "animals/birds/rooster.png": {"cock"},
    "animals/birds/magpie.png": {"magpie"}, "animals/birds/vulture.png": {"vulture"},
    "animals/birds/owl.png": {"great grey owl"}, "animals/birds/tucan.png": {"toucan"},
    "animals/birds/gander.png": {"goose"}, "animals/birds/crowned_crane.png": {"crane (bird)"},
    "animals/birds/rainbow-lorikeet.png": {"lorikeet"},
    "animals/mammals/elephant.png": {"Asian elephant", "African bush elephant", "tusker"},
    "animals/mammals/hippopotamus.png": {"hippopotamus"}, "animals/mammals/wildboar.png": {"wild boar"},
    "animals/mammals/badger.png": {"badger"}, "vehicles/garbagetruck.png": {"garbage truck"},
}


def labelled_photos() -> list[tuple[str, Image.Image, set[str]]]:
    from skimage import data
    from sklearn.datasets import load_sample_image

    out = [("china.jpg", Image.fromarray(load_sample_image("china.jpg")), {"palace", "monastery", "stupa", "bell-cot"}),
           ("flower.jpg", Image.fromarray(load_sample_image("flower.jpg")), {"daisy"}),
           ("chelsea", Image.fromarray(data.chelsea()), {"tabby cat", "tiger cat", "Egyptian Mau"}),
           ("coffee", Image.fromarray(data.coffee()), {"espresso", "cup"}),
           ("rocket", Image.fromarray(data.rocket()), {"missile", "space shuttle", "projectile"})]
    for rel, names in STAMP_LABELS.items():
        p = STAMPS / rel
        if p.exists():
            rgba = Image.open(p).convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            out.append((rel, Image.alpha_composite(bg, rgba).convert("RGB"), names))
    return out


def top1(bb: EfficientNetLite, photos: list[tuple[str, Image.Image, set[str]]]) -> tuple[int, float]:
    """Correct top-1 count and the mean probability given to the accepted classes."""
    x = np.stack([bb.preprocess(im) for _, im, _ in photos])
    out = bb.forward(x)
    names = bb.tag_names
    ok, p = 0, []
    for i, (_, _, want) in enumerate(photos):
        ok += names[int(out.logits[i].argmax())] in want
        p.append(sum(float(out.tag_probs[i, names.index(w)]) for w in want))
    return ok, float(np.mean(p))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    photos = labelled_photos()
    lite0, lite2 = EfficientNetLite0(), EfficientNetLite2()

    class Lite2Wide(EfficientNetLite2):  # the other resize choice: 260 / 0.875 = 297
        variant = LiteVariant(LITE2.name, LITE2.package, LITE2.file_class, 260, 9, 21)

    wide = Lite2Wide(cache_dir=lite2.cache_dir)
    Lite2Wide._crop_box = lambda self, w, h: _box(w, h, 260 / 297)  # type: ignore[method-assign]
    print(f"{len(photos)} labelled photos")
    for name, bb in (("lite0 256/224", lite0), ("lite2 292/260", lite2), ("lite2 297/260", wide)):
        ok, p = top1(bb, photos)
        print(f"{name:14s} top-1 {ok}/{len(photos)}  mean p(true) {p:.3f}")

    imgs = [im for _, im, _ in photos]
    imgs = (imgs * (args.batch // len(imgs) + 1))[: args.batch]
    times: dict[str, list[float]] = {"lite0": [], "lite2": []}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        for name, bb in (("lite0", lite0), ("lite2", lite2)):
            t = time.perf_counter()
            bb.forward(np.stack([bb.preprocess(im) for im in imgs]))
            times[name].append((time.perf_counter() - t) / len(imgs))
    m0, m2 = np.median(times["lite0"]), np.median(times["lite2"])
    print(f"extraction ms/image (median of {args.repeats}): lite0 {m0 * 1e3:.1f}, lite2 {m2 * 1e3:.1f}; "
          f"lite2/lite0 = {m2 / m0:.2f}x")


def _box(w: int, h: int, frac: float) -> tuple[float, float, float, float]:
    side = frac * min(w, h)
    left, top = (w - side) / 2.0, (h - side) / 2.0
    return left, top, left + side, top + side


if __name__ == "__main__":
    main()
