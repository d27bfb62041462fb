"""llama.cpp on the same base model, for `anyprec bench decode --vs llamacpp`.

GGUFs are made by llama.cpp's own quantizer (`llama_model_quantize`, requantizing the
embedded model's GGUF) into a cache folder, once; timing uses `llama_cpp.Llama.eval`:
one call per decode step (argmax of its logits feeds the next), one call for a prompt.
Needs the optional extra `pip install -e .[compare]` (llama-cpp-python, which compiles
llama.cpp from source at install: minutes; never a CI dependency).
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

QUANT_TYPES = ("Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
# our bit-width -> the llama.cpp type it is set against (their fastest at 3-4 bits, and
# the K-quants / Q8_0 at the sizes of 5..8 bits; SmolLM2's 576-wide rows make most
# K-quant tensors fall back to 4.5-5.5-bit types, so the table also gives bits per weight)
PEER_OF_BITS = {3: "Q4_0", 4: "Q4_0", 5: "Q5_K_M", 6: "Q6_K", 7: "Q8_0", 8: "Q8_0"}
INSTALL_HINT = "pip install -e .[compare]  (builds llama.cpp from source: minutes)"


def require_llama_cpp():
    """The `llama_cpp` module, or a clear error naming the install command."""
    try:
        import llama_cpp
    except ImportError as err:
        raise RuntimeError(f"--vs llamacpp needs the package llama-cpp-python ({err}); install it with: "
                           f"{INSTALL_HINT}") from None
    return llama_cpp


def gguf_path(folder: Path, quant: str) -> Path:
    return Path(folder) / f"model-{quant}.gguf"


def make_ggufs(source: Path, folder: Path, quants=QUANT_TYPES) -> dict[str, Path]:
    """One GGUF per llama.cpp type, quantized from `source`; files already made are reused.
    Each is written to a temporary name and renamed, so a killed run leaves no partial file."""
    llama_cpp = require_llama_cpp()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for quant in quants:
        dst = gguf_path(folder, quant)
        if not dst.exists():
            tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
            params.allow_requantize = True
            rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
            if rc != 0 or not tmp.exists():
                tmp.unlink(missing_ok=True)
                raise RuntimeError(f"llama.cpp could not quantize {source} to {quant} (code {rc})")
            tmp.replace(dst)
        out[quant] = dst
    return out


class LlamaCppRunner:
    """One GGUF loaded in llama.cpp: timed prompt evals and greedy decode steps."""

    def __init__(self, path: Path, threads: int, n_ctx: int = 1024) -> None:
        llama_cpp = require_llama_cpp()
        self.path = Path(path)
        # flash attention on: llama.cpp's own default on CPU (`flash_attn` auto), which the Python
        # package turns off unless asked; without it llama.cpp decodes ~10-20% slower here
        self.llm = llama_cpp.Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                                   flash_attn=True, verbose=False)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False)

    def prefill_seconds(self, ids: list[int]) -> float:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(ids)
        return time.perf_counter() - start

    def decode_steps(self, ids: list[int], steps: int) -> list[float]:
        """Seconds of `steps` greedy decode steps after prefilling `ids`."""
        self.llm.reset()
        self.llm.eval(ids)
        times = []
        for _ in range(steps):
            token = int(self.llm.scores[self.llm.n_tokens - 1].argmax())
            start = time.perf_counter()
            self.llm.eval([token])
            times.append(time.perf_counter() - start)
        return times


def _serve_runner(conn, path: str, threads: int) -> None:
    """Child process: one LlamaCppRunner answering (method, args) calls until it gets None."""
    runner = LlamaCppRunner(Path(path), threads)
    for call in iter(conn.recv, None):
        conn.send(getattr(runner, call[0])(*call[1:]))


class LlamaCppProcess:
    """A LlamaCppRunner in its own process, same methods. Timing llama.cpp inside our process
    would let the two OpenMP thread pools (ours and its) contend for the same cores; in its
    own process it runs as a user's llama.cpp would, and rounds still alternate with ours."""

    def __init__(self, path: Path, threads: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve_runner, args=(child, str(path), threads), daemon=True)
        self.process.start()
        self.path = Path(path)

    def _call(self, *call):
        self.conn.send(call)
        return self.conn.recv()

    def tokenize(self, text: str) -> list[int]:
        return self._call("tokenize", text)

    def prefill_seconds(self, ids: list[int]) -> float:
        return self._call("prefill_seconds", list(ids))

    def decode_steps(self, ids: list[int], steps: int) -> list[float]:
        return self._call("decode_steps", list(ids), steps)

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=30)


def bits_per_weight(path: Path, n_params: int) -> float:
    """File bits per model parameter (the GGUF holds little besides the weights)."""
    return Path(path).stat().st_size * 8 / n_params


def ratio_rows(ours: list[dict], peers: dict[str, dict]) -> list[dict]:
    """Per bit-width: our tok/s against the peer type PEER_OF_BITS names (when measured)."""
    rows = []
    for row in ours:
        quant = PEER_OF_BITS.get(row["bits"])
        peer = peers.get(quant)
        if peer is None:
            continue
        rows.append({"bits": row["bits"], "peer": quant, "ours_tokens_per_s": row["tokens_per_s"],
                     "peer_tokens_per_s": peer["tokens_per_s"], "ratio": row["tokens_per_s"] / peer["tokens_per_s"]})
    return rows
