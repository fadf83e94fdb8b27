#!/usr/bin/env bash
# The base install runs the original README's demo. In a fresh venv under a temp dir with only the
# pinned torch and `pip install -e .`: start the controller, a model worker serving the shipped
# M3-Shapes model and the Gradio web server on 127.0.0.1; check the page answers 200, ask through the
# web demo's handlers, the CLI (piped input) and run_llava, and compare each answer with the image's
# known one at several budgets. Also checks that no extra came along and that a module needing one
# says which. Measured on a shared 2-core machine under heavy load: 3 to 4.5 minutes in all, most of it
# pip (2 to 3.7 minutes; 50 s on a quieter moment); the servers, CLI and run_llava take about 1.5 minutes.
#
#   bash scripts/ci/base_install_check.sh          # PYTHON, TORCH_SPEC override the interpreter and torch
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MODEL=playground/shapes-m3-tiny
# The venv is ~43k files (torch alone is most of them). On a busy disk mounted with online discard,
# writing and deleting them took minutes; in memory they take seconds. 1.5 GB, freed on exit.
if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR == 2 {print $4}')" -gt 4000000 ]; then
    WORK=$(mktemp -d -p /dev/shm)
else
    WORK=$(mktemp -d)
fi
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
    echo "base install check FAILED: $*" >&2
    for log in "$WORK"/*.log; do
        [ -f "$log" ] && { echo "--- $(basename "$log") (last 30 lines)" >&2; tail -n 30 "$log" >&2; }
    done
    exit 1
}

step() { echo "[base-install $((SECONDS - START))s] $*"; }

START=$SECONDS
step "fresh venv in $WORK/venv: $TORCH_SPEC, then pip install -e ."
"$PYTHON" -m venv "$WORK/venv"
PY=$WORK/venv/bin/python
"$PY" -m pip install -q "$TORCH_SPEC" >"$WORK/pip.log" 2>&1 || fail "pip install $TORCH_SPEC"
"$PY" -m pip install -q -e . >>"$WORK/pip.log" 2>&1 || fail "pip install -e ."
INSTALL_S=$((SECONDS - START))
step "installed in ${INSTALL_S}s"

# Only the base install is there (pandas is not checked: gradio depends on it) ...
"$PY" - <<'EOF' || fail "a package of an extra is installed"
import importlib.util

extras_only = ["deepspeed", "peft", "bitsandbytes", "matplotlib", "openai"]
present = [name for name in extras_only if importlib.util.find_spec(name)]
assert not present, f"installed although only in extras: {present}"
EOF
# ... and a command that needs an extra says which one.
if "$PY" -m llava.eval.shapes_demo --help >"$WORK/extra.out" 2>&1; then fail "shapes_demo ran without matplotlib"; fi
grep -q "matplotlib is not installed; it comes with the 'eval' extra" "$WORK/extra.out" ||
    fail "shapes_demo's error does not name the eval extra: $(tail -n 1 "$WORK/extra.out")"

# A held-out M3-Shapes image and the known answer to one question about it.
"$PY" - "$WORK" <<'EOF' || fail "could not make the test image"
import sys
from pathlib import Path

from llava.data import shapes

work = Path(sys.argv[1])
records = shapes.generate_split(work / "shapes", "test", 1, shapes.DEFAULT_SEEDS["test"])
question = "What color is the background?"
(gold,) = [r["conversations"][1]["value"] for r in records if r["conversations"][0]["value"].endswith(question)]
(work / "image.txt").write_text(str(work / "shapes" / records[0]["image"]))
(work / "question.txt").write_text(question)
(work / "gold.txt").write_text(gold)
EOF
IMAGE=$(cat "$WORK/image.txt")
QUESTION=$(cat "$WORK/question.txt")
GOLD=$(cat "$WORK/gold.txt")
step "question: '$QUESTION' about $IMAGE, expected answer: '$GOLD'"

free_port() { "$PY" -c "from llava.serve.http import find_free_port; print(find_free_port())"; }
CONTROLLER_PORT=$(free_port)
WORKER_PORT=$(free_port)
WEB_PORT=$(free_port)
CONTROLLER=http://127.0.0.1:$CONTROLLER_PORT

# The original README's commands, with its flag spellings, on 127.0.0.1 and the CPU.
"$PY" -m llava.serve.controller --host 127.0.0.1 --port "$CONTROLLER_PORT" >"$WORK/controller.log" 2>&1 &
PIDS+=($!)
"$PY" -m llava.serve.gradio_web_server --host 127.0.0.1 --port "$WEB_PORT" --controller "$CONTROLLER" \
    --model-list-mode reload >"$WORK/web.log" 2>&1 &
PIDS+=($!)
"$PY" -m llava.serve.model_worker --host 127.0.0.1 --controller "$CONTROLLER" --port "$WORKER_PORT" \
    --worker "http://127.0.0.1:$WORKER_PORT" --model-path "$MODEL" --device cpu >"$WORK/worker.log" 2>&1 &
PIDS+=($!)
step "started controller :$CONTROLLER_PORT, worker :$WORKER_PORT, web server :$WEB_PORT"

"$PY" - "$CONTROLLER" "http://127.0.0.1:$WEB_PORT/" "$MODEL" "$IMAGE" "$QUESTION" "$GOLD" <<'EOF' ||
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

from llava.serve import gradio_web_server as web

controller, page, model_path, image_path, question, gold = sys.argv[1:]
model = Path(model_path).name


def wait_for(what: str, ready, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.5)


wait_for("the web server's page", lambda: httpx.get(page, timeout=5).status_code == 200)
print(f"web server: GET {page} -> 200")
demo = web.WebDemo(web.ControllerClient(controller), examples_dir=None)
wait_for(f"the worker to register {model}", lambda: demo.client.list_models() == [model])
image = Image.open(image_path).convert("RGB")
for scale in (576, 1):
    state, *_ = demo.add_text(None, question, image, "Default")
    state, chatbot, status = list(demo.http_bot(state, model, scale, 0.0, 1.0, 8))[-1]
    answer = chatbot[-1]["content"]
    print(f"web demo -> controller -> worker at {scale} tokens: {answer!r} ({status})")
    assert answer == gold, f"expected {gold!r}"
    assert status.startswith(f"{scale} visual tokens"), status
EOF
    fail "the serving stack did not answer as expected"

for scale in 576 1; do
    printf '%s\n' "$QUESTION" | "$PY" -m llava.serve.cli --model-path "$MODEL" --image-file "$IMAGE" --device cpu \
        --temperature 0 --max-new-tokens 8 --matryoshka_vis_token_scale "$scale" >"$WORK/cli.log" 2>&1 ||
        fail "the CLI exited with an error"
    grep -qF "ASSISTANT: $GOLD" "$WORK/cli.log" || fail "the CLI at $scale tokens did not answer '$GOLD'"
    step "CLI at $scale tokens: $(grep -o -m1 'ASSISTANT: .*' "$WORK/cli.log")"
done

ANSWER=$("$PY" -m llava.eval.run_llava --model-path "$MODEL" --image-file "$IMAGE" --query "$QUESTION" \
    --temperature 0 --max_new_tokens 8 --matryoshka_vis_token_scale 36 --device cpu 2>"$WORK/run_llava.log") ||
    fail "run_llava exited with an error"
[ "$ANSWER" = "$GOLD" ] || fail "run_llava at 36 tokens answered '$ANSWER', expected '$GOLD'"
step "run_llava at 36 tokens: $ANSWER"

step "base install check passed (install ${INSTALL_S}s, total $((SECONDS - START))s)"
