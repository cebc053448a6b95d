#!/usr/bin/env python3
"""Golden-fixture generator for shadowpeft-web.

What it makes
-------------
Everything below is (re)created from scratch, deterministically (fixed seeds, CPU,
float32 reference maths), using the *official* ``shadow-peft`` package and Hugging Face
``transformers`` exactly as a user would:

* ``tests/fixtures/<name>/`` for each fixture in ``specs()`` (vocab 512, hidden 64, 3 base
  layers, intermediate 96):

    - ``qwen3_implicit``      Qwen3, tied, implicit 2-layer shadow, shadow_intermediate_size 64
    - ``qwen3_explicit_proj`` Qwen3 + explicit Qwen3 shadow of hidden 32 with its own
                              embed_tokens and a shadow_hidden_projection (32 -> 64)
    - ``qwen3_untied``        untied lm_head, head_dim 32 != 64/4, GQA 4/1, 1-layer shadow,
                              modules_to_save=["shadow_lm_head"] (shadow_modules.safetensors)
    - ``qwen3_bf16``          base/adapter/export stored as BF16
    - ``qwen2_gqa``           Qwen2 (q/k/v biases), GQA 4/1, SHARDED base,
                              1-layer shadow with shadow_num_key_value_heads=2
    - ``llama``               Llama, untied, GQA 4/2, OLD-style top-level ``rope_theta``,
                              1-layer shadow

  each containing:

    - ``base/``     HF causal LM (``save_pretrained``, safetensors) + tokenizer files
    - ``adapter/``  ``shadow_config.json`` + ``shadow_adapter.safetensors``
                    (+ ``shadow_modules.safetensors`` when ``modules_to_save`` is used),
                    written by ``ShadowForCausalLM.save_pretrained``
    - ``shadow/``   (explicit-shadow fixture only) a ``causal_lm_with_hidden_projection``
                    model dir, as passed with ``--shadow DIR``
    - ``export/``   ``ShadowPeftModel.export_shadow()`` saved with ``save_pretrained``
                    + tokenizer files
    - ``golden.safetensors`` reference tensors (see below)
    - ``golden.json`` description, relative dirs (base/adapter/shadow|null/export),
      ``input_ids``, ``max_new_tokens``, ``dtype_on_disk`` ("f32"|"bf16"), plus informative
      ``export_matches_detached``, ``max_abs_logit`` and ``greedy_min_top2_margin``
* ``tests/fixtures/tokenizer_golden.json``: encode/decode/chat-template references for the
  512-token fixture tokenizer.
* ``models/tiny/``: the small bundled model used by the README quick start (1024-token
  tokenizer, hidden 128, 4 base layers, implicit 2-layer shadow), same layout + golden files.

All weights are random (fixed seeds), with deliberately large scales: norm weights are
``1 + 0.1*randn``, biases are non-zero, and *every* adapter tensor (including
``injection_ups``, which the package initialises to zero) is randomised, so the shadow
injection/update visibly changes the base logits. The script asserts that.

golden.safetensors (all computed in float32 on CPU, after RELOADING everything from disk
with ``AutoModelForCausalLM.from_pretrained(..., dtype=torch.float32)`` +
``ShadowForCausalLM.from_pretrained(...)``, eval mode):

* ``input_ids``              I64 [T]   the prompt
* ``base_logits``            F32 [T,V] plain base model (no adapter)         (extra)
* ``attached_logits``        F32 [T,V] ``.logits`` of inference_mode="base_shadow", use_cache=False
* ``attached_shadow_logits`` F32 [T,V] ``.shadow_logits`` of the same forward
* ``detached_logits``        F32 [T,V] ``.logits`` of inference_mode="shadow_only"
* ``export_logits``          F32 [T,V] logits of the export dir reloaded with AutoModelForCausalLM
* ``greedy_attached`` / ``greedy_detached`` / ``greedy_export``  I64 [N] (N = 12)
  new tokens of greedy decoding: explicit loop, full forward (use_cache=False) every step,
  argmax of the last position, no EOS stop.

The prompt is random (fixed seed, never a special token). If any greedy step has a top-1/top-2
logit gap below ``MIN_MARGIN`` the next seeded prompt is tried, so the greedy goldens are
robust to float re-association on a GPU. The script asserts that
``detached_logits == attached_shadow_logits == export_logits`` (within 1e-4 * max|logit|),
EXCEPT for ``qwen3_untied``: the official ``export_shadow()`` copies the *base* lm_head, not
the trained ``shadow_lm_head`` from ``modules_to_save``, so its export logits differ.
(For the record: the official cached ``generate()`` reproduces the greedy_attached /
greedy_detached goldens.)

How to run
----------
From the repository root, with the pinned environment (scripts/requirements-golden.txt;
Python 3.11 was used)::

    python -m venv /work/venv
    /work/venv/bin/pip install -r scripts/requirements-golden.txt
    HF_HUB_OFFLINE=1 /work/venv/bin/python scripts/gen_fixtures.py [--quiet] [--only NAME ...]

(``--only`` rebuilds just the named fixtures and skips tokenizer_golden.json.) Verbose
output lists every directory, the adapter safetensors keys/dtypes/shapes and the checks.

No network access is needed (nothing is downloaded from the HF hub). The tokenizer is trained
on text that ships with the pinned packages (the Zen of Python + the shadow_peft sources +
a few transformers model sources), so the output only depends on the pinned versions.
Running the script twice produces byte-identical files.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import shadow_peft  # noqa: E402  (registers causal_lm_with_hidden_projection with the Auto classes)
from shadow_peft import (  # noqa: E402
    AutoModelForCausalLMWithHiddenProjection,
    ShadowConfig,
    ShadowForCausalLM,
    get_shadow_model,
)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)  # bit-reproducible CPU reductions

ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = ROOT / "tests" / "fixtures"
MODELS_DIR = ROOT / "models"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_NEW_TOKENS = 12
MIN_MARGIN = 0.05  # min top-1/top-2 logit gap along every greedy path
MAX_PROMPT_ATTEMPTS = 64
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")

# Random-init scales (chosen so logits are O(10) and the adapter changes them visibly).
EMBED_STD = 0.4  # embed_tokens / lm_head / shadow_lm_head
LINEAR_STD = 0.2  # every other weight matrix
NORM_STD = 0.1  # norm weights = 1 + NORM_STD * randn
BIAS_STD = 0.3  # q/k/v biases, LayerNorm bias
ADAPTER_STD = 0.3  # injection downs/ups, update gates/transforms

VERBOSE = True


def log(*a: Any) -> None:
    if VERBOSE:
        print(*a, flush=True)


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------


def tokenizer_corpus() -> list[str]:
    """Offline, version-pinned training text: Zen of Python + package sources."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import this  # noqa: F401  (prints the Zen on import)

    zen = codecs.decode(this.s, "rot13")
    files: list[Path] = []
    sp_dir = Path(shadow_peft.__file__).parent
    files += sorted(sp_dir.glob("*.py"))
    tf_models = Path(transformers.__file__).parent / "models"
    for rel in (
        "qwen3/modeling_qwen3.py",
        "qwen2/modeling_qwen2.py",
        "llama/modeling_llama.py",
        "llama/configuration_llama.py",
    ):
        files.append(tf_models / rel)
    texts = [zen] * 4
    for f in files:
        texts.append(f.read_text(encoding="utf-8"))
    lines: list[str] = []
    for t in texts:
        lines.extend(t.splitlines(keepends=True))
    return lines


def train_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    assert tok.get_vocab_size() == vocab_size - len(SPECIAL_TOKENS), tok.get_vocab_size()
    # Special tokens go at the END of the vocab, like Qwen's.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    return tok


@dataclass
class TokenizerBundle:
    tok: Tokenizer
    vocab_size: int
    eot_id: int
    im_start_id: int
    im_end_id: int
    files: dict[str, str]  # file name -> text

    @property
    def special_ids(self) -> set[int]:
        return {self.eot_id, self.im_start_id, self.im_end_id}

    def write(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            (d / name).write_text(text, encoding="utf-8")


def make_tokenizer_bundle(vocab_size: int) -> TokenizerBundle:
    tok = train_tokenizer(vocab_size)
    eot = tok.token_to_id("<|endoftext|>")
    ims = tok.token_to_id("<|im_start|>")
    ime = tok.token_to_id("<|im_end|>")
    tok_json = tok.to_str(pretty=False) + "\n"
    tok_cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 512,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    gen_cfg = {
        "bos_token_id": None,
        "do_sample": False,
        "eos_token_id": [ime, eot],
        "pad_token_id": eot,
        "transformers_version": transformers.__version__,
    }
    files = {
        "tokenizer.json": tok_json,
        "tokenizer_config.json": json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n",
        "generation_config.json": json.dumps(gen_cfg, indent=2, sort_keys=True) + "\n",
    }
    return TokenizerBundle(tok, vocab_size, eot, ims, ime, files)


def check_tokenizer_dir(d: Path, bundle: TokenizerBundle) -> None:
    """Load the tokenizer the way a user would and sanity check it."""
    t = AutoTokenizer.from_pretrained(str(d))
    assert len(t) == bundle.vocab_size, (len(t), bundle.vocab_size)
    assert t.eos_token == "<|im_end|>" and t.eos_token_id == bundle.im_end_id
    assert t.pad_token == "<|endoftext|>" and t.pad_token_id == bundle.eot_id
    assert t.bos_token is None
    msgs = [{"role": "user", "content": "Hi!"}]
    rendered = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", repr(rendered)
    s = "def forward(self, x):\n    return x  # Zen: Beautiful is better than ugly."
    assert t.decode(t.encode(s, add_special_tokens=False)) == s


def tokenizer_golden(bundle: TokenizerBundle, d: Path) -> dict[str, Any]:
    t = AutoTokenizer.from_pretrained(str(d))
    samples = [
        "Hello, world!",
        "def forward(self, hidden_states):\n    return hidden_states",
        "  leading spaces and\ttabs\n\nnewlines",
        "Unicode: naïve café – 日本語 🙂",
        "<|im_start|>user\nHi!<|im_end|>\n",
    ]
    enc = []
    for s in samples:
        ids = t.encode(s, add_special_tokens=False)
        assert t.decode(ids) == s
        enc.append({"text": s, "ids": ids})
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a haiku about shadows."},
    ]
    rendered = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return {
        "description": "Reference encodings of tests/fixtures/*/base/tokenizer.json "
        "(byte-level BPE, special tokens at the end of the vocab). Produced with "
        f"transformers {transformers.__version__} AutoTokenizer, add_special_tokens=False.",
        "vocab_size": bundle.vocab_size,
        "special_tokens": {
            "<|endoftext|>": bundle.eot_id,
            "<|im_start|>": bundle.im_start_id,
            "<|im_end|>": bundle.im_end_id,
        },
        "encodings": enc,
        "chat": {
            "messages": msgs,
            "add_generation_prompt": True,
            "rendered": rendered,
            "ids": t.encode(rendered, add_special_tokens=False),
        },
    }


# --------------------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------------------


def _is_norm(name: str) -> bool:
    leaf_mod = name.rsplit(".", 2)[-2] if "." in name else name
    return "norm" in leaf_mod or "layernorm" in leaf_mod


def _is_embedding_like(name: str) -> bool:
    return "embed_tokens" in name or "lm_head" in name


@torch.no_grad()
def randomize_(
    module: nn.Module,
    gen: torch.Generator,
    *,
    linear_std: float = LINEAR_STD,
    embedding_like: bool = False,
) -> None:
    """Re-randomise every parameter of `module` (tied parameters are visited once)."""
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        shape = tuple(p.shape)
        r = torch.randn(shape, generator=gen, dtype=torch.float32)
        if _is_norm(name) and leaf == "weight":
            v = 1.0 + NORM_STD * r
        elif leaf == "bias":
            v = BIAS_STD * r
        elif embedding_like or _is_embedding_like(name):
            v = EMBED_STD * r
        else:
            v = linear_std * r
        p.copy_(v.to(p.dtype))


@torch.no_grad()
def randomize_adapter_(wrapper: ShadowForCausalLM, gen: torch.Generator) -> None:
    peft = wrapper.peft_model
    randomize_(peft.shadow_model, gen)
    randomize_(peft.shadow_hidden_projection, gen)  # no-op for nn.Identity
    randomize_(peft.shadow_injection_model, gen, linear_std=ADAPTER_STD)
    randomize_(peft.shadow_update_model, gen, linear_std=ADAPTER_STD)
    requested = list(peft.shadow_config.modules_to_save or [])
    if "shadow_lm_head" in requested:
        randomize_(wrapper.shadow_lm_head, gen, embedding_like=True)
    if "lm_head" in requested:
        raise NotImplementedError("lm_head in modules_to_save is not used by these fixtures")


# --------------------------------------------------------------------------------------
# Fixture specs
# --------------------------------------------------------------------------------------


@dataclass
class Spec:
    name: str
    description: str
    seed: int
    model_cls: type
    config_cls: type
    config: dict[str, Any]
    shadow: dict[str, Any]  # ShadowConfig kwargs
    prompt_len: int
    out_root: Path = FIXTURES_DIR
    vocab: int = 512
    dtype_on_disk: str = "f32"
    max_shard_size: str | None = None
    explicit_shadow: dict[str, Any] | None = None  # Qwen3Config kwargs for the explicit shadow
    old_style_rope_theta: float | None = None
    export_matches_detached: bool = True

    @property
    def dir(self) -> Path:
        return self.out_root / self.name


QWEN3_SMALL = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=96,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
)


def specs() -> list[Spec]:
    return [
        Spec(
            name="qwen3_implicit",
            description="Qwen3 base (tied embeddings, 3 layers, hidden 64, GQA 4/2) + implicit "
            "2-layer shadow with a different intermediate size (64 vs base 96). f32 on disk.",
            seed=1001,
            model_cls=Qwen3ForCausalLM,
            config_cls=Qwen3Config,
            config=dict(QWEN3_SMALL, tie_word_embeddings=True),
            shadow=dict(
                num_shadow_layers=2,
                shadow_intermediate_size=64,
                injection_hidden_size=8,
                gate_hidden_size=6,
                alpha=0.5,
                dropout=0.1,
            ),
            prompt_len=9,
        ),
        Spec(
            name="qwen3_explicit_proj",
            description="Qwen3 base (tied, hidden 64) + EXPLICIT shadow: Qwen3 with hidden 32, "
            "2 layers and its own embed_tokens, wrapped as causal_lm_with_hidden_projection "
            "(shadow_hidden_projection Linear 32->64) in shadow/. The adapter re-randomises "
            "the shadow backbone + projection, so adapter weights differ from shadow/ "
            "(the adapter's copy wins when loading). Export is a "
            "causal_lm_with_hidden_projection model.",
            seed=2002,
            model_cls=Qwen3ForCausalLM,
            config_cls=Qwen3Config,
            config=dict(QWEN3_SMALL, tie_word_embeddings=True),
            shadow=dict(
                num_shadow_layers=2,
                injection_hidden_size=8,
                gate_hidden_size=6,
                alpha=0.5,
                dropout=0.1,
            ),
            explicit_shadow=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                intermediate_size=64,
                max_position_embeddings=512,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                tie_word_embeddings=True,
            ),
            prompt_len=8,
        ),
        Spec(
            name="qwen3_untied",
            description="Qwen3 base with untied lm_head, head_dim 32 != hidden/heads (64/4), GQA 4/1; "
            "implicit 1-layer shadow; modules_to_save=['shadow_lm_head'] with a randomised "
            "shadow_lm_head stored in adapter/shadow_modules.safetensors. NOTE: the official "
            "export_shadow() copies the BASE lm_head, so export_logits != detached_logits here.",
            seed=3003,
            model_cls=Qwen3ForCausalLM,
            config_cls=Qwen3Config,
            config=dict(QWEN3_SMALL, head_dim=32, num_key_value_heads=1, tie_word_embeddings=False),
            shadow=dict(
                num_shadow_layers=1,
                injection_hidden_size=8,
                gate_hidden_size=6,
                alpha=0.5,
                dropout=0.1,
                modules_to_save=["shadow_lm_head"],
            ),
            prompt_len=10,
            export_matches_detached=False,
        ),
        Spec(
            name="qwen3_bf16",
            description="Qwen3 base (tied) + implicit 2-layer shadow, base/adapter/export all "
            "stored as BF16 on disk; golden computed after loading in float32.",
            seed=4004,
            model_cls=Qwen3ForCausalLM,
            config_cls=Qwen3Config,
            config=dict(QWEN3_SMALL, tie_word_embeddings=True),
            shadow=dict(
                num_shadow_layers=2,
                injection_hidden_size=8,
                gate_hidden_size=6,
                alpha=0.5,
                dropout=0.1,
            ),
            prompt_len=7,
            dtype_on_disk="bf16",
        ),
        Spec(
            name="qwen2_gqa",
            description="Qwen2 base (q/k/v biases, GQA 4 heads / 1 KV head, tied), saved "
            "SHARDED (model.safetensors.index.json); implicit 1-layer shadow with "
            "shadow_num_key_value_heads=2.",
            seed=5005,
            model_cls=Qwen2ForCausalLM,
            config_cls=Qwen2Config,
            config=dict(
                hidden_size=64,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=1,
                intermediate_size=96,
                max_position_embeddings=512,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                tie_word_embeddings=True,
                use_sliding_window=False,
            ),
            shadow=dict(
                num_shadow_layers=1,
                shadow_num_key_value_heads=2,
                injection_hidden_size=8,
                gate_hidden_size=6,
                alpha=0.5,
                dropout=0.1,
            ),
            prompt_len=11,
            max_shard_size="150KB",
        ),
        Spec(
            name="llama",
            description="Llama base (untied, GQA 4/2, no biases) whose config.json uses the OLD "
            "top-level rope_theta (500000.0, no rope_parameters); implicit 1-layer shadow.",
            seed=6006,
            model_cls=LlamaForCausalLM,
            config_cls=LlamaConfig,
            config=dict(
                hidden_size=64,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=96,
                max_position_embeddings=512,
                rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                tie_word_embeddings=False,
                attention_bias=False,
                mlp_bias=False,
            ),
            shadow=dict(
                num_shadow_layers=1,
                injection_hidden_size=8,
                gate_hidden_size=6,
                alpha=0.5,
                dropout=0.1,
            ),
            prompt_len=8,
            old_style_rope_theta=500000.0,
        ),
        Spec(
            name="tiny",
            description="Bundled tiny demo model (random weights): Qwen3 base (tied, hidden 128, "
            "4 layers, GQA 4/2, intermediate 192) + implicit 2-layer shadow (intermediate 128); "
            "1024-token byte-level BPE tokenizer. f32 on disk.",
            seed=7007,
            model_cls=Qwen3ForCausalLM,
            config_cls=Qwen3Config,
            config=dict(
                hidden_size=128,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=32,
                intermediate_size=192,
                max_position_embeddings=512,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                tie_word_embeddings=True,
            ),
            shadow=dict(
                num_shadow_layers=2,
                shadow_intermediate_size=128,
                injection_hidden_size=16,
                gate_hidden_size=10,
                alpha=0.5,
                dropout=0.1,
            ),
            prompt_len=10,
            out_root=MODELS_DIR,
            vocab=1024,
        ),
    ]


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def disk_dtype(spec: Spec) -> torch.dtype:
    return {"f32": torch.float32, "bf16": torch.bfloat16}[spec.dtype_on_disk]


def make_config(spec: Spec, bundle: TokenizerBundle, cls: type, kw: dict[str, Any]):
    cfg = cls(
        vocab_size=bundle.vocab_size,
        bos_token_id=None,
        eos_token_id=bundle.im_end_id,
        pad_token_id=bundle.eot_id,
        initializer_range=0.2,
        use_cache=True,
        **kw,
    )
    return cfg


def set_generation_config(model: nn.Module, bundle: TokenizerBundle) -> None:
    model.generation_config = GenerationConfig(
        eos_token_id=[bundle.im_end_id, bundle.eot_id], pad_token_id=bundle.eot_id, do_sample=False
    )


def load_f32(path: Path):
    """AutoModelForCausalLM.from_pretrained(path, dtype=float32), then verify that every
    tensor on disk landed in the model unchanged and no parameter was left uninitialised.
    (output_loading_info can't be used: the projected model's from_pretrained breaks with it.)"""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    on_disk: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                on_disk[k] = fh.get_tensor(k)
    sd = model.state_dict()
    for k, t in on_disk.items():
        assert k in sd, f"{path}: tensor {k} on disk but not in the model"
        assert sd[k].dtype == torch.float32, (k, sd[k].dtype)
        assert torch.equal(sd[k], t.to(torch.float32)), f"{path}: {k} differs after loading"
    for n, _ in model.named_parameters():  # tied parameters are listed once
        assert n in on_disk, f"{path}: parameter {n} missing on disk"
    return model


def rewrite_old_style_rope(cfg_path: Path, theta: float) -> None:
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("rope_parameters", None)
    cfg.pop("rope_scaling", None)
    cfg["rope_theta"] = theta
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build(spec: Spec, bundle: TokenizerBundle) -> None:
    d = spec.dir
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    gen = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)

    # ---- base -------------------------------------------------------------------------
    cfg = make_config(spec, bundle, spec.config_cls, spec.config)
    base = spec.model_cls(cfg)
    randomize_(base, gen)
    base.eval()
    set_generation_config(base, bundle)
    base_dir = d / "base"
    base_to_save = base.to(disk_dtype(spec))
    save_kw = {"max_shard_size": spec.max_shard_size} if spec.max_shard_size else {}
    base_to_save.save_pretrained(str(base_dir), **save_kw)
    if spec.old_style_rope_theta is not None:
        ref = load_f32(base_dir)
        ids = torch.arange(0, 16).unsqueeze(0) % bundle.vocab_size
        with torch.no_grad():
            ref_logits = ref(input_ids=ids, use_cache=False).logits
        rewrite_old_style_rope(base_dir / "config.json", spec.old_style_rope_theta)
        re = load_f32(base_dir)
        assert re.config.rope_parameters["rope_theta"] == spec.old_style_rope_theta, re.config.rope_parameters
        with torch.no_grad():
            re_logits = re(input_ids=ids, use_cache=False).logits
        assert torch.equal(ref_logits, re_logits), "old-style rope_theta changed the logits"
        log(f"  [{spec.name}] old-style rope_theta config reloads to identical logits "
            f"(rope_parameters={re.config.rope_parameters})")
    bundle.write(base_dir)
    del base, base_to_save

    # ---- explicit shadow dir ------------------------------------------------------------
    shadow_dir = None
    shadow_model_for_adapter = None
    base_w = load_f32(base_dir)
    if spec.explicit_shadow is not None:
        scfg = make_config(spec, bundle, Qwen3Config, spec.explicit_shadow)
        small = Qwen3ForCausalLM(scfg)
        randomize_(small, gen)
        proj = nn.Linear(scfg.hidden_size, base_w.config.hidden_size, bias=False)
        randomize_(proj, gen)
        wrapped = AutoModelForCausalLMWithHiddenProjection.wrap(
            shadow_model=small,
            shadow_hidden_projection=proj,
            lm_head=base_w.get_output_embeddings(),
            init_optimal_projection=False,
        )
        set_generation_config(wrapped, bundle)
        shadow_dir = d / "shadow"
        wrapped.to(disk_dtype(spec)).save_pretrained(str(shadow_dir))
        bundle.write(shadow_dir)
        del small, wrapped
        # As a user would: load the shadow dir and hand it to get_shadow_model.
        shadow_model_for_adapter = load_f32(shadow_dir)
        assert isinstance(shadow_model_for_adapter, AutoModelForCausalLMWithHiddenProjection)

    # ---- adapter ------------------------------------------------------------------------
    scfg = ShadowConfig(**spec.shadow)
    peft = get_shadow_model(base_w, scfg, shadow_model=shadow_model_for_adapter)
    wrapper = ShadowForCausalLM(peft)
    randomize_adapter_(wrapper, gen)
    if disk_dtype(spec) != torch.float32:
        wrapper.to(disk_dtype(spec))
    wrapper.eval()
    adapter_dir = d / "adapter"
    wrapper.save_pretrained(str(adapter_dir))

    # ---- export -------------------------------------------------------------------------
    exported = peft.export_shadow()
    set_generation_config(exported, bundle)
    export_dir = d / "export"
    exported.save_pretrained(str(export_dir))
    bundle.write(export_dir)
    del exported, wrapper, peft, base_w, shadow_model_for_adapter

    for sub in ("base", "shadow", "export"):
        if (d / sub).exists():
            check_tokenizer_dir(d / sub, bundle)

    # ---- golden -------------------------------------------------------------------------
    make_golden(spec, bundle, shadow_dir is not None)


# --------------------------------------------------------------------------------------
# Golden
# --------------------------------------------------------------------------------------


@torch.no_grad()
def greedy(step: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor, n: int):
    seq = ids.clone()
    new: list[int] = []
    min_margin = float("inf")
    for _ in range(n):
        logits = step(seq.unsqueeze(0))[0, -1].float()
        top2 = torch.topk(logits, 2).values
        min_margin = min(min_margin, float(top2[0] - top2[1]))
        nxt = int(torch.argmax(logits))
        new.append(nxt)
        seq = torch.cat([seq, torch.tensor([nxt], dtype=seq.dtype)])
    return torch.tensor(new, dtype=torch.int64), min_margin


def list_dir(d: Path) -> None:
    for p in sorted(d.rglob("*")):
        if p.is_file():
            log(f"    {p.relative_to(d)}  ({p.stat().st_size} B)")


def safetensors_summary(path: Path) -> list[str]:
    out = []
    with safe_open(str(path), "pt") as f:
        for k in sorted(f.keys()):
            sl = f.get_slice(k)
            out.append(f"{k} {sl.get_dtype()} {list(sl.get_shape())}")
    return out


@torch.no_grad()
def make_golden(spec: Spec, bundle: TokenizerBundle, has_shadow: bool) -> None:
    d = spec.dir
    base_dir, adapter_dir, export_dir = d / "base", d / "adapter", d / "export"
    shadow_dir = d / "shadow" if has_shadow else None

    # Plain base (no adapter).
    plain = load_f32(base_dir)
    # Attached / detached: exactly as a user would load it.
    base = load_f32(base_dir)
    shadow_model = load_f32(shadow_dir) if shadow_dir is not None else None
    model = ShadowForCausalLM.from_pretrained(
        base, str(adapter_dir), shadow_model=shadow_model, inference_mode="base_shadow"
    )
    model.eval()
    for n, p in model.peft_model.named_parameters():
        assert p.dtype == torch.float32, (n, p.dtype)
    # Export: a standalone HF model.
    export = load_f32(export_dir)

    def run_prompt(input_ids: torch.Tensor) -> dict[str, Any]:
        r: dict[str, Any] = {"input_ids": input_ids}
        x = input_ids.unsqueeze(0)
        r["base_logits"] = plain(input_ids=x, use_cache=False).logits[0].float()
        model.set_inference_mode("base_shadow")
        out = model(input_ids=x, use_cache=False)
        r["attached_logits"] = out.logits[0].float()
        r["attached_shadow_logits"] = out.shadow_logits[0].float()
        r["greedy_attached"], m_att = greedy(
            lambda s: model(input_ids=s, use_cache=False).logits, input_ids, MAX_NEW_TOKENS
        )
        model.set_inference_mode("shadow_only")
        r["detached_logits"] = model(input_ids=x, use_cache=False).logits[0].float()
        r["greedy_detached"], m_det = greedy(
            lambda s: model(input_ids=s, use_cache=False).logits, input_ids, MAX_NEW_TOKENS
        )
        model.set_inference_mode("base_shadow")
        r["export_logits"] = export(input_ids=x, use_cache=False).logits[0].float()
        r["greedy_export"], m_exp = greedy(
            lambda s: export(input_ids=s, use_cache=False).logits, input_ids, MAX_NEW_TOKENS
        )
        r["margins"] = (m_att, m_det, m_exp)
        return r

    # Random prompt (fixed seed); if greedy decoding has a near-tie anywhere (top-2 logit
    # margin < MIN_MARGIN), deterministically try the next prompt so that the greedy
    # goldens are robust to float reordering on GPU.
    candidates = torch.tensor(
        [i for i in range(bundle.vocab_size) if i not in bundle.special_ids], dtype=torch.int64
    )
    best = None
    for attempt in range(MAX_PROMPT_ATTEMPTS):
        g = torch.Generator().manual_seed(spec.seed * 100 + attempt)
        pick = torch.randint(0, len(candidates), (spec.prompt_len,), generator=g)
        r = run_prompt(candidates[pick])
        if best is None or min(r["margins"]) > min(best["margins"]):
            best = r
        if min(r["margins"]) >= MIN_MARGIN:
            break
    else:
        print(f"WARNING: {spec.name}: no prompt with greedy margin >= {MIN_MARGIN}; "
              f"using the best one ({min(best['margins']):.4f})")
    r = best
    log(f"  [{spec.name}] prompt chosen after {attempt + 1} attempt(s)")
    del model, base, shadow_model, export, plain

    input_ids = r["input_ids"]
    base_logits = r["base_logits"]
    attached = r["attached_logits"]
    attached_shadow = r["attached_shadow_logits"]
    detached = r["detached_logits"]
    export_logits = r["export_logits"]
    greedy_attached = r["greedy_attached"]
    greedy_detached = r["greedy_detached"]
    greedy_export = r["greedy_export"]
    m_att, m_det, m_exp = r["margins"]

    # ---- checks -----------------------------------------------------------------------
    T, V = attached.shape
    assert V == bundle.vocab_size and T == spec.prompt_len
    max_abs = float(attached.abs().max())
    max_abs_base = float(base_logits.abs().max())
    assert max_abs > 3.0 and max_abs_base > 3.0, (max_abs, max_abs_base)
    diff_base = float((attached - base_logits).abs().max())
    assert diff_base > 0.05 * max_abs, f"adapter barely changes logits: {diff_base} vs {max_abs}"
    tol = 1e-4 * float(detached.abs().max())
    d_det_sh = float((detached - attached_shadow).abs().max())
    d_det_exp = float((detached - export_logits).abs().max())
    assert d_det_sh <= tol, f"detached vs attached_shadow: {d_det_sh} > {tol}"
    if spec.export_matches_detached:
        assert d_det_exp <= tol, f"detached vs export: {d_det_exp} > {tol}"
        assert torch.equal(greedy_detached, greedy_export)
    else:
        assert d_det_exp > 0.05 * float(detached.abs().max()), "expected export != detached"

    tensors = {
        "input_ids": input_ids.contiguous(),
        "base_logits": base_logits.contiguous(),
        "attached_logits": attached.contiguous(),
        "attached_shadow_logits": attached_shadow.contiguous(),
        "detached_logits": detached.contiguous(),
        "export_logits": export_logits.contiguous(),
        "greedy_attached": greedy_attached,
        "greedy_detached": greedy_detached,
        "greedy_export": greedy_export,
    }
    save_file(tensors, str(d / "golden.safetensors"))
    meta = {
        "description": spec.description,
        "base": "base",
        "adapter": "adapter",
        "shadow": "shadow" if has_shadow else None,
        "export": "export",
        "input_ids": input_ids.tolist(),
        "max_new_tokens": MAX_NEW_TOKENS,
        "dtype_on_disk": spec.dtype_on_disk,
        "export_matches_detached": spec.export_matches_detached,
        "max_abs_logit": round(max_abs, 4),
        "greedy_min_top2_margin": {
            "attached": round(m_att, 4),
            "detached": round(m_det, 4),
            "export": round(m_exp, 4),
        },
    }
    (d / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")

    summary = {
        "name": spec.name,
        "T": T,
        "V": V,
        "max_abs_logit": max_abs,
        "max_abs_base_logit": max_abs_base,
        "max_diff_attached_vs_base": diff_base,
        "max_diff_detached_vs_attached_shadow": d_det_sh,
        "max_diff_detached_vs_export": d_det_exp,
        "min_margins": (m_att, m_det, m_exp),
        "greedy_attached": greedy_attached.tolist(),
        "greedy_detached": greedy_detached.tolist(),
        "greedy_export": greedy_export.tolist(),
    }
    SUMMARY.append(summary)
    log(f"  [{spec.name}] T={T} V={V} max|logit|={max_abs:.3f} (base {max_abs_base:.3f}) "
        f"max|attached-base|={diff_base:.3f} |det-shadow|={d_det_sh:.2e} |det-export|={d_det_exp:.2e} "
        f"min top2 margins att/det/exp={m_att:.3f}/{m_det:.3f}/{m_exp:.3f}")
    log(f"  [{spec.name}] greedy attached={greedy_attached.tolist()} detached={greedy_detached.tolist()} "
        f"export={greedy_export.tolist()}")
    log(f"  [{spec.name}] layout:")
    list_dir(d)
    for f in sorted(adapter_dir.glob("*.safetensors")):
        log(f"  [{spec.name}] {f.name} tensors:")
        for line in safetensors_summary(f):
            log(f"    {line}")
    log(f"  [{spec.name}] shadow_config.json: {(adapter_dir / 'shadow_config.json').read_text().strip()}")


SUMMARY: list[dict[str, Any]] = []


def main() -> None:
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quiet", action="store_true", help="only print the final summary")
    ap.add_argument("--only", nargs="*", help="only (re)build these fixture names")
    args = ap.parse_args()
    VERBOSE = not args.quiet

    log(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, shadow-peft {getattr(shadow_peft, '__version__', '?')}")
    bundles = {v: make_tokenizer_bundle(v) for v in (512, 1024)}
    for v, b in bundles.items():
        log(f"tokenizer vocab {v}: <|endoftext|>={b.eot_id} <|im_start|>={b.im_start_id} "
            f"<|im_end|>={b.im_end_id}")

    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    for spec in specs():
        if args.only and spec.name not in args.only:
            continue
        log(f"== building {spec.out_root.relative_to(ROOT)}/{spec.name}")
        build(spec, bundles[spec.vocab])

    if not args.only:
        tg = tokenizer_golden(bundles[512], FIXTURES_DIR / "qwen3_implicit" / "base")
        (FIXTURES_DIR / "tokenizer_golden.json").write_text(
            json.dumps(tg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    print("\nSummary:")
    for s in SUMMARY:
        print(f"  {s['name']:<20} T={s['T']:<3} V={s['V']:<5} max|logit|={s['max_abs_logit']:.3f} "
              f"max|attached-base|={s['max_diff_attached_vs_base']:.3f} "
              f"|det-export|={s['max_diff_detached_vs_export']:.2e}")
    print("\ngolden.safetensors sha256:")
    for root in (FIXTURES_DIR, MODELS_DIR):
        for p in sorted(root.rglob("golden.safetensors")):
            print(f"  {hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
