"""Training LLaVA/M3: `python -m llava.train.train` (also under torchrun / deepspeed).

arguments.py  the command-line flags (LLaVA/M3 names) as dataclasses
preprocess.py a conversation → token ids and labels, for every template, checked
data.py       records: loading, early validation, the lazy dataset and the collator
sampler.py    the modality-grouped length sampler
model_setup.py building the model to train: start point, freezing, LoRA / QLoRA, ZeRO-3-safe loading
trainer.py    `LLaVATrainer`: per-module learning rates, per-scale loss logging, saving in the released format
checkpoints.py checkpoints published whole, and resuming from the newest complete one
train.py      `main(argv=None)`
"""
