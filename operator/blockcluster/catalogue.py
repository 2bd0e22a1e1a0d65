"""What Block's own image can serve: GPUs, models and the profiles that join them (pure).

The predictor sidecar and the engine twin build a latency model for `(engine.gpu, model,
engine.tensorParallel)` at start and exit when Block ships no profile for it (an `mlp.csv` with
rows at that tensor-parallel degree: `block.simulator.latency.LatencyModel.load`). The CRD
refuses such a spec at admission (`cel_rules`, built from the same data) and the spec model
refuses it too (`problem`), so a cluster that cannot run is never reported Ready.

Only the profiles packaged with Block count (`block.data`), never `$BLOCK_PROFILES_DIR` of the
process rendering the CRD: the CRD must not depend on who printed it. An image of your own with
more profiles (`spec.predictor.image`, and `spec.engine.image` for the twin) lifts the check.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

from block import data
from block.simulator import hardware, models

TENSOR_PARALLEL_SIZES: tuple[int, ...] = (1, 2, 4, 8)
TP_COLUMN = "num_tensor_parallel_workers"


def gpus() -> tuple[str, ...]:
    """GPU names a profile ships for (lower case; the processes lower-case what they get)."""
    return tuple(sorted({g for g, _, _ in profiles()}))


def model_names() -> tuple[str, ...]:
    """Hugging Face ids of the catalogue (`block.simulator.models.CATALOGUE`), exact case."""
    return tuple(sorted(models.CATALOGUE))


def model_spellings() -> tuple[str, ...]:
    """Short names `get_model` also accepts, in lower case: `llama-2-7b`, `llama-2-7b-hf`."""
    aliases = set(models.ALIASES)
    return tuple(sorted(aliases | {f"{a}-hf" for a in aliases}))


def canonical_model(name: str) -> str | None:
    """The catalogue id `name` stands for (as `block.simulator.models.get_model` resolves it,
    file paths aside: they would name files of the pod, not of the operator), or None."""
    if name in models.CATALOGUE:
        return name
    alias = models.ALIASES.get(name.lower().removesuffix("-hf"))
    return alias


def _tp_degrees(path: Path) -> frozenset[int]:
    try:
        with path.open(newline="") as f:
            return frozenset(
                int(v) for r in csv.DictReader(f) if (v := r.get(TP_COLUMN) or "").isdigit()
            )
    except OSError:
        return frozenset()


@functools.cache
def profiles() -> frozenset[tuple[str, str, int]]:
    """Every (gpu, model id, tensor parallel) Block's packaged profiles can serve."""
    found: set[tuple[str, str, int]] = set()
    roots = (data.PROFILES, data.VIDUR_COMPUTE)
    # GPUs with data-sheet figures: a GPU known only by a profile folder also needs a spec.json
    # for the analytic attention model, which only images of your own would bring.
    for gpu in sorted(hardware.DATA_SHEETS):
        for model in models.CATALOGUE:
            for root in roots:
                degrees = _tp_degrees(root / gpu / model / "mlp.csv")
                found.update((gpu, model, tp) for tp in degrees if tp in TENSOR_PARALLEL_SIZES)
    return frozenset(found)


def problem(gpu: str, model: str, tensor_parallel: int) -> str | None:
    """Why Block's image cannot serve this (a sentence naming the field), or None."""
    key = gpu.lower()
    if key not in gpus():
        return f"engine.gpu must be one of: {', '.join(gpus())} (Block's latency profiles)"
    canonical = canonical_model(model)
    if canonical is None:
        return f"model must be one of: {', '.join(model_names())} (or its short name)"
    if (key, canonical, tensor_parallel) not in profiles():
        sizes = sorted(tp for g, m, tp in profiles() if (g, m) == (key, canonical))
        return (
            f"Block has no latency profile for {canonical} on {key} at tensorParallel "
            f"{tensor_parallel} (it has: {', '.join(map(str, sizes)) or 'none'})"
        )
    return None


def cel_maps() -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """`gpu/model` -> tensor-parallel sizes, as the CRD's rule looks them up: by exact model
    id, and by lower-cased short name (the rule lower-cases the spec's model for those)."""
    exact: dict[str, set[int]] = {}
    short: dict[str, set[int]] = {}
    for gpu, model, tp in profiles():
        exact.setdefault(f"{gpu}/{model}", set()).add(tp)
        for spelling in model_spellings():
            if models.ALIASES[spelling.removesuffix("-hf")] == model:
                short.setdefault(f"{gpu}/{spelling}", set()).add(tp)
    return (
        {k: sorted(v) for k, v in sorted(exact.items())},
        {k: sorted(v) for k, v in sorted(short.items())},
    )


# --- The CRD's CEL rules (`crd_objects` places them on the spec) ----------------------------


def _own_images_cel() -> str:
    """CEL twin of `BlockClusterSpec.own_images`: every Block container's image is the user's."""
    return "(has(self.predictor.image) && (self.engine.kind != 'twin' || has(self.engine.image)))"


def cel_rules() -> list[dict[str, Any]]:
    """GPU, model and tensor-parallel size must have a profile in Block's image (its predictor
    and twin exit at start otherwise), unless every Block container runs an image of the
    user's (`specs.BlockClusterSpec.own_images`)."""
    own = _own_images_cel()
    known = gpus()
    gpu_list = ", ".join(f"'{g}'" for g in known)
    names = ", ".join(f"'{m}'" for m in model_names())
    spellings = ", ".join(f"'{m}'" for m in model_spellings())
    known_gpu = f"(self.engine.gpu.lowerAscii() in [{gpu_list}])"
    known_model = f"(self.model in [{names}] || self.model.lowerAscii() in [{spellings}])"
    # gpu/model -> sizes, looked up by key: a key built with string(tensorParallel) would have
    # no bounded size and no bounded CEL cost.
    exact, short = cel_maps()
    tp = "self.engine.tensorParallel"
    profiled = " || ".join(
        f"(({key}) in {_cel_map(table)} && {tp} in {_cel_map(table)}[{key}])"
        for key, table in (
            ("self.engine.gpu.lowerAscii() + '/' + self.model", exact),
            ("self.engine.gpu.lowerAscii() + '/' + self.model.lowerAscii()", short),
        )
    )
    return [
        {
            "rule": f"{own} || {known_gpu}",
            "message": f"engine.gpu must be one of: {', '.join(known)} (Block's latency profiles; "
            "an image of your own with more: set predictor.image, and engine.image for the twin)",
            "reason": "FieldValueInvalid",
            "fieldPath": ".engine.gpu",
        },
        {
            "rule": f"{own} || {known_model}",
            "message": f"model must be one Block has a latency profile for: "
            f"{', '.join(model_names())}, or its short name (e.g. llama-2-7b)",
            "reason": "FieldValueInvalid",
            "fieldPath": ".model",
        },
        {
            "rule": f"{own} || !{known_gpu} || !{known_model} || {profiled}",
            "message": "Block has no latency profile for this model on this GPU at this "
            "tensorParallel (its predictor would exit at start); see the CRD's "
            "engine.tensorParallel description for what there is",
            "reason": "FieldValueInvalid",
            "fieldPath": ".engine.tensorParallel",
        },
    ]


def _cel_map(table: dict[str, list[int]]) -> str:
    entries = ", ".join(f"'{k}': [{', '.join(map(str, v))}]" for k, v in table.items())
    return "{" + entries + "}"


def profiled_sizes() -> str:
    """`model on gpu: 1, 2` lines of what Block's profiles cover, for a description."""
    by_pair: dict[tuple[str, str], list[int]] = {}
    for gpu, model, tp in sorted(profiles()):
        by_pair.setdefault((model, gpu), []).append(tp)
    return "; ".join(
        f"{model} on {gpu}: {', '.join(map(str, tps))}"
        for (model, gpu), tps in sorted(by_pair.items())
    )
