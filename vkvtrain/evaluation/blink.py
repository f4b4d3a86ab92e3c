"""Evaluate an MLM on BLINK questions: batched answers, per-subtask scores, latent surfacing gap.

>>> from vkvtrain.evaluation.blink import parse_choice
>>> parse_choice("The correct answer is (B)", 2)
'B'

``evaluate_blink(mlm, questions, config)`` answers every question in batches (generation or likelihood
mode, see :mod:`vkvtrain.evaluation.scoring`), reads the image value tokens of the same prefill for the
latent probes (:mod:`vkvtrain.evaluation.latent`), and returns the per-question records plus the results
dict that :mod:`vkvtrain.evaluation.report` writes. With a :class:`~vkvtrain.evaluation.sharding.Shard` of
several processes each answers its batches and every process gets all records back, in input order.

Probe layer (never a max over the evaluated questions): ``probe_layer`` = an int fixes one layer (an index
into the model's LM layers, negative counts from the end); ``"heldout"`` puts a deterministic share
(``heldout_fraction``, by a hash of the question idx) of each subtask aside, picks the layer with the best
probe accuracy there, and reports the surfacing gap on the remaining questions only.
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from vkvtrain.data.blink import BLINK_SUBTASKS, LETTERS, BlinkQuestion
from vkvtrain.data.blink_points import fill_points
from vkvtrain.errors import RecipeError
from vkvtrain.evaluation.config import EvalConfig, ProbeConfig
from vkvtrain.evaluation.latent import probe_correct_batch, probe_kind
from vkvtrain.evaluation.parse import PARSERS, parse_choice
from vkvtrain.evaluation.report import log_wandb, summarize
from vkvtrain.evaluation.scoring import Answer, generate_answers, score_choices
from vkvtrain.evaluation.sharding import Shard
from vkvtrain.layers import resolve_layers
from vkvtrain.probes.surfacing_gap import SurfacingGap

__all__ = ["evaluate_blink", "parse_choice", "is_heldout", "latent_summary"]


def is_heldout(idx: str, fraction: float) -> bool:
    """Deterministic membership of question ``idx`` in the layer-selection part."""
    return zlib.crc32(idx.encode()) % 10_000 < fraction * 10_000


def _length_key(q: BlinkQuestion) -> tuple[int, int, int]:
    """Sort key approximating a question's token count: images, pixels, prompt characters."""
    return (len(q.images), sum(im.width * im.height for im in q.images), len(q.prompt))


def _record(q: BlinkQuestion, a: Answer, mode: str, parser: str = "strict") -> dict[str, Any]:
    """One responses.jsonl line; ``points`` (the coordinates the point probes used) where the question has them."""
    if mode == "likelihood":
        assert a.scores is not None
        prediction: str | None = LETTERS[max(range(len(a.scores)), key=a.scores.__getitem__)]
    else:
        prediction = PARSERS[parser](a.response or "", q.n_choices)
    return {
        "idx": q.idx,
        "sub_task": q.sub_task,
        "answer": q.answer,
        "n_choices": q.n_choices,
        "response": a.response,
        "scores": a.scores,
        "prediction": prediction,
        "correct": prediction is not None and prediction == q.answer,
        **({"points": {im: {k: list(xy) for k, xy in m.items()} for im, m in q.points.items()}} if q.points else {}),
    }


def evaluate_blink(
    mlm: Any,
    questions: Sequence[BlinkQuestion],
    config: EvalConfig | None = None,
    progress: bool = True,
    logger: Any = None,
    shard: Shard | None = None,
    subtasks: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Answer ``questions`` in batches; returns (records, results).

    config: the answer keys used here are mode, batch_size, max_new_tokens, prompt, parser and probes.
    records: one dict per question, in input order (idx, sub_task, answer, response, scores, prediction,
    correct, ``probe_correct`` (per probed layer) where a probe applies, and ``points`` where the question has
    marked points). results: see report.summarize (over ``subtasks``, default the questions' own), plus
    ``latent`` when probes ran and ``markers`` (per subtask: questions searched for drawn markers, located,
    not_found with reasons) when markers were looked for. logger: a wandb Run or Lightning WandbLogger; the
    tables are logged to it. shard: this process's part of a sharded run.
    """

    opts = config or EvalConfig()
    shard = shard or Shard()
    markers: dict[str, Any] = {}
    if opts.probes.enabled and opts.probes.locate_markers:
        questions, markers = fill_points(questions, opts.probes.marker_cache)
    run_probes = opts.probes.enabled and any(probe_kind(q) is not None for q in questions)
    layers = resolve_layers(opts.probes.layers, mlm.num_layers, "probes.layers") if run_probes else []
    if run_probes and opts.probes.probe_layer != "heldout":
        fixed = resolve_layers([int(opts.probes.probe_layer)], mlm.num_layers, "probes.probe_layer")[0]
        if fixed not in layers:
            raise RecipeError(f"probes.probe_layer={opts.probes.probe_layer} is not among probes.layers {layers}")

    # Batches of similar length waste less compute on padding; records keep the input order.
    order = sorted(range(len(questions)), key=lambda i: _length_key(questions[i]))
    batches = [order[s : s + opts.batch_size] for s in range(0, len(order), opts.batch_size)]
    answered: list[tuple[int, dict[str, Any]]] = []
    bar = tqdm(total=len(questions), desc=f"BLINK ({opts.mode}, {shard.world_size} process"
               f"{'es' if shard.world_size > 1 else ''})", disable=not (progress and shard.is_main), unit="q")
    for step in range(shard.steps(len(batches))):
        if (b := shard.batch_at(step)) < len(batches):
            where = batches[b]
            chunk = [questions[i] for i in where]
            probe_out: list[Any] = [None] * len(chunk)

            def on_prefill(batch: Any, cache: Any) -> None:
                if run_probes:
                    probe_out[:] = probe_correct_batch(chunk, batch.spans, cache, layers)

            if opts.mode == "likelihood":
                answers = score_choices(mlm, chunk, opts.prompt, on_prefill)
            else:
                answers = generate_answers(mlm, chunk, opts.prompt, opts.max_new_tokens, on_prefill)
            for i, q, a, pc in zip(where, chunk, answers, probe_out):
                rec = _record(q, a, opts.mode, opts.parser)
                if pc is not None:
                    rec["probe_correct"] = pc.tolist()
                    rec["probe_heldout"] = opts.probes.probe_layer == "heldout" and is_heldout(
                        q.idx, opts.probes.heldout_fraction)
                answered.append((i, rec))
        bar.update(shard.total(len(answered)) - bar.n)  # questions done over all processes
    bar.close()
    slots: list[dict[str, Any] | None] = [None] * len(questions)
    for i, rec in shard.gather(answered):
        slots[i] = rec
    records = [r for r in slots if r is not None]

    results = summarize(records, subtasks)
    results["mode"] = opts.mode
    results["model"] = getattr(mlm, "name", None)
    if markers:
        results["markers"] = markers
    if run_probes:
        results["latent"] = latent_summary(records, layers, opts.probes, mlm.num_layers)
    if logger is not None:
        log_wandb(results, logger)
    return records, results


def _gap_metrics(records: Sequence[dict[str, Any]], n_layers: int) -> tuple[SurfacingGap, SurfacingGap]:
    """(evaluated part, held-out part) SurfacingGap states over the records that carry a probe result."""
    gap_eval, gap_select = SurfacingGap(len(BLINK_SUBTASKS), n_layers), SurfacingGap(len(BLINK_SUBTASKS), n_layers)
    for rec in records:
        if "probe_correct" not in rec:
            continue
        metric = gap_select if rec["probe_heldout"] else gap_eval
        metric.update(torch.tensor([BLINK_SUBTASKS.index(rec["sub_task"])]), torch.tensor([bool(rec["correct"])]),
                      torch.tensor([rec["probe_correct"]], dtype=torch.bool))
    return gap_eval, gap_select


def latent_summary(
    records: Sequence[dict[str, Any]], layers: list[int], probes: ProbeConfig, n_model_layers: int
) -> dict[str, Any]:
    """Per subtask: the chosen layer and, at it, output/probe accuracy and both gap shares (eval part)."""
    gap_eval, gap_select = _gap_metrics(records, len(layers))
    ev = gap_eval.compute() if gap_eval.update_called else None
    sel = gap_select.compute() if gap_select.update_called else None
    out: dict[str, Any] = {"layer_selection": str(probes.probe_layer), "layers": layers, "subtasks": {}}
    for s, name in enumerate(BLINK_SUBTASKS):
        n = int(gap_eval.total[s])
        if n == 0 and int(gap_select.total[s]) == 0:
            continue
        if probes.probe_layer == "heldout":
            if sel is None or int(gap_select.total[s]) == 0:
                col = None
            else:
                col = int(torch.nan_to_num(sel["probe_accuracy"][s], nan=-1.0).argmax())
        else:
            col = layers.index(int(probes.probe_layer) % n_model_layers)  # checked in evaluate_blink

        def at(key: str) -> float | None:
            return None if col is None or ev is None or n == 0 else round(float(ev[key][s, col]), 6)

        out["subtasks"][name] = {
            "layer": None if col is None else layers[col],
            "n": n,
            "n_heldout": int(gap_select.total[s]),
            "output_accuracy": None if ev is None or n == 0 else round(float(ev["output_accuracy"][s]), 6),
            "probe_accuracy": at("probe_accuracy"),
            "gap_all": at("gap_all"),
            "gap_wrong": at("gap_wrong"),
            "per_layer": {
                k: [round(v, 6) for v in ev[k][s].tolist()] if ev is not None else None
                for k in ("probe_accuracy", "gap_all", "gap_wrong")
            },
        }
    return out
