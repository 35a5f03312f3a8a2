"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import platform

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def model_bench_parser(doc: str, config: str = "small", batch_size: int = 32) -> argparse.ArgumentParser:
    """The arguments every model benchmark takes: --config/--set, --batch-size, --device, --threads, --json."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--config", default=config)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json")
    return p


def model_bench_setup(args):
    """(config with random init, device) for parsed `model_bench_parser` arguments; sets the threads."""
    from tune_hand.config import load_config
    from tune_hand.training import select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_config(args.config, args.overrides + ["model.pretrained=false"]), select_device(args.device)
