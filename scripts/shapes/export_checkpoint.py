"""Write a trained M3-Shapes checkpoint as a self-contained folder, its frozen tower included.

    python scripts/shapes/export_checkpoint.py SRC DST

`llava.train.train` leaves a frozen vision tower out of the checkpoint, as LLaVA does (the tower is
read again from `mm_vision_tower`, e.g. a CLIP on the hub). The tiny M3-Shapes tower lives in a
scratch folder, so the shipped checkpoint must carry it: this loads SRC through
`load_pretrained_model` (which fills the tower from `mm_vision_tower`) and saves model, tokenizer,
image processor and the training log to DST.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

from llava.model.builder import load_pretrained_model

LOGS = ("trainer_state.json",)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    tokenizer, model, image_processor, _ = load_pretrained_model(str(args.src), None, args.src.name, device="cpu")
    args.dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.dst)
    tokenizer.save_pretrained(args.dst)
    image_processor.save_pretrained(args.dst)
    for name in LOGS:
        if (args.src / name).exists():
            shutil.copy(args.src / name, args.dst / name)
    print(f"wrote {args.dst} (vision tower included)")


if __name__ == "__main__":
    main()
