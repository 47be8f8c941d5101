"""Import ESM-2 checkpoints (Lin et al. 2023, Science 379:1123) as sciformer run directories.

Two sources are read, neither needs `transformers` or `fair-esm` installed:

- a Hugging Face `EsmForMaskedLM` directory (`config.json` + `model.safetensors` or
  `pytorch_model.bin`), as `save_pretrained` writes it;
- a fair-esm state dict (`.pt`, the `ESM2` module's own key names such as
  `layers.0.self_attn.q_proj.weight`, optionally under a "model" entry with the `encoder.` /
  `encoder.sentence_encoder.` prefixes of the hub files), loaded with ``weights_only=True``;
- a fair-esm hub file as distributed (`esm2_t6_8M_UR50D.pt` and its siblings): a dict with
  "model" (the state dict) and "args" / "cfg" entries holding pickled `argparse.Namespace`
  and omegaconf objects, which ``weights_only=True`` refuses. These are read without running
  any code of the file (`sciformer.esm2_checkpoints.SafeUnpickler`). The
  configuration's layers, width and heads are read from it and checked against the tensors.

ESM-2 is the shared `SciFormer` encoder with the options ESM-2 needs: rotary positions, pre-LN,
exact (erf) GELU, a final LayerNorm (`emb_layer_norm_after`), the RoBERTa LM head tied to the
input embedding, no sqrt(d) input scale and token dropout. The token ids are ESM-2's own (the
sciformer alphabet is ESM-2's), so the weights are copied row for row. Every checkpoint key
is either mapped or known to be unused (contact head, rotary frequencies, position ids);
anything else is refused so nothing is dropped silently.

The run directory written has no training data behind it: `config.json` records empty
`train_files` and zero `residue_counts` (there are none to count), `split.json` has no
held-out records, and `evaluate` labels its context-free baseline "uniform" accordingly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sciformer.config import DataConfig, ModelConfig, RunConfig, save_config
from sciformer.errors import CheckpointError
from sciformer.esm2_checkpoints import _fair_state_dict, _hf_weights
from sciformer.io.atomic import UMASK, make_parents, remove_created, write_json_atomic
from sciformer.runs import MaskedState, check_weights, state_to_dict
from sciformer.tokenizers.protein import ALPHABET, ProteinTokenizer

#: Attention heads of the published ESM-2 sizes by width (8M ... 15B), for state dicts that
#: carry no rotary frequencies to infer it from.
ESM2_HEADS = {320: 20, 480: 20, 640: 20, 1280: 20, 2560: 40, 5120: 40}

_P = r"\.(?P<p>weight|bias|gamma|beta)"  # parameter suffix; gamma/beta: legacy LayerNorm names
_LEGACY = {"gamma": "weight", "beta": "bias"}
_ATT, _FF = "encoder.{i}.self_attn", "encoder.{i}.ff"
#: Hugging Face key (after the `esm.` prefix is removed) -> sciformer key.
_HF_LAYER = r"encoder\.layer\.(?P<i>\d+)\."
HF_RULES = [
    (r"embeddings\.word_embeddings\.weight", "embed.weight"),
    (_HF_LAYER + r"attention\.self\.query" + _P, _ATT + ".block.q_proj.{p}"),
    (_HF_LAYER + r"attention\.self\.key" + _P, _ATT + ".block.k_proj.{p}"),
    (_HF_LAYER + r"attention\.self\.value" + _P, _ATT + ".block.v_proj.{p}"),
    (_HF_LAYER + r"attention\.output\.dense" + _P, _ATT + ".block.out_proj.{p}"),
    (_HF_LAYER + r"attention\.LayerNorm" + _P, _ATT + ".norm.{p}"),
    (_HF_LAYER + r"intermediate\.dense" + _P, _FF + ".block.up.{p}"),
    (_HF_LAYER + r"output\.dense" + _P, _FF + ".block.down.{p}"),
    (_HF_LAYER + r"LayerNorm" + _P, _FF + ".norm.{p}"),
    (r"encoder\.emb_layer_norm_after" + _P, "enc_norm.{p}"),
    (r"lm_head\.dense" + _P, "token_head.transform.0.{p}"),
    (r"lm_head\.layer_norm" + _P, "token_head.transform.2.{p}"),
    (r"lm_head\.bias", "token_head.bias"),
    (r"lm_head\.decoder\.weight", "decoder"),
]
HF_UNUSED = r"contact_head\..*|.*rotary_embeddings\.inv_freq|embeddings\.position_ids|pooler\..*"

#: fair-esm `ESM2` key -> sciformer key.
_FAIR_LAYER = r"layers\.(?P<i>\d+)\."
FAIR_RULES = [
    (r"embed_tokens\.weight", "embed.weight"),
    (_FAIR_LAYER + r"self_attn\.(?P<n>[qkv]|out)_proj" + _P, _ATT + ".block.{n}_proj.{p}"),
    (_FAIR_LAYER + r"self_attn_layer_norm" + _P, _ATT + ".norm.{p}"),
    (_FAIR_LAYER + r"fc1" + _P, _FF + ".block.up.{p}"),
    (_FAIR_LAYER + r"fc2" + _P, _FF + ".block.down.{p}"),
    (_FAIR_LAYER + r"final_layer_norm" + _P, _FF + ".norm.{p}"),
    (r"emb_layer_norm_after" + _P, "enc_norm.{p}"),
    (r"lm_head\.dense" + _P, "token_head.transform.0.{p}"),
    (r"lm_head\.layer_norm" + _P, "token_head.transform.2.{p}"),
    (r"lm_head\.bias", "token_head.bias"),
    (r"lm_head\.weight", "decoder"),
]
FAIR_UNUSED = r"contact_head\..*|.*rot_emb\.inv_freq"


def rename_keys(tensors: dict[str, torch.Tensor], rules: list[tuple[str, str]], unused: str,
                source: Path) -> dict[str, torch.Tensor]:
    """Apply the first matching rule to every key; unknown keys are a CheckpointError."""
    out: dict[str, torch.Tensor] = {}
    compiled = [(re.compile(p), r) for p, r in rules]
    for key, value in tensors.items():
        for pattern, repl in compiled:
            m = pattern.fullmatch(key)
            if m:
                parts = {k: _LEGACY.get(v, v) for k, v in m.groupdict().items()}
                out[repl.format(**parts)] = value
                break
        else:
            if not re.fullmatch(unused, key):
                raise CheckpointError(f"{source}: unexpected weight '{key}' (not an ESM-2 key)")
    return out


# ---- Hugging Face directories --------------------------------------------------------------
def _hf_model_config(folder: Path) -> tuple[ModelConfig, int]:
    """ModelConfig from an HF `EsmConfig` json; (config, max_position_embeddings)."""
    path = folder / "config.json"
    try:
        hf = json.loads(read_utf8(path, "the EsmConfig"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path}: expected a JSON object (an EsmConfig), found "
                              f"{type(hf).__name__}")
    need = {"position_embedding_type": "rotary", "vocab_size": 33, "pad_token_id": 1,
            "mask_token_id": 32, "emb_layer_norm_before": False, "is_decoder": False}
    for key, want in need.items():
        if hf.get(key, want) != want:
            raise CheckpointError(f"{path}: '{key}' is {hf.get(key)!r}; only ESM-2 checkpoints "
                                  f"({key}={want!r}) can be imported")
    size = {key: _config_int(hf, key, path) for key in _HF_SIZES}
    if _config_number(hf, "rope_theta", 10000.0, path) != 10000.0:
        raise CheckpointError(f"{path}: rope_theta {hf['rope_theta']} is not ESM-2's 10000")
    cfg = esm2_model_config(d_model=size["hidden_size"], n_heads=size["num_attention_heads"],
                            n_layers=size["num_hidden_layers"], d_ff=size["intermediate_size"],
                            token_dropout=bool(hf.get("token_dropout", True)),
                            eps=_config_number(hf, "layer_norm_eps", 1e-12, path),
                            dropout=_config_number(hf, "hidden_dropout_prob", 0.0, path),
                            attention_dropout=_config_number(hf, "attention_probs_dropout_prob",
                                                             0.0, path))
    vocab = folder / "vocab.txt"
    if vocab.is_file() and tuple(read_utf8(vocab, "the token list").split()) != ALPHABET:
        raise CheckpointError(f"{vocab}: token list differs from the ESM-2 alphabet")
    return cfg, int(_config_number(hf, "max_position_embeddings", 1026, path))


#: EsmConfig sizes an import cannot do without.
_HF_SIZES = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")


def read_utf8(path: Path, what: str) -> str:
    """The text of `path`; CheckpointError naming it when unreadable or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                              f"offset {exc.start}); cannot read {what}") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


def _config_int(hf: dict[str, Any], key: str, path: Path) -> int:
    """A required positive integer of an EsmConfig."""
    if key not in hf:
        raise CheckpointError(f"{path}: no '{key}' (an ESM-2 EsmConfig needs "
                              f"{', '.join(_HF_SIZES)})")
    value = hf[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{path}: '{key}' must be a positive integer, found {value!r}")
    return value


def _config_number(hf: dict[str, Any], key: str, default: float, path: Path) -> float:
    """An optional finite number of an EsmConfig (absent or null: `default`)."""
    value = hf.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise CheckpointError(f"{path}: '{key}' must be a number, found {value!r}")
    return float(value)


# ---- fair-esm state dicts -------------------------------------------------------------------
def _fair_model_config(sd: dict[str, torch.Tensor], path: Path, heads: int | None,
                       hparams: dict[str, Any]) -> ModelConfig:
    """Shapes give width, depth and FFN width; heads come from --heads, else the file's
    configuration, else the rotary frequencies, else the published sizes. Configuration
    values that contradict the tensors are refused."""
    vocab, d = _matrix(sd, "embed_tokens.weight", path)
    if vocab != len(ALPHABET):
        raise CheckpointError(f"{path}: vocabulary of {vocab} tokens; ESM-2 has {len(ALPHABET)}")
    numbers = [int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))]
    if not numbers:
        raise CheckpointError(f"{path}: no 'layers.N.' weights; not a fair-esm ESM-2 state dict")
    n_layers = 1 + max(numbers)
    d_ff = _matrix(sd, "layers.0.fc1.weight", path)[0]
    for key, have in (("layers", n_layers), ("embed_dim", d)):
        if key in hparams and hparams[key] != have:
            raise CheckpointError(f"{path}: configuration says {key}={hparams[key]}, the "
                                  f"tensors have {have}")
    inv_freq = sd.get("layers.0.self_attn.rot_emb.inv_freq")
    heads = heads or hparams.get("attention_heads")
    if heads is None and inv_freq is not None:
        heads = d // (2 * inv_freq.numel())
    heads = heads or ESM2_HEADS.get(d)
    if heads is None:
        raise CheckpointError(f"{path}: cannot tell the number of attention heads of width {d}; "
                              "pass --heads")
    return esm2_model_config(d_model=d, n_heads=heads, n_layers=n_layers,
                             d_ff=d_ff,
                             token_dropout=bool(hparams.get("token_dropout", True)),
                             eps=1e-5, dropout=0.0, attention_dropout=0.0)  # eps: fair-esm's


def _matrix(sd: dict[str, torch.Tensor], key: str, path: Path) -> tuple[int, int]:
    """The (rows, columns) of the 2-D weight `key` of a fair-esm state dict."""
    if key not in sd:
        raise CheckpointError(f"{path}: no '{key}'; not a fair-esm ESM-2 state dict")
    if sd[key].dim() != 2:
        raise CheckpointError(f"{path}: '{key}' has shape {tuple(sd[key].shape)}, expected a "
                              "2-D matrix")
    return tuple(sd[key].shape)


def esm2_model_config(*, d_model: int, n_heads: int, n_layers: int, d_ff: int,
                      token_dropout: bool, eps: float, dropout: float,
                      attention_dropout: float) -> ModelConfig:
    """The SciFormer options that make it an ESM-2 encoder with the given sizes."""
    return ModelConfig(d_model=d_model, n_heads=n_heads, n_encoder_layers=n_layers,
                       n_decoder_layers=0, d_ff=d_ff, dropout=dropout,
                       attention_dropout=attention_dropout, positions="rotary",
                       norm="pre", activation="gelu", vocab_size=len(ALPHABET),
                       tie_embeddings=True, lm_head="roberta", final_norm=True,
                       embed_scale=False, token_dropout=token_dropout,
                       mask_id=ProteinTokenizer.mask_id, layer_norm_eps=eps)


def _check_rotary(tensors: dict[str, torch.Tensor], cfg: ModelConfig, source: Path) -> None:
    """Saved rotary frequencies (if any) must be the base-10000 ones the model computes."""
    d_head = cfg.d_model // cfg.n_heads
    ours = 1.0 / 10000.0 ** (torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)
    for key, value in tensors.items():
        if key.endswith("inv_freq") and (value.shape != ours.shape
                                         or not torch.allclose(value.double(), ours, rtol=1e-3)):
            raise CheckpointError(f"{source}: rotary frequencies '{key}' do not match "
                                  f"{cfg.n_heads} heads of width {d_head} with base 10000")


def _check_sizes(mapped: dict[str, torch.Tensor], cfg: ModelConfig, source: Path) -> None:
    """The input embedding and the layer count must match the configuration before a model
    of that size is built (a config.json saying hidden_size=10**6 must not allocate it)."""
    embed = mapped.get("embed.weight")
    if embed is None:
        raise CheckpointError(f"{source}: no input embedding (word_embeddings / embed_tokens)")
    if tuple(embed.shape) != (len(ALPHABET), cfg.d_model):
        raise CheckpointError(f"{source}: input embedding has shape {tuple(embed.shape)}, the "
                              f"configuration implies {(len(ALPHABET), cfg.d_model)}")
    layers = {int(k.split(".")[1]) for k in mapped if k.startswith("encoder.")}
    if layers != set(range(cfg.n_encoder_layers)):
        raise CheckpointError(f"{source}: weights of layers {sorted(layers)[:8]}, the "
                              f"configuration says {cfg.n_encoder_layers} layers")


def _tie_or_untie(mapped: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Tied head unless the checkpoint's output matrix differs from the input embedding."""
    decoder = mapped.pop("decoder", None)
    if decoder is not None and not torch.equal(decoder, mapped["embed.weight"]):
        cfg.tie_embeddings = False
        mapped["token_head.proj.weight"] = decoder


def load_esm2(source: str | Path, heads: int | None = None
              ) -> tuple[ModelConfig, dict[str, torch.Tensor], int, str, dict[str, Any]]:
    """(ModelConfig, sciformer state dict, max positions, format, configuration values read
    from a fair-esm hub file) of an ESM-2 checkpoint."""
    source = Path(source)
    hparams: dict[str, Any] = {}
    if source.is_dir():
        cfg, max_pos = _hf_model_config(source)
        raw, rules, unused, fmt = _hf_weights(source), HF_RULES, HF_UNUSED, "huggingface"
    elif source.is_file():
        raw, hparams = _fair_state_dict(source)
        cfg, max_pos = _fair_model_config(raw, source, heads, hparams), 1026
        rules, unused, fmt = FAIR_RULES, FAIR_UNUSED, "fair-esm"
    else:
        raise CheckpointError(f"{source}: no such checkpoint file or directory")
    _check_rotary(raw, cfg, source)
    mapped = rename_keys(raw, rules, unused, source)
    _check_sizes(mapped, cfg, source)
    _tie_or_untie(mapped, cfg)
    return cfg, {k: v.float() for k, v in mapped.items()}, max_pos, fmt, hparams


def _build_model(cfg: ModelConfig, tensors: dict[str, torch.Tensor], source: Path):
    """A SciFormer holding exactly the checkpoint's tensors (missing/extra keys refused)."""
    from sciformer.model import SciFormer

    model = SciFormer(cfg)
    check_weights(model, tensors, str(source), "fit an ESM-2 of this size", "expected")
    model.load_state_dict(tensors)
    return model.eval()


def import_esm2(source: str | Path, out: str | Path, heads: int | None = None) -> Path:
    """Convert an ESM-2 checkpoint into the run directory `out` (which must not exist yet).

    The folder is assembled under a temporary name and renamed when complete.
    """
    source, out = Path(source), Path(out)
    if out.exists():
        raise CheckpointError(f"{out}: already exists; choose a new --out for the import")
    cfg, tensors, max_pos, fmt, hparams = load_esm2(source, heads)
    model = _build_model(cfg, tensors, source)
    crop = max(max_pos - 4, 1)  # ESM-2: 1026 positions -> crops of 1022 residues + <cls>/<eos>
    run = RunConfig(model=cfg, data=DataConfig(task="masked", crop_length=crop, val_fraction=0.0,
                                               tokens_per_batch=max(4096, crop + 2)))
    created = make_parents(out.parent)  # removed again if the import fails
    try:  # a fresh temporary name: an existing .tmp-* folder is never touched
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    except OSError as exc:
        remove_created(created)
        raise CheckpointError(f"{out}: cannot create a folder beside it ({exc.strerror})"
                              ) from None
    try:
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700; give the usual permissions
        _write_run(tmp, run, model, fmt, source, hparams)
        try:
            os.rename(tmp, out)
        except OSError as exc:
            raise CheckpointError(f"{out}: cannot create the run folder ({exc.strerror}; "
                                  "was it created meanwhile?)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_created(created)
        raise
    return out


def _write_run(folder: Path, run: RunConfig, model: torch.nn.Module, fmt: str, source: Path,
               hparams: dict[str, Any]) -> None:
    """config.json, model.safetensors and an empty split.json of an imported run."""
    from sciformer.train.checkpoint import save_weights

    state = MaskedState(residue_counts=[0] * len(ALPHABET),
                        imported_from={"format": fmt, "path": str(source.resolve()),
                                       **({"config": hparams} if hparams else {})})
    save_config(run.validate(), folder / "config.json", extra=state_to_dict(state))
    save_weights(model, folder / "model.safetensors")
    write_json_atomic(folder / "split.json", {"unit": "record", "files": [], "n_records": 0,
                                              "train": [], "heldout": [], "heldout_origin": [],
                                              "heldout_ids": []})


def relabel_untrained_baseline(metrics: dict[str, Any], state: MaskedState,
                               out_dir: Path) -> dict[str, Any]:
    """For runs with no training residue counts (imported weights), the 'unigram' baseline is
    add-one smoothing of zero counts, i.e. equal odds over the residue letters: name it
    'uniform', say why in the metrics, and rewrite summary.md to match."""
    from sciformer.evaluation.masked_baselines import plot_baselines
    from sciformer.evaluation.report import write_summary

    counts = np.asarray(state.residue_counts or [0])
    baselines = metrics.get("baselines", {})
    if counts.sum() > 0 or "unigram" not in baselines:
        return metrics
    metrics["baselines"] = {("uniform" if k == "unigram" else k): v for k, v in baselines.items()}
    metrics["note"] = ("no unigram baseline: this run has no training data to count residues "
                       "from (imported weights); 'uniform' is equal odds over residue letters")
    plot_baselines(Path(out_dir) / "masked_baselines.png",
                   {"model": metrics["model"], **metrics["baselines"]})
    plots = [p for p in ("masked_baselines.png", "masked_report.png")
             if (Path(out_dir) / p).is_file()]
    write_summary(Path(out_dir) / "summary.md", metrics,
                  title=f"Masked residues: {Path(metrics['data']).name}", plots=plots)
    return metrics
