"""A model's perception score for the input-embedding correlation, read from a ``vkvtrain evaluate`` run.

The score is the BLINK macro accuracy in the run's ``results.json`` (a fraction in [0, 1]); the file it came
from is recorded beside it, so a correlation table always names the measurements it was computed from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vkvtrain.errors import RecipeError


@dataclass(frozen=True)
class PerceptionScore:
    """``value``: BLINK macro accuracy (fraction); ``source``: the results.json it was read from; ``model``: the
    model that file evaluated; ``n``: the questions it scored."""

    value: float
    source: str
    model: str
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "model": self.model, "n": self.n}


def read_perception_score(path: str | Path, spec: str) -> PerceptionScore:
    """The BLINK macro accuracy of model ``spec`` from ``vkvtrain evaluate``'s ``results.json`` at ``path``.

    Raises:
        RecipeError: the file is missing or not an evaluate results file, holds no macro accuracy, evaluated
            another model, or evaluated a checkpoint or interventions (not the model as probed).
    """
    p = Path(path)
    where = f"perception_results {str(p)!r}"
    if not p.is_file():
        raise RecipeError(f"{where} does not exist; run `vkvtrain evaluate` for {spec} and name its results.json")
    try:
        results = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecipeError(f"{where} is not JSON ({err}); name the results.json that `vkvtrain evaluate` wrote") from err
    if not isinstance(results, dict) or "macro" not in results or "model" not in results:
        raise RecipeError(f"{where} is not a `vkvtrain evaluate` results.json (no 'macro' and 'model' fields)")
    macro = results["macro"]
    if not isinstance(macro, (int, float)) or isinstance(macro, bool) or not math.isfinite(macro):
        raise RecipeError(f"{where} holds no BLINK macro accuracy (macro={macro!r}): it scored no question with a "
                          f"gold answer")
    if results["model"] != spec:
        raise RecipeError(f"{where} evaluated {results['model']!r}, not {spec!r}; name the results.json of this model")
    if results.get("ckpt_path") or results.get("interventions"):
        raise RecipeError(f"{where} evaluated {spec} with a checkpoint or interventions; the probes read the model "
                          f"itself, so name a results.json of the plain model")
    return PerceptionScore(float(macro), str(p), str(results["model"]), int(results.get("n", 0)))
