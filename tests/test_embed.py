"""`sciformer embed`: HDF5 layout, safe keys, resume, windows blended over long sequences."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sciformer.embed as embed_mod
from sciformer.cli import main
from sciformer.config import DataConfig, ModelConfig, RunConfig, save_config
from sciformer.embed import embed, read_pooled, safe_key
from sciformer.errors import ConfigError, InputError
from sciformer.model import SciFormer
from sciformer.pipelines.residues import blend_weights, embed_sequences
from sciformer.train.checkpoint import save_weights

CPU = torch.device("cpu")


def tiny_protein_run(path: Path, crop: int = 16, **model: object) -> Path:
    """A random-weight masked-residue run directory (no training needed to test plumbing)."""
    torch.manual_seed(0)
    mcfg = ModelConfig(**{**dict(d_model=16, n_heads=2, n_encoder_layers=2, n_decoder_layers=0,
                                 d_ff=32, dropout=0.0, positions="rotary"), **model})
    cfg = RunConfig(model=mcfg, data=DataConfig(task="masked", crop_length=crop,
                                                tokens_per_batch=64))
    path.mkdir(parents=True)
    save_config(cfg.validate(), path / "config.json",
                extra={"task": "masked", "train_files": [], "residue_counts": [1] * 33})
    save_weights(SciFormer(mcfg), path / "model.safetensors")
    return path


IDS = ["sp|P1|A", "odd/id.1", ".", "..", "a%2Fb", "plain"]


@pytest.fixture
def proteins(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i, rid in enumerate(IDS):
        length = [5, 40, 17, 3, 60, 12][i]
        lines += [f">{rid} desc", "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), length))]
    path = tmp_path / "p.fa"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_embed_cli_layout_and_rerun(tmp_path: Path, proteins: Path) -> None:
    run = tiny_protein_run(tmp_path / "run")
    out = tmp_path / "e.h5"
    args = ["embed", str(run), str(proteins), "--out", str(out), "--layers", "-1,0",
            "--per-residue"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "6 records embedded" in res.output
    with h5py.File(out, "r") as f:
        assert [x.decode() for x in f["ids"][()]] == IDS
        assert sorted(f["pooled"]) == ["0", "2"] and f["pooled/2"].shape == (6, 16)
        assert bool(f.attrs["complete"]) and f["done"][()].all()
        assert len(f["per_residue"]) == 6
        for i, rid in enumerate(IDS):
            g = f["per_residue"][safe_key(rid)]
            assert g.attrs["id"] == rid and g.attrs["index"] == i
            assert g["2"].shape == (f["lengths"][i], 16)
            np.testing.assert_allclose(g["2"][()].mean(axis=0), f["pooled/2"][i], rtol=1e-5)
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 records embedded, 6 already done" in again.output
    ids, pooled = read_pooled(out)
    assert ids == IDS and np.isfinite(pooled).all()


def test_safe_keys_are_valid_and_distinct() -> None:
    keys = [safe_key(i) for i in IDS + ["%2Fb", "a/b", ".x"]]
    assert len(set(keys)) == len(keys)
    assert all("/" not in k and k not in (".", "..") for k in keys)
    assert [urllib.parse.unquote(k) for k in keys] == IDS + ["%2Fb", "a/b", ".x"]


def test_interrupted_embed_resumes_and_matches(tmp_path: Path, proteins: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run = tiny_protein_run(tmp_path / "run")
    fresh = embed(run, proteins, tmp_path / "fresh.h5", layers="-1", per_residue=True,
                  tokens_per_batch=32)
    real_write, calls = embed_mod._write_record, []

    def crash_on_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_write(*args, **kwargs)

    out = tmp_path / "e.h5"
    monkeypatch.setattr(embed_mod, "_write_record", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        embed(run, proteins, out, layers="-1", per_residue=True, tokens_per_batch=32)
    assert not out.exists() and out.with_name("e.h5.partial").exists()
    monkeypatch.setattr(embed_mod, "_write_record", real_write)
    res = embed(run, proteins, out, layers="-1", per_residue=True, tokens_per_batch=32)
    assert res.n_skipped >= 1 and res.n_written == 6 - res.n_skipped
    with h5py.File(out, "r") as a, h5py.File(fresh.path, "r") as b:
        np.testing.assert_allclose(a["pooled/2"][()], b["pooled/2"][()], rtol=1e-5, atol=1e-6)
        assert sorted(a["per_residue"]) == sorted(b["per_residue"])


def test_existing_output_from_other_settings_is_refused(tmp_path: Path, proteins: Path) -> None:
    run = tiny_protein_run(tmp_path / "run")
    out = tmp_path / "e.h5"
    embed(run, proteins, out, layers="-1")
    with pytest.raises(InputError, match=r"e\.h5.*layers"):
        embed(run, proteins, out, layers="0")
    other = tmp_path / "other.fa"
    other.write_text(">x\nACDE\n")
    with pytest.raises(InputError, match=r"e\.h5"):
        embed(run, other, out, layers="-1")


@pytest.mark.parametrize("layers, words", [("7", "layer 7 does not exist"),
                                           ("-4", "layer -4"), ("a,b", "--layers 'a,b'")])
def test_bad_layers_are_named(tmp_path: Path, proteins: Path, layers: str, words: str) -> None:
    run = tiny_protein_run(tmp_path / "run")
    with pytest.raises(ConfigError, match=words):
        embed(run, proteins, tmp_path / "e.h5", layers=layers)
    res = CliRunner().invoke(main, ["embed", str(run), str(proteins), "--out",
                                    str(tmp_path / "e.h5"), "--layers", layers])
    assert res.exit_code == 1 and "--layers" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("length", [1, 16, 17, 40, 63, 64, 65, 200, 1001])
def test_blend_weights_cover_every_residue(length: int) -> None:
    window, overlap = 64, 16
    total = np.zeros(length)
    for s, e, w in blend_weights(length, window, overlap):
        assert 0 <= s < e <= length and e - s == min(window, length) and (w > 0).all()
        total[s:e] += w
    assert (total > 0).all()
    # consecutive windows' ramps sum to one wherever exactly two overlap
    spans = blend_weights(length, window, overlap)
    if len(spans) == 2:
        np.testing.assert_allclose(total, 1.0)


def test_blended_windows_approximate_full_context_better_than_hard_cuts() -> None:
    """With short-range attention (local, ±4 per layer) the full-context embedding is the
    truth; blended overlapping windows must stay much closer to it than hard cuts."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=0, d_ff=64,
                      dropout=0.0, positions="rotary", attention="local", window=4)
    model = SciFormer(cfg).eval()
    seq = np.random.default_rng(0).integers(4, 24, 300)
    (_, full, _), = embed_sequences(model, [seq], [2], 1000, 4096, CPU)
    (_, blend, _), = embed_sequences(model, [seq], [2], 64, 4096, CPU)
    hard = np.concatenate([next(embed_sequences(model, [seq[s:s + 64]], [2], 1000, 4096, CPU))[1]
                           for s in range(0, 300, 64)], axis=1)
    assert blend.shape == full.shape == hard.shape == (1, 300, 32)
    scale = np.linalg.norm(full[0], axis=1).mean()
    err_blend = np.linalg.norm(blend[0] - full[0], axis=1) / scale
    err_hard = np.linalg.norm(hard[0] - full[0], axis=1) / scale
    assert err_blend.mean() < 0.3 * err_hard.mean()
    assert err_blend.max() < 0.3 * err_hard.max()


def test_existing_non_embeddings_output_is_refused(tmp_path: Path, proteins: Path) -> None:
    run = tiny_protein_run(tmp_path / "run")
    out = tmp_path / "notes.h5"
    out.write_text("not hdf5")
    res = CliRunner().invoke(main, ["embed", str(run), str(proteins), "--out", str(out)])
    assert res.exit_code == 1 and "notes.h5: exists and is not" in res.output
    assert out.read_text() == "not hdf5"  # left alone


def test_batches_without_padding_skip_the_mask_and_give_the_same_numbers() -> None:
    """`padding` drops an all-False mask (the masked copies of one window have one length);
    the unmasked attention must give what the explicit mask gives, for embeddings and for
    pseudo-log-likelihoods, with token dropout (which reads the lengths) on."""
    from sciformer.pipelines.residues import each_masked_alone, padding
    from sciformer.tokenizers.protein import TOKENIZER

    torch.manual_seed(0)
    model = SciFormer(ModelConfig(d_model=16, n_heads=2, n_encoder_layers=2, n_decoder_layers=0,
                                  d_ff=32, dropout=0.0, positions="rotary", token_dropout=True,
                                  embed_scale=False, lm_head="roberta")).eval()
    tokens = torch.randint(4, 24, (3, 12))
    assert padding(tokens) is None
    padded = tokens.clone()
    padded[1, 9:] = TOKENIZER.pad_id
    assert padding(padded).tolist() == (padded == TOKENIZER.pad_id).tolist()
    with torch.no_grad():
        plain = model.encode(tokens, None)
        masked = model.encode(tokens, torch.zeros_like(tokens, dtype=torch.bool))
    assert torch.allclose(plain, masked, atol=1e-6, rtol=0)
    seq = tokens[0].numpy().astype(np.uint8)
    got = each_masked_alone(model, seq, np.arange(12), 16, 64, CPU)
    with torch.no_grad():  # the same copies one at a time, with an explicit all-False mask
        for pos in range(12):
            framed = torch.cat([torch.tensor([0]), tokens[0], torch.tensor([2])])[None]
            framed[0, pos + 1] = TOKENIZER.mask_id
            h = model.encode(framed, torch.zeros_like(framed, dtype=torch.bool))[0, pos + 1]
            want = torch.log_softmax(model.token_logits(h), -1).numpy()
            np.testing.assert_allclose(got[pos], want, atol=1e-5, rtol=0)
