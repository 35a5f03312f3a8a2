"""Sweep specs shipped as package data: `tune-hand search paper` finds `paper.yaml` here."""

from pathlib import Path

SPEC_DIR = Path(__file__).parent
