#!/usr/bin/env python3
"""Golden fixtures for Hugging Face ``peft`` SHADOW adapters (peft's ShadowPEFT tuner).

peft's tuner computes a different algorithm from the official shadow-peft package: injection at
every targeted block (block 0 included), no LayerNorm before the update, GELU update networks
with biases, ``s = (1 - g) * s + g * T(h_out)``. These fixtures pin its behaviour.

What it makes, under ``tests/fixtures/<name>/`` (vocab 512 tokenizer of gen_fixtures.py):

* ``peft_mirror``        Qwen3 base (tied), every block targeted, "mirror" 2-layer shadow with
                         its own intermediate size, shared base embeddings, default adapter name
* ``peft_explicit``      Qwen2 base (untied), ``target_modules`` a regex over blocks 0-1 (block 2
                         runs plain), explicit Qwen3 shadow backbone of width 48 from ``shadow/``
                         (``shadow_model: "shadow"``, its embeddings frozen, a trained projection
                         48 -> 64), ``modules_to_save=["lm_head"]``
* ``peft_projected``     Qwen3 base (tied), ``exclude_modules`` leaving blocks 0-1 of 3, explicit
                         shadow from ``shadow/``, a ``causal_lm_with_hidden_projection``
                         checkpoint (a Llama of width 32 with its projection 32 -> 64)
* ``peft_partial_proj``  Llama base (untied), 1-layer shadow of width 32 with 2 heads (own
                         embeddings + projection 32 -> 64), adapter name ``robot``, and
                         ``layers_to_transform=[1, 2]``, which peft 0.21.2 does not apply here:
                         with ``target_modules`` unset it targets every block by name, and a
                         named block bypasses the index filter, so all three blocks are
                         wrapped (the saved config and weights say so too)

each with ``base/`` (HF model + tokenizer files), ``adapter/`` (``adapter_config.json`` +
``adapter_model.safetensors`` as written by ``PeftModel.save_pretrained``), ``export/``
(``unload_shadow(copy=True).save_pretrained``: ``backbone.*``, ``shadow_hidden_projection``,
``head.weight``), ``golden.safetensors`` and ``golden.json``.

golden.safetensors (float32, CPU, after reloading base + adapter from disk with
``PeftModel.from_pretrained``): ``input_ids``; ``base_logits`` (no adapter);
``attached_logits`` (the peft model's logits); ``shadow_logits`` (the LM head on the initial
shadow state ``s0``, what the detached model computes); ``export_logits`` (the export reloaded
into a ``DetachedShadowModel``); ``greedy_attached`` / ``greedy_export`` (12 new tokens, full
forwards, argmax of the last position).

Every adapter weight is randomised (``init_weights=False`` and a re-randomisation), so the
injection and update change the logits visibly. Deterministic: same files on every run with
the pinned versions (scripts/requirements-golden.txt, plus peft==0.21.2).

    HF_HUB_OFFLINE=1 /work/venv/bin/python scripts/gen_peft_fixtures.py
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_fixtures as gf  # noqa: E402  (sets torch determinism, one thread)
import peft  # noqa: E402
import torch  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402
from peft import ShadowConfig as PeftShadowConfig  # noqa: E402
from peft.tuners.shadow.layers import DetachedShadowModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

N_NEW = 12

SPECS = [
    {
        "name": "peft_mirror",
        "seed": 501,
        "description": "peft SHADOW: Qwen3 tied base, all 3 blocks targeted, mirror 2-layer shadow "
        "(intermediate 64), shared base embeddings, r 8, update width 12, adapter 'default'",
        "model": (Qwen3Config, Qwen3ForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2,
                                                     head_dim=16, tie_word_embeddings=True)),
        "adapter_name": "default",
        "shadow": dict(r=8, shadow_alpha=0.5, update_hidden_size=12, shadow_num_hidden_layers=2,
                       shadow_intermediate_size=64,
                       target_modules=["model.layers.0", "model.layers.1", "model.layers.2"]),
    },
    {
        "name": "peft_partial_proj",
        "seed": 502,
        "description": "peft SHADOW: Llama untied base, layers_to_transform [1, 2], 1-layer shadow of "
        "width 32 with 2 heads (own embeddings, projection 32 -> 64), r 4, update width r, adapter 'robot'",
        "model": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2,
                                                     head_dim=16, tie_word_embeddings=False,
                                                     rope_theta=10000.0)),
        "adapter_name": "robot",
        "shadow": dict(r=4, shadow_alpha=0.7, shadow_num_hidden_layers=1, shadow_hidden_size=32,
                       shadow_num_attention_heads=2, shadow_intermediate_size=48,
                       layers_to_transform=[1, 2], layers_pattern="layers"),
    },
    {
        "name": "peft_explicit",
        "seed": 503,
        "description": "peft SHADOW: Qwen2 untied base, target_modules regex over blocks 0-1 (block 2 "
        "plain), explicit Qwen3 shadow backbone of width 48 (own frozen embeddings, projection "
        "48 -> 64), modules_to_save lm_head, r 6, update width 10, adapter 'default'",
        "model": (Qwen2Config, Qwen2ForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2,
                                                     tie_word_embeddings=False)),
        "adapter_name": "default",
        "explicit": (Qwen3Config, Qwen3ForCausalLM, dict(hidden_size=48, intermediate_size=80,
                                                        num_hidden_layers=2, num_attention_heads=3,
                                                        num_key_value_heads=1, head_dim=16,
                                                        tie_word_embeddings=True)),
        "shadow": dict(r=6, shadow_alpha=0.6, update_hidden_size=10,
                       target_modules=r".*\.layers\.[01]", modules_to_save=["lm_head"]),
    },
    {
        "name": "peft_projected",
        "seed": 504,
        "description": "peft SHADOW: Qwen3 tied base, every block but the last (exclude_modules), "
        "explicit shadow from a causal_lm_with_hidden_projection checkpoint (Llama of width 32 "
        "with its projection 32 -> 64, both trained further), r 4, update width 6",
        "model": (Qwen3Config, Qwen3ForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2,
                                                     head_dim=16, tie_word_embeddings=True)),
        "adapter_name": "default",
        "explicit": (LlamaConfig, LlamaForCausalLM, dict(hidden_size=32, intermediate_size=56,
                                                        num_hidden_layers=2, num_attention_heads=2,
                                                        num_key_value_heads=1, head_dim=16,
                                                        tie_word_embeddings=False,
                                                        rope_theta=10000.0)),
        "projected": True,
        "shadow": dict(r=4, shadow_alpha=0.8, update_hidden_size=6,
                       exclude_modules=["model.layers.2"]),
    },
]


@contextlib.contextmanager
def in_dir(d: Path):
    """Runs with `d` as the working directory (peft resolves a relative `shadow_model` there)."""
    old = os.getcwd()
    os.chdir(d)
    try:
        yield
    finally:
        os.chdir(old)


def base_model(spec, bundle):
    cfg_cls, model_cls, kw = spec["model"]
    cfg = cfg_cls(vocab_size=bundle.vocab_size, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=3, max_position_embeddings=256, rms_norm_eps=1e-6,
                  bos_token_id=None, eos_token_id=bundle.im_end_id, pad_token_id=bundle.eot_id, **kw)
    return model_cls(cfg)


def load_base(d: Path):
    return gf.load_f32(d)


@torch.no_grad()
def build(spec, bundle) -> None:
    d = gf.FIXTURES_DIR / spec["name"]
    if d.exists():
        shutil.rmtree(d)
    gen = torch.Generator().manual_seed(spec["seed"])
    torch.manual_seed(spec["seed"])
    name = spec["adapter_name"]

    base = base_model(spec, bundle)
    gf.randomize_(base, gen)
    base.eval()
    gf.set_generation_config(base, bundle)
    base.save_pretrained(str(d / "base"))
    bundle.write(d / "base")

    shadow_kw = dict(spec["shadow"])
    if "explicit" in spec:
        # An explicit shadow backbone: a separate (random) model directory, named in the adapter
        # config by a path relative to the fixture directory.
        cfg_cls, model_cls, kw = spec["explicit"]
        kw = dict(kw)
        cfg = cfg_cls(vocab_size=bundle.vocab_size, max_position_embeddings=256, rms_norm_eps=1e-6,
                      bos_token_id=None, eos_token_id=bundle.im_end_id, pad_token_id=bundle.eot_id, **kw)
        sm = model_cls(cfg)
        gf.randomize_(sm, gen)
        if spec.get("projected"):
            # A "projected" shadow checkpoint: the backbone under `shadow_model.` and its
            # shadow-hidden -> base-hidden projection (the layout of shadow-peft's exports).
            (d / "shadow").mkdir(parents=True)
            inner = sm.model.config.to_dict()
            wrapper = {"model_type": "causal_lm_with_hidden_projection", "base_hidden_size": 64,
                       "vocab_size": bundle.vocab_size, "shadow_model_config": inner}
            (d / "shadow" / "config.json").write_text(json.dumps(wrapper, indent=2, sort_keys=True) + "\n")
            tensors = {f"shadow_model.{k}": v.contiguous() for k, v in sm.model.state_dict().items()}
            tensors["shadow_hidden_projection.weight"] = gf.ADAPTER_STD * torch.randn((64, kw["hidden_size"]), generator=gen)
            save_file(tensors, str(d / "shadow" / "model.safetensors"))
        else:
            sm.save_pretrained(str(d / "shadow"))
        shadow_kw["shadow_model"] = "shadow"
    sc = PeftShadowConfig(task_type="CAUSAL_LM", shadow_dropout=0.0, init_weights=False, **shadow_kw)
    with in_dir(d):
        pm = get_peft_model(load_base(d / "base"), sc, adapter_name=name)
    for n, p in pm.named_parameters():
        if p.requires_grad:
            r = torch.randn(tuple(p.shape), generator=gen)
            if "norm" in n and n.endswith("weight"):
                p.copy_(1.0 + gf.NORM_STD * r)
            elif "embed_tokens" in n:
                p.copy_(gf.EMBED_STD * r)
            elif n.endswith("bias"):
                p.copy_(gf.BIAS_STD * r)
            else:
                p.copy_(gf.ADAPTER_STD * r)
    pm.eval()
    pm.save_pretrained(str(d / "adapter"), selected_adapters=[name])
    # save_pretrained puts a non-default adapter in a subdirectory: flatten it.
    sub = d / "adapter" / name
    if sub.is_dir():
        for f in sub.iterdir():
            shutil.move(str(f), str(d / "adapter" / f.name))
        sub.rmdir()
    (d / "adapter" / "README.md").unlink(missing_ok=True)
    cfg = json.loads((d / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    # peft stores the matched blocks from a set: sort them so the file is reproducible.
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    (d / "adapter" / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    export = pm.base_model.unload_shadow(adapter_name=name, copy=True)
    export.save_pretrained(str(d / "export"))
    bundle.write(d / "export")
    del pm, export

    make_golden(spec, bundle, d)


@torch.no_grad()
def make_golden(spec, bundle, d: Path) -> None:
    name = spec["adapter_name"]
    plain = load_base(d / "base")
    with in_dir(d):
        model = PeftModel.from_pretrained(load_base(d / "base"), str(d / "adapter"), adapter_name=name)
    model.eval()
    tuner = model.base_model

    # The export, reloaded: a DetachedShadowModel around a fresh backbone of the export's config.
    sd = load_file(str(d / "export" / "model.safetensors"))
    backbone = AutoModel.from_config(AutoConfig.from_pretrained(str(d / "export")))
    proj = None
    if "shadow_hidden_projection.weight" in sd:
        w = sd["shadow_hidden_projection.weight"]
        proj = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    # A head trained through modules_to_save is exported inside peft's wrapper: take the trained copy.
    trained = [k for k in sd if k.startswith("head.modules_to_save.")]
    if trained:
        sd["head.weight"] = sd[trained[0]]
        for k in [k for k in sd if k.startswith(("head.modules_to_save.", "head.original_module."))]:
            del sd[k]
    head_w = sd["head.weight"]
    head = torch.nn.Linear(head_w.shape[1], head_w.shape[0], bias=False)
    det = DetachedShadowModel(backbone, proj, head)
    missing, unexpected = det.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("_") for k in missing), missing
    det.eval()

    ids = None
    for attempt in range(gf.MAX_PROMPT_ATTEMPTS):
        g = torch.Generator().manual_seed(spec["seed"] * 1000 + attempt)
        cand = torch.randint(0, bundle.vocab_size - len(gf.SPECIAL_TOKENS), (9,), generator=g)
        ga, ma = gf.greedy(lambda x: model(input_ids=x).logits, cand, N_NEW)
        ge, me = gf.greedy(lambda x: det(input_ids=x).logits, cand, N_NEW)
        if min(ma, me) >= gf.MIN_MARGIN:
            ids = cand
            break
    assert ids is not None, "no prompt with a safe greedy margin"
    x = ids.unsqueeze(0)
    base_logits = plain(input_ids=x).logits[0]
    attached = model(input_ids=x).logits[0]
    s0 = tuner._seed_shadow_state[0]
    shadow = tuner._resolve_shadow_head(name)(s0)
    export_logits = det(input_ids=x).logits[0]
    mx = float(attached.abs().max())
    assert float((shadow - export_logits).abs().max()) <= 1e-4 * float(export_logits.abs().max())
    assert float((attached - base_logits).abs().max()) > 0.05 * mx, "the adapter barely changes the logits"
    save_file({
        "input_ids": ids.to(torch.int64),
        "base_logits": base_logits.contiguous(),
        "attached_logits": attached.contiguous(),
        "shadow_logits": shadow.contiguous(),
        "export_logits": export_logits.contiguous(),
        "greedy_attached": ga,
        "greedy_export": ge,
    }, str(d / "golden.safetensors"))
    meta = {
        "description": spec["description"],
        "format": "peft",
        "peft_version": peft.__version__,
        "adapter_name": name,
        "base": "base",
        "adapter": "adapter",
        "export": "export",
        **({"shadow": "shadow"} if "explicit" in spec else {}),
        "input_ids": ids.tolist(),
        "max_new_tokens": N_NEW,
        "max_abs_logit": round(mx, 4),
        "greedy_min_top2_margin": {"attached": round(ma, 4), "export": round(me, 4)},
    }
    (d / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")
    gf.log(f"  [{spec['name']}] max|logit| {mx:.3f}, |attached-base| "
           f"{float((attached - base_logits).abs().max()):.3f}, margins {ma:.3f}/{me:.3f}")


def main() -> None:
    gf.log(f"peft {peft.__version__}, torch {torch.__version__}")
    bundle = gf.make_tokenizer_bundle(512)
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
    for spec in SPECS:
        if only is not None and spec["name"] not in only:
            continue
        gf.log(f"== building tests/fixtures/{spec['name']}")
        build(spec, bundle)


if __name__ == "__main__":
    main()
