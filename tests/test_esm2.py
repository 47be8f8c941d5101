"""ESM-2 import: a random small HF EsmForMaskedLM and its fair-esm state dict give the same
logits as the converted sciformer run (float32, within 1e-5), and the run works everywhere."""

from __future__ import annotations

import json
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
