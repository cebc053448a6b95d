#!/usr/bin/env python3
"""Side-by-side speed of shadowpeft-web and its peers on the same random weights.

Run through ``scripts/bench`` (which builds the engine and prepares the Python environment).
For each model size it makes (once, cached outside the repository) a random base, an official
shadow-peft adapter and its detached export, then measures in one run on this machine:

* ``ours attached`` / ``ours detached``: ``shadowpeft generate --json`` (native wgpu: a real GPU
  when present, else lavapipe), base + adapter, attached and detached, with f32 weights and
  with each other format of ``--weights`` (rows ``ours attached q4`` and so on);
* ``official attached``: shadow-peft's ``ShadowForCausalLM.generate`` with its KV caches
  (``use_cache=True``) on CPU torch;
* ``official shadow_only``: the same model in ``shadow_only`` inference mode (what the official
  package offers for detached use);
* ``transformers``: ``AutoModelForCausalLM.generate`` with a KV cache on the detached export;
* ``browser ours detached``: the npm package in headless Chromium (WebGPU; SwiftShader without
  a GPU) on the detached export, f32, through ``scripts/browser-generate``;
* ``browser transformers.js``: transformers.js (onnxruntime-web, WebGPU execution provider, fp32)
  in the same browser on the detached export converted to ONNX, through
  ``scripts/browser-transformersjs``. The ONNX model is made once per size next to the other
  models and its logits are checked against PyTorch's before use;
* ``browser transformers.js wasm q8`` / ``q4``: the same on onnxruntime-web's wasm (CPU)
  backend, what a machine without WebGPU runs, with the int8 (``quantize_dynamic``) and int4
  (``MatMulNBits``, blocks of 32) ONNX models made from it, threads on every core (the page is
  cross-origin isolated); ``browser ours detached q4`` is the npm package with q4 weights.

Every measurement uses the same 32-token prompt and greedy decoding without EOS. Decode rate =
192 / (time for 200 new tokens - time for 8 new tokens), each time the best of two runs (so load,
prefill and first-token costs cancel). Also: prefill tok/s (32-token prompt), time to first
token, and peak memory: the resident set of the process (on lavapipe the "GPU" memory is host
memory and counts too), or for the browser rows the summed proportional set size of the whole
process tree (driver, Chromium's browser, GPU and renderer processes), sampled. Ratios compare
with the official reference measured in the same run; ``browser ours detached`` compares with
``browser transformers.js``. Each browser run is a fresh browser that loads the model once.

Every row also records its 200 greedy tokens; ``same tokens`` counts how many leading tokens
equal the reference row's (``official shadow_only`` for the detached rows, ``official
attached`` for the attached ones). With ``--torch-device cuda`` the Python rows run on the GPU
(synchronised around every timing), a ``transformers bf16`` row is added, and the table gains
the weight stream each decode rate implies: bytes of weights one token reads (decoder
projections and the LM head, in the row's storage format; norms and the small adapter networks
left out) times tok/s, against the device's copy bandwidth measured with torch in the same run
(bytes read and written by a 4 GiB device-to-device copy per second).

    scripts/bench [--sizes tiny,medium,0.6b] [--weights f32,q8,q4] [--runs 2] [--out target/bench]
                  [--only "browser ours detached,browser transformers.js"] [--torch-device cuda]

This is a measurement, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
PROMPT_LEN = 32
SHORT, LONG = 8, 200
# Largest |ONNX logit - PyTorch logit| accepted for the transformers.js model (fp32 both).
ONNX_TOLERANCE = 1e-4

# Model sizes. `tiny` is the bundled model; the others are made here with random weights.
# `0.6b` has the shape of Qwen3-0.6B for the base and for the (implicit, 28-layer) shadow, so
# that the detached model is itself 0.6B-shaped.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"dir": REPO / "models" / "tiny"},
    "medium": {
        "config": dict(hidden_size=512, num_hidden_layers=10, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=64, intermediate_size=1536,
                       vocab_size=32000, tie_word_embeddings=True),
        "shadow": dict(num_shadow_layers=2, injection_hidden_size=16, gate_hidden_size=10,
                       alpha=0.1),
    },
    "0.6b": {
        "config": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                       vocab_size=151936, tie_word_embeddings=True),
        "shadow": dict(num_shadow_layers=28, injection_hidden_size=64, gate_hidden_size=32,
                       alpha=0.1),
    },
}


# Bytes per stored weight of each format (ours: src/gpu/quant.rs, blocks of 32 with an f32
# scale; torch: its dtype).
BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "q8": 36 / 32, "q4": 20 / 32, "bf16": 2.0}


def decoder_weights(cfg: dict[str, Any]) -> int:
    """Weights of one decoder layer's projections (q, k, v, o, gate, up, down)."""
    h, hd = cfg["hidden_size"], cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    return h * q + 2 * h * kv + q * h + 3 * h * cfg["intermediate_size"]


def weights_per_token(d: Path, mode: str) -> int:
    """Weights one decode step reads: the shadow's layers, plus the base's when attached, and
    the LM head (the embedding lookup reads one row)."""
    base = json.loads((d / "base" / "config.json").read_text())
    shadow = json.loads((d / "export" / "config.json").read_text())
    n = shadow["num_hidden_layers"] * decoder_weights(shadow)
    if mode == "attached":
        n += base["num_hidden_layers"] * decoder_weights(base)
    return n + base["vocab_size"] * base["hidden_size"]


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("SHADOWPEFT_BENCH_MODELS",
                               Path.home() / ".cache" / "shadowpeft" / "bench-models"))


# ----------------------------------------------------------------------------- models


def make_models(size: str) -> Path:
    """The size's model directory (base/, adapter/, export/), made on first use in a child
    process (this process stays small: a child's peak RSS counts what it inherits at fork)."""
    spec = SIZES[size]
    if "dir" in spec:
        return spec["dir"]
    d = cache_root() / size
    if not (d / "done").exists():
        subprocess.run([sys.executable, __file__, "--make", size], check=True)
    return d


def build_models(size: str) -> None:
    spec = SIZES[size]
    d = cache_root() / size
    import torch
    from shadow_peft import ShadowConfig, get_shadow_model
    from shadow_peft.task_models import ShadowForCausalLM
    from transformers import Qwen3Config, Qwen3ForCausalLM

    log(f"bench: making the {size} model in {d} (random weights, once)")
    torch.manual_seed(7)
    d.mkdir(parents=True, exist_ok=True)
    cfg = Qwen3Config(max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=None,
                      eos_token_id=0, pad_token_id=0, use_cache=True, **spec["config"])
    base = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in base.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5))
    base.save_pretrained(str(d / "base"))
    peft = get_shadow_model(base, ShadowConfig(**spec["shadow"]))
    wrapper = ShadowForCausalLM(peft)
    with torch.no_grad():
        for n, p in wrapper.named_parameters():
            if p.requires_grad and "norm" not in n:
                p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5))
    wrapper.save_pretrained(str(d / "adapter"))
    peft.export_shadow().save_pretrained(str(d / "export"))
    (d / "done").write_text("ok\n")


def onnx_models(size: str) -> Path:
    """The size's detached export converted to ONNX for transformers.js, made and checked on
    first use in a child process (again when the export changed)."""
    d = cache_root() / size / "onnx-export"
    done = d / "done"
    if not (done.exists() and done.read_text() == fingerprint(make_models(size) / "export")):
        log(f"bench: exporting the {size} model to ONNX in {d} (once)")
        p = subprocess.run([sys.executable, __file__, "--make-onnx", size], capture_output=True,
                           text=True)
        if p.returncode != 0:
            raise RuntimeError(f"ONNX export of the {size} model failed:\n{p.stderr[-2000:]}")
        log(f"bench: {p.stdout.strip().splitlines()[-1]}")
    return d


def fingerprint(d: Path) -> str:
    return json.dumps({f.name: [f.stat().st_size, f.stat().st_mtime_ns]
                       for f in sorted(d.iterdir())})


def build_onnx(size: str) -> None:
    """Exports the detached model to ONNX in the layout transformers.js loads for a decoder with a
    KV cache: onnx/model.onnx (weights in onnx/model.onnx_data), config.json,
    generation_config.json; inputs input_ids, attention_mask, position_ids,
    past_key_values.{i}.key/.value; outputs logits, present.{i}.key/.value (optimum's names).

    optimum-onnx, the exporter behind transformers.js's own models, requires transformers < 4.58
    while this benchmark runs 5.x, so this is torch.onnx.export of one forward step with the
    cache as explicit tensors. Eager attention keeps the graph to plain MatMul/Softmax ops. The
    ONNX logits (onnxruntime, CPU) must match PyTorch's on a prefill from an empty cache and two
    decode steps within ONNX_TOLERANCE, or nothing is kept."""
    import numpy as np
    import onnx
    import onnxruntime
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    src = make_models(size) / "export"
    d = cache_root() / size / "onnx-export"
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    cfg = model.config
    layers = range(cfg.num_hidden_layers)
    past_names = [f"past_key_values.{i}.{kv}" for i in layers for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in layers for kv in ("key", "value")]

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=cfg)
            for i in layers:
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, past_key_values=cache, use_cache=True)
            return out.logits, *(t for c in out.past_key_values.layers for t in (c.keys, c.values))

    # Example shapes: 4 new tokens after 3 cached ones; every length is dynamic.
    kv_shape = (1, cfg.num_key_value_heads, 3, cfg.head_dim)
    example = (torch.ones(1, 4, dtype=torch.int64), torch.ones(1, 7, dtype=torch.int64),
               torch.arange(3, 7)[None], *(torch.zeros(kv_shape) for _ in past_names))
    dim = torch.export.Dim
    batch, seq, past = dim("batch_size"), dim("sequence_length"), dim("past_sequence_length")
    program = torch.onnx.export(
        Step().eval(), example, input_names=["input_ids", "attention_mask", "position_ids",
                                             *past_names],
        output_names=["logits", *present_names], opset_version=18, dynamo=True,
        dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: dim("total_sequence_length")},
                        {0: batch, 1: seq}, tuple({0: batch, 2: past} for _ in past_names)))

    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "onnx").mkdir(parents=True)
    onnx.save_model(program.model_proto, str(tmp / "onnx" / "model.onnx"),
                    save_as_external_data=True, location="model.onnx_data")
    config = json.loads((src / "config.json").read_text())
    config["transformers.js_config"] = {"use_external_data_format": {
        "model.onnx": True, "model_quantized.onnx": True, "model_q4.onnx": True}}
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if (src / "generation_config.json").exists():
        shutil.copy(src / "generation_config.json", tmp / "generation_config.json")

    ids = torch.tensor([prompt(cfg.vocab_size) + [1, 2]])
    with torch.no_grad():
        want = model(input_ids=ids).logits[0].numpy()
    session = onnxruntime.InferenceSession(str(tmp / "onnx" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    cache = [np.zeros((1, cfg.num_key_value_heads, 0, cfg.head_dim), np.float32)] * len(past_names)
    got, start = [], 0
    for end in (PROMPT_LEN, PROMPT_LEN + 1, PROMPT_LEN + 2):
        logits, *cache = session.run(None, {
            "input_ids": ids[:, start:end].numpy(),
            "attention_mask": np.ones((1, end), np.int64),
            "position_ids": np.arange(start, end)[None], **dict(zip(past_names, cache))})
        got.append(logits[0])
        start = end
    diff = float(np.abs(np.concatenate(got) - want).max())
    if not diff <= ONNX_TOLERANCE:
        raise SystemExit(f"ONNX export of the {size} model: logits differ from PyTorch's by up to "
                         f"{diff:.2e} (tolerance {ONNX_TOLERANCE:.0e})")
    # The int8 and int4 models transformers.js loads for dtype q8 and q4 (the quantisations
    # its own conversion script applies): dynamic int8 quantisation of every weight, and int4
    # MatMulNBits in blocks of 32 (the embedding gathers stay fp32).
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    quantize_dynamic(str(tmp / "onnx" / "model.onnx"), str(tmp / "onnx" / "model_quantized.onnx"),
                     weight_type=QuantType.QInt8, use_external_data_format=True)
    q4 = MatMulNBitsQuantizer(onnx.load(str(tmp / "onnx" / "model.onnx")), block_size=32,
                              is_symmetric=True)
    q4.process()
    q4.model.save_model_to_file(str(tmp / "onnx" / "model_q4.onnx"), use_external_data_format=True)
    for f in ("model_quantized.onnx", "model_q4.onnx"):
        # Re-saved with the external data where transformers.js looks for it (`<name>_data`).
        path = tmp / "onnx" / f
        m = onnx.load(str(path))
        for stale in (tmp / "onnx").glob(f"{f}.data"):
            stale.unlink()
        onnx.save_model(m, str(path), save_as_external_data=True, location=f"{f}_data")
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    print(f"{size} ONNX logits match PyTorch's: max abs diff {diff:.1e}")
    (tmp / "done").write_text(fingerprint(src))
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)


def prompt(vocab: int) -> list[int]:
    import random

    rng = random.Random(32)
    return [rng.randrange(1, vocab) for _ in range(PROMPT_LEN)]


# ----------------------------------------------------------------------------- runners


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], int]:
    """Runs `cmd` and returns (its last stdout line as JSON, its peak RSS in bytes)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    # Drain the pipes before reaping so a chatty child cannot block.
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{err.decode()[-2000:]}")
    line = out.decode().strip().splitlines()[-1]
    return json.loads(line), ru.ru_maxrss * 1024


def run_tree(cmd: list[str]) -> tuple[dict[str, Any], int]:
    """Runs `cmd` and returns (its last stdout line as JSON, the peak of the summed proportional
    set size of it and all its descendants, sampled every half second): for a browser, whose
    processes share memory, a sum of RSS would count the shared pages several times."""
    import psutil

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        root = psutil.Process(p.pid)
        peak = 0
        while p.poll() is None:
            total = 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for q in tree:
                try:
                    total += q.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak = max(peak, total)
            time.sleep(0.5)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n"
                               f"{err.read().decode()[-2000:]}")
        return json.loads(out.read().decode().strip().splitlines()[-1]), peak


def timed(run: Callable[[int], tuple[dict[str, Any], int]], runs: int) -> dict[str, Any]:
    """Best of `runs` runs of `run(n)` (-> generate JSON, peak memory) for n = SHORT and LONG."""
    times: dict[int, list[float]] = {SHORT: [], LONG: []}
    best: dict[str, Any] = {"peak_rss": 0, "ttft": float("inf"), "prefill": 0.0}
    for n in (SHORT, LONG):
        for _ in range(runs):
            v, mem = run(n)
            assert len(v["tokens"]) == n, v
            times[n].append(v["generate_s"])
            if n == LONG:
                best["tokens"] = v["tokens"]
            best["peak_rss"] = max(best["peak_rss"], mem)
            best["ttft"] = min(best["ttft"], v["time_to_first_token_s"])
            best["prefill"] = max(best["prefill"], v["prefill_tok_s"])
            best["device"] = v["adapter"]
    return summarize(best, times)


def ours(binary: Path, d: Path, mode: str, ids: list[int], runs: int,
         weights: str = "f32") -> dict[str, Any]:
    env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    r = timed(lambda n: run_measured(
        [str(binary), "generate", "--base", str(d / "base"), "--adapter", str(d / "adapter"),
         "--mode", mode, "--tokens", ",".join(map(str, ids)), "--max-new-tokens", str(n),
         "--ignore-eos", "--json", "--max-seq", "512", "--weights", weights], env), runs)
    r["weight_bytes"] = weights_per_token(d, mode) * BYTES_PER_WEIGHT[weights]
    return r


def browser(script: str, model: Path, ids: list[int], runs: int,
            extra: list[str] | None = None) -> dict[str, Any]:
    """A browser runner (scripts/browser-generate or browser-transformersjs): a fresh headless
    Chromium per run that loads `model` and generates greedily, EOS ignored."""
    r = timed(lambda n: run_tree(
        [str(REPO / "scripts" / script), "--model", str(model), "--tokens", ",".join(map(str, ids)),
         "--max-new-tokens", str(n), "--ignore-eos", *(extra or [])]), runs)
    r["device"] = f"headless Chromium, {r['device']}"
    return r


def summarize(best: dict[str, Any], times: dict[int, list[float]]) -> dict[str, Any]:
    t_short, t_long = min(times[SHORT]), min(times[LONG])
    best["decode"] = (LONG - SHORT) / max(t_long - t_short, 1e-9)
    best["t_short"], best["t_long"] = t_short, t_long
    return best


def python_ref(kind: str, d: Path, ids: list[int], runs: int, device: str) -> dict[str, Any]:
    """Runs this script as a worker in a child process (its own peak memory)."""
    v, rss = run_measured([sys.executable, __file__, "--worker", kind, "--dir", str(d),
                           "--ids", ",".join(map(str, ids)), "--runs", str(runs),
                           "--torch-device", device])
    v["peak_rss"] = rss
    if kind != "copy":
        mode = "attached" if kind == "official-attached" else "detached"
        v["weight_bytes"] = weights_per_token(d, mode) * BYTES_PER_WEIGHT[
            "bf16" if kind.endswith("bf16") else "f32"]
    return v


def worker(kind: str, d: Path, ids: list[int], runs: int, device: str) -> None:
    """Child process: loads the reference `kind` and prints its timings as JSON."""
    import torch

    torch.set_grad_enabled(False)
    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if kind == "copy":
        # Device memory bandwidth: bytes read and written by a 4 GiB copy, best of 10.
        a = torch.empty(2**30, dtype=torch.float32, device=dev)
        b = torch.empty_like(a)
        best = float("inf")
        for _ in range(12):
            sync()
            t0 = time.perf_counter()
            b.copy_(a)
            sync()
            best = min(best, time.perf_counter() - t0)
        print(json.dumps({"bandwidth": 2 * a.numel() * 4 / best,
                          "device": torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"}))
        return
    dtype = torch.bfloat16 if kind.endswith("bf16") else torch.float32
    if kind.startswith("transformers"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(d / "export"), dtype=dtype).eval()
    else:
        from shadow_peft.task_models import ShadowForCausalLM
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(str(d / "base"), dtype=dtype)
        model = ShadowForCausalLM.from_pretrained(base, str(d / "adapter")).eval()
        model.set_inference_mode("shadow_only" if kind == "official-shadow" else "base_shadow")
    model = model.to(dev)
    x = torch.tensor([ids], device=dev)
    tokens: list[int] = []

    def gen(n: int) -> float:
        sync()
        t0 = time.perf_counter()
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0)
        sync()
        dt = time.perf_counter() - t0
        assert out.shape[1] == len(ids) + n, out.shape
        tokens[:] = out[0, len(ids):].tolist()
        return dt

    gen(2)  # warm-up
    times = {SHORT: [gen(SHORT) for _ in range(runs)], LONG: [gen(LONG) for _ in range(runs)]}
    long_tokens = list(tokens)
    ttft = min(gen(1) for _ in range(runs))
    sync()
    t0 = time.perf_counter()
    for _ in range(runs):
        model(input_ids=x, use_cache=True)
    sync()
    prefill = PROMPT_LEN / ((time.perf_counter() - t0) / runs)
    where = (f"CUDA torch {torch.__version__}, {torch.cuda.get_device_name()}" if dev.type == "cuda"
             else f"CPU torch {torch.__version__}, {torch.get_num_threads()} threads")
    best = {"ttft": ttft, "prefill": prefill, "device": where, "tokens": long_tokens}
    print(json.dumps(summarize(best, times)))


# ----------------------------------------------------------------------------- report


def fmt_mem(b: int) -> str:
    return f"{b / 2**20:.0f} MiB"


def same_tokens(r: dict[str, Any], ref: dict[str, Any] | None) -> str:
    """How many leading greedy tokens of row `r` equal the reference row's."""
    if not ref or "tokens" not in r or "tokens" not in ref:
        return ""
    n = 0
    for x, y in zip(r["tokens"], ref["tokens"]):
        if x != y:
            break
        n += 1
    return f"{n}/{len(ref['tokens'])}"


def report(results: dict[str, dict[str, dict[str, Any]]], machine: str,
           bandwidth: float | None = None) -> str:
    head = "| size | engine | decode tok/s | vs reference | same tokens | prefill tok/s | first token | peak RSS |"
    if bandwidth:
        head += " weights GB/s | of copy bandwidth |"
    lines = [f"Machine: {machine}", "", head, "|---" * (head.count("|") - 1) + "|"]

    def ref_of(name: str) -> str:
        if name.startswith("ours attached"):
            return "official attached"
        if name == "browser ours detached":
            return "browser transformers.js"
        if name.startswith(("ours detached", "transformers")) or name == "browser transformers.js":
            return "official shadow_only"
        return ""

    def tokens_ref(name: str) -> str:
        return "official attached" if "attached" in name else "official shadow_only"

    for size, rows in results.items():
        for name, r in rows.items():
            if "error" in r:
                lines.append(f"| {size} | {name} | failed: {r['error'][:80]} |" + " |" * (head.count("|") - 4))
                continue
            ref = rows.get(ref_of(name))
            ratio = (f"{r['decode'] / ref['decode']:.2f}x {ref_of(name)}"
                     if ref and "decode" in ref else "(reference)")
            same = "" if tokens_ref(name) == name else same_tokens(r, rows.get(tokens_ref(name)))
            line = (f"| {size} | {name} | {r['decode']:.1f} | {ratio} | {same} | {r['prefill']:.0f} | "
                    f"{r['ttft'] * 1000:.0f} ms | {fmt_mem(r['peak_rss'])} |")
            if bandwidth:
                gbs = r.get("weight_bytes", 0) * r["decode"]
                line += (f" {gbs / 1e9:.0f} | {gbs / bandwidth:.0%} |" if gbs else " | |")
            lines.append(line)
    lines += ["", "Devices: " + "; ".join(sorted({f"{n}: {r.get('device', '?')}" for rows in
                                                   results.values() for n, r in rows.items()})),
              "", f"Decode rate = {LONG - SHORT} / (t({LONG} new) - t({SHORT} new)), best of "
              "the runs; prompt of 32 tokens; greedy, EOS ignored. Peak memory of the browser "
              "rows: summed PSS of the whole process tree (driver, Chromium's processes), "
              "sampled every 0.5 s."]
    if bandwidth:
        lines += ["", f"Copy bandwidth of the device (torch, 4 GiB device-to-device copy, bytes "
                  f"read + written): {bandwidth / 1e9:.0f} GB/s. Weights GB/s = bytes of weights "
                  "a decode step reads (decoder projections and LM head in the row's format) x "
                  "decode tok/s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny,medium")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--weights", default="f32,q8,q4",
                    help="weight formats of our engine's rows (f32, f16, q8, q4)")
    ap.add_argument("--out", default=str(REPO / "target" / "bench"))
    ap.add_argument("--binary", default=str(REPO / "target" / "release" / "shadowpeft"))
    ap.add_argument("--only", default="",
                    help="comma-separated rows to run (default all): ours attached, "
                    "ours detached (and with a format: ours detached q8, ...), official attached, "
                    "official shadow_only, transformers, browser ours detached, "
                    "browser ours detached q4, browser transformers.js, "
                    "browser transformers.js wasm q8, browser transformers.js wasm q4")
    ap.add_argument("--torch-device", default="cpu",
                    help="where the Python rows run: cpu, or cuda (adds transformers bf16 and "
                    "the bandwidth columns)")
    ap.add_argument("--make", help=argparse.SUPPRESS)
    ap.add_argument("--make-onnx", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.make:
        build_models(a.make)
        return
    if a.make_onnx:
        build_onnx(a.make_onnx)
        return
    if a.worker:
        worker(a.worker, Path(a.dir), [int(i) for i in a.ids.split(",")], a.runs, a.torch_device)
        return
    only = {o.strip() for o in a.only.split(",") if o.strip()}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    dev = a.torch_device
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bandwidth = None
    if dev != "cpu":
        copy, _ = run_measured([sys.executable, __file__, "--worker", "copy", "--dir", ".",
                                "--ids", "0", "--torch-device", dev])
        bandwidth = copy["bandwidth"]
        machine += f", {copy['device']}"
        log(f"bench: copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    for size in a.sizes.split(","):
        d = make_models(size)
        vocab = json.loads((d / "base" / "config.json").read_text())["vocab_size"]
        ids = prompt(vocab)
        rows: dict[str, dict[str, Any]] = {}
        plan = []
        for mode in ("attached", "detached"):
            for w in a.weights.split(","):
                name = f"ours {mode}" + ("" if w == "f32" else f" {w}")
                plan.append((name, lambda m=mode, w=w: ours(Path(a.binary), d, m, ids, a.runs, w)))
        plan += [
            ("official attached", lambda: python_ref("official-attached", d, ids, a.runs, dev)),
            ("official shadow_only", lambda: python_ref("official-shadow", d, ids, a.runs, dev)),
            ("transformers", lambda: python_ref("transformers", d, ids, a.runs, dev)),
            *([("transformers bf16", lambda: python_ref("transformers-bf16", d, ids, a.runs, dev))]
              if dev != "cpu" else []),
            ("browser ours detached",
             lambda: browser("browser-generate", d / "export", ids, a.runs)),
            ("browser ours detached q4",
             lambda: browser("browser-generate", d / "export", ids, a.runs, ["--weights", "q4"])),
            ("browser transformers.js",
             lambda: browser("browser-transformersjs", onnx_models(size), ids, a.runs)),
            # Machines without WebGPU: transformers.js on onnxruntime-web's wasm (CPU) backend,
            # with the int8 and int4 ONNX models such a user would pick.
            *[(f"browser transformers.js wasm {q}",
               lambda q=q: browser("browser-transformersjs", onnx_models(size), ids, a.runs,
                                   ["--device", "wasm", "--dtype", q]))
              for q in ("q8", "q4")],
        ]
        unknown = only - {name for name, _ in plan}
        if unknown:
            ap.error(f"--only: no row named {', '.join(sorted(unknown))}")
        for name, fn in plan:
            if only and name not in only:
                continue
            log(f"bench: {size} / {name} ...")
            t0 = time.perf_counter()
            try:
                rows[name] = fn()
            except Exception as e:  # report and go on with the others
                rows[name] = {"error": str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)}
            brief = {k: v for k, v in rows[name].items() if k != "tokens"}
            log(f"bench: {size} / {name}: {json.dumps(brief)} ({time.perf_counter() - t0:.0f} s)")
            results[size] = rows
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        results[size] = rows
    table = report(results, machine, bandwidth)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    log(f"bench: written to {out / 'results.md'} and results.json")


if __name__ == "__main__":
    main()
