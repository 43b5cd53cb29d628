"""Protocol records: what a FID/IS/KID number was measured with, and whether two are comparable.

Every result carries one record per compared side (generated samples, a data set, a statistics
file), all with the same keys:
    source           generator checkpoint, data set path or statistics file
    kind             generator | npz | folder | shards | stats
    num_images       images the statistics were computed from
    image_resolution [H, W] of the images given to Inception (before its resize to 299)
    resize_filter    how images were brought to that resolution first (none | area | bilinear)
    split            data split the user declared (train, test, ...), if any
    network, resize, weights_sha256, standard_weights   the Inception side (inception.protocol())
    xflip            whether the set holds x-flipped copies of its images (bigtrain never flips a
                     reference; None for generated sides and other tools' files)
    content_sha256   the data set's content hash (provenance.data_sha256)
    code_version     the code that computed the record (provenance.code_version)
Generated sides add seed, truncation, class, ema, kimg and checkpoint, `label_sampling` (how
fake labels were drawn) and `training` (provenance.training_record: the data set the generator
learned, images seen, wall-clock, processes, device, code version, config hash), and, for a generator
that translates images (CycleGAN, Pix2Pix), `inputs`: the direction, the images' source, their
count and sha256 (Recipe.generation_inputs).
A statistics file made by another tool (pytorch-fid, TTUR, StudioGAN) has only `mu` and `sigma`:
its record has the source and kind and None elsewhere.
"""

from __future__ import annotations

from typing import Optional

SIDE_KEYS = (
    "source", "kind", "num_images", "image_resolution", "resize_filter", "split",
    "network", "resize", "weights_sha256", "standard_weights", "xflip", "content_sha256", "code_version",
)  # fmt: skip


def side(source: str, kind: str, inception: dict, **fields) -> dict:
    """A side record: the Inception fields plus the given ones; unknown keys stay None."""
    record = dict.fromkeys(SIDE_KEYS)
    record.update(source=source, kind=kind)
    record.update({k: inception.get(k) for k in ("network", "resize", "weights_sha256", "standard_weights")})
    record.update(fields)
    return record


def unknown_side(source: str) -> dict:
    """The record of a statistics file without metadata."""
    return side(source, "stats", {})


def _res(value: Optional[list]) -> str:
    return "x".join(str(v) for v in value)


def compare(a: dict, b: Optional[dict], a_name: str = "A", b_name: str = "B") -> list[str]:
    """Warnings, one line each, for everything that makes a number from `a` vs `b` not
    comparable with published ones or with each other (`b` None: `a` alone, e.g. for IS).
    Empty when all is consistent."""
    found: list[str] = []
    for name, rec in ((a_name, a), (b_name, b)) if b is not None else ((a_name, a),):
        if rec.get("network") is None:
            found.append(
                f"{name} ({rec.get('source') or 'unknown source'}) carries no protocol metadata (made by another "
                "tool?): "
                "its Inception weights, resize and image count cannot be checked"
            )
        elif rec.get("standard_weights") is False:
            sha = rec.get("weights_sha256")
            what = (
                f"non-standard Inception weights (sha256 {sha[:16]}...)"
                if sha
                else "an untrained Inception (no weights file)"
            )
            found.append(f"{name} used {what}: not comparable with published FID/IS/KID")
    inputs = a.get("inputs")
    if inputs and a.get("num_images") and a["num_images"] > inputs["num_images"]:
        found.append(
            f"{a_name}: {a['num_images']} translations of {inputs['num_images']} distinct inputs, so some images are "
            "counted more than once"
        )
    if b is None:
        return found
    both = [k for k in ("network", "resize", "weights_sha256") if a.get(k) is not None and b.get(k) is not None]
    for key in both:
        if a[key] != b[key]:
            found.append(f"{a_name} and {b_name} differ in {key}: {a[key]} vs {b[key]}")
    inputs = a.get("inputs")
    if inputs and b.get("source") is not None and inputs.get("source") == b.get("source"):
        found.append(
            f"{a_name} translates the images of {b_name}'s source ({b['source']}): score translations against the "
            "target domain's statistics"
        )
    found += _provenance_mismatches(a, b, a_name, b_name)
    ra, rb = a.get("image_resolution"), b.get("image_resolution")
    if ra and rb and list(ra) != list(rb):
        found.append(
            f"{a_name} has {_res(ra)} images and {b_name} {_res(rb)}: they reach Inception at different "
            "resolutions (resize both to one resolution, e.g. with --resolution)"
        )
    return found


def _provenance_mismatches(a: dict, b: dict, a_name: str, b_name: str) -> list[str]:
    """Warnings for the provenance fields two sides both carry and disagree on: x-flips of two
    data sets, and a reference computed from other data than the generator learned, unless it
    declares a split (a held-out split is other data on purpose)."""
    found = []
    if a.get("xflip") is not None and b.get("xflip") is not None and a["xflip"] != b["xflip"]:
        flipped, plain = (a_name, b_name) if a["xflip"] else (b_name, a_name)
        found.append(f"{flipped} holds x-flipped copies of its images and {plain} does not")
    for gen, gen_name, ref, ref_name in ((a, a_name, b, b_name), (b, b_name, a, a_name)):
        trained = (gen.get("training") or {}).get("data_sha256")
        content = ref.get("content_sha256")
        if trained and content and trained != content and not ref.get("split"):
            found.append(
                f"{ref_name} was computed from other data (content sha256 {content[:12]}...) than {gen_name}'s "
                f"generator learned ({gen['training'].get('data')}, {trained[:12]}...); if it is a held-out split, "
                "say so with ref-stats --split"
            )
    return found
