"""Pretrain the tiny M3-Shapes CLIP tower on dense per-patch labels, then save it in CLIP format.

    python scripts/shapes/pretrain_tower.py --data DIR --tower INIT/clip --out OUT [--steps 1500]

Real LLaVA/M3 models start from a CLIP tower that was pretrained elsewhere and stays frozen while the
language model learns to read it. M3-Shapes has no such tower, and learning one from scratch through
the answers alone is what kept earlier recipes on the answer-prior plateau (docs/Shapes.md): one
single-word answer per question says little about where the shapes are. The scene behind every
training image is known, so this script supervises every patch of the 24x24 grid instead:

- colour: the colour that covers most of the patch (one of the 4 backgrounds or 5 shape colours);
- kind:   the kind of the shape that covers most of the patch (or "none");
- size:   small / large / none for that shape;
- centre: whether the centre of a shape's box falls in this patch (one patch per shape, so the sum
          over patches is the number of shapes: the signal counting questions need);
- object: on centre patches only, the whole shape's kind and size (one of 8 classes). A patch of a
          small shape sees a corner or an edge that several kinds share, so the per-patch kind label
          is ambiguous; naming the object at its centre makes the tower gather the neighbouring
          patches into one place, which is what "is there a small X?" needs.

Five linear heads read the layer that LLaVA reads (`--select-layer`, -2 as in `mm_vision_select_layer`)
and are thrown away afterwards; only the tower is saved (with its image processor), ready for
`llava.train.train --vision_tower OUT`. Images and scenes come from the training split only
(`llava.data.shapes`), the last `--val-images` of it held back to report per-patch accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPImageProcessor

from llava.data.shapes import BACKGROUND_COLORS, SHAPE_COLORS, SHAPE_KINDS, SIZE_FRACTIONS, Scene, Shape, label_map
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

BACKGROUNDS = list(BACKGROUND_COLORS)
COLORS = list(SHAPE_COLORS)
SIZES = list(SIZE_FRACTIONS)
HEADS = {
    "color": len(BACKGROUNDS) + len(COLORS),
    "kind": 1 + len(SHAPE_KINDS),
    "size": 1 + len(SIZES),
    "centre": 2,
    "object": len(SHAPE_KINDS) * len(SIZES),
}
IGNORE = -100  # target of the patches a head does not learn from


def scene_from_record(record: dict) -> Scene:
    shapes = tuple(Shape(s["kind"], s["color"], s["size"], tuple(s["bbox"])) for s in record["shapes"])
    return Scene(background=record["background"], shapes=shapes, image_size=record["image_size"])


def patch_targets(scene: Scene, grid: int) -> dict[str, np.ndarray]:
    """(grid, grid) integer targets of every head for one scene."""
    labels = label_map(scene)
    size = scene.image_size
    if size % grid:
        raise ValueError(f"image side {size} px is not a multiple of the {grid}x{grid} patch grid")
    patch = size // grid
    num_labels = len(scene.shapes) + 1
    blocks = labels.reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3).reshape(grid, grid, -1)
    counts = np.stack([(blocks == k).sum(-1) for k in range(num_labels)], axis=-1)
    major = counts.argmax(-1)  # 0 = background, i + 1 = scene.shapes[i]
    color = np.array(
        [BACKGROUNDS.index(scene.background)] + [len(BACKGROUNDS) + COLORS.index(s.color) for s in scene.shapes]
    )
    kind = np.array([0] + [1 + SHAPE_KINDS.index(s.kind) for s in scene.shapes])
    size_cls = np.array([0] + [1 + SIZES.index(s.size) for s in scene.shapes])
    centre = np.zeros((grid, grid), dtype=np.int64)
    obj = np.full((grid, grid), IGNORE, dtype=np.int64)
    for s in scene.shapes:
        x0, y0, x1, y1 = s.bbox
        row, col = min(grid - 1, (y0 + y1) // 2 // patch), min(grid - 1, (x0 + x1) // 2 // patch)
        centre[row, col] = 1
        obj[row, col] = SHAPE_KINDS.index(s.kind) * len(SIZES) + SIZES.index(s.size)
    return {"color": color[major], "kind": kind[major], "size": size_cls[major], "centre": centre, "object": obj}


def load_split(data: Path, split: str, processor: CLIPImageProcessor, grid: int) -> tuple[torch.Tensor, dict]:
    scenes = json.loads((data / f"{split}_scenes.json").read_text())
    pixels = []
    for start in range(0, len(scenes), 256):
        images = [Image.open(data / r["image"]).convert("RGB") for r in scenes[start : start + 256]]
        pixels.append(processor(images=images, return_tensors="pt")["pixel_values"])
    targets = [patch_targets(scene_from_record(r), grid) for r in scenes]
    stacked = {k: torch.from_numpy(np.stack([t[k] for t in targets]).reshape(len(scenes), -1)) for k in HEADS}
    return torch.cat(pixels), stacked


def losses(
    tower: CLIPVisionTower, heads: torch.nn.Linear, pixels: torch.Tensor, targets: dict, centre_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logits = heads(tower(pixels)).split(list(HEADS.values()), dim=-1)
    out = {}
    weights = {"centre": torch.tensor([1.0, centre_weight], device=pixels.device)}
    # Kind and size are learned on the patches a shape covers: on the ~90% background patches "none"
    # is already given by the colour head and would drown the few patches that matter.
    on_shape = (targets["kind"] > 0).reshape(-1)
    for (name, n), lg in zip(HEADS.items(), logits):
        lg, tg = lg.reshape(-1, n), targets[name].reshape(-1)
        if name in ("kind", "size"):
            lg, tg = lg[on_shape], tg[on_shape]
        out[name] = F.cross_entropy(lg, tg, weight=weights.get(name), ignore_index=IGNORE)
    return sum(out.values()), {"logits": dict(zip(HEADS, logits)), **out}


@torch.no_grad()
def patch_accuracy(tower: CLIPVisionTower, heads: torch.nn.Linear, pixels: torch.Tensor, targets: dict) -> dict:
    """Per-head accuracy on shape patches (colour/kind/size, kind also by shape size), recall/precision
    of shape centres, and the object head's accuracy at centre patches (also by size)."""
    _, out = losses(tower, heads, pixels, targets, 1.0)
    pred = {k: v.argmax(-1) for k, v in out["logits"].items()}
    on_shape = targets["kind"] > 0

    def rate(hits: torch.Tensor, where: torch.Tensor) -> float:
        return hits[where].float().mean().item() if where.any() else float("nan")

    result = {k: rate(pred[k] == targets[k], on_shape) for k in ("color", "kind", "size")}
    at_centre = targets["object"] != IGNORE
    object_size = targets["object"] % len(SIZES)
    for i, size in enumerate(SIZES):
        on_size = targets["size"] == 1 + i
        result[f"kind_{size}"] = rate(pred["kind"] == targets["kind"], on_size)
        result[f"object_{size}"] = rate(pred["object"] == targets["object"], at_centre & (object_size == i))
    hit = (pred["centre"] == 1) & (targets["centre"] == 1)
    result["centre_recall"] = hit.sum().item() / max(1, targets["centre"].sum().item())
    result["centre_precision"] = hit.sum().item() / max(1, pred["centre"].sum().item())
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="folder of an M3-Shapes split (llava.data.shapes)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--tower", required=True, type=Path, help="starting CLIP tower (init_tiny_model.py OUT/clip)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--select-layer", type=int, default=-2)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--centre-weight", type=float, default=10.0, help="weight of the rare 'centre' class")
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    scenes_file = args.data / f"{args.split}_scenes.json"
    if not scenes_file.exists():
        raise FileNotFoundError(f"{scenes_file} is missing: make the split with python -m llava.data.shapes")
    num_images = len(json.loads(scenes_file.read_text()))
    if args.val_images >= num_images:
        raise ValueError(f"--val-images {args.val_images} leaves no training images of {num_images} in {scenes_file}")
    torch.manual_seed(args.seed)
    tower = CLIPVisionTower(str(args.tower), args.select_layer, "patch")
    tower.load_pretrained_weights()
    processor = CLIPImageProcessor.from_pretrained(args.tower)
    grid = tower.num_patches_per_side
    pixels, targets = load_split(args.data, args.split, processor, grid)
    n_train = len(pixels) - args.val_images
    val = (pixels[n_train:], {k: v[n_train:] for k, v in targets.items()})
    heads = torch.nn.Linear(tower.hidden_size, sum(HEADS.values()))
    params = [p for p in tower.parameters() if p.requires_grad] + list(heads.parameters())
    optim = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_at)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    log = []
    for step in range(args.steps):
        idx = torch.randint(0, n_train, (args.batch,), generator=gen)
        loss, parts = losses(tower, heads, pixels[idx], {k: v[idx] for k, v in targets.items()}, args.centre_weight)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            entry = {"step": step + 1, "loss": round(loss.item(), 4), "s": round(time.perf_counter() - start, 1)}
            entry.update({k: round(parts[k].item(), 4) for k in HEADS})
            if step + 1 == args.steps or (step + 1) % (5 * args.log_every) == 0:
                entry["val"] = {k: round(v, 4) for k, v in patch_accuracy(tower, heads, *val).items()}
            log.append(entry)
            print(json.dumps(entry), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tower.clip.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "log": log}
    (args.out / "pretrain_log.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
