"""`tune-hand report`: one self-contained HTML page of a sweep, and its PNGs, from storage alone.

    build_report("sweeps/q1", "report/", retrain_dir="final/")

    OUT/index.html          every figure embedded (no network, no server needed to view)
    OUT/history.png         optimisation history (Optuna's plot)
    OUT/parallel.png        parallel coordinates of the searched parameters (Optuna's plot)
    OUT/importances.png     parameter importances (Optuna's PED-ANOVA evaluator)
    OUT/asha.png            the metric against epoch for every trial, ASHA's rungs, where trials stopped
    OUT/best_curve.png      the best trial's learning curve
    OUT/predictions.png     the best checkpoint's predictions on evaluation images (when the data is here)
    OUT/tta.png             rotation averaging's gain (when a retrain directory is given)

No Ray is needed: trials, states and results come from the experiment directory
(`tune_hand.sweep`). Optuna's plots are drawn from a study rebuilt from those files, each
trial told with the best value it reported; trials ASHA stopped early thus enter with
values from fewer epochs, which the page says beside the plots.
"""

from __future__ import annotations

import base64
import html
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TuneHandError
from .io import atomic_directory, write_json

STATE_COLOURS = {"finished": "#1b7837", "stopped early": "#d95f02", "diverged": "#b2182b", "error": "#7f7f7f",
                 "running": "#2166ac", "pending": "#bdbdbd"}


def build_report(exp_dir: str | Path, out_dir: str | Path, retrain_dir: str | Path | None = None,
                 data_dir: str | Path | None = None, images: int = 12, overwrite: bool = False) -> dict[str, Any]:
    """Write the report of the experiment `exp_dir` (a directory or a bucket URI) to `out_dir`
    (atomically); returns what it holds."""
    from .sweep.experiment import open_experiment

    with open_experiment(exp_dir) as exp:  # a bucket's small files copied once for every reader below
        return _build_report(exp, out_dir, retrain_dir, data_dir, images, overwrite)


def _build_report(exp_dir, out_dir: str | Path, retrain_dir: str | Path | None, data_dir: str | Path | None,
                  images: int, overwrite: bool) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from .sweep.experiment import read_experiment
    from .sweep.results import load_status, trial_results

    status = load_status(exp_dir)
    spec, meta = read_experiment(exp_dir)
    rows = trial_results(exp_dir)
    if not status["trials"]:
        raise TuneHandError(f"{status['experiment']}: no trials yet; nothing to report")
    order = sorted(status["trials"], key=lambda t: _started(rows.get(t["trial_id"], [])))
    retrain = _read_retrain(retrain_dir) if retrain_dir else None

    figures: list[tuple[str, str, str, bytes | None]] = []  # (file, title, caption, png or None)
    study = _study(spec, order, rows)
    figures.append(_optuna_figure("history.png", "Optimisation history", study, "plot_optimization_history",
                                  f"Each trial's best {spec.metric} in the order trials started, and the best so "
                                  "far. Trials ASHA stopped early enter with the best value of the epochs they ran."))
    figures.append(_optuna_figure("parallel.png", "Parallel coordinates", study, "plot_parallel_coordinate",
                                  "Each line is a trial, coloured by its best value (darker is better for min)."))
    figures.append(_optuna_figure("importances.png", "Parameter importances", study, "plot_param_importances",
                                  "Optuna's PED-ANOVA importances of the searched parameters for the best value."))
    figures.append(("asha.png", "ASHA: the metric against epoch for every trial",
                    "Dotted lines: ASHA's rungs. Circles: trials that ran the whole budget; crosses: trials "
                    "stopped early, at the rung that stopped them; triangles: diverged trials. Thick: the best trial.",
                    _asha_png(order, rows, spec, status)))
    best = status["best"]
    png = _best_curve_png(rows.get(best["trial_id"], []), spec.metric) if best else None
    figures.append(("best_curve.png", f"Learning curve of the best trial ({best['trial_id']})" if best else
                    "Learning curve of the best trial", "Validation metrics and training loss per epoch." if png else
                    "No trial has a scored epoch yet.", png))
    data = Path(data_dir or meta.get("data_dir") or "")
    png = _predictions_png(exp_dir, data, images)
    figures.append(("predictions.png", "The best checkpoint on evaluation images",
                    "White: ground truth; colours: prediction (thumb red ... little finger magenta). Root-relative "
                    "models are drawn at the true wrist." if png else
                    f"Not drawn: no evaluation split at {data} (pass --data) or no checkpoint kept yet.", png))
    if retrain is not None:
        png = _tta_png(retrain)
        figures.append(("tta.png", f"Rotation averaging after the retrain ({retrain['tta']} angles)",
                        "Scores on the evaluation split of the retrained best config, with and without rotation "
                        "averaging, beside the two constant baselines." if png else
                        "The retrain's evaluation split has no ground truth: no scores.", png))

    page = _html(status, spec, meta, order, figures, retrain)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for name, _, _, png in figures:
            if png is not None:
                (tmp / name).write_bytes(png)
        (tmp / "index.html").write_text(page)
        write_json(tmp / "status.json", status)
        tmp.chmod(0o755)  # a report is for reading, also by a web server's user
    return {"out": str(out_dir), "html": str(Path(out_dir) / "index.html"),
            "figures": [name for name, _, _, png in figures if png is not None],
            "missing": {name: caption for name, _, caption, png in figures if png is None}}


# -- the study Optuna's plots read ------------------------------------------------------------
def _study(spec, trials: list[dict], rows: dict[str, list[dict]]):
    """An in-memory study with one COMPLETE trial per scored sweep trial (params, per-epoch values)."""
    import optuna

    from .sweep.space import define_by_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=spec.objective.direction)
    keys = {p.key for p in spec.space}
    for t in trials:
        if t["best_metric"] is None:
            continue
        study.enqueue_trial({k: v for k, v in t["config"].items() if k in keys}, skip_if_exists=False)
        trial = study.ask()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            define_by_run(trial, spec)
        for row in rows.get(t["trial_id"], []):
            value = row.get(spec.metric)
            if _finite(value) and not row.get("diverged"):
                trial.report(value, int(row["epoch"]))
        trial.set_user_attr("state", t["state"])
        trial.set_user_attr("trial_id", t["trial_id"])
        study.tell(trial, t["best_metric"])
    return study


def _optuna_figure(name: str, title: str, study, plot: str, caption: str):
    import optuna.visualization.matplotlib as ovm

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return name, title, f"Needs at least two scored trials ({len(complete)} so far).", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib backend is marked experimental
            ax = getattr(ovm, plot)(study)
        fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
        fig.set_size_inches(11 if plot == "plot_parallel_coordinate" else 8, 5 if plot == "plot_parallel_coordinate" else 4.5)
        fig.tight_layout()
        return name, title, caption, _png(fig)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. no parameter varies
        return name, title, f"Not available: {' '.join(str(e).split())[:200]}", None


# -- our own figures ---------------------------------------------------------------------------
def _asha_png(trials: list[dict], rows: dict[str, list[dict]], spec, status: dict) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    best_id = status["best"]["trial_id"] if status["best"] else None
    finite = [r[spec.metric] for t in trials for r in rows.get(t["trial_id"], [])
              if _finite(r.get(spec.metric)) and not r.get("diverged")]
    top = spec.objective.worst_of(finite)
    top = 1.0 if top is None else top
    for milestone in _rungs(spec):
        ax.axvline(milestone, color="#999999", linestyle=":", linewidth=1)
    markers = {"finished": "o", "stopped early": "x", "diverged": "^", "error": "s"}
    for t in trials:
        trial_rows = rows.get(t["trial_id"], [])
        xs = [int(r["epoch"]) for r in trial_rows if _finite(r.get(spec.metric)) and not r.get("diverged")]
        ys = [r[spec.metric] for r in trial_rows if _finite(r.get(spec.metric)) and not r.get("diverged")]
        colour = STATE_COLOURS.get(t["state"], "#000000")
        width = 2.8 if t["trial_id"] == best_id else 1.0
        if xs:
            ax.plot(xs, ys, color=colour, linewidth=width, alpha=0.85)
        if t["state"] == "diverged" and t["epochs"]:
            ax.plot([t["epochs"]], [top], marker="^", color=colour, markersize=9, linestyle="none")
        elif xs and t["state"] in markers:
            ax.plot([xs[-1]], [ys[-1]], marker=markers[t["state"]], color=colour, markersize=8, linestyle="none",
                    markeredgewidth=2)
    for state in ("finished", "stopped early", "diverged", "error", "running"):
        if any(t["state"] == state for t in trials):
            ax.plot([], [], color=STATE_COLOURS[state], marker=markers.get(state, ""), label=state)
    ax.set_xlabel("epoch")
    ax.set_ylabel(spec.metric)
    ax.set_xlim(0.5, spec.max_epochs + 0.5)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _rungs(spec) -> list[float]:
    if spec.scheduler.type != "asha":
        return []
    out, m = [], float(spec.scheduler.grace_period)
    while m < spec.max_epochs:
        out.append(m)
        m *= spec.scheduler.reduction_factor
    return out


def _best_curve_png(rows: list[dict], metric: str) -> bytes | None:
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not r.get("diverged")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    epochs = [int(r["epoch"]) for r in rows]
    for key in dict.fromkeys([metric, "pa_mpjpe_mm", "rr_mpjpe_mm"]):
        values = [r.get(key) for r in rows]
        if all(_finite(v) for v in values):
            ax.plot(epochs, values, marker="o", linewidth=2.2 if key == metric else 1.2, label=f"val {key}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mm")
    ax.grid(alpha=0.3)
    loss = [r.get("train_loss") for r in rows]
    if all(_finite(v) and v > 0 for v in loss):
        ax2 = ax.twinx()
        ax2.plot(epochs, loss, color="#7f7f7f", linestyle="--", label="train loss (MSE, mm^2)")
        ax2.set_yscale("log")
        ax2.set_ylabel("train loss")
        ax2.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _predictions_png(exp_dir, data: Path, images: int) -> bytes | None:
    import cv2
    import torch

    from .checkpoint import model_from_checkpoint
    from .data.dataset import HandPoseDataset, make_loader
    from .data.freihand import FreiHAND
    from .errors import DataError
    from .sweep.results import best_checkpoint
    from .tb import prediction_images

    if not (data / "evaluation_K.json").is_file():
        return None
    try:
        _, _, checkpoint = best_checkpoint(exp_dir)
        reader = FreiHAND(data, "evaluation")
    except (TuneHandError, DataError):
        return None
    model, cfg, _ = model_from_checkpoint(checkpoint, "cpu")
    dataset = HandPoseDataset(reader, np.arange(min(images, len(reader))), cfg.data.image_size, augment=None)
    batch = next(iter(make_loader(dataset, len(dataset), 0)))
    grid, _ = prediction_images(model, batch, torch.device("cpu"), n=len(dataset))
    ok, png = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return png.tobytes() if ok else None


def _read_retrain(retrain_dir: str | Path) -> dict[str, Any]:
    path = Path(retrain_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
        _ = metrics["tta"], metrics["scores"], metrics["scores_no_tta"], metrics["baselines"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TuneHandError(f"{path}: not a `tune-hand retrain` result (metrics.json missing or incomplete)") from None
    return metrics


def _tta_png(retrain: dict[str, Any]) -> bytes | None:
    import matplotlib.pyplot as plt

    if not retrain.get("scores") or not retrain.get("baselines"):
        return None
    keys = [k for k in ("pa_mpjpe_mm", "rr_mpjpe_mm", "freihand_aligned_mm") if k in retrain["scores"]]
    series = [(f"model, {retrain['tta']} rotations", retrain["scores"]), ("model, plain", retrain["scores_no_tta"]),
              ("mean hand (camera)", retrain["baselines"]["mean_hand_camera"]),
              ("mean hand shape", retrain["baselines"]["mean_hand_shape"])]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(series)
    for i, (label, scores) in enumerate(series):
        xs = np.arange(len(keys)) + (i - (len(series) - 1) / 2) * width
        bars = ax.bar(xs, [scores[k] for k in keys], width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(np.arange(len(keys)), keys)
    ax.set_ylabel("mm (lower is better)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# -- the page ----------------------------------------------------------------------------------
# Marks the page's own load check for headless browsers: body[data-images] = "loaded/total",
# body[data-errors] = script and resource errors seen.
_CHECK = """<script>
let errors = 0;
window.addEventListener("error", () => { errors += 1; document.body.dataset.errors = errors; }, true);
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = ok + "/" + imgs.length;
  document.body.dataset.errors = errors;
});
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 3px 8px; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0; } figcaption, .note { color: #555; font-size: 0.85em; max-width: 800px; }
img { max-width: 100%; border: 1px solid #eee; } .state { font-weight: 600; }
</style>"""


def _html(status: dict, spec, meta: dict, trials: list[dict], figures: list, retrain: dict | None) -> str:
    e = html.escape
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    best = status["best"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>tune-hand report: {e(str(status['name']))}</title>", _STYLE, "</head><body>", _CHECK,
        f"<h1>Sweep {e(str(status['name']))}</h1>",
        f"<p>Spec <b>{e(spec.name)}</b> (hash {e(str(status['spec_hash']))}), {e(spec.metric)} ({e(spec.mode)}), "
        f"{len(trials)}/{status['num_samples']} trials: "
        + ", ".join(f"{n} {e(s)}" for s, n in sorted(counts.items()))
        + f"; up to {spec.max_epochs} epochs each, {sum(t['epochs'] for t in trials)} trial-epochs run. "
        f"Dataset {e(str(meta.get('data_dir')))}.</p>",
    ]
    cost = status.get("cost")
    if cost:
        budget = "" if cost.get("budget_hours") is None else f" of a {cost['budget_hours']:g} h budget"
        parts.append(f"<p>Cost: {cost['resource_hours']:.3g} {e(cost.get('unit', 'cpu').upper())}-hours{budget} "
                     f"({cost['gpu_hours']:.3g} GPU-h, {cost['cpu_hours']:.3g} CPU-h, wall {cost['wall_hours']:.3g} h)"
                     + (f"; forked from {e(str(status['forked_from'].get('experiment')))}"
                        if status.get("forked_from") else "") + ".</p>")
    if best:
        params = ", ".join(f"{e(k)}={e(_short(v))}" for k, v in best["config"].items()
                           if k in {p.key for p in spec.space})
        parts.append(f"<p>Best: trial <b>{e(best['trial_id'])}</b>, {e(spec.metric)} = "
                     f"<b>{best['best_metric']:.3f}</b> at epoch {best['best_epoch']} ({params}).</p>")
    if retrain and retrain.get("scores"):
        s, p = retrain["scores"], retrain["scores_no_tta"]
        parts.append(f"<p>Retrained on training + validation ({retrain['epochs']} epochs): evaluation "
                     f"pa_mpjpe_mm {s['pa_mpjpe_mm']:.2f} with {retrain['tta']}-rotation averaging "
                     f"({p['pa_mpjpe_mm']:.2f} without), rr_mpjpe_mm {s['rr_mpjpe_mm']:.2f} "
                     f"({p['rr_mpjpe_mm']:.2f}).</p>")
    for name, title, caption, png in figures:
        parts.append(f"<h2>{e(title)}</h2>")
        if png is None:
            parts.append(f"<p class='note'>{e(caption)}</p>")
            continue
        data = base64.b64encode(png).decode()
        parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{e(title)}' data-file='{e(name)}'>"
                     f"<figcaption>{e(caption)} ({e(name)})</figcaption></figure>")
    parts.append("<h2>All trials</h2>")
    parts.append(_table(trials, spec, status))
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(trials: list[dict], spec, status: dict) -> str:
    e = html.escape
    keys = [p.key for p in spec.space]
    ordered = sorted(trials, key=lambda t: spec.objective.sort_key(t["best_metric"]))
    head = "".join(f"<th>{e(k)}</th>" for k in ["trial", "state", "epochs", f"best {spec.metric}", "best epoch"] + keys)
    body = []
    for t in ordered:
        cells = [e(t["trial_id"]),
                 f"<span class='state' style='color:{STATE_COLOURS.get(t['state'], '#000')}'>{e(t['state'])}</span>",
                 f"{t['epochs']}/{spec.max_epochs}",
                 "-" if t["best_metric"] is None else f"{t['best_metric']:.3f}",
                 "-" if t["best_epoch"] is None else str(t["best_epoch"])]
        cells += [e(_short(t["config"].get(k, ""))) for k in keys]
        body.append("<tr>" + "".join(f"<td class='num'>{c}</td>" if i in (2, 3, 4) else f"<td>{c}</td>"
                                     for i, c in enumerate(cells)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _started(rows: list[dict]) -> float:
    times = [r.get("timestamp") for r in rows if isinstance(r.get("timestamp"), (int, float))]
    return min(times) if times else math.inf


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
