"""The native decode engine: a whole Llama-family step (all layers, the head) in one C call.

`NativeEngine` implements the `DecodeEngine` contract over the same loaded artifact as the
transformers path: it reads the runtime's tensors in place (bitplanes, the LUTs in their
resident form, fp32 norms, the embedding and head: int8 tables of a luts="u8" load, or
the fp32 embedding and fp16 head copy of a luts="fp16" one) and keeps a float32 KV cache
per slot. Each row
of a step runs at its own bit-width; Python runs once per step, never per layer.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import torch

from anyprec.engine.base import EngineError, SlotPool
from anyprec.engine.head import DEFAULT_HEAD, HEAD_MODES, quantize_head_int8
from anyprec.errors import PrecisionError
from anyprec.int8_head import Int8Embedding, Int8Head
from anyprec.kernels import cpu
from anyprec.plans import Plan
from anyprec.runtime import AnyPrecisionLinear, AnyPrecisionModel, HalfStoredHead

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
STATIC_ROPE_TYPES = ("default", "linear", "llama3")  # inv_freq fixed at load: a cos/sin table is exact
# prompt rows per native call: more rows share each tile dequantization (a 512-token prompt
# at 4 / 8 bits: 1.13x / 1.43x chunks of 128, docs/ENGINE.md); bounds the scratch (~12 MB on SmolLM2)
PREFILL_CHUNK = 512
FIRST_CAPACITY = 64  # cache positions a new slot gets; doubled as it grows
PARTS = ("norm_embed_residual", "qkv", "rope_attention", "o_proj", "mlp_gate_up", "mlp_down", "head")
_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_ROW = struct.Struct("<8q")
# activations of the mat-vec calls on uint8 LUTs from 4 bits (ap_eng_model.acts_int8): fp32, or
# int8 with one scale per 32 columns (opt-in: 0.5-0.7x the kernel time, perplexity within
# about +-0.7%, docs/ENGINE.md); 3-bit calls, prefill tiles and the head are not affected
ACT_MODES = ("fp32", "int8")
DEFAULT_ACTS = "fp32"
# prefill tile GEMM (ap_eng_model.tiles_fp32): "int16" (uint8 LUTs on AVX2: int16 weights and
# activations, `vpmaddwd`; else fp32) or "fp32" (dequantized fp32 tiles everywhere). int16 is
# opt-in: perplexity within +-0.01%, but not yet measurably faster in the engine (docs/ENGINE.md)
TILE_KINDS = ("int16", "fp32")
DEFAULT_TILES = "fp32"


def unsupported_reason(apm: AnyPrecisionModel) -> str | None:
    """Why the native engine cannot run this model (None: it can)."""
    if not cpu.is_available():
        return f"the native CPU kernels are not built ({cpu.IMPORT_ERROR})"
    model, config = apm.model, apm.model.config
    if config.model_type not in SUPPORTED_TYPES:
        return f"model_type {config.model_type!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} is not silu"
    rope_type = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope type {rope_type!r} changes with the sequence length"
    if set(getattr(config, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
        return "the model has sliding-window layers"
    embed, head = model.model.embed_tokens, model.lm_head
    if not isinstance(embed, Int8Embedding) and embed.weight.dtype != torch.float32:
        return "the engine needs an fp32 model (or an int8 embedding)"
    if not isinstance(head, (HalfStoredHead, Int8Head)):
        return "the engine needs the output head stored in fp16 (luts='fp16') or int8 (luts='u8')"
    if head.bias is not None:
        return "the output head has a bias"
    for i, layer in enumerate(model.model.layers):
        for name in _PROJECTIONS:
            mod = layer.get_submodule(name)
            if not isinstance(mod, AnyPrecisionLinear) or mod.planes.device.type != "cpu":
                return f"layer {i} {name} is not a quantized layer on the cpu"
    return None


def check_acts(acts: str, apm: AnyPrecisionModel) -> str:
    """`acts` if the engine can run it on `apm`, else an EngineError naming the fix."""
    if acts not in ACT_MODES:
        raise EngineError(f"acts {acts!r} is not one of {', '.join(ACT_MODES)}")
    if acts == "int8" and apm.luts != "u8":
        raise EngineError("acts 'int8' needs the model loaded with luts='u8' (int8 activations feed the "
                          "uint8-LUT kernel); use acts='fp32' or load_anyprec(..., luts='u8')")
    return acts


def _context_length(config) -> int:
    """Positions the engine serves: Mistral's sliding window caps it, so attention is full."""
    length = int(config.max_position_embeddings)
    window = getattr(config, "sliding_window", None)
    if window and (config.model_type == "mistral" or getattr(config, "use_sliding_window", False)):
        length = min(length, int(window))
    return length


def _pointers(tensors: dict[int, torch.Tensor]) -> list[int]:
    """data pointers by bit-width 0..8 (0 where a width is not loaded)."""
    return [tensors[b].data_ptr() if b in tensors else 0 for b in range(9)]


def _linear_record(mod: AnyPrecisionLinear, keep: list) -> bytes:
    """ap_eng_linear (ap_engine.h) of one layer: its planes, bias and LUT pointers per width."""
    planes = mod.planes
    luts = {b: mod.lut(b) for b in mod.state.available}
    u8 = mod.lut_form == "u8"
    tables = {b: lut.q if u8 else lut for b, lut in luts.items()}
    dtypes = {t.dtype for t in tables.values()}
    if len(dtypes) != 1 or not dtypes <= ({torch.uint8} if u8 else {torch.float16, torch.float32}):
        raise EngineError(f"LUT dtypes {dtypes} do not match the layer's form luts={mod.lut_form}")
    parts = [t for lut in luts.values() for t in (lut if u8 else (lut,))]
    if not all(t.is_contiguous() for t in parts):
        raise EngineError("the layer's LUTs must be contiguous (as `load_anyprec` holds them)")
    bias = None if mod.bias is None else mod.bias.detach().float().contiguous()
    keep.extend([planes, bias, *parts])
    lo = {b: lut.lo for b, lut in luts.items()} if u8 else {}
    scale = {b: lut.scale for b, lut in luts.items()} if u8 else {}
    return struct.pack("<35q", planes.data_ptr(), planes.stride(0), planes.shape[1], planes.shape[2],
                       mod.in_features, 0 if bias is None else bias.data_ptr(),
                       int(dtypes == {torch.float16}), *_pointers(tables), int(u8), *_pointers(lo),
                       *_pointers(scale))


def _rope_tables(rotary, positions: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin float32 [positions, head_dim], computed as transformers' rotary forward does."""
    pos = torch.arange(positions, dtype=torch.float32)
    freqs = pos[:, None] * rotary.inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    if emb.shape[-1] != head_dim:
        raise EngineError(f"rotary dim {emb.shape[-1]} != head_dim {head_dim}: partial rotary is not supported")
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    return (emb.cos() * scale).contiguous(), (emb.sin() * scale).contiguous()


def _embedding(embed) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(table, scale) the engine reads: an Int8Embedding's int8 rows and scales, or the fp32
    weight and None."""
    if isinstance(embed, Int8Embedding):
        return embed.table.q, embed.table.scale
    return embed.weight.detach(), None


def _head_tensors(head, mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, scale) of the head in `mode`: the fp16 copy and None, or int8 rows and scales
    (an Int8Head's own table; from a HalfStoredHead a copy, the fp16 one staying the runtime's)."""
    if isinstance(head, Int8Head):
        return head.table.q, head.table.scale
    return (head.weight_f16, None) if mode == "fp16" else quantize_head_int8(head.weight_f16)


class NativeEngine(SlotPool):
    """`DecodeEngine` on the native C step (llama / mistral / qwen2 artifacts).

    head: the output head the engine reads: "fp16" (the stored head, exact; a luts="fp16"
    load only), "int8" (per-row int8 weights, activations int8 per token) or "int8w" (int8
    weights, fp32 activations). The int8 weights are the runtime's own table in a luts="u8"
    load (no copy), else a copy made here; see anyprec/engine/head.py and docs/ENGINE.md.
    acts: the activations of the layers' mat-vec calls on uint8 LUTs from 4 bits, "fp32"
    (default) or "int8" (per 32 columns; a luts="u8" load only; see ACT_MODES).
    Attributes: max_batch, context_length, vocab_size (the contract), head, threads (OpenMP
    threads per call; 0: torch's), tile_rows (rows at one bit-width from which a layer runs
    the tile GEMM instead of the mat-vec kernels; 0: the measured default per width, see
    ap_engine.h), tiles (that GEMM's kind, TILE_KINDS), timings (float64[len(PARTS)] seconds
    per part, summed over calls while `profile` is True). Not thread-safe: one caller drives it.
    """

    def __init__(self, apm: AnyPrecisionModel, max_batch: int = 16, threads: int = 0, head: str = DEFAULT_HEAD,
                 acts: str = DEFAULT_ACTS) -> None:
        reason = unsupported_reason(apm)
        if reason:
            raise EngineError(f"the native engine cannot run this model: {reason}; use kind='transformers'")
        if head not in HEAD_MODES:
            raise EngineError(f"head {head!r} is not one of {', '.join(HEAD_MODES)}")
        if head == "fp16" and isinstance(apm.model.lm_head, Int8Head):
            raise EngineError("head 'fp16' needs the model loaded with luts='fp16' (this load holds the head in "
                              "int8); use head='int8w' or load_anyprec(..., luts='fp16')")
        self.head = head
        self.acts = check_acts(acts, apm)
        super().__init__(max_batch)
        model, config = apm.model, apm.model.config
        self.apm = apm
        self.context_length = _context_length(config)
        self.vocab_size = int(config.vocab_size)
        self.threads = int(threads)
        self.tile_rows = 0
        self._tiles = DEFAULT_TILES
        self.profile = False
        self.timings = torch.zeros(len(PARTS), dtype=torch.float64)
        self._bits = set(apm.bits_available)
        self._plan_tables: dict[int, tuple[Plan, torch.Tensor]] = {}
        # self._slots: slot -> [cache f32[2, L, Hkv, cap, D], length]
        self._build(model, config)

    def _build(self, model, config) -> None:
        layers = model.model.layers
        attn = layers[0].self_attn
        self._n_layers = len(layers)
        self._n_heads = int(config.num_attention_heads)
        self._n_kv = int(config.num_key_value_heads)
        self._head_dim = attn.q_proj.out_features // self._n_heads
        keep: list = []
        layer_bytes = b""
        for layer in layers:
            norms = [layer.input_layernorm.weight.detach().float().contiguous(),
                     layer.post_attention_layernorm.weight.detach().float().contiguous()]
            keep.extend(norms)
            layer_bytes += struct.pack("<2q", *(n.data_ptr() for n in norms))
            layer_bytes += b"".join(_linear_record(layer.get_submodule(p), keep) for p in _PROJECTIONS)
        self._layers = torch.frombuffer(bytearray(layer_bytes), dtype=torch.uint8)
        cos, sin = _rope_tables(model.model.rotary_emb, self.context_length, self._head_dim)
        embed, embed_scale = _embedding(model.model.embed_tokens)
        final = model.model.norm.weight.detach().float().contiguous()
        head = _head_tensors(model.lm_head, self.head)
        keep.extend([cos, sin, embed, embed_scale, final, *head])
        self._keep = keep  # every pointer in the records stays valid while the engine lives
        eps = float(layers[0].input_layernorm.variance_epsilon)
        header = struct.pack(
            "<14q2d", self._n_layers, config.hidden_size, self._n_heads, self._n_kv, self._head_dim,
            layers[0].mlp.gate_proj.out_features, self.vocab_size, embed.data_ptr(), final.data_ptr(),
            head[0].data_ptr() if self.head == "fp16" else 0, cos.data_ptr(), sin.data_ptr(), self.context_length,
            self._layers.data_ptr(), eps, float(attn.scaling))
        i8, scale = (0, 0) if self.head == "fp16" else (head[0].data_ptr(), head[1].data_ptr())
        header += struct.pack("<3q", HEAD_MODES.index(self.head), i8, scale)
        header += struct.pack("<2q", int(embed_scale is not None), 0 if embed_scale is None else embed_scale.data_ptr())
        header += struct.pack("<q", int(self.acts == "int8"))
        self._tiles_at = len(header)  # tiles_fp32, rewritten by the `tiles` setter
        header += struct.pack("<q", TILE_KINDS.index(self._tiles))
        self._model = torch.frombuffer(bytearray(header), dtype=torch.uint8)

    @property
    def tiles(self) -> str:
        """The prefill tile GEMM: "int16" (where it applies, else fp32) or "fp32" (TILE_KINDS)."""
        return self._tiles

    @tiles.setter
    def tiles(self, kind: str) -> None:
        if kind not in TILE_KINDS:
            raise EngineError(f"tiles {kind!r} is not one of {', '.join(TILE_KINDS)}")
        self._tiles = kind
        self._model[self._tiles_at:self._tiles_at + 8] = torch.tensor([TILE_KINDS.index(kind)]).view(torch.uint8)

    # -- the contract -------------------------------------------------------------------

    def add(self, prompt_ids: Sequence[int], bits: int | float | Plan) -> tuple[int, torch.Tensor]:
        """As the contract; bits may also be a plan (a Plan or a fractional precision such as
        4.5, resolved by the artifact): each module then runs at the plan's width."""
        slot = self._free_slot()
        state, logits = self._prefill(prompt_ids, bits, every_position=False)
        self._slots[slot] = state  # only once the prefill succeeded
        return slot, logits[0]

    def prompt_logits(self, prompt_ids: Sequence[int], bits: int | float | Plan) -> torch.Tensor:
        """float32 [len(prompt_ids), vocab]: the logits at every prompt position (for
        perplexity; `add` computes the head for the last position only). Keeps no slot."""
        return self._prefill(prompt_ids, bits, every_position=True)[1]

    def _prefill(self, prompt_ids: Sequence[int], bits, every_position: bool) -> tuple[list, torch.Tensor]:
        """(slot state, logits [1 or len(prompt_ids), vocab]) of a prompt run in chunks."""
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise EngineError("the prompt is empty: give at least one token")
        if len(ids) >= self.context_length:
            raise EngineError(f"the prompt has {len(ids)} tokens; this model's context is {self.context_length}")
        bits, table = self._width(bits)
        self._check_tokens(ids)
        state: list = [None, 0]
        self._reserve(state, len(ids))
        logits = torch.empty(len(ids) if every_position else 1, self.vocab_size, dtype=torch.float32)
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[start:start + PREFILL_CHUNK]
            last = start + len(chunk) == len(ids)
            rows = [(tok, bits, start + i, state, start + i if every_position else
                     0 if last and i == len(chunk) - 1 else -1, table) for i, tok in enumerate(chunk)]
            self._run(rows, logits)
        state[1] = len(ids)
        return state, logits

    def step(self, slots: Sequence[int], tokens: Sequence[int], bits: Sequence[int | float | Plan]) -> torch.Tensor:
        if not (len(slots) == len(tokens) == len(bits)):
            raise EngineError(f"step got {len(slots)} slots, {len(tokens)} tokens, {len(bits)} bit-widths")
        if len(set(slots)) != len(slots):
            raise EngineError(f"step got a slot twice: {list(slots)}")
        states = [self._get(s) for s in slots]
        for s, state in zip(slots, states):
            if state[1] >= self.context_length:
                raise EngineError(f"slot {s} is full: the context is {self.context_length} tokens")
        widths = [self._width(b) for b in bits]
        self._check_tokens(tokens)
        logits = torch.empty(len(slots), self.vocab_size, dtype=torch.float32)
        if not slots:
            return logits
        rows = []
        for i, (state, tok, (b, table)) in enumerate(zip(states, tokens, widths)):
            self._reserve(state, state[1] + 1)
            rows.append((int(tok), b, state[1], state, i, table))
        self._run(rows, logits)
        for state in states:
            state[1] += 1
        return logits

    def length(self, slot: int) -> int:
        return self._get(slot)[1]

    # -- internals ----------------------------------------------------------------------

    def _run(self, rows: list[tuple], logits: torch.Tensor) -> None:
        """One native call; rows (token, bits, position, slot state, logits row or -1, plan
        table or None)."""
        rows = sorted(rows, key=lambda r: r[1])  # the C step wants equal bit-widths contiguous
        packed = bytearray()
        for tok, b, pos, state, out, table in rows:
            cache = state[0]
            plan = 0 if table is None else table.data_ptr()
            packed += _ROW.pack(tok, b, pos, cache[0].data_ptr(), cache[1].data_ptr(), cache.shape[3], out, plan)
        buf = torch.frombuffer(packed, dtype=torch.uint8)
        times = self.timings.data_ptr() if self.profile else 0
        threads = self.threads or torch.get_num_threads()
        cpu._lib().engine_step(self._model.data_ptr(), buf.data_ptr(), len(rows), logits.data_ptr(), threads,
                               times, self.tile_rows)

    def _reserve(self, state: list, positions: int) -> None:
        """Grow the slot's cache (doubling, capped at the context) to hold `positions`."""
        cache = state[0]
        cap = 0 if cache is None else cache.shape[3]
        if positions <= cap:
            return
        new_cap = max(FIRST_CAPACITY, cap)
        while new_cap < positions:
            new_cap *= 2
        new_cap = min(new_cap, self.context_length)
        fresh = torch.empty(2, self._n_layers, self._n_kv, new_cap, self._head_dim, dtype=torch.float32)
        if cache is not None:
            fresh[:, :, :, :state[1]] = cache[:, :, :, :state[1]]
        state[0] = fresh

    def _check_bits(self, bits: int) -> None:
        if bits not in self._bits:
            raise EngineError(f"precision {bits} is not loaded; this engine serves bit-widths {sorted(self._bits)}")

    def _width(self, bits: int | float | Plan) -> tuple[int, torch.Tensor | None]:
        """(bits, None) for an integer width; (0, int8 [n_layers, 7] table) for a plan."""
        if isinstance(bits, int) or (not isinstance(bits, Plan) and float(bits).is_integer()):
            self._check_bits(int(bits))
            return int(bits), None
        try:
            plan = bits if isinstance(bits, Plan) else self.apm.resolve_precision(bits)
        except PrecisionError as e:  # its message names the precision and what is loaded
            raise EngineError(str(e)) from e
        return 0, self._plan_table(plan)

    def _plan_table(self, plan: Plan) -> torch.Tensor:
        """int8 [n_layers, len(_PROJECTIONS)] widths of `plan`, made once per plan object."""
        hit = self._plan_tables.get(id(plan))
        if hit is not None and hit[0] is plan:
            return hit[1]
        names = [[layer.get_submodule(p).name for p in _PROJECTIONS] for layer in self.apm.model.model.layers]
        missing = [n for row in names for n in row if n not in plan.bits]
        if missing:
            raise EngineError(f"the plan has no width for module {missing[0]}: plans must cover every quantized module")
        widths = sorted({plan.bits[n] for row in names for n in row})
        for b in widths:
            self._check_bits(b)
        table = torch.tensor([[plan.bits[n] for n in row] for row in names], dtype=torch.int8)
        self._plan_tables[id(plan)] = (plan, table)  # the plan is kept, so its id stays unique
        return table

    def _check_tokens(self, tokens: Sequence[int]) -> None:
        bad = [t for t in tokens if not 0 <= int(t) < self.vocab_size]
        if bad:
            raise EngineError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
