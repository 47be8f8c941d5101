"""ESM-2 import: a random small HF EsmForMaskedLM and its fair-esm state dict give the same
logits as the converted sciformer run (float32, within 1e-5), and the run works everywhere."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sciformer.cli import main
from sciformer.errors import CheckpointError
from sciformer.esm2 import import_esm2
from sciformer.runs import load_model as load_run

transformers = pytest.importorskip("transformers")

TOL = 1e-5


def _hf_model() -> torch.nn.Module:
    """The brief's small ESM-2 re-initialised (std 1/sqrt(fan-in) matrices, embeddings of
    std 0.15, random LayerNorms and biases) so logits are O(1) and every part matters."""
    cfg = transformers.EsmConfig(
        vocab_size=33, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, position_embedding_type="rotary", token_dropout=True,
        pad_token_id=1, mask_token_id=32, max_position_embeddings=1026,
        emb_layer_norm_before=False)
    torch.manual_seed(0)
    model = transformers.EsmForMaskedLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(0.2 * torch.randn_like(p))
            elif p.dim() == 2:
                p.normal_(0.0, 0.15 if "embeddings" in name else p.shape[1] ** -0.5)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("hf") / "esm2_tiny"
    model = _hf_model()
    model.save_pretrained(folder)
    return folder, model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """<cls> residues <eos> with right padding and some <mask> tokens; (ids, pad mask)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 24, (4, 40), generator=g)
    ids[:, 0] = 0
    for row, (length, masks) in enumerate([(40, [3]), (25, [5, 6, 20]), (12, []), (30, [1])]):
        ids[row, length - 1] = 2
        ids[row, length:] = 1
        ids[row, masks] = 32
    return ids, ids == 1


def _hf_logits(model, ids, pad) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=(~pad).long()).logits


def _our_logits(run: Path, ids, pad) -> torch.Tensor:
    model, _, _ = load_run(run)
    with torch.no_grad():
        return model.token_logits(model.encode(ids, pad))


def test_hf_directory_converts_to_identical_logits(tmp_path: Path, hf_dir) -> None:
    folder, hf = hf_dir
    res = CliRunner().invoke(main, ["import-esm2", str(folder), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    ids, pad = _batch()
    ref, got = _hf_logits(hf, ids, pad), _our_logits(tmp_path / "run", ids, pad)
    diff = (ref - got).abs().max().item()
    print(f"ESM-2 HF conversion: max |logit difference| = {diff:.3g}")
    assert diff <= TOL, diff
    assert ref.abs().max() > 1.0  # logits are not trivially tiny
    # the check is sharp: without token dropout the logits change visibly
    cfg = json.loads((tmp_path / "run/config.json").read_text())
    cfg["model"]["token_dropout"] = False
    (tmp_path / "run/config.json").write_text(json.dumps(cfg))
    assert (_our_logits(tmp_path / "run", ids, pad) - ref).abs().max() > 1e-3


def _fair_esm_state_dict(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The HF weights under fair-esm's `ESM2` names (what `ESM2().state_dict()` holds)."""
    sd, out = hf.state_dict(), {}
    names = {"attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
             "attention.self.value": "self_attn.v_proj",
             "attention.output.dense": "self_attn.out_proj",
             "attention.LayerNorm": "self_attn_layer_norm", "intermediate.dense": "fc1",
             "output.dense": "fc2", "LayerNorm": "final_layer_norm"}
    n_layers = hf.config.num_hidden_layers
    for i in range(n_layers):
        for theirs, ours in names.items():
            for p in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{p}"] = sd[f"esm.encoder.layer.{i}.{theirs}.{p}"]
        out[f"layers.{i}.self_attn.rot_emb.inv_freq"] = sd["esm.rotary_embeddings.inv_freq"]
    out["embed_tokens.weight"] = sd["esm.embeddings.word_embeddings.weight"]
    for p in ("weight", "bias"):
        out[f"emb_layer_norm_after.{p}"] = sd[f"esm.encoder.emb_layer_norm_after.{p}"]
        out[f"lm_head.dense.{p}"] = sd[f"lm_head.dense.{p}"]
        out[f"lm_head.layer_norm.{p}"] = sd[f"lm_head.layer_norm.{p}"]
        out[f"contact_head.regression.{p}"] = sd[f"esm.contact_head.regression.{p}"]
    out["lm_head.weight"] = out["embed_tokens.weight"]
    out["lm_head.bias"] = sd["lm_head.bias"]
    return {k: v.clone() for k, v in out.items()}


def test_fair_esm_state_dict_converts_to_identical_logits(tmp_path: Path, hf_dir) -> None:
    _, hf = hf_dir
    # fair-esm uses torch's LayerNorm eps (1e-5); give the HF reference the same
    hf_same = _hf_model()
    for m in hf_same.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-5
    pt = tmp_path / "esm2_tiny.pt"
    torch.save({"model": {f"encoder.{k}": v for k, v in _fair_esm_state_dict(hf_same).items()}}, pt)
    res = CliRunner().invoke(main, ["import-esm2", str(pt), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    ids, pad = _batch()
    diff = (_hf_logits(hf_same, ids, pad) - _our_logits(tmp_path / "run", ids, pad)).abs().max()
    print(f"ESM-2 fair-esm conversion: max |logit difference| = {diff.item():.3g}")
    assert diff.item() <= TOL


def test_converted_run_works_with_every_command(tmp_path: Path, hf_dir) -> None:
    run = import_esm2(hf_dir[0], tmp_path / "run")
    fasta = tmp_path / "p.fa"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nGLIEVQAPILSRVGDGTQDNLSGAEK\n")
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", str(run), str(fasta), "--out-dir", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert "uniform" in metrics["baselines"] and "unigram" not in metrics["baselines"]
    assert "no training data" in metrics["note"]
    assert "uniform" in (tmp_path / "ev/summary.md").read_text()
    res = runner.invoke(main, ["embed", str(run), str(fasta), "--out", str(tmp_path / "e.h5")])
    assert res.exit_code == 0, res.output
    masked = tmp_path / "m.fa"
    masked.write_text(">q\nMKT<mask>YIAK\n")
    res = runner.invoke(main, ["predict", str(run), str(masked), "--out", str(tmp_path / "p.tsv")])
    assert res.exit_code == 0, res.output
    split = json.loads((run / "split.json").read_text())
    assert split["heldout"] == [] and split["files"] == []


def test_bad_sources_are_named(tmp_path: Path, hf_dir) -> None:
    bad = tmp_path / "junk.pt"
    torch.save({"model": {"embed_tokens.weight": torch.zeros(33, 8),
                          "layers.0.fc1.weight": torch.zeros(16, 8),
                          "layers.0.mystery.weight": torch.zeros(2)}}, bad)
    with pytest.raises(CheckpointError, match="junk.pt.*mystery"):
        import_esm2(bad, tmp_path / "r1", heads=2)
    cfg_path = tmp_path / "absolute"
    cfg_path.mkdir()
    (cfg_path / "config.json").write_text(json.dumps({"position_embedding_type": "absolute"}))
    with pytest.raises(CheckpointError, match="absolute.*position_embedding_type"):
        import_esm2(cfg_path, tmp_path / "r2")
    res = CliRunner().invoke(main, ["import-esm2", str(hf_dir[0]), "--out", str(tmp_path)])
    assert res.exit_code == 1 and "already exists" in res.output


@pytest.mark.parametrize("field, value, words", [
    ("layer_norm_eps", 0.0, "model.layer_norm_eps"),
    ("mask_id", 40, "model.mask_id"),
])
def test_new_model_fields_are_validated(field: str, value, words: str) -> None:
    from sciformer.config import ModelConfig
    from sciformer.errors import ConfigError

    cfg = ModelConfig(token_dropout=True, **{field: value})
    with pytest.raises(ConfigError, match=words):
        cfg.validate()


# ---- fair-esm hub files: pickled configuration objects, read without running code --------
def _hub_file(path: Path, hf: torch.nn.Module, **entries) -> Path:
    """A file shaped like fair-esm's esm2_t6_8M_UR50D.pt: {"model": state dict with the
    `encoder.sentence_encoder.` prefix, "cfg": {"model": Namespace}, "args": ...}; the rotary
    frequencies are left out so the heads can only come from the configuration."""
    sd = {f"encoder.sentence_encoder.{k}": v for k, v in _fair_esm_state_dict(hf).items()
          if not k.endswith("inv_freq")}
    torch.save({"model": sd, **entries}, path)
    return path


def _namespace(**kw) -> argparse.Namespace:
    base = dict(_name="ESM2", encoder_layers=2, encoder_embed_dim=64, encoder_attention_heads=4,
                token_dropout=True, dropout=0.0)
    return argparse.Namespace(**{**base, **kw})


def test_hub_file_with_pickled_namespace_imports_with_its_config(tmp_path: Path) -> None:
    hf = _hf_model()
    for m in hf.modules():  # fair-esm's LayerNorm eps, as in the state-dict test
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-5
    pt = _hub_file(tmp_path / "esm2_tiny.pt", hf, cfg={"model": _namespace()},
                   args=argparse.Namespace(arch="esm2", layers=2, embed_dim=64))
    with pytest.raises(Exception, match="Unsupported global|weights_only"):
        torch.load(pt, weights_only=True)  # what the plain reader refused before
    run = import_esm2(pt, tmp_path / "run")
    extra = json.loads((run / "config.json").read_text())
    got = {k: extra["model"][k] for k in ("n_encoder_layers", "d_model", "n_heads")}
    assert got == {"n_encoder_layers": 2, "d_model": 64, "n_heads": 4}
    assert extra["imported_from"]["config"] == {"layers": 2, "embed_dim": 64,
                                                "attention_heads": 4, "token_dropout": True}
    ids, pad = _batch()
    diff = (_hf_logits(hf, ids, pad) - _our_logits(run, ids, pad)).abs().max().item()
    assert diff <= TOL
    # heads read from the configuration, not guessed: a different value gives a different model
    pt8 = _hub_file(tmp_path / "h8.pt", hf, cfg={"model": _namespace(encoder_attention_heads=8)})
    assert json.loads((import_esm2(pt8, tmp_path / "r8") / "config.json").read_text()
                      )["model"]["n_heads"] == 8
    bad = _hub_file(tmp_path / "bad.pt", hf, cfg={"model": _namespace(encoder_layers=3)})
    with pytest.raises(CheckpointError, match="bad.pt.*layers=3.*tensors have 2"):
        import_esm2(bad, tmp_path / "r3")


def test_safe_load_reads_omegaconf_like_state_as_plain_data(tmp_path: Path) -> None:
    from sciformer.esm2_checkpoints import checkpoint_hparams, safe_load

    # classes pickled under omegaconf's names, with the state layout of DictConfig / AnyNode
    mod = types.ModuleType("omegaconf.dictconfig")
    node_mod = types.ModuleType("omegaconf.nodes")

    class DictConfig:
        pass

    class AnyNode:
        pass

    DictConfig.__module__, DictConfig.__qualname__ = mod.__name__, "DictConfig"
    AnyNode.__module__, AnyNode.__qualname__ = node_mod.__name__, "AnyNode"
    mod.DictConfig, node_mod.AnyNode = DictConfig, AnyNode
    fake = {"omegaconf": types.ModuleType("omegaconf"), mod.__name__: mod,
            node_mod.__name__: node_mod}
    saved = {k: sys.modules.get(k) for k in fake}
    sys.modules.update(fake)
    try:
        def node(v):
            n = AnyNode()
            n.__dict__.update(_val=v, _parent=None, _metadata=None)
            return n
        model_cfg = DictConfig()
        model_cfg.__dict__.update(_content={"encoder_layers": node(6), "encoder_embed_dim": node(320),
                                            "encoder_attention_heads": node(20)},
                                  _metadata=None, _parent=None)
        path = tmp_path / "omega.pt"
        torch.save({"model": {"w": torch.arange(4.0)}, "cfg": {"model": model_cfg}}, path)
    finally:
        for k, v in saved.items():
            if v is None:
                del sys.modules[k]
            else:
                sys.modules[k] = v
    raw = safe_load(path)
    assert torch.equal(raw["model"]["w"], torch.arange(4.0))
    assert checkpoint_hparams(raw) == {"layers": 6, "embed_dim": 320, "attention_heads": 20}


class _Evil:
    """Unpickling this would run a shell command that creates a marker file."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilClass:
    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize("payload, name", [("system", "posix.system"),
                                           ("class", "_EvilClass")])
def test_hub_file_with_a_malicious_global_is_refused(tmp_path: Path, payload: str, name: str
                                                     ) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    args = evil if payload == "system" else _EvilClass()
    pt = _hub_file(tmp_path / "evil.pt", _hf_model(), cfg={"model": _namespace()}, args=args)
    res = CliRunner().invoke(main, ["import-esm2", str(pt), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1
    assert re.search(rf"refused to unpickle global '[\w.]*{name}'", res.output), res.output
    assert "evil.pt" in res.output and len(res.output.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "run").exists()


# ---- bad ESM-2 files: one line naming the file and key, nothing left behind ---------------
def _copy_hf(hf_dir, tmp_path: Path) -> Path:
    import shutil

    folder = tmp_path / "esm2_copy"
    shutil.copytree(hf_dir[0], folder)
    return folder


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            del cfg[key]
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


_DROP = object()
_HF_BREAKAGES = {  # name -> (how to break the copy, what the one line must say)
    "corrupt safetensors": (lambda f: (f / "model.safetensors").write_bytes(b"\x07junk" * 9),
                            r"model\.safetensors: not a readable safetensors file"),
    "config not utf-8": (lambda f: (f / "config.json").write_bytes(b'{"a": "\xff\xfe"}'),
                         r"config\.json: not UTF-8 text \(byte 0xff at offset 7\)"),
    "config not json": (lambda f: (f / "config.json").write_text("{hidden_size: 64"),
                        r"config\.json: not valid JSON"),
    "config a list": (lambda f: (f / "config.json").write_text("[64, 2]"),
                      r"config\.json: expected a JSON object \(an EsmConfig\), found list"),
    **{f"no {key}": (lambda f, key=key: _edit_config(f, **{key: _DROP}),
                     rf"config\.json: no '{key}' \(an ESM-2 EsmConfig needs")
       for key in ("hidden_size", "num_attention_heads", "num_hidden_layers",
                   "intermediate_size")},
    "hidden_size a string": (lambda f: _edit_config(f, hidden_size="64"),
                             r"config\.json: 'hidden_size' must be a positive integer, found '64'"),
    "rope_theta a string": (lambda f: _edit_config(f, rope_theta="ten thousand"),
                            r"config\.json: 'rope_theta' must be a number, found 'ten thousand'"),
    "layer_norm_eps a list": (lambda f: _edit_config(f, layer_norm_eps=[1e-5]),
                              r"config\.json: 'layer_norm_eps' must be a number, found \[1e-05\]"),
    "layers not the tensors'": (lambda f: _edit_config(f, num_hidden_layers=5000),
                                r"esm2_copy: weights of layers \[0, 1\], the configuration "
                                r"says 5000 layers"),
    "vocab not utf-8": (lambda f: (f / "vocab.txt").write_bytes(b"<cls>\n<pad>\n\xc3\x28\n"),
                        r"vocab\.txt: not UTF-8 text \(byte 0xc3 at offset 12\)"),
}


def _assert_one_line_and_nothing_left(res, pattern: str, tmp_path: Path, before: set) -> None:
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in res.output
    assert set(tmp_path.rglob("*")) == before  # no run, no .tmp-*, no parent folders


@pytest.mark.parametrize("name", list(_HF_BREAKAGES))
def test_bad_hf_directory_is_one_line_naming_file_and_key(tmp_path: Path, hf_dir, name: str
                                                          ) -> None:
    folder = _copy_hf(hf_dir, tmp_path)
    (folder / "vocab.txt").write_text("\n".join(__import__("sciformer.tokenizers.protein",
                                                           fromlist=["ALPHABET"]).ALPHABET))
    breakage, pattern = _HF_BREAKAGES[name]
    breakage(folder)
    before = set(tmp_path.rglob("*"))
    res = CliRunner().invoke(main, ["import-esm2", str(folder),
                                    "--out", str(tmp_path / "new" / "deeper" / "run")])
    _assert_one_line_and_nothing_left(res, pattern, tmp_path, before)


@pytest.mark.parametrize("state, pattern", [
    ({"embed_tokens.weight": torch.zeros(33, 8)},
     r"bad\.pt: no 'layers\.N\.' weights; not a fair-esm ESM-2 state dict"),
    ({"embed_tokens.weight": torch.zeros(33, 8), "layers.0.fc2.weight": torch.zeros(8, 16)},
     r"bad\.pt: no 'layers\.0\.fc1\.weight'; not a fair-esm ESM-2 state dict"),
    ({"embed_tokens.weight": torch.zeros(33), "layers.0.fc1.weight": torch.zeros(16, 8)},
     r"bad\.pt: 'embed_tokens\.weight' has shape \(33,\), expected a 2-D matrix"),
    ({"embed_tokens.weight": torch.zeros(33, 8), "layers.0.fc1.weight": torch.zeros(16)},
     r"bad\.pt: 'layers\.0\.fc1\.weight' has shape \(16,\), expected a 2-D matrix"),
])
def test_bad_fair_esm_state_dict_is_one_line_naming_the_key(tmp_path: Path, state: dict,
                                                             pattern: str) -> None:
    torch.save({"model": state}, tmp_path / "bad.pt")
    before = set(tmp_path.rglob("*"))
    res = CliRunner().invoke(main, ["import-esm2", str(tmp_path / "bad.pt"), "--heads", "2",
                                    "--out", str(tmp_path / "new" / "run")])
    _assert_one_line_and_nothing_left(res, pattern, tmp_path, before)


def test_import_leaves_nothing_on_failure_and_never_touches_a_foreign_tmp(
        tmp_path: Path, hf_dir, monkeypatch) -> None:
    import sciformer.train.checkpoint as checkpoint
    from sciformer.io.atomic import WriteError

    foreign = tmp_path / "out" / ".tmp-run"  # someone else's folder of the temporary name
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine")

    def fail(*_a, **_k):
        raise WriteError("disk full (simulated)")

    monkeypatch.setattr(checkpoint, "save_weights", fail)
    before = set(tmp_path.rglob("*"))
    for out in (tmp_path / "out" / "run", tmp_path / "fresh" / "sub" / "run"):
        with pytest.raises(WriteError, match="simulated"):
            import_esm2(hf_dir[0], out)
        assert set(tmp_path.rglob("*")) == before  # half-written run and new parents removed
    monkeypatch.undo()
    run = import_esm2(hf_dir[0], tmp_path / "out" / "run")
    assert (run / "model.safetensors").is_file() and oct(run.stat().st_mode & 0o77) != "0o0"
    assert (foreign / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".tmp-run", "run"]
