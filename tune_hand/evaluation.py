"""Scoring a checkpoint or a prediction file, with both constant baselines beside every score.

Splits: "evaluation" is the dataset's held-out evaluation set (needs `evaluation_xyz.json`
for scores; a submission can be written without it), "val" is the validation part of the
training set exactly as the checkpoint's run split it (same seed and fraction).

Submission: FreiHAND's `pred.json` = [xyz_list, verts_list] in image order, metres,
zipped as `pred.zip`. The model predicts keypoints, not a MANO mesh, so each verts entry
is 778 copies of the predicted keypoints' centroid: the right shape for the official
scorer, with meaningless mesh scores; the keypoint scores are the ones that count.
"""

from __future__ import annotations

import json
import math
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import model_from_checkpoint
from .data.dataset import HandPoseDataset, make_loader
from .data.freihand import FreiHAND, split_by_sample
from .errors import DataError, TuneHandError
from .io import atomic_write_bytes
from .metrics import mean_hand_camera, mean_hand_shape, score
from .training import predict_loader, select_device

NUM_VERTS = 778
SPLITS = ("evaluation", "val")


def split_items(data_dir: str | Path, split: str, data_seed: int,
                val_fraction: float) -> tuple[FreiHAND, np.ndarray, np.ndarray]:
    """(reader, image indices to score, training annotations (N, 21, 3) in mm for the baselines)."""
    if split not in SPLITS:
        raise TuneHandError(f"--split {split!r}: must be one of {', '.join(SPLITS)}")
    train = FreiHAND(data_dir, "training")
    train_idx, val_idx = split_by_sample(len(train), train.num_unique, val_fraction, data_seed)
    if split == "val":
        if len(val_idx) == 0:
            raise TuneHandError(f"--split val: the run used data.val_fraction={val_fraction}, so it has no validation images")
        return train, val_idx, train.xyz[np.unique(train_idx % train.num_unique)] * 1000.0
    reader = FreiHAND(data_dir, "evaluation")
    return reader, np.arange(len(reader)), train.xyz * 1000.0


def baseline_scores(train_xyz_mm: np.ndarray, gt_mm: np.ndarray) -> dict[str, dict[str, float]]:
    """Scores of the two constant predictors: the camera-frame mean hand and the mean hand shape."""
    n = len(gt_mm)
    camera = np.broadcast_to(mean_hand_camera(train_xyz_mm), (n, 21, 3))
    shape = mean_hand_shape(train_xyz_mm)
    # The mean shape has no place in the camera: put it at the camera mean's root for the unaligned figure.
    shape = shape - shape[:1] + mean_hand_camera(train_xyz_mm)[:1]
    return {
        "mean_hand_camera": _with_rr(score(np.array(camera), gt_mm), camera, gt_mm),
        "mean_hand_shape": _with_rr(score(np.broadcast_to(shape, (n, 21, 3)).copy(), gt_mm),
                                    np.broadcast_to(shape, (n, 21, 3)), gt_mm),
    }


def _with_rr(scores: dict[str, Any], pred: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    rr = np.linalg.norm((pred - pred[:, :1]) - (gt - gt[:, :1]), axis=-1).mean()
    return {**scores, "rr_mpjpe_mm": float(rr)}


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, split: str = "evaluation",
                        tta: int | None = None, device: str = "auto", batch_size: int | None = None,
                        submission: str | Path | None = None) -> dict[str, Any]:
    """Predict `split` with rotation averaging over `tta` angles and score it (when ground truth exists)."""
    dev = select_device(device)
    model, cfg, state = model_from_checkpoint(checkpoint, dev)
    tta = cfg.eval.tta_rotations if tta is None else tta
    if tta < 1:
        raise TuneHandError(f"--tta {tta}: must be at least 1")
    reader, indices, train_xyz_mm = split_items(data_dir, split, cfg.data.seed, cfg.data.val_fraction)
    dataset = HandPoseDataset(reader, indices, cfg.data.image_size, augment=None)
    loader = make_loader(dataset, batch_size or cfg.eval.batch_size, cfg.data.num_workers,
                         pin_memory=dev.type == "cuda")
    pred_mm, gt_mm = predict_loader(model, loader, device=dev, tta=tta)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "data": str(data_dir), "split": split, "tta": tta, "n": len(pred_mm),
        "epoch": int(state["epoch"]), "target": cfg.model.target,
    }
    if cfg.model.target == "root_relative":
        result["note"] = ("root-relative model: camera-frame points (mpjpe_mm, submission) place the predicted "
                          "hand at the training set's mean wrist position")
    elif cfg.model.target == "centroid_relative":
        result["note"] = ("centroid-relative model: camera-frame points (mpjpe_mm, submission) place the predicted "
                          "hand's joint centroid at the training set's mean centroid")
    if reader.has_xyz:
        result.update(_with_rr(score(pred_mm, gt_mm), pred_mm, gt_mm))
        result["baselines"] = baseline_scores(train_xyz_mm, gt_mm)
    else:
        result["note_scores"] = f"{reader.root}: no {split}_xyz.json, so no scores (submission only)"
    if submission is not None:
        write_submission(submission, pred_mm / 1000.0)
        result["submission"] = str(submission)
    return result


def submission_bytes(xyz_m: np.ndarray) -> bytes:
    """The zipped `pred.json` FreiHAND's scorer reads: [xyz_list, verts_list] in metres."""
    xyz_m = np.asarray(xyz_m, dtype=np.float64)
    centroids = xyz_m.mean(axis=1, keepdims=True)
    verts = np.broadcast_to(centroids, (len(xyz_m), NUM_VERTS, 3))
    # Keypoints exactly (shortest round-trip repr): rounding them, even to 1 um, moves the
    # Procrustes fit of a nearly collapsed prediction by hundredths of a mm. The placeholder
    # verts carry no score, so 1 um is plenty and keeps the file small.
    payload = json.dumps([xyz_m.tolist(), np.round(verts, 6).tolist()])
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pred.json", payload)
    return buf.getvalue()


def write_submission(path: str | Path, xyz_m: np.ndarray) -> Path:
    return atomic_write_bytes(path, submission_bytes(xyz_m))


def read_prediction(path: str | Path, expected: int) -> np.ndarray:
    """xyz (N,21,3) in metres from a `pred.json` or `pred.zip`; one-line errors on any mismatch."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("pred.json")]
                if not names:
                    raise DataError(f"{path}: zip holds no pred.json")
                data = json.loads(zf.read(names[0]))
        else:
            data = json.loads(path.read_text())
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read prediction file ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], list)):
        raise DataError(f"{path}: expected [xyz_list, verts_list] as FreiHAND's pred.json")
    xyz_list = data[0]
    if len(xyz_list) != expected:
        raise DataError(f"{path}: xyz_list has {len(xyz_list)} entries, the split has {expected} images")
    bad = next((i for i, p in enumerate(xyz_list) if _shape(p) != (21, 3)), None)
    if bad is not None:
        raise DataError(f"{path}: xyz_list[{bad}] has shape {_shape(xyz_list[bad])}, expected (21, 3) numbers")
    xyz = np.asarray(xyz_list, dtype=np.float64)
    if not np.isfinite(xyz).all():
        bad = int(np.argwhere(~np.isfinite(xyz))[0, 0])
        raise DataError(f"{path}: xyz_list[{bad}] is not finite")
    return xyz


def _shape(entry: Any) -> tuple | str:
    try:
        arr = np.asarray(entry, dtype=np.float64)
    except (ValueError, TypeError):
        return "ragged or non-numeric"
    return arr.shape


def score_file(pred: str | Path, data_dir: str | Path, split: str = "evaluation",
               data_seed: int = 0, val_fraction: float = 0.1) -> dict[str, Any]:
    """Score a FreiHAND-format prediction file against the ground truth, like the official script."""
    reader, indices, train_xyz_mm = split_items(data_dir, split, data_seed, val_fraction)
    if not reader.has_xyz:
        raise DataError(f"{reader.root}: no {split}_xyz.json ground truth to score against")
    pred_mm = read_prediction(pred, len(indices)) * 1000.0
    gt_mm = reader.xyz[indices % reader.num_unique] * 1000.0
    result = {"prediction": str(pred), "split": split, **_with_rr(score(pred_mm, gt_mm), pred_mm, gt_mm)}
    result["baselines"] = baseline_scores(train_xyz_mm, gt_mm)
    return result


def format_scores(result: dict[str, Any]) -> str:
    """A small table: the model's scores beside both constant baselines."""
    keys = ("pa_mpjpe_mm", "rr_mpjpe_mm", "freihand_aligned_mm", "auc_0_50mm", "mpjpe_mm")
    rows = [("model" + (f" (tta {result['tta']})" if "tta" in result else ""), result)]
    rows += [(name, s) for name, s in result.get("baselines", {}).items()]
    width = max([len(r[0]) for r in rows] + [18])
    lines = [" " * width + "  " + "  ".join(f"{k:>19}" for k in keys)]
    for name, s in rows:
        cells = "  ".join(f"{s.get(k, math.nan):>19.3f}" if isinstance(s.get(k), (int, float)) else f"{'-':>19}" for k in keys)
        lines.append(f"{name:<{width}}  {cells}")
    return "\n".join(lines)
