"""What the model benchmarks share: the real tiny-COCO images and the same size/repeat options."""

from __future__ import annotations

import argparse
from pathlib import Path

TINY_COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-coco"


def model_bench_parser(doc: str | None, batch: int, repeats: int) -> argparse.ArgumentParser:
    """--data (tiny-COCO), --arch, --width, --size, --batch, --repeats; callers add their own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=TINY_COCO)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser
