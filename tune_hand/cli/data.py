"""`tune-hand synth` and `inspect`: synthetic datasets and what a dataset directory holds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import print_json_or


def cmd_synth(args) -> int:
    from ..data.synthetic import render_dataset, write_preview

    out = Path(args.out)
    # `synth OUT --preview FILE.png` on an existing dataset only draws the preview.
    preview_only = args.preview and args.train is None and (out / "training_K.json").exists()
    if not preview_only:
        def progress(done: int, total: int) -> None:
            if sys.stderr.isatty():
                print(f"\rrendering {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

        summary = render_dataset(out, n_train=64 if args.train is None else args.train, n_eval=16 if args.eval is None else args.eval,
                                 seed=args.seed, image_size=args.image_size, with_mesh_files=not args.no_mesh,
                                 overwrite=args.overwrite, progress=progress)
        print(f"wrote {summary['dir']}: {summary['train_images']} training images "
              f"({summary['train_images'] // 4} poses x 4 colour versions), {summary['eval_images']} evaluation images "
              f"in {summary['seconds']:.1f}s ({summary['images_per_s']:.0f} images/s)")
    if args.preview:
        print(f"preview: {write_preview(out, args.preview, count=args.preview_count)}")
    return 0


def cmd_inspect(args) -> int:
    from ..data.inspect import format_report, inspect_dataset

    info = inspect_dataset(args.data)
    print_json_or(args, info, format_report(info))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="render a synthetic dataset in the FreiHAND layout")
    p.add_argument("out", help="output directory (must not exist or be empty)")
    p.add_argument("--train", type=int, help="unique training samples (4 colour versions each; default 64)")
    p.add_argument("--eval", type=int, help="evaluation images (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--no-mesh", action="store_true", help="skip the large mano/verts JSON files")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--preview", metavar="FILE.png", help="write a contact sheet of samples with keypoints drawn")
    p.add_argument("--preview-count", type=int, default=16)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("inspect", help="summarise a FreiHAND-layout directory and check it")
    p.add_argument("data")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)
