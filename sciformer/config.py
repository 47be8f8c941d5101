"""Run configuration: four small dataclasses, YAML/JSON load and save, `--set` overrides.

Each component receives only its own sub-config (torchtitan style): the model sees
`ModelConfig`, the data pipeline and task see `DataConfig`, the loop sees `TrainConfig`.
Every field is overridable from the command line as `--set section.field=value`; values are
parsed as YAML scalars and checked against the field's type, and `validate()` checks ranges,
so a bad value is a one-line `ConfigError` naming the key. Which settings each task reads,
and a configuration completed for one task, are in `sciformer.config_tasks`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sciformer.errors import ConfigError


@dataclass
class ModelConfig:
    """Shape of the shared encoder-decoder; everything needed to rebuild the weights."""

    d_model: int = 256  # width of every token vector
    n_heads: int = 8  # attention heads; d_model must divide evenly
    n_encoder_layers: int = 4  # encoder depth
    n_decoder_layers: int = 4  # decoder depth; 0 builds an encoder-only model (masked residues)
    d_ff: int = 1024  # hidden width of the feed-forward block
    dropout: float = 0.1  # on residual branches, the feed-forward hidden layer and embeddings
    # on attention probabilities; off by default (as LLaMA / ESM-2 pretraining): any value > 0
    # makes CPU attention leave the fused kernel for the ~3x slower explicit softmax path
    attention_dropout: float = 0.0
    attention: str = "scaled_dot"  # attention kernel (model.attention.KERNELS)
    window: int = 128  # local attention: each query sees keys within +-window positions
    positions: str = "sinusoidal"  # position encoding (model.positions.POSITIONS)
    norm: str = "pre"  # LayerNorm placement (model.layers.NORMS)
    activation: str = "gelu"  # feed-forward nonlinearity (model.layers.ACTIVATIONS)
    max_len: int = 1024  # size of the learned position table (learned positions only)
    # tokens per time patch, set by the tokenizer: 1 for whole-state tokens; S > 1 for field
    # patch tokens (S spatial patches per time patch): the decoder is then block-causal over
    # groups of S tokens and positions are a time-patch position plus a learned spatial one
    space_tokens: int = 1
    vocab_size: int = 33  # discrete input vocabulary; set by the tokenizer
    input_dim: int = 0  # >0: continuous inputs of this width enter through a linear adapter
    output_dim: int = 0  # >0: continuous head of this width (forecast patches x quantiles)
    tie_embeddings: bool = True  # token head shares the input embedding matrix (as ESM-2)
    lm_head: str = "linear"  # token head (model.heads.LM_HEADS; roberta as ESM-2)
    final_norm: bool = True  # LayerNorm after the last layer (needed with pre-LN)
    embed_scale: bool = True  # multiply token embeddings by sqrt(d_model); ESM-2 does not
    token_dropout: bool = False  # ESM-2: zero <mask> embeddings, rescale the rest (see model)
    # masked residues: add gate * log(the input's own residue composition, Dirichlet prior of
    # the training frequencies) to the logits (model.composition; gate and strength learned)
    composition_prior: bool = False
    # what the composition prior counts: `window`, the residues of the piece the transformer
    # reads (at most data.crop_length); `protein`, every visible residue of the protein, the
    # rest of it included (as the composition baseline counts)
    composition_scope: str = "window"
    mask_id: int = 32  # token dropout: the <mask> id (ESM alphabet)
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm (HF ESM configs may say 1e-12)
    # independent channels: after each encoder layer, attend across the channels of one
    # window at each patch index (no channel positions, any count; Panda, Lai et al. 2025);
    # on by default when pretraining on a zoo corpus
    channel_attention: bool = False
    # set by the task: the decoder also reads the anchor of the patch it predicts (an anchor
    # computed from the context, data.anchor=analog, that the inputs alone do not determine)
    anchor_input: bool = False

    def validate(self) -> None:
        _check(self.d_model > 0, "model.d_model", "must be positive")
        _check(self.n_heads > 0, "model.n_heads", "must be positive")
        _check(
            self.d_model % self.n_heads == 0,
            "model.d_model",
            f"{self.d_model} is not divisible by model.n_heads={self.n_heads}",
        )
        _check(self.n_encoder_layers >= 1, "model.n_encoder_layers", "must be at least 1")
        _check(self.n_decoder_layers >= 0, "model.n_decoder_layers", "must be >= 0")
        _check(self.d_ff > 0, "model.d_ff", "must be positive")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        _check(0.0 <= self.attention_dropout < 1.0, "model.attention_dropout", "must be in [0, 1)")
        _check(self.window >= 1, "model.window", "must be at least 1")
        from sciformer.model.attention import DROPOUT_KINDS, KERNELS  # the registries are the
        from sciformer.model.heads import LM_HEADS  # one source of truth for valid choices
        from sciformer.model.layers import ACTIVATIONS, NORMS
        from sciformer.model.positions import POSITIONS

        for key, value, valid in (("attention", self.attention, KERNELS),
                                  ("positions", self.positions, POSITIONS),
                                  ("norm", self.norm, NORMS),
                                  ("activation", self.activation, ACTIVATIONS),
                                  ("lm_head", self.lm_head, LM_HEADS)):
            _check(value in valid, f"model.{key}",
                   f"unknown kind '{value}' (valid: {', '.join(valid)})")
        _check(self.attention_dropout == 0 or self.attention in DROPOUT_KINDS,
               "model.attention_dropout", f"'{self.attention}' attention has no attention "
               f"weights to drop out (kinds that do: {', '.join(DROPOUT_KINDS)})")
        _check(self.max_len >= 1, "model.max_len", "must be at least 1")
        _check(self.space_tokens >= 1, "model.space_tokens", "must be at least 1")
        _check(self.space_tokens == 1 or self.positions != "rotary", "model.positions",
               "rotary positions are 1-D; field patch tokens need sinusoidal or learned")
        _check(self.vocab_size >= 0, "model.vocab_size", "must be >= 0")
        _check(self.input_dim >= 0 and self.output_dim >= 0, "model.input_dim", "must be >= 0")
        _check(self.layer_norm_eps > 0, "model.layer_norm_eps", "must be positive")
        _check(not self.composition_prior or self.vocab_size > 0, "model.composition_prior",
               "needs a token vocabulary (masked residues)")
        from sciformer.model.composition import SCOPES

        _check(self.composition_scope in SCOPES, "model.composition_scope",
               f"unknown scope '{self.composition_scope}' (valid: {', '.join(SCOPES)})")
        _check(self.composition_scope == "window" or self.composition_prior,
               "model.composition_scope", "counts for the composition prior: set "
               "model.composition_prior: true as well")
        _check(not self.token_dropout or 0 <= self.mask_id < self.vocab_size, "model.mask_id",
               f"{self.mask_id} is not a token id of the vocabulary (model.vocab_size="
               f"{self.vocab_size}) needed by model.token_dropout")


#: `data.anchor` values: what forecast quantiles are offsets on (docs/forecast-training.md).
ANCHORS = ("persistence", "nvar", "fno", "analog", "auto")


@dataclass
class DataConfig:
    """How files become training examples, for both tasks."""

    task: str = "auto"  # which task; auto: from the data files (FASTA masked, HDF5 forecast)
    # held out by whole sequence / trajectory, seeded; forecasting: at least 3 trajectories
    # (at most a quarter)
    val_fraction: float = 0.1
    val_max: int = 200  # cap on held-out examples so validation stays quick
    # FASTA: identity keeps proteins sharing > split_identity of their k-mers on one side
    split_by: str = "identity"  # k-mer similarity clusters or random (forecasts: random)
    split_identity: float = 0.5  # max fraction of a held-out protein's k-mers in a training one
    split_kmer: int = 8  # k of those k-mers
    # masked residues (BERT / ESM recipe)
    crop_length: int = 256  # residues per training crop; longer sequences are randomly cropped
    mask_rate: float = 0.15  # fraction of residues chosen for the loss
    # fraction of residues `evaluate` and validation mask and score (0: data.mask_rate);
    # keeps the benchmark at ESM's 15% when training masks more
    eval_mask_rate: float = 0.0
    mask_token_rate: float = 0.8  # of chosen: replaced by <mask>; 10% random, 10% unchanged
    random_token_rate: float = 0.1
    tokens_per_batch: int = 8192  # token budget per batch (length-sorted batches, fair-esm style)
    # forecasting
    # values to tokens: continuous patches, Chronos-style bins, or space-time patches of
    # fields (field_patch: picked automatically for states with 2+ spatial dims)
    tokenizer: str = "patch"
    channels: str = "joint"  # joint: one token holds the whole state; independent: per channel
    # patch scaling: dataset (training mean/std) or instance (RevIN per context; with
    # independent channels the model is channel-agnostic: any channel count at inference)
    scaling: str = "dataset"
    context: int = 64  # time steps the encoder reads
    horizon: int = 32  # time steps the decoder predicts in training (longer: fewer rollout chunks)
    patch_len: int = 8  # time steps per patch token (8 halves the tokens, and the cost, of 4)
    # field_patch: grid points per side of a spatial patch; 8 makes a 64 x 64 frame 64 tokens
    # (a whole-frame token would be 4096 values wide), 16 keeps 128 x 128 at 64 tokens
    space_patch: int = 8
    n_bins: int = 1024  # bins tokenizer: vocabulary of value bins
    bin_limit: float = 15.0  # bins tokenizer: scaled values are clipped to +-limit
    # levels of the predicted quantile function (ascending, with 0.5); more levels give the
    # sampler a finer inverse CDF
    quantiles: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5, 0.75, 0.9,
                                                            0.95])
    # sample paths per forecast (predict, evaluate); median, quantiles and CRPS come from
    # them. 32 estimates 10-90% quantiles and CRPS well at a third of the cost of 100
    samples: int = 32
    draws: str = "element"  # patch sampler: a uniform per value (element) or per patch (patch)
    # what the patch quantiles are offsets on: persistence (the last known state repeated) or
    # nvar (a closed-loop NVAR forecast fitted on the training split: a hybrid model; joint
    # patch tokens with dataset scaling only) or fno (2-D fields: an FNO fitted on the
    # training split forecasts each next time patch) or analog (the mean continuation of
    # the context's closest analogues of its present state, from the context alone: for
    # zero-shot models, ODE states); auto: nvar where it applies (ODE states, 1-D fields),
    # else persistence
    anchor: str = "auto"
    # fno anchor: optimizer steps and CPU seconds of its fit, at most (the fno baseline's)
    anchor_steps: int = 2000
    anchor_seconds: float = 200.0
    stride: int = 1  # time steps between consecutive training windows
    # training on the model's own rollouts (patch, field_patch; see docs/forecast-training.md)
    pushforward: int = 0  # up to K chunks rolled out without gradient before the scored chunk
    pushforward_warmup: float = 0.0  # fraction of the steps over which K ramps up from 0
    sampled_inputs: float = 0.0  # share of batches whose decoder inputs are the model's draws
    sampled_inputs_from: float = 0.0  # fraction of the steps trained teacher-forced first
    input_noise: float = 0.0  # std (training stds) of noise on context and decoder inputs
    num_workers: int = 0  # DataLoader worker processes building training batches ahead

    @property
    def scored_mask_rate(self) -> float:
        """The fraction of residues `evaluate` and validation mask: eval_mask_rate, else
        mask_rate (runs written before eval_mask_rate existed score at their mask_rate)."""
        return self.eval_mask_rate or self.mask_rate

    def validate(self) -> None:
        _check(self.task in ("auto", "masked", "forecast"), "data.task", "must be auto|masked|forecast")
        _check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
        _check(self.split_by in ("identity", "random"), "data.split_by", "must be identity|random")
        _check(0.0 < self.split_identity <= 1.0, "data.split_identity", "must be in (0, 1]")
        _check(1 <= self.split_kmer <= 14, "data.split_kmer", "must be in 1..14")
        _check(self.crop_length >= 3, "data.crop_length", "must be at least 3")
        _check(0.0 < self.mask_rate < 1.0, "data.mask_rate", f"{self.mask_rate} is not in (0, 1)")
        _check(0.0 <= self.eval_mask_rate < 1.0, "data.eval_mask_rate",
               f"{self.eval_mask_rate} is not in [0, 1) (0: data.mask_rate)")
        _check(
            0.0 <= self.mask_token_rate and 0.0 <= self.random_token_rate
            and self.mask_token_rate + self.random_token_rate <= 1.0,
            "data.mask_token_rate",
            "mask_token_rate + random_token_rate must be within [0, 1]",
        )
        _check(self.tokens_per_batch >= self.crop_length, "data.tokens_per_batch",
               "must be at least data.crop_length")
        from sciformer.tokenizers.timeseries import CHANNEL_MODES, TOKENIZER_NAMES

        _check(self.tokenizer in TOKENIZER_NAMES, "data.tokenizer",
               f"unknown kind '{self.tokenizer}' (valid: {', '.join(TOKENIZER_NAMES)})")
        _check(self.space_patch >= 1, "data.space_patch", "must be at least 1")
        _check(self.channels in CHANNEL_MODES, "data.channels",
               f"unknown kind '{self.channels}' (valid: {', '.join(CHANNEL_MODES)})")
        _check(self.scaling in ("dataset", "instance"), "data.scaling",
               "must be dataset or instance")
        _check(self.context >= 1 and self.horizon >= 1, "data.context", "context and horizon must be >= 1")
        _check(self.patch_len >= 1, "data.patch_len", "must be at least 1")
        _check(self.n_bins >= 2, "data.n_bins", "must be at least 2")
        _check(self.bin_limit > 0, "data.bin_limit", "must be positive")
        q = self.quantiles
        _check(all(0.0 < v < 1.0 for v in q) and 0.5 in q, "data.quantiles",
               "levels must lie in (0, 1) and include 0.5")
        _check(all(a < b for a, b in zip(q, q[1:])), "data.quantiles",
               f"levels must be ascending and distinct, got {q}")
        _check(self.stride >= 1, "data.stride", "must be at least 1")
        _check(1 <= self.samples <= 10_000, "data.samples", "must be in 1..10000")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _check(self.draws in ("element", "patch"), "data.draws", "must be element or patch")
        _check(self.anchor in ANCHORS, "data.anchor", f"must be one of {', '.join(ANCHORS)}")
        _check(self.anchor_steps >= 1, "data.anchor_steps", "must be at least 1")
        _check(self.anchor_seconds > 0, "data.anchor_seconds", "must be positive")
        _check(self.pushforward >= 0, "data.pushforward", "must be >= 0")
        _check(0.0 <= self.pushforward_warmup <= 1.0, "data.pushforward_warmup",
               "must be in [0, 1]")
        _check(0.0 <= self.sampled_inputs <= 1.0, "data.sampled_inputs", "must be in [0, 1]")
        _check(0.0 <= self.sampled_inputs_from <= 1.0, "data.sampled_inputs_from",
               "must be in [0, 1]")
        _check(self.input_noise >= 0.0, "data.input_noise", "must be >= 0")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one pretraining run."""

    max_steps: int = 1000  # optimizer steps
    batch_size: int = 32  # examples per step (forecast); masked uses data.tokens_per_batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 100  # linear warm-up, then cosine decay to lr_min_ratio * lr
    lr_min_ratio: float = 0.1
    clip_norm: float = 1.0  # gradient clipping by global norm; 0 disables
    eval_every: int = 200  # steps between validations
    log_every: int = 20  # steps between metrics.jsonl lines
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2  # last K step checkpoints kept, plus the best on validation
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    compile: bool = False  # torch.compile the training step (see benchmarks/speedups.py)
    checkpoint_activations: bool = False  # recompute activations in backward to save memory
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default
    fsdp: bool = False  # multi-process runs: shard with FSDP2 instead of replicating with DDP
    init_from: str = ""  # run directory whose weights start this run (fine-tuning)
    calibrate: bool = True  # forecast: fit the first-patch correction and the spread at the end

    def validate(self) -> None:
        _check(self.max_steps >= 1, "train.max_steps", "must be at least 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be at least 1")
        _check(self.grad_accum >= 1, "train.grad_accum", "must be at least 1")
        _check(self.lr > 0, "train.lr", "must be positive")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas",
               "must be two numbers in [0, 1)")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(0.0 <= self.lr_min_ratio <= 1.0, "train.lr_min_ratio", "must be in [0, 1]")
        _check(self.clip_norm >= 0, "train.clip_norm", "must be >= 0")
        for name in ("eval_every", "log_every", "checkpoint_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, f"train.{name}", "must be at least 1")
        _check(self.precision in ("fp32", "bf16"), "train.precision", "must be fp32 or bf16")
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "train.device",
            "must be auto, cpu, cuda or cuda:N",
        )
        _check(self.threads >= 0, "train.threads", "must be >= 0")
        _check(0 <= self.seed < 2**63, "train.seed", f"{self.seed} is not in [0, 2**63)")


@dataclass
class RunConfig:
    """Everything `pretrain` needs; saved as config.json in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        self.model.validate()
        self.data.validate()
        self.train.validate()
        _check(not self.model.channel_attention or self.data.channels == "independent",
               "model.channel_attention", "mixes the channel rows of independent channels; "
               f"data.channels={self.data.channels!r} has one row per window")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config",
                  derived_ok: bool = False) -> RunConfig:
        """Build from nested dicts, rejecting unknown sections/keys and wrong types
        (and derived fields unless `derived_ok`: a run's own config.json)."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
        cfg = cls()
        for section, values in raw.items():
            if section not in _SECTIONS:
                raise ConfigError(f"{source}: unknown section '{section}' (valid: {', '.join(_SECTIONS)})")
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section '{section}' must be a mapping")
            for key, value in values.items():
                set_field(cfg, f"{section}.{key}", value, source, derived_ok)
        return cfg


_SECTIONS = {f.name: f for f in dataclasses.fields(RunConfig)}

#: Model fields computed from the task and its data (vocabulary, adapter and head widths, the
#: <mask> id): only a run's own config.json holds them; a user setting would be overwritten.
DERIVED_FIELDS = ("model.vocab_size", "model.input_dim", "model.output_dim", "model.mask_id",
                  "model.space_tokens", "model.anchor_input")


def explicit_keys(cfg: RunConfig) -> set[str]:
    """The `section.field` keys a user set (config file or --set) on `cfg`."""
    return cfg.__dict__.setdefault("_explicit", set())


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"config field '{key}': {why}")


def coerce_value(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check `value` against a simple type hint (int, float, bool, str, list[float])."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [coerce_value(v, inner, key, source) for v in value]
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(hint):
            try:
                return coerce_value(value, arg, key, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: '{key}' must be null, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{source}: '{key}' must be a finite number, got {value!r}")
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the hints above are used in the dataclasses
        return value
    raise ConfigError(f"{source}: '{key}' must be {hint.__name__}, got {value!r}")


def set_field(cfg: RunConfig, dotted: str, value: Any, source: str = "--set",
              derived_ok: bool = False) -> None:
    """Set `section.field` on `cfg` after checking that the key exists and the type fits.

    Derived fields (`DERIVED_FIELDS`) are refused unless `derived_ok` (a run's config.json).
    """
    if dotted in DERIVED_FIELDS and not derived_ok:
        raise ConfigError(f"{source}: '{dotted}' is computed from the data and the task; it "
                          "cannot be set")
    explicit_keys(cfg).add(dotted)
    section, _, name = dotted.partition(".")
    if section not in _SECTIONS or not name:
        raise ConfigError(
            f"{source}: unknown key '{dotted}' (keys look like model.d_model, data.context, train.lr)"
        )
    sub = getattr(cfg, section)
    hints = typing.get_type_hints(type(sub))
    if name not in hints:
        valid = ", ".join(f.name for f in dataclasses.fields(sub))
        raise ConfigError(f"{source}: unknown key '{dotted}'; valid keys in '{section}': {valid}")
    setattr(sub, name, coerce_value(value, hints[name], dotted, source))


def apply_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """Apply `key=value` strings; values are parsed as YAML scalars (1e-3, true, [0.1, 0.9])."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set '{item}': expected key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set '{item}': value is not valid YAML ({exc})") from None
        set_field(cfg, key.strip(), value, "--set")
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults, then the YAML/JSON file (if any), then `--set` overrides; validated."""
    cfg = RunConfig()
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
        cfg = RunConfig.from_dict(raw, source=str(path))
    return apply_overrides(cfg, overrides).validate()


def save_config(cfg: RunConfig, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write config.json atomically; `extra` holds task/tokenizer state (e.g. channel count)."""
    from sciformer.io.atomic import write_json_atomic

    payload = cfg.to_dict()
    if extra:
        payload.update(extra)
    write_json_atomic(path, payload)


def read_run_config(path: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """Read config.json: the RunConfig plus any extra top-level entries (task state)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (is this a sciformer run directory?)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    missing = [k for k in _SECTIONS if k not in raw]
    if missing:  # defaults would silently stand in for the run's own settings
        raise ConfigError(f"{path}: no '{missing[0]}' section; config.json of a run holds "
                          f"{', '.join(_SECTIONS)}")
    sections = {k: raw.pop(k) for k in list(raw) if k in _SECTIONS}
    cfg = RunConfig.from_dict(sections, source=str(path), derived_ok=True).validate()
    explicit_keys(cfg).clear()  # a saved run's settings are not a user's new settings
    return cfg, raw
