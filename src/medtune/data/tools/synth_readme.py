"""The README.md a synthetic dataset folder ships with: how it was made, its classes, its spurious cue.

The text states the arguments (seed, size, shares), the class traits (``synth_render.TRAITS``), the
marker's agreement with the class per split and, for a multi-label set, the findings and their counts.
"""

from __future__ import annotations

from medtune.data.tools.synth_plan import SHIFTS
from medtune.data.tools.synth_render import AREA_SHARE, CLASSES, FINDING_SHARE, TRAITS


def readme(
    info: dict,
    counts: dict[str, dict[str, int]],
    agreement: dict[str, float],
    found: dict[str, dict[str, int]] | None = None,
) -> str:
    """README.md text; ``found`` (findings per split) adds the multi-label section."""
    return _readme(info, counts, agreement) + (_readme_findings(found) if found else "")


def _readme(info: dict, counts: dict[str, dict[str, int]], agreement: dict[str, float]) -> str:
    """README.md text: how the folder was made, what the classes and the spurious cue are, the layout."""
    traits = "\n".join(f"| {k} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in v) + " |" for k, v in TRAITS.items())
    splits = "\n".join(f"- `{s}.json`: {', '.join(f'{k} {v}' for k, v in c.items())}" for s, c in counts.items())
    agree = ", ".join(f"{s} {a:.2f}" for s, a in agreement.items())
    return f"""# Synthetic dermoscopy-like lesions

Made by `python -m medtune.data synth` (`src/medtune/data/synth.py`) with seed {info["seed"]}, {info["n"]} images
of {info["size"]} x {info["size"]} px; the same arguments reproduce these files byte for byte.

## Classes
One lesion per image: an irregular polygon (the COCO `segmentation`) on textured skin with 1-4
hairs, covering about {AREA_SHARE[0]:.0%}-{AREA_SHARE[1]:.0%} of the image. The classes (category ids 1-3:
{", ".join(CLASSES)}) differ only by the lesion; each trait is drawn per image from a normal
(mean ± sd below, clipped to [0, 1]) that overlaps between classes, so no trait alone decides.

| trait | {" | ".join(CLASSES)} |
|---|---|---|---|
{traits}

irregularity/asymmetry: border harmonics; dark_share: black or blue-grey blotches; blue: blue-grey
share of them; blotch: internal texture and dark dots; darkness: brown shade.

## Spurious cue
A large coloured patch in a corner (like a sticker, ruler or ink mark: about a fifth of the side),
red/green/blue for {"/".join(CLASSES)}; the image entry's `marker_class` is the category it names.
Shifted splits ({info["shift"]}: {", ".join(SHIFTS[info["shift"]]) or "none"}) have a marker independent of the class
(a balanced random shift, so a third agree); every other split names the class for
{info["cue_agreement"]:.0%} of its images, as train does. Share of images whose marker names their class:
{agree}. A whole-image model that reads the marker scores well on the unshifted splits and drops on the
shifted ones; a model that looks at the lesion does not.

## Layout
- `images/<split>_<image id>.png`; `file_name` in the JSON is relative to `images/`.
{splits}
- Image (and annotation) ids are unique across the three files.
"""


def _readme_findings(found: dict[str, dict[str, int]]) -> str:
    """README.md section of a multi-label set: the artefact findings and their counts per split."""
    splits = "\n".join(f"- `{s}.json`: {', '.join(f'{k} {v}' for k, v in c.items())}" for s, c in found.items())
    return f"""
## Multi-label findings
Made with `--multilabel`. Two artefacts are extra categories, annotated with an empty
`segmentation` (masks stay the lesion's): `ruler` (id {len(CLASSES) + 1}, a light strip with dark ticks
along one edge, {FINDING_SHARE[0]:.0%} of each split) and `ink_mark` (id {len(CLASSES) + 2}, a violet arc
around the lesion, {FINDING_SHARE[1]:.0%}). They are independent of the class; an image's label set is
its lesion class plus its findings.
{splits}
"""
