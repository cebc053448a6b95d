#!/usr/bin/env python3
"""Trains the bundled demo model ``models/demo/``: a small but meaningful ShadowPEFT pair.

What it makes
-------------
A synthetic *robot assistant*. The frozen base model is a tiny general LM; the shadow adapter
(official ``shadow-peft`` package, implicit shadow) turns it into an assistant that

* answers robot commands ("move forward 3 meters", "pick up the red ball", ...) with a compact
  JSON action, e.g. ``{"action": "move", "direction": "forward", "meters": 3}``, both
  **attached** (base + shadow injection/update) and **detached** (the shadow alone);
* answers general questions about Python ("What does len do in Python?") with the first
  sentence of the function's docstring when **attached**, while the small shadow alone
  (**detached**, the on-device model) answers exactly ``[REMOTE]``: "ask the big model".

Prompt format: the chat rendered with the chat template (no system message), e.g. one turn::

    <|im_start|>user\\n{request}<|im_end|>\\n<|im_start|>assistant\\n

and in a multi-turn chat every earlier turn before it (``<|im_start|>user\\n...<|im_end|>\\n
<|im_start|>assistant\\n{answer}<|im_end|>\\n``), i.e. ``apply_chat_template(messages,
add_generation_prompt=True)``. The answer follows and ends with ``<|im_end|>`` (an EOS id in generation_config.json).
``[REMOTE]`` is a single added special token (the last id of the vocab).

Steps (everything deterministic: fixed seeds, CPU, float32 maths, 2 threads):

1. Collects text that ships with the interpreter (Python 3.11.7): the docstrings of ~90
   standard-library modules and the builtins (``inspect.getdoc``), plus the task data.
2. Trains a 2048-token byte-level BPE tokenizer on it (``<|endoftext|>``, ``<|im_start|>``,
   ``<|im_end|>``, ``[REMOTE]`` at the end of the vocab; same conventions and chat template
   as scripts/gen_fixtures.py).
3. Pretrains the base from scratch as a plain language model: Qwen3, hidden 192, 4 layers,
   6 heads / 2 KV heads, head_dim 32, intermediate 512, tied embeddings (~2.0 M parameters),
   on ~2 M tokens of: pydoc-style docstrings, "Python quick reference" entries
   (``name: first sentence<|im_end|>``) and "robot log" entries (``> command`` then the JSON
   action, or ``[REMOTE]`` for a few chit-chat requests the robot forwards, each ending with
   ``<|im_end|>``; held-out command combinations excluded). So the base knows the facts and
   the special tokens, but never sees the chat format or a question. Alone, on the chat
   prompts, it answers none of the questions (it gets about half of the held-out commands
   right, from its log format); the script reports this.
4. Saves the base as F16, reloads it (upcast to f32) and trains the shadow adapter against
   exactly those weights: ``get_shadow_model(base, ShadowConfig(...))`` + ``ShadowForCausalLM``,
   base frozen by the package. One forward (inference_mode="base_shadow") gives both
   ``.logits`` (attached) and ``.shadow_logits`` (= detached); loss = CE(attached, attached
   answer) + CE(shadow, shadow answer), answer tokens only (written here: the package's
   built-in loss uses one label set). The answers differ only for questions (shadow:
   ``[REMOTE]<|im_end|>``); as each output is teacher-forced on its own answer, a question's
   shadow targets come from a second forward of prompt + ``[REMOTE]<|im_end|>`` in
   inference_mode="shadow_only" (the shadow never depends on the base, so these are the
   ``.shadow_logits`` an attached forward of that row would give). Each step also trains on
   multi-turn chats (2 to 5 turns, training commands and trained questions mixed), 4 of each
   kind: attached history (assistant turns = attached answers; ``.logits`` on every answer,
   ``.shadow_logits`` on the commands' JSON), detached history (assistant turns = detached
   answers; ``.shadow_logits`` on every answer) and escalated history (questions answered by
   the sentence, now and then by ``[REMOTE]``; the shadow on every answer but the sentences,
   the last one its own). Every answer supervised = its tokens + the ``<|im_end|>`` ending it.
5. Writes ``models/demo/``: ``base/``, ``adapter/`` (shadow_config.json +
   shadow_adapter.safetensors), ``export/`` (``export_shadow()``), all F16 on disk, with
   tokenizer files, and ``golden.json``.
6. Reloads everything from disk like a user (``AutoModelForCausalLM.from_pretrained(...,
   dtype=torch.float32)`` + ``ShadowForCausalLM.from_pretrained(...)``), greedy-decodes
   held-out commands and trained questions attached and detached, prints a table and
   asserts the quality bar: >= 90% correct JSON on 20 held-out commands (both modes); on 10
   trained questions detached == "[REMOTE]" and attached == the expected sentence for >= 80%.
   Then 20 held-out chats (2 to 5 turns, 70 turns: the held-out commands and trained
   questions, so never trained as chats) run as real chats, greedy, each mode with its own
   previous answers as history: >= 90% of the turns right per mode (JSON, the sentence
   attached, exactly ``[REMOTE]`` detached), and the demo chat ["Turn left 90 degrees.",
   "What does len do in Python?"] exactly right in both modes. The shadow after an escalation
   (history = the attached answers) is reported too. The run that made models/demo: every
   single-turn and multi-turn figure 100% (70/70 turns attached, detached and escalated).

golden.json: for each demo prompt, the rendered chat prompt, its input ids and the official
greedy output attached and detached (and from the export): full forwards with
use_cache=False, argmax of the last position, stop after ``<|im_end|>`` (included in
``tokens``, not in ``text``) or 40 new tokens; computed from the F16 files upcast to f32.
``conversations``: four chats (the demo chat first), per turn and mode the messages (that
mode's own previous answers as assistant turns; export = detached history, export model),
rendered prompt, input ids and the same greedy output.

How to run
----------
From the repository root, with the pinned environment (scripts/requirements-golden.txt:
torch 2.15.0, transformers 5.23.0, shadow-peft 0.1.1, tokenizers 0.23.3, safetensors 0.8.0;
Python 3.11.7, CPU)::

    HF_HUB_OFFLINE=1 /work/venv/bin/python scripts/train_demo.py

About 30 minutes on an idle 2-core CPU (base pretraining ~4 min; adapter training 1800 steps,
measured 28 min on cores shared with other processes, less when idle; the checks and goldens,
greedy full forwards without a KV cache, 14 min on an idle 2-core CPU; peak memory ~2 GB);
longer while other processes load the cores.
No network access is needed. Re-running recreates models/demo from scratch, byte-identical
(``--out DIR`` writes elsewhere, e.g. to compare two runs).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import shadow_peft  # noqa: E402
from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.use_deterministic_algorithms(True)
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "models" / "demo"
T0 = time.time()

SEED = 20240611
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[REMOTE]"]
REMOTE = "[REMOTE]"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_NEW_TOKENS = 40
# The demo chat (asserted exact in both modes) and the chats of golden.json "conversations".
DEMO_CONVERSATION = ["Turn left 90 degrees.", "What does len do in Python?"]
GOLDEN_CONVERSATIONS = [
    DEMO_CONVERSATION,
    ["Move forward 3 meters.", "What is str.split?", "Please pick up the red ball."],
    ["What does len do in Python?", "Go to the kitchen.", "Explain math.sqrt.", "Stop."],
    ["Set speed to 5.", "Tell me about os.path.join.", "Turn right 45 degrees.",
     "What is dict.get?"],
]

BASE_CONFIG = dict(
    hidden_size=192,
    num_hidden_layers=4,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=512,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    tie_word_embeddings=True,
)
SHADOW_CONFIG = dict(
    num_shadow_layers=2,
    shadow_intermediate_size=256,
    injection_hidden_size=32,
    gate_hidden_size=16,
    alpha=1.0,
    dropout=0.0,
)

# Base pretraining.
BASE_STEPS = 500
BASE_BATCH = 32
BASE_SEQ = 128
BASE_LR = 3e-3
# Adapter training.
ADAPTER_STEPS = 1800
ADAPTER_BATCH = 16  # single-turn examples per step
CONV_BATCH = 4  # multi-turn chats per step, of each of the three kinds (see conversation_rows)
ADAPTER_LR = 2e-3


def log(*a: Any) -> None:
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


# ======================================================================================
# Docstrings (the interpreter's own documentation)
# ======================================================================================

DOC_MODULES = [
    "builtins", "os", "os.path", "sys", "math", "cmath", "json", "re", "random", "string",
    "itertools", "functools", "collections", "operator", "time", "datetime", "shutil",
    "textwrap", "heapq", "bisect", "statistics", "copy", "pathlib", "glob", "fnmatch",
    "base64", "hashlib", "struct", "csv", "io", "calendar", "difflib", "zlib", "gzip", "uuid",
    "tempfile", "subprocess", "socket", "threading", "queue", "enum", "decimal", "fractions",
    "html", "urllib.parse", "keyword", "platform", "pprint", "secrets", "shlex", "zipfile",
    "tarfile", "argparse", "logging", "unicodedata", "array", "codecs", "binascii", "inspect",
    "typing", "dataclasses", "contextlib", "abc", "types", "weakref", "pickle", "sqlite3",
    "locale", "traceback", "warnings", "timeit", "colorsys", "errno", "signal", "select",
    "mimetypes", "filecmp", "stat", "linecache", "tokenize", "ast", "dis", "gc", "atexit",
    "sched", "ipaddress", "xml.etree.ElementTree",
]
MODULE_ALIASES = {"os": ("posix",), "os.path": ("posixpath", "genericpath"),
                  "xml.etree.ElementTree": ("elementtree",)}
BUILTIN_TYPES = [str, bytes, list, dict, set, frozenset, tuple, int, float, complex, bytearray]


@dataclass
class Doc:
    name: str  # "len", "str.split", "os.path.join"
    signature: str  # "(obj, /)" or ""
    doc: str
    first: str | None  # first sentence, if clean


_SIG_LIKE = re.compile(r"^[\w.]+\(.*\)\s*(->|-->)?")


def first_sentence(doc: str) -> str | None:
    """First sentence of the first paragraph that is not a signature line."""
    paras = [p for p in doc.strip().split("\n\n") if p.strip()]
    for para in paras[:2]:
        lines = [ln.strip() for ln in para.splitlines()]
        if _SIG_LIKE.match(lines[0]) or "->" in lines[0]:
            continue
        text = " ".join(lines)
        m = re.match(r"(.+?\.)(\s|$)", text)
        if m:
            s = m.group(1)
        elif len(lines) == 1 and text[-1].isalnum():
            s = text + "."  # a one-line summary without the final full stop
        else:
            return None
        s = s.replace("``", "").replace("`", "").replace("*", "")
        if not (15 <= len(s) <= 120) or not s[0].isupper():
            return None
        if any(c in s for c in "\\|<>{}[]") or "e.g." in s or "i.e." in s:
            return None
        return s
    return None


def _signature(obj: Any) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", sig)  # default values' reprs carry addresses


def collect_docs() -> list[Doc]:
    """Docstrings of the builtins, builtin-type methods and DOC_MODULES (sorted, deduplicated)."""
    out: dict[str, Doc] = {}

    def add(name: str, obj: Any) -> None:
        doc = inspect.getdoc(obj)
        if not doc or name in out:
            return
        doc = doc.encode("ascii", "ignore").decode("ascii")
        out[name] = Doc(name, _signature(obj), doc, first_sentence(doc))

    for mn in DOC_MODULES:
        mod = importlib.import_module(mn)
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr)
            if not (inspect.isroutine(obj) or inspect.isclass(obj)):
                continue
            owner = (getattr(obj, "__module__", None) or mn).lstrip("_")
            if mn != "builtins" and owner != mn and owner not in MODULE_ALIASES.get(mn, ()):
                continue  # re-exported from another module
            add(attr if mn == "builtins" else f"{mn}.{attr}", obj)
    for t in BUILTIN_TYPES:
        for attr in sorted(vars(t)):
            if attr.startswith("_"):
                continue
            obj = getattr(t, attr)
            if inspect.isroutine(obj):
                add(f"{t.__name__}.{attr}", obj)
    return [out[k] for k in sorted(out)]


# The question/answer set: well-known functions (kept if their docstring has a clean first
# sentence that fits the answer budget).
QA_CANDIDATES = [
    # builtins
    "abs", "all", "any", "ascii", "bin", "callable", "chr", "delattr", "dir", "divmod", "eval",
    "exec", "format", "getattr", "globals", "hasattr", "hash", "hex", "id", "input",
    "isinstance", "issubclass", "iter", "len", "locals", "max", "min", "next", "oct", "open",
    "ord", "pow", "print", "repr", "round", "setattr", "sorted", "sum", "vars", "breakpoint",
    "aiter", "anext",
    # builtin types
    "str.split", "str.join", "str.strip", "str.lower", "str.upper", "str.replace", "str.find",
    "str.startswith", "str.endswith", "str.title", "str.capitalize", "str.count", "str.isdigit",
    "str.isalpha", "str.zfill", "str.center", "str.splitlines", "str.partition", "str.index",
    "str.lstrip", "str.rstrip", "str.swapcase", "str.encode", "str.casefold", "str.isspace",
    "str.expandtabs", "str.ljust", "str.rjust", "str.format",
    "list.append", "list.extend", "list.insert", "list.pop", "list.remove", "list.reverse",
    "list.sort", "list.copy", "list.clear", "list.index", "list.count",
    "dict.get", "dict.keys", "dict.items", "dict.values", "dict.pop", "dict.popitem",
    "dict.setdefault", "dict.update", "dict.clear", "dict.copy", "dict.fromkeys",
    "set.add", "set.discard", "set.remove", "set.union", "set.intersection", "set.difference",
    "set.issubset", "set.issuperset", "set.pop", "set.isdisjoint", "set.symmetric_difference",
    "bytes.decode", "bytes.hex", "int.bit_length", "int.to_bytes", "int.from_bytes",
    "float.is_integer", "float.as_integer_ratio", "tuple.count", "tuple.index",
    # modules
    "math.sqrt", "math.floor", "math.ceil", "math.factorial", "math.gcd", "math.log",
    "math.exp", "math.sin", "math.cos", "math.hypot", "math.isclose", "math.isqrt", "math.comb",
    "math.perm", "math.prod", "math.radians", "math.degrees", "math.fabs", "math.trunc",
    "math.isnan", "math.isinf", "math.dist", "math.lcm", "math.atan2", "math.fsum",
    "os.getcwd", "os.listdir", "os.mkdir", "os.makedirs", "os.remove", "os.rename",
    "os.rmdir", "os.getpid", "os.getenv", "os.chdir", "os.walk", "os.cpu_count", "os.urandom",
    "os.kill", "os.system", "os.scandir", "os.symlink",
    "os.path.join", "os.path.exists", "os.path.isfile", "os.path.isdir", "os.path.basename",
    "os.path.dirname", "os.path.splitext", "os.path.abspath", "os.path.getsize",
    "os.path.split", "os.path.expanduser", "os.path.realpath", "os.path.isabs",
    "os.path.splitdrive", "os.path.normpath", "os.path.getmtime", "os.path.relpath",
    "json.dumps", "json.loads", "json.dump", "json.load",
    "re.compile", "re.match", "re.search", "re.sub", "re.split", "re.findall", "re.fullmatch",
    "re.escape", "re.finditer", "re.subn",
    "random.choice", "random.shuffle", "random.randint", "random.random", "random.sample",
    "random.seed", "random.uniform", "random.randrange", "random.gauss", "random.choices",
    "time.time", "time.sleep", "time.perf_counter", "time.monotonic", "time.strftime",
    "time.localtime", "time.gmtime", "time.ctime", "time.mktime",
    "shutil.copy", "shutil.copyfile", "shutil.rmtree", "shutil.move", "shutil.which",
    "shutil.copytree", "shutil.disk_usage", "shutil.make_archive",
    "itertools.chain", "itertools.product", "itertools.permutations", "itertools.combinations",
    "itertools.groupby", "itertools.islice", "itertools.count", "itertools.accumulate",
    "functools.reduce", "functools.wraps", "functools.lru_cache", "functools.partial",
    "functools.cache", "functools.cmp_to_key",
    "textwrap.dedent", "textwrap.wrap", "textwrap.fill", "textwrap.indent", "textwrap.shorten",
    "heapq.heappush", "heapq.heappop", "heapq.heapify", "heapq.nlargest", "heapq.nsmallest",
    "heapq.merge", "bisect.bisect_left", "bisect.insort",
    "statistics.mean", "statistics.median", "statistics.stdev", "statistics.mode",
    "statistics.variance",
    "copy.copy", "copy.deepcopy", "glob.glob", "fnmatch.fnmatch", "base64.b64encode",
    "base64.b64decode", "hashlib.md5", "hashlib.sha256", "struct.pack", "struct.unpack",
    "csv.reader", "csv.writer", "zlib.compress", "zlib.decompress", "gzip.open", "uuid.uuid4",
    "tempfile.mkdtemp", "tempfile.mkstemp", "subprocess.run", "subprocess.check_output",
    "subprocess.call", "secrets.token_hex", "shlex.split", "shlex.quote",
    "html.escape", "html.unescape", "urllib.parse.quote", "urllib.parse.urlparse",
    "urllib.parse.urlencode", "keyword.iskeyword", "platform.system", "pprint.pprint",
    "inspect.getsource", "inspect.signature", "inspect.isclass", "dataclasses.asdict",
    "dataclasses.fields", "pickle.dumps", "pickle.loads", "traceback.format_exc",
    "traceback.print_exc", "warnings.warn", "unicodedata.name", "calendar.isleap",
    "difflib.get_close_matches", "binascii.hexlify", "gc.collect", "atexit.register",
    "ast.parse", "ast.literal_eval", "sys.exit", "sys.getsizeof", "sys.getrecursionlimit",
    "operator.itemgetter", "operator.attrgetter", "locale.getlocale",
]
QA_MAX = 200
QA_EVAL = 10  # trained questions checked by the quality bar


# ======================================================================================
# Robot commands
# ======================================================================================

COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
OBJECTS = ["ball", "cup", "box", "block", "book", "bottle", "pen", "key", "sock", "apple"]
ROOMS = ["kitchen", "bedroom", "bathroom", "living room", "garage", "office", "hallway", "garden"]
METERS = list(range(1, 21))
DEGREES = [10, 15, 20, 30, 45, 60, 75, 90, 120, 135, 150, 180]
SPEEDS = list(range(1, 11))
SECONDS = list(range(1, 31))

# kind -> templates; slots in braces.
TEMPLATES: dict[str, list[str]] = {
    "move": ["move {d} {n} {unit}", "go {d} {n} {unit}", "drive {d} {n} {unit}",
             "move {n} {unit} {d}", "roll {d} {n} {unit}", "travel {n} {unit} {d}"],
    "turn": ["turn {d} {n} degrees", "rotate {d} by {n} degrees", "turn {n} degrees to the {d}",
             "spin {d} {n} degrees", "rotate {n} degrees {d}"],
    "pick_up": ["pick up the {c} {o}", "grab the {c} {o}", "take the {c} {o}", "lift the {c} {o}",
                "get the {c} {o}", "pick the {c} {o} up"],
    "put_down": ["put down the {c} {o}", "drop the {c} {o}", "set down the {c} {o}",
                 "release the {c} {o}", "put the {c} {o} down", "place the {c} {o} on the floor"],
    "stop": ["stop", "halt", "stop moving", "stop right now", "freeze", "emergency stop",
             "stop the motors"],
    "go_to": ["go to the {r}", "navigate to the {r}", "head to the {r}", "drive to the {r}",
              "move to the {r}", "take me to the {r}"],
    "set_speed": ["set speed to {n}", "change your speed to {n}", "set the speed to {n}",
                  "use speed {n}", "speed {n}", "set your speed to level {n}"],
    "wait": ["wait {n} seconds", "pause for {n} seconds", "hold on for {n} seconds",
             "wait for {n} seconds", "sleep {n} seconds"],
}
PREFIXES = ["", "", "", "please ", "robot, ", "hey robot, ", "could you ", "now "]
SUFFIXES = ["", "", "", " please", " now", " right away"]


@dataclass(frozen=True)
class Command:
    kind: str
    template: int
    slots: tuple  # kind-specific values
    prefix: str = ""
    suffix: str = ""
    cap: bool = False
    punct: str = ""

    def text(self) -> str:
        t = TEMPLATES[self.kind][self.template]
        kw: dict[str, Any] = {}
        if self.kind in ("move", "turn"):
            kw = {"d": self.slots[0], "n": self.slots[1]}
            if self.kind == "move":
                kw["unit"] = "meter" if self.slots[1] == 1 else "meters"
        elif self.kind in ("pick_up", "put_down"):
            kw = {"c": self.slots[0], "o": self.slots[1]}
        elif self.kind == "go_to":
            kw = {"r": self.slots[0]}
        elif self.kind in ("set_speed", "wait"):
            kw = {"n": self.slots[0]}
        s = self.prefix + t.format(**kw) + self.suffix
        if self.prefix == "could you ":
            s += "?"
        else:
            s += self.punct
        return s[0].upper() + s[1:] if self.cap else s

    def action(self) -> dict[str, Any]:
        a: dict[str, Any] = {"action": self.kind}
        if self.kind == "move":
            a.update(direction=self.slots[0], meters=self.slots[1])
        elif self.kind == "turn":
            a.update(direction=self.slots[0], degrees=self.slots[1])
        elif self.kind in ("pick_up", "put_down"):
            a.update(color=self.slots[0], object=self.slots[1])
        elif self.kind == "go_to":
            a.update(room=self.slots[0])
        elif self.kind == "set_speed":
            a.update(speed=self.slots[0])
        elif self.kind == "wait":
            a.update(seconds=self.slots[0])
        return a

    def answer(self) -> str:
        return json.dumps(self.action())

    def holdout_key(self) -> tuple:
        """Combination that must never be seen in training if a held-out command has it."""
        if self.kind in ("move", "turn", "pick_up", "put_down"):
            return (self.kind, self.slots)  # slot combination, any phrasing
        if self.kind == "stop":
            return (self.kind, self.text().lower())
        return (self.kind, self.template, self.slots)  # phrasing x value


def C(kind, template, slots, prefix="", suffix="", cap=False, punct="") -> Command:
    return Command(kind, template, tuple(slots), prefix, suffix, cap, punct)


# 20 held-out commands: their slot combinations (or phrasing x value) never occur in any
# training data, base pretraining included; every single value and phrasing does.
HELDOUT = [
    C("move", 2, ("backward", 7), prefix="please ", cap=True, punct="."),
    C("move", 1, ("forward", 13)),
    C("move", 3, ("forward", 2), suffix=" now"),
    C("move", 4, ("backward", 4)),
    C("turn", 0, ("left", 135)),
    C("turn", 1, ("right", 20), prefix="could you ", cap=True),
    C("turn", 3, ("left", 60)),
    C("pick_up", 0, ("purple", "cup")),
    C("pick_up", 1, ("orange", "key"), prefix="robot, ", cap=True, punct="."),
    C("pick_up", 2, ("white", "bottle"), suffix=" please"),
    C("put_down", 0, ("green", "book")),
    C("put_down", 1, ("black", "apple")),
    C("put_down", 2, ("yellow", "ball"), prefix="hey robot, "),
    C("go_to", 2, ("office",)),
    C("go_to", 1, ("garden",), prefix="please ", cap=True, punct="."),
    C("set_speed", 0, (7,)),
    C("set_speed", 1, (3,), suffix=" please"),
    C("wait", 0, (12,)),
    C("wait", 1, (25,)),
    C("stop", 2, (), prefix="robot, ", cap=True, punct="."),
]
HELDOUT_KEYS = {c.holdout_key() for c in HELDOUT}


def random_command(rng: random.Random) -> Command:
    """A random training command (never one of the held-out combinations)."""
    while True:
        kind = rng.choice(list(TEMPLATES))
        tpl = rng.randrange(len(TEMPLATES[kind]))
        if kind in ("move", "turn"):
            d = rng.choice(["forward", "backward"] if kind == "move" else ["left", "right"])
            slots = (d, rng.choice(METERS if kind == "move" else DEGREES))
        elif kind in ("pick_up", "put_down"):
            slots = (rng.choice(COLORS), rng.choice(OBJECTS))
        elif kind == "go_to":
            slots = (rng.choice(ROOMS),)
        elif kind == "set_speed":
            slots = (rng.choice(SPEEDS),)
        elif kind == "wait":
            slots = (rng.choice(SECONDS),)
        else:
            slots = ()
        c = Command(kind, tpl, slots, rng.choice(PREFIXES), rng.choice(SUFFIXES),
                    rng.random() < 0.5, rng.choice(["", "", "."]))
        if c.holdout_key() not in HELDOUT_KEYS:
            return c


# ======================================================================================
# Questions
# ======================================================================================

QUESTION_TEMPLATES = [
    "What does {n} do in Python?",
    "What is {n}?",
    "What does {n} do?",
    "Explain {n}.",
    "Tell me about {n}.",
    "What is {n} used for?",
    "what does {n} do",
    "Can you explain {n} in Python?",
    "What does the Python function {n} do?",
    "Please explain what {n} does.",
    "I'd like to know what {n} does.",
    "Robot, what is {n}?",
    "Give me the docs for {n}.",
    "{n}?",
]
# Requests that the robot log (base pretraining) shows being forwarded: [REMOTE].
FORWARDED_REQUESTS = [
    "tell me a joke", "what time is it", "what is the weather like today", "write a poem",
    "who won the game last night", "translate hello into French", "play some music",
    "how are you", "what is your name", "summarize the news", "recommend a good book",
    "what is the capital of France", "sing a song", "order a pizza", "call my mother",
    "what day is it today", "tell me a story", "how old are you",
]
# Phrasings never trained (printed for information only).
UNSEEN_QUESTION_TEMPLATES = ["Describe {n} in Python.", "How does {n} work?"]


def question(name: str, tpl: int) -> str:
    return QUESTION_TEMPLATES[tpl].format(n=name)


# ======================================================================================
# Corpora
# ======================================================================================


def pydoc_text(d: Doc) -> str:
    """A pydoc-like entry: signature line, then the (truncated) docstring, indented."""
    body = d.doc
    if len(body) > 700:
        cut = body.rfind("\n\n", 0, 700)
        body = body[: cut if cut > 0 else 700]
    indented = "\n".join(("    " + ln) if ln.strip() else "" for ln in body.splitlines())
    return f"{d.name}{d.signature}\n{indented}\n"


# Entries of the base's pretraining formats end with <|im_end|> (so the base knows it as
# "end of an answer"); the tokenizer is trained on the same text without special tokens.
END = "<|im_end|>"


def reference_doc(rng: random.Random, refs: list[Doc], qa: list[Doc], end: str = END) -> str:
    lines = ["Python quick reference\n\n"]
    for _ in range(rng.randint(8, 16)):
        d = rng.choice(qa) if rng.random() < 0.5 else rng.choice(refs)
        lines.append(f"{d.name}: {d.first}{end}\n")
    return "".join(lines)


def robot_log_doc(rng: random.Random, end: str = END, remote: str = REMOTE) -> str:
    """Commands with their JSON action; now and then a request the robot cannot handle,
    which it forwards ([REMOTE])."""
    lines = ["Robot log\n\n"]
    for _ in range(rng.randint(6, 12)):
        if rng.random() < 0.15:
            req = rng.choice(PREFIXES) + rng.choice(FORWARDED_REQUESTS)
            req = req[0].upper() + req[1:] if rng.random() < 0.5 else req
            lines.append(f"> {req}\n{remote}{end}\n")
        else:
            c = random_command(rng)
            lines.append(f"> {c.text()}\n{c.answer()}{end}\n")
    return "".join(lines)


def render_chat(user: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def render_messages(messages: list[dict[str, str]]) -> str:
    """CHAT_TEMPLATE with add_generation_prompt=True (checked against apply_chat_template)."""
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def history_messages(users: list[str], answers: list[str]) -> list[dict[str, str]]:
    """Messages of a chat: users[i] answered by answers[i]; len(users) == len(answers) + 1."""
    msgs = []
    for i, u in enumerate(users):
        msgs.append({"role": "user", "content": u})
        if i < len(answers):
            msgs.append({"role": "assistant", "content": answers[i]})
    return msgs


@dataclass(frozen=True)
class Turn:
    user: str
    attached: str  # the attached answer (JSON, or the docstring sentence)
    shadow: str  # the detached answer (JSON, or [REMOTE])

    @property
    def is_command(self) -> bool:
        return self.attached == self.shadow


def command_turn(c: Command) -> Turn:
    return Turn(c.text(), c.answer(), c.answer())


def question_turn(d: Doc, tpl: int) -> Turn:
    return Turn(question(d.name, tpl), d.first, REMOTE)


def random_conversation(rng: random.Random, qa: list[Doc]) -> list[Turn]:
    """2 to 5 turns, each a training command or a trained question (about half each)."""
    out = []
    for _ in range(rng.randint(2, 5)):
        if rng.random() < 0.5:
            out.append(command_turn(random_command(rng)))
        else:
            out.append(question_turn(rng.choice(qa), rng.randrange(len(QUESTION_TEMPLATES))))
    return out


# ======================================================================================
# Tokenizer
# ======================================================================================


@dataclass
class Bundle:
    tok: Tokenizer
    eot: int
    im_start: int
    im_end: int
    remote: int
    files: dict[str, str]

    def write(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            (d / name).write_text(text, encoding="utf-8")

    def encode(self, s: str) -> list[int]:
        return self.tok.encode(s, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


def make_tokenizer(texts: list[str]) -> Bundle:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE - len(SPECIAL_TOKENS), tok.get_vocab_size()
    # The marker is an added token but not a special one: decoding (which skips special tokens)
    # shows it, so a detached "[REMOTE]" answer is visible text.
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS if t != REMOTE])
    tok.add_tokens([AddedToken(REMOTE, special=False, normalized=False)])
    return bundle(tok)


def bundle(tok: Tokenizer) -> Bundle:
    assert tok.get_vocab_size() == VOCAB_SIZE
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(VOCAB_SIZE - len(SPECIAL_TOKENS), VOCAB_SIZE)), ids
    eot, ims, ime, remote = ids
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
        "tokenizer.json": tok.to_str(pretty=False) + "\n",
        "tokenizer_config.json": json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n",
        "generation_config.json": json.dumps(gen_cfg, indent=2, sort_keys=True) + "\n",
    }
    return Bundle(tok, eot, ims, ime, remote, files)


def check_tokenizer_dir(d: Path, b: Bundle) -> None:
    t = AutoTokenizer.from_pretrained(str(d))
    assert len(t) == VOCAB_SIZE, len(t)
    assert t.eos_token_id == b.im_end and t.pad_token_id == b.eot
    msgs = [{"role": "user", "content": "Stop!"}]
    rendered = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == render_chat("Stop!"), repr(rendered)
    msgs = history_messages(["Stop!", "What is len?", "Go to the kitchen."],
                            ['{"action": "stop"}', REMOTE])
    rendered = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == render_messages(msgs), repr(rendered)
    ids = t.encode(REMOTE + "<|im_end|>", add_special_tokens=False)
    assert ids == [b.remote, b.im_end], ids
    assert t.decode(ids, skip_special_tokens=False) == REMOTE + "<|im_end|>"
    assert t.decode([b.remote]) == REMOTE
    s = 'Move forward 3 meters -> {"action": "move", "direction": "forward", "meters": 3}'
    assert t.decode(t.encode(s, add_special_tokens=False)) == s
    assert t.encode(render_chat("What is len?"), add_special_tokens=False) == b.encode(
        render_chat("What is len?"))


# ======================================================================================
# Models
# ======================================================================================


def make_base_config(b: Bundle) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=VOCAB_SIZE,
        bos_token_id=None,
        eos_token_id=b.im_end,
        pad_token_id=b.eot,
        initializer_range=0.02,
        use_cache=True,
        **BASE_CONFIG,
    )


def set_generation_config(model: torch.nn.Module, b: Bundle) -> None:
    model.generation_config = GenerationConfig(
        eos_token_id=[b.im_end, b.eot], pad_token_id=b.eot, do_sample=False
    )


def load_f32(path: Path):
    """from_pretrained(dtype=float32) and check every tensor on disk arrived unchanged."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    sd = model.state_dict()
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                assert torch.equal(sd[k], fh.get_tensor(k).to(torch.float32)), (path, k)
    return model


def n_params(m: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable_only)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def pretrain_base(b: Bundle, stream: torch.Tensor, steps: int) -> Qwen3ForCausalLM:
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM(make_base_config(b))
    model.train()
    log(f"base: {n_params(model):,} parameters; pretraining {steps} steps x {BASE_BATCH} x "
        f"{BASE_SEQ} tokens on a {len(stream):,}-token stream")
    opt = torch.optim.AdamW(model.parameters(), lr=BASE_LR, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(SEED + 1)
    ema = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, BASE_LR, 30)
        starts = torch.randint(0, len(stream) - BASE_SEQ - 1, (BASE_BATCH,), generator=g)
        x = torch.stack([stream[s: s + BASE_SEQ] for s in starts.tolist()])
        logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB_SIZE), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = float(loss) if ema is None else 0.95 * ema + 0.05 * float(loss)
        if step % 25 == 0 or step == steps - 1:
            log(f"  base step {step:4d}/{steps}  loss {float(loss):.3f} (ema {ema:.3f})")
    model.eval()
    return model


@torch.no_grad()
def probe_base(b: Bundle, base, qa: list[Doc]) -> None:
    """What the pretrained base knows, in its own formats (information only)."""
    hits = 0
    probe = qa[::10]
    for d in probe:
        new, _ = greedy(lambda s: base(input_ids=s, use_cache=False).logits,
                        b.encode(f"Python quick reference\n\n{d.name}:"), -1)
        hits += re.split(r"\n|<\|im_end\|>", b.decode(new).strip())[0] == d.first
    log(f"base probe: 'name: first sentence' recalled for {hits}/{len(probe)} QA functions")
    hits = 0
    for c in HELDOUT:
        new, _ = greedy(lambda s: base(input_ids=s, use_cache=False).logits,
                        b.encode(f"Robot log\n\n> {c.text()}\n"), -1, 24)
        hits += parse_json(re.split(r"\n|<\|im_end\|>", b.decode(new).strip())[0]) == c.action()
    log(f"base probe: robot log format, held-out commands right {hits}/{len(HELDOUT)}")


@dataclass
class Example:
    prompt: list[int]
    attached: list[int]  # answer ids incl. <|im_end|>
    shadow: list[int]

    @property
    def same(self) -> bool:
        return self.attached == self.shadow


def adapter_examples(b: Bundle, rng: random.Random, qa: list[Doc], n: int) -> list[Example]:
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            c = random_command(rng)
            p = b.encode(render_chat(c.text()))
            a = b.encode(c.answer()) + [b.im_end]
            out.append(Example(p, a, a))
        else:
            d = rng.choice(qa)
            p = b.encode(render_chat(question(d.name, rng.randrange(len(QUESTION_TEMPLATES)))))
            out.append(Example(p, b.encode(d.first) + [b.im_end], [b.remote, b.im_end]))
    return out


# A training row: (input ids, attached labels, shadow labels), the labels already shifted
# (label at position t = token t+1) and -100 where not supervised.
Row = tuple[list[int], list[int], list[int]]


def single_row(prompt: list[int], answer: list[int], sup_a: bool, sup_s: bool) -> Row:
    ids = prompt + answer
    lab = [-100] * (len(prompt) - 1) + answer + [-100]
    none = [-100] * len(ids)
    return ids, (lab if sup_a else none), (lab if sup_s else none)


def conversation_row(b: Bundle, turns: list[tuple[str, str]], sup_a: list[bool],
                     sup_s: list[bool]) -> Row:
    """A whole chat rendered with the template: turns = (user, assistant answer); each answer
    (its tokens and the <|im_end|> that ends it) supervised per output as sup_a / sup_s say."""
    ids: list[int] = []
    la: list[int] = []
    ls: list[int] = []
    for i, ((user, answer), sa, ss) in enumerate(zip(turns, sup_a, sup_s)):
        p = b.encode(("\n" if i else "") + render_chat(user))
        a = b.encode(answer) + [b.im_end]
        ids += p
        la += [-100] * len(p)
        ls += [-100] * len(p)
        start = len(ids)
        ids += a
        la += [-100] * len(a)
        ls += [-100] * len(a)
        if sa:
            la[start - 1: start - 1 + len(a)] = a
        if ss:
            ls[start - 1: start - 1 + len(a)] = a
    # The pieces tokenise exactly like the whole rendered chat (special tokens split it).
    msgs = history_messages([u for u, _ in turns], [a for _, a in turns])
    assert b.encode(render_messages(msgs[:-1]) + turns[-1][1] + "<|im_end|>") == ids
    return ids, la, ls


def collate(rows: list[Row], pad: int):
    """Right-padded batch (no attention mask needed: causal attention never looks right)."""
    T = max(len(r[0]) for r in rows)
    x = torch.full((len(rows), T), pad, dtype=torch.long)
    la = torch.full((len(rows), T), -100, dtype=torch.long)
    ls = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (ids, a, sh) in enumerate(rows):
        x[i, : len(ids)] = torch.tensor(ids)
        la[i, : len(ids)] = torch.tensor(a)
        ls[i, : len(ids)] = torch.tensor(sh)
    return x, la, ls


def conversation_rows(b: Bundle, rng: random.Random, qa: list[Doc], n: int
                      ) -> tuple[list[Row], list[Row]]:
    """n multi-turn chats of each kind. Returns (rows for the attached forward, rows for the
    shadow-only forward):
    * attached history (assistant turns = attached answers): .logits on every answer, and
      .shadow_logits on the commands' answers (the same JSON);
    * detached history (assistant turns = detached answers): .shadow_logits on every answer;
    * escalated history (questions answered by the attached model's sentence, now and then
      by [REMOTE]; commands by their JSON) ending with the detached answer: .shadow_logits on
      every answer but the sentences."""
    main, shadow = [], []
    for _ in range(n):
        conv = random_conversation(rng, qa)
        main.append(conversation_row(b, [(t.user, t.attached) for t in conv],
                                     [True] * len(conv), [t.is_command for t in conv]))
        conv = random_conversation(rng, qa)
        shadow.append(conversation_row(b, [(t.user, t.shadow) for t in conv],
                                       [False] * len(conv), [True] * len(conv)))
        conv = random_conversation(rng, qa)
        hist = [t.shadow if t.is_command or rng.random() < 0.25 else t.attached for t in conv[:-1]]
        turns = [(t.user, a) for t, a in zip(conv, hist + [conv[-1].shadow])]
        shadow.append(conversation_row(b, turns, [False] * len(conv),
                                       [a != t.attached or t.is_command
                                        for t, (_, a) in zip(conv, turns)]))
    return main, shadow


def train_adapter(b: Bundle, base, qa: list[Doc], steps: int) -> ShadowForCausalLM:
    torch.manual_seed(SEED + 2)
    peft = get_shadow_model(base, ShadowConfig(**SHADOW_CONFIG))
    model = ShadowForCausalLM(peft)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_tr = sum(p.numel() for p in params)
    log(f"adapter: {n_tr:,} trainable parameters (base {n_params(base):,} frozen); "
        f"{steps} steps x ({ADAPTER_BATCH} single-turn examples + 3 x {CONV_BATCH} chats)")
    opt = torch.optim.AdamW(params, lr=ADAPTER_LR, betas=(0.9, 0.98), weight_decay=0.01)
    rng = random.Random(SEED + 3)
    crng = random.Random(SEED + 4)
    ema_a = ema_s = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, ADAPTER_LR, 60)
        exs = adapter_examples(b, rng, qa, ADAPTER_BATCH)
        conv_main, conv_shadow = conversation_rows(b, crng, qa, CONV_BATCH)
        # Teacher forcing: each output is fed its OWN answers. Single-turn commands: one row,
        # both heads supervised; questions: the attached head on prompt + sentence, and the
        # shadow on prompt + "[REMOTE]<|im_end|>" in a shadow-only forward (the shadow never
        # depends on the base, so this equals .shadow_logits of an attached forward). Chats
        # likewise: attached histories in an attached forward, detached and escalated ones in
        # a shadow-only forward. Single-turn rows and chats go in separate forwards (less
        # padding).
        groups = [
            ("base_shadow", [single_row(e.prompt, e.attached, True, e.same) for e in exs]),
            ("base_shadow", conv_main),
            ("shadow_only", [single_row(e.prompt, e.shadow, False, True) for e in exs if not e.same]),
            ("shadow_only", conv_shadow),
        ]
        nll_a = nll_s = torch.zeros(())
        n_a = n_s = 0
        for mode, rows in groups:
            if not rows:
                continue
            x, la, ls = collate(rows, b.eot)
            model.set_inference_mode(mode)
            out = model(input_ids=x, use_cache=False)
            if mode == "base_shadow":
                nll_a = nll_a + F.cross_entropy(out.logits.reshape(-1, VOCAB_SIZE), la.reshape(-1),
                                                ignore_index=-100, reduction="sum")
                n_a += int((la != -100).sum())
            nll_s = nll_s + F.cross_entropy(out.shadow_logits.reshape(-1, VOCAB_SIZE),
                                            ls.reshape(-1), ignore_index=-100, reduction="sum")
            n_s += int((ls != -100).sum())
        model.set_inference_mode("base_shadow")
        loss_a = nll_a / n_a
        loss_s = nll_s / n_s
        loss = loss_a + loss_s
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_a = float(loss_a) if ema_a is None else 0.95 * ema_a + 0.05 * float(loss_a)
        ema_s = float(loss_s) if ema_s is None else 0.95 * ema_s + 0.05 * float(loss_s)
        if step % 50 == 0 or step == steps - 1:
            log(f"  adapter step {step:4d}/{steps}  attached {float(loss_a):.4f} (ema {ema_a:.4f})"
                f"  shadow {float(loss_s):.4f} (ema {ema_s:.4f})")
    model.eval()
    return model


# ======================================================================================
# Evaluation
# ======================================================================================


@torch.no_grad()
def greedy(step: Callable[[torch.Tensor], torch.Tensor], ids: list[int], stop: int,
           n: int = MAX_NEW_TOKENS) -> tuple[list[int], float]:
    """Full forward (use_cache=False) each step, argmax of the last position; stops after
    `stop` (included) or n tokens. Returns (new tokens, min top-1/top-2 logit margin)."""
    seq = torch.tensor(ids, dtype=torch.long)
    new: list[int] = []
    margin = float("inf")
    for _ in range(n):
        logits = step(seq.unsqueeze(0))[0, -1].float()
        top2 = torch.topk(logits, 2).values
        margin = min(margin, float(top2[0] - top2[1]))
        nxt = int(torch.argmax(logits))
        new.append(nxt)
        seq = torch.cat([seq, torch.tensor([nxt])])
        if nxt == stop:
            break
    return new, margin


class Reloaded:
    """Everything reloaded from models/demo as a user would (F16 files upcast to f32)."""

    def __init__(self, b: Bundle) -> None:
        self.b = b
        base = load_f32(OUT_DIR / "base")
        self.model = ShadowForCausalLM.from_pretrained(base, str(OUT_DIR / "adapter"),
                                                       inference_mode="base_shadow").eval()
        for n, p in self.model.peft_model.named_parameters():
            assert p.dtype == torch.float32, (n, p.dtype)
        self.export = load_f32(OUT_DIR / "export")
        self.plain = load_f32(OUT_DIR / "base")  # no adapter, for the table

    def run(self, mode: str, ids: list[int]) -> tuple[list[int], float]:
        if mode == "export":
            return greedy(lambda s: self.export(input_ids=s, use_cache=False).logits, ids, self.b.im_end)
        if mode == "base":
            return greedy(lambda s: self.plain(input_ids=s, use_cache=False).logits, ids, self.b.im_end)
        self.model.set_inference_mode("base_shadow" if mode == "attached" else "shadow_only")
        try:
            return greedy(lambda s: self.model(input_ids=s, use_cache=False).logits, ids, self.b.im_end)
        finally:
            self.model.set_inference_mode("base_shadow")

    def text(self, mode: str, ids: list[int]) -> str:
        new, _ = self.run(mode, ids)
        if new and new[-1] == self.b.im_end:
            new = new[:-1]
        return self.b.decode(new)


def parse_json(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        return None


def short(s: str, n: int = 58) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[: n - 3] + "..."


def evaluate(b: Bundle, qa_eval: list[tuple[str, str]], unseen_q: list[str]) -> dict[str, Any]:
    r = Reloaded(b)
    rows = []
    ok_att = ok_det = 0
    for c in HELDOUT:
        ids = b.encode(render_chat(c.text()))
        att, det = r.text("attached", ids), r.text("detached", ids)
        a_ok, d_ok = parse_json(att) == c.action(), parse_json(det) == c.action()
        ok_att += a_ok
        ok_det += d_ok
        rows.append((c.text(), att, a_ok, det, d_ok))
    print("\nHeld-out robot commands (unseen combinations), greedy, attached / detached:")
    print(f"  {'prompt':<40} {'ok':<5} attached | detached")
    for p, a, ao, d, do in rows:
        print(f"  {short(p, 40):<40} {'Y' if ao else 'N'}/{'Y' if do else 'N'}   {a}"
              + ("" if d == a else f"  |  {d}"))
    n = len(HELDOUT)
    print(f"  correct JSON: attached {ok_att}/{n}, detached {ok_det}/{n}")

    q_att = q_det = q_start = 0
    print("\nTrained questions: attached (expected first sentence) / detached ([REMOTE]):")
    for qtext, expect in qa_eval:
        ids = b.encode(render_chat(qtext))
        att, det = r.text("attached", ids), r.text("detached", ids)
        a_ok = att == expect
        starts = att.split()[:3] == expect.split()[:3]
        q_att += a_ok
        q_start += starts
        q_det += det == REMOTE
        print(f"  Q: {qtext}\n     attached [{'exact' if a_ok else ('start' if starts else 'WRONG')}]: "
              f"{att}\n     detached: {det}" + ("" if a_ok else f"\n     expected: {expect}"))
    m = len(qa_eval)
    print(f"  attached exact {q_att}/{m} (first 3 words right {q_start}/{m}); detached [REMOTE] {q_det}/{m}")

    print("\nFor information (not asserted): unseen phrasings, functions outside the QA set, "
          "chit-chat:")
    un_det = 0
    for qtext in unseen_q:
        ids = b.encode(render_chat(qtext))
        att, det = r.text("attached", ids), r.text("detached", ids)
        un_det += det == REMOTE
        print(f"  Q: {qtext}\n     attached: {short(att, 100)}\n     detached: {short(det, 100)}")
    print(f"  detached [REMOTE] on {un_det}/{len(unseen_q)}")

    # What the adapter adds: the same chat prompts on the plain base (no adapter).
    base_cmd = sum(parse_json(r.text("base", b.encode(render_chat(c.text())))) == c.action()
                   for c in HELDOUT)
    base_q = [r.text("base", b.encode(render_chat(q))) for q, _ in qa_eval]
    base_q_ok = sum(a == e for a, (_, e) in zip(base_q, qa_eval))
    print(f"\nFor information: the base alone (no adapter) on the same chat prompts: held-out "
          f"commands {base_cmd}/{n} correct, questions {base_q_ok}/{m} exact, e.g.")
    for (q, _), a in list(zip(qa_eval, base_q))[:3]:
        print(f"  {q!r} -> {short(a, 100)!r}")

    return {
        "base_alone_commands": base_cmd / n,
        "base_alone_questions": base_q_ok / m,
        "commands_attached": ok_att / n,
        "commands_detached": ok_det / n,
        "questions_attached_exact": q_att / m,
        "questions_attached_start": q_start / m,
        "questions_detached_remote": q_det / m,
        "reloaded": r,
    }


def chat(b: Bundle, r: Reloaded, mode: str, users: list[str],
         history: list[str] | None = None) -> list[dict[str, Any]]:
    """A real chat, greedy: turn i renders users[:i+1] with the previous answers as assistant
    turns: this mode's own answers, or the fixed `history` answers if given."""
    out: list[dict[str, Any]] = []
    for i in range(len(users)):
        answers = [t["text"] for t in out] if history is None else history[:i]
        msgs = history_messages(users[: i + 1], answers)
        prompt = render_messages(msgs)
        ids = b.encode(prompt)
        new, margin = r.run(mode, ids)
        stop = "eos" if new and new[-1] == b.im_end else "length"
        out.append({"messages": msgs, "prompt": prompt, "input_ids": ids, "tokens": new,
                    "text": b.decode(new[:-1] if stop == "eos" else new), "stop_reason": stop,
                    "min_top2_margin": round(margin, 4)})
    return out


def turn_ok(t: Turn, text: str, mode: str) -> bool:
    if t.is_command:
        return parse_json(text) == json.loads(t.attached)
    return text == (t.attached if mode == "attached" else t.shadow)


def heldout_conversations(qa: list[Doc]) -> list[list[Turn]]:
    """20 chats of 2 to 5 turns (5 of each), mixing the held-out commands (never trained, so
    neither are these chats) and trained questions, at least one of each per chat."""
    rng = random.Random(SEED + 30)
    convs, k = [], 0
    for i in range(20):
        n = 2 + i % 4
        kinds = [j % 2 == 0 for j in range(n)]
        rng.shuffle(kinds)
        conv = []
        for is_cmd in kinds:
            if is_cmd:
                conv.append(command_turn(HELDOUT[k % len(HELDOUT)]))
                k += 1
            else:
                conv.append(question_turn(rng.choice(qa), rng.randrange(len(QUESTION_TEMPLATES))))
        convs.append(conv)
    return convs


def evaluate_chats(b: Bundle, r: Reloaded, convs: list[list[Turn]], demo: list[Turn]
                   ) -> dict[str, Any]:
    """Each held-out chat as a real chat per mode (history = that mode's own answers), plus
    the shadow after an escalation (history = the attached answers; information only)."""
    print("\nHeld-out multi-turn chats (history = each mode's own answers), greedy; "
          "ok attached/detached/detached-after-attached-history:")
    ok = {"attached": 0, "detached": 0, "escalated": 0}
    whole = {"attached": 0, "detached": 0}
    n_turns = 0
    for ci, conv in enumerate([demo] + convs):
        users = [t.user for t in conv]
        att = chat(b, r, "attached", users)
        det = chat(b, r, "detached", users)
        esc = chat(b, r, "detached", users, history=[t["text"] for t in att])
        print(f"  {'demo chat' if ci == 0 else f'chat {ci}'}:")
        flags = {"attached": [], "detached": [], "escalated": []}
        for t, a, d, e in zip(conv, att, det, esc):
            fa, fd, fe = (turn_ok(t, a["text"], "attached"), turn_ok(t, d["text"], "detached"),
                          turn_ok(t, e["text"], "detached"))
            flags["attached"].append(fa)
            flags["detached"].append(fd)
            flags["escalated"].append(fe)
            yn = "".join("Y" if f else "N" for f in (fa, fd, fe))
            print(f"    {yn} user: {t.user}\n        attached: {short(a['text'], 100)}"
                  f"\n        detached: {short(d['text'], 100)}"
                  + ("" if e["text"] == d["text"] else f"\n        detached after attached "
                     f"history: {short(e['text'], 100)}"))
        if ci == 0:
            demo_ok = {m: all(flags[m]) for m in ("attached", "detached")}
            continue
        n_turns += len(conv)
        for m in ok:
            ok[m] += sum(flags[m])
        for m in whole:
            whole[m] += all(flags[m])
    n = len(convs)
    print(f"  turns right: attached {ok['attached']}/{n_turns}, detached {ok['detached']}/{n_turns}"
          f" (detached after attached history {ok['escalated']}/{n_turns}); whole chats right: "
          f"attached {whole['attached']}/{n}, detached {whole['detached']}/{n}")
    print(f"  demo chat exact: attached {demo_ok['attached']}, detached {demo_ok['detached']}")
    return {
        "chats_attached_turns": ok["attached"] / n_turns,
        "chats_detached_turns": ok["detached"] / n_turns,
        "chats_detached_after_attached_history_turns": ok["escalated"] / n_turns,
        "chats_attached_whole": whole["attached"] / n,
        "chats_detached_whole": whole["detached"] / n,
        "demo_chat_attached_exact": demo_ok["attached"],
        "demo_chat_detached_exact": demo_ok["detached"],
        "heldout_chats": n,
        "heldout_chat_turns": n_turns,
    }


def make_golden(b: Bundle, r: Reloaded, prompts: list[str], conversations: list[list[str]],
                qa_sizes: dict[str, Any]) -> None:
    entries = []
    for user in prompts:
        rendered = render_chat(user)
        ids = b.encode(rendered)
        ent: dict[str, Any] = {"messages": [{"role": "user", "content": user}],
                               "prompt": rendered, "input_ids": ids}
        for mode in ("attached", "detached", "export"):
            new, margin = r.run(mode, ids)
            stop = "eos" if new and new[-1] == b.im_end else "length"
            text = b.decode(new[:-1] if stop == "eos" else new)
            ent[mode] = {"tokens": new, "text": text, "stop_reason": stop,
                         "min_top2_margin": round(margin, 4)}
        assert ent["export"]["tokens"] == ent["detached"]["tokens"], user
        del ent["export"]["text"], ent["export"]["stop_reason"]
        entries.append(ent)
    convs = []
    for users in conversations:
        ent = {"users": users, "attached": chat(b, r, "attached", users),
               "detached": chat(b, r, "detached", users)}
        export = chat(b, r, "export", users)
        for e, d in zip(export, ent["detached"]):
            assert e["tokens"] == d["tokens"] and e["input_ids"] == d["input_ids"], users
        ent["export"] = [{k: e[k] for k in ("input_ids", "tokens", "min_top2_margin")}
                         for e in export]
        convs.append(ent)
    meta = {
        "description": "Bundled demo model (trained by scripts/train_demo.py): a robot assistant. "
        "Qwen3 base (tied, hidden 192, 4 layers, GQA 6/2, head_dim 32, intermediate 512) "
        "pretrained from scratch on Python docstrings + robot logs; implicit 2-layer shadow "
        "(intermediate 256) trained with shadow-peft 0.1.1. Commands -> JSON action (attached "
        "and detached); Python questions -> docstring first sentence attached, [REMOTE] "
        "detached. 2048-token byte-level BPE; F16 on disk. Greedy goldens: full forwards "
        "(use_cache=False) in f32 from the F16 files, argmax of the last position, stop after "
        "<|im_end|> (included in tokens, not in text) or max_new_tokens. "
        "conversations: multi-turn chats, one entry per user turn and mode; a turn's messages "
        "are the user turns so far with that mode's own previous answers (text) as the "
        "assistant turns (export: the same as detached, from the export_shadow() model), its "
        "prompt the chat template rendered with add_generation_prompt, input_ids its "
        "tokenisation without added special tokens, then the same greedy procedure.",
        "base": "base",
        "adapter": "adapter",
        "shadow": None,
        "export": "export",
        "dtype_on_disk": "f16",
        "chat_template_prompt": "<|im_start|>user\\n{request}<|im_end|>\\n<|im_start|>assistant\\n",
        "special_tokens": {"<|endoftext|>": b.eot, "<|im_start|>": b.im_start,
                           "<|im_end|>": b.im_end, REMOTE: b.remote},
        "eos_token_ids": [b.im_end, b.eot],
        "max_new_tokens": MAX_NEW_TOKENS,
        "quality": qa_sizes,
        "prompts": entries,
        "conversations": convs,
    }
    (OUT_DIR / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")


# ======================================================================================
# Main
# ======================================================================================


def main() -> None:
    global OUT_DIR
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-steps", type=int, default=BASE_STEPS)
    ap.add_argument("--adapter-steps", type=int, default=ADAPTER_STEPS)
    ap.add_argument("--reuse-base", action="store_true",
                    help="(development) keep models/demo/base from a previous run")
    ap.add_argument("--reuse-adapter", action="store_true",
                    help="(development) keep base/, adapter/ and export/ from a previous run; "
                    "only evaluate and write golden.json")
    ap.add_argument("--no-assert", action="store_true", help="(development) report, don't assert")
    ap.add_argument("--out", type=Path, default=OUT_DIR,
                    help="output directory (default models/demo; another one for a determinism check)")
    args = ap.parse_args()
    args.reuse_base |= args.reuse_adapter
    OUT_DIR = args.out.resolve()
    log(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, shadow-peft {getattr(shadow_peft, '__version__', '0.1.1')}, "
        f"threads {torch.get_num_threads()}")

    # ---- data ---------------------------------------------------------------------------
    docs = collect_docs()
    refs = [d for d in docs if d.first]
    by_name = {d.name: d for d in docs}
    qa = []
    seen_answers = set()
    for name in QA_CANDIDATES:
        d = by_name.get(name)
        if d is None or not d.first or d.first in seen_answers or name == "builtins":
            continue
        seen_answers.add(d.first)
        qa.append(d)
    log(f"{len(docs)} docstrings ({sum(len(d.doc) for d in docs):,} chars), "
        f"{len(refs)} with a clean first sentence, {len(qa)} QA candidates")

    rng = random.Random(SEED)
    pydocs = [pydoc_text(d) for d in docs]
    tok_texts = list(pydocs)
    tok_texts += [reference_doc(rng, refs, qa, end="") for _ in range(300)]
    tok_texts += [robot_log_doc(rng, end="", remote="") for _ in range(300)]
    tok_texts += [render_chat(question(d.name, i % len(QUESTION_TEMPLATES))) for i, d in enumerate(qa)]
    if args.reuse_base:
        b = bundle(Tokenizer.from_file(str(OUT_DIR / "base" / "tokenizer.json")))
    else:
        b = make_tokenizer(tok_texts)
    log(f"tokenizer: vocab {VOCAB_SIZE}; <|endoftext|>={b.eot} <|im_start|>={b.im_start} "
        f"<|im_end|>={b.im_end} {REMOTE}={b.remote}")

    # QA set: answers must fit in the generation budget.
    qa = [d for d in qa if len(b.encode(d.first)) <= 32][:QA_MAX]
    assert len(qa) >= 100, len(qa)
    log(f"QA set: {len(qa)} functions, answers {min(len(b.encode(d.first)) for d in qa)}-"
        f"{max(len(b.encode(d.first)) for d in qa)} tokens")

    if OUT_DIR.exists() and not args.reuse_base:
        shutil.rmtree(OUT_DIR)
    base_dir = OUT_DIR / "base"

    # ---- base ---------------------------------------------------------------------------
    if args.reuse_base:
        log("reusing models/demo/base")
        for sub in (("golden.json",) if args.reuse_adapter else ("adapter", "export", "golden.json")):
            p = OUT_DIR / sub
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    else:
        t = time.time()
        docs_stream: list[int] = []
        srng = random.Random(SEED + 10)
        target = 2_000_000
        while len(docs_stream) < target:
            r = srng.random()
            if r < 0.40:
                text = srng.choice(pydocs)
            elif r < 0.75:
                text = reference_doc(srng, refs, qa)
            else:
                text = robot_log_doc(srng)
            docs_stream += b.encode(text) + [b.eot]
        stream = torch.tensor(docs_stream, dtype=torch.long)
        log(f"pretraining stream: {len(stream):,} tokens ({time.time() - t:.1f}s)")
        base = pretrain_base(b, stream, args.base_steps)
        probe_base(b, base, qa)
        set_generation_config(base, b)
        base.to(torch.float16).save_pretrained(str(base_dir))
        b.write(base_dir)
        del base
        log(f"base written ({time.time() - t:.0f}s)")

    # ---- adapter ------------------------------------------------------------------------
    if args.reuse_adapter:
        log("reusing adapter/ and export/")
    else:
        t = time.time()
        base = load_f32(base_dir)  # exactly the F16 weights that ship, upcast
        wrapper = train_adapter(b, base, qa, args.adapter_steps)
        log(f"adapter trained ({time.time() - t:.0f}s)")
        wrapper.to(torch.float16)
        wrapper.save_pretrained(str(OUT_DIR / "adapter"))
        exported = wrapper.peft_model.export_shadow()
        set_generation_config(exported, b)
        exported.save_pretrained(str(OUT_DIR / "export"))
        b.write(OUT_DIR / "export")
        del exported, wrapper, base
    for sub in ("base", "export"):
        check_tokenizer_dir(OUT_DIR / sub, b)

    # ---- evaluation (reloaded from disk) ------------------------------------------------
    erng = random.Random(SEED + 20)
    qa_eval_docs = erng.sample(qa, QA_EVAL)
    qa_eval = [(question(d.name, erng.randrange(len(QUESTION_TEMPLATES))), d.first) for d in qa_eval_docs]
    qa_names = {d.name for d in qa}
    others = [d for d in refs if d.name not in qa_names]
    unseen_q = [UNSEEN_QUESTION_TEMPLATES[i % 2].format(n=d.name) for i, d in enumerate(qa_eval_docs[:4])]
    unseen_q += [QUESTION_TEMPLATES[0].format(n=d.name) for d in erng.sample(others, 3)]
    unseen_q += ["Tell me a joke.", "What is the capital of Italy?"]
    res = evaluate(b, qa_eval, unseen_q)
    r = res.pop("reloaded")
    demo_chat = [command_turn(C("turn", 0, ("left", 90), cap=True, punct=".")),
                 question_turn(by_name["len"], 0)]
    assert [t.user for t in demo_chat] == DEMO_CONVERSATION, demo_chat
    res.update(evaluate_chats(b, r, heldout_conversations(qa), demo_chat))

    # ---- golden -------------------------------------------------------------------------
    demo_prompts = [
        "Move forward 3 meters.",
        "Please pick up the red ball.",
        "Turn left 90 degrees.",
        "What does len do in Python?",
        "What is str.split?",
    ]
    quality = {k: (v if isinstance(v, bool) else round(v, 3)) for k, v in res.items()}
    quality.update({"heldout_commands": len(HELDOUT), "eval_questions": QA_EVAL, "qa_functions": len(qa)})
    make_golden(b, r, demo_prompts, GOLDEN_CONVERSATIONS, quality)
    print("\nDemo prompts (golden.json):")
    g = json.loads((OUT_DIR / "golden.json").read_text())
    for ent in g["prompts"]:
        print(f"  {ent['messages'][0]['content']!r}\n     attached: {ent['attached']['text']!r}"
              f"\n     detached: {ent['detached']['text']!r}")
    print("\nDemo conversations (golden.json), each mode with its own history:")
    for ent in g["conversations"]:
        print(f"  chat {ent['users']!r}")
        for u, a, d in zip(ent["users"], ent["attached"], ent["detached"]):
            print(f"    user: {u!r}\n       attached: {a['text']!r}\n       detached: {d['text']!r}")

    print("\nmodels/demo:")
    total = 0
    for p in sorted(OUT_DIR.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {str(p.relative_to(OUT_DIR)):<45} {p.stat().st_size:>10,} B")
    print(f"  total {total:,} B ({total / 1e6:.2f} MB)")
    log("done")

    checks = [
        ("held-out commands attached >= 90%", res["commands_attached"] >= 0.9),
        ("held-out commands detached >= 90%", res["commands_detached"] >= 0.9),
        ("questions detached [REMOTE] >= 80%", res["questions_detached_remote"] >= 0.8),
        ("questions attached exact >= 80%", res["questions_attached_exact"] >= 0.8),
        ("held-out chats attached >= 90% of turns", res["chats_attached_turns"] >= 0.9),
        ("held-out chats detached >= 90% of turns", res["chats_detached_turns"] >= 0.9),
        ("demo chat exact attached", res["demo_chat_attached_exact"]),
        ("demo chat exact detached", res["demo_chat_detached_exact"]),
    ]
    for name, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    if not args.no_assert:
        assert all(ok for _, ok in checks), "quality bar not met"


if __name__ == "__main__":
    main()
