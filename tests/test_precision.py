"""Inference precision (fp32 | bf16 | auto) and the speed paths of protein inference.

- `sciformer.precision`: native bf16 detection from CPU flags, `auto` resolution, the warning
  for bf16 that would be emulated;
- bf16 results against fp32 on a tiny model (close, not equal, returned as float32);
- `--precision` on `sciformer embed` / `predict --score` / `predict --variants`, and the
  precision recorded in the embeddings file;
- padding-limited inference batches and early-stopped encoders give the reference numbers
  (each sequence alone, the full depth).
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sciformer
import sciformer.precision as precision
from sciformer.cli import main
from sciformer.config import ModelConfig
from sciformer.errors import ConfigError
from sciformer.model import SciFormer
from sciformer.pipelines.residues import INFERENCE_PADDING, embed_sequences, inference_batches
from sciformer.tokenizers.protein import TOKENIZER, frame, token_budget_batches
from tests.test_embed import tiny_protein_run

CPU = torch.device("cpu")
SEQS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MKVLAAGIVGLLLA", "GSHMKTAYIAKQRQ" * 3]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return tiny_protein_run(tmp_path / "run", crop=24, token_dropout=True, lm_head="roberta")


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))


# ---- detection and resolution ------------------------------------------------------------
@pytest.mark.parametrize("flags, native", [({"avx2", "avx512f"}, False),
                                           ({"avx512f", "avx512_bf16"}, True),
                                           ({"amx_bf16", "amx_tile"}, True)])
def test_native_cpu_bf16_reads_the_cpu_flags(monkeypatch, flags: set, native: bool) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.native_cpu_bf16() is native
    assert precision.native_bf16(CPU) is native


def test_auto_picks_fp32_without_native_bf16_and_bf16_with_it(monkeypatch) -> None:
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert precision.resolve_precision("auto", CPU) == "fp32"
        assert precision.resolve_precision("fp32", CPU) == "fp32"
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)
    assert precision.resolve_precision("auto", CPU) == "bf16"


def test_explicit_bf16_without_native_support_warns_once_and_still_runs(run: Path,
                                                                        no_native_bf16
                                                                        ) -> None:
    with pytest.warns(UserWarning, match="no native bf16") as seen:
        lm = sciformer.load(run, "cpu", precision="bf16")
    assert len(seen) == 1 and "\n" not in str(seen[0].message)
    assert lm.precision == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm.embed(SEQS[0])  # no warning per call


def test_unknown_precision_is_a_config_error(run: Path) -> None:
    with pytest.raises(ConfigError, match="precision 'fp16'"):
        sciformer.load(run, "cpu", precision="fp16")


# ---- bf16 against fp32 -------------------------------------------------------------------
def test_bf16_results_are_close_to_fp32_and_float32(run: Path, no_native_bf16) -> None:
    fp32 = sciformer.load(run, "cpu")
    with pytest.warns(UserWarning):
        bf16 = sciformer.load(run, "cpu", precision="bf16")
    e32, e16 = fp32.embed(SEQS, layers=[1, -1]), bf16.embed(SEQS, layers=[1, -1])
    assert (e32["precision"], e16["precision"]) == ("fp32", "bf16")
    assert e16["pooled"].dtype == np.float32
    diff = np.abs(e16["pooled"] - e32["pooled"]).max()
    assert 0 < diff < 0.05 * np.abs(e32["pooled"]).max()  # bf16 ran, and kept ~2-3 digits
    p32, p16 = fp32.log_probs(SEQS), bf16.log_probs(SEQS)
    for a, b in zip(p32, p16):
        assert b.dtype == np.float32 and np.allclose(np.exp(b).sum(1), 1, atol=1e-4)
        assert 0 < np.abs(a - b).max() < 0.05
    ppl32, ppl16 = fp32.pseudo_perplexity(SEQS), bf16.pseudo_perplexity(SEQS)
    np.testing.assert_allclose(ppl16, ppl32, rtol=0.02)


# ---- the CLI -----------------------------------------------------------------------------
def _fasta(path: Path, seqs: list[str]) -> Path:
    path.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(seqs)))
    return path


def test_cli_precision_end_to_end(tmp_path: Path, run: Path, no_native_bf16) -> None:
    fasta = _fasta(tmp_path / "p.fa", SEQS)
    outs = {}
    for prec in ("fp32", "bf16"):
        out = tmp_path / f"{prec}.h5"
        res = CliRunner().invoke(main, ["embed", str(run), str(fasta), "--out", str(out),
                                        "--precision", prec])
        assert res.exit_code == 0, res.output
        assert ("no native bf16" in res.output) == (prec == "bf16")
        with h5py.File(out, "r") as f:
            assert f.attrs["precision"] == prec
            outs[prec] = f["pooled/2"][()]
    assert 0 < np.abs(outs["bf16"] - outs["fp32"]).max() < 0.05 * np.abs(outs["fp32"]).max()
    # auto on a CPU without native bf16 is fp32: the fp32 file is complete, so nothing to do
    res = CliRunner().invoke(main, ["embed", str(run), str(fasta), "--out",
                                    str(tmp_path / "fp32.h5"), "--precision", "auto"])
    assert res.exit_code == 0 and "0 records embedded, 3 already done" in res.output
    # a file made in bf16 is not resumed or reused in fp32
    res = CliRunner().invoke(main, ["embed", str(run), str(fasta), "--out",
                                    str(tmp_path / "bf16.h5")])
    assert res.exit_code == 1 and "precision='bf16', not 'fp32'" in res.output

    scores = {}
    for prec in ("fp32", "bf16"):
        out = tmp_path / f"{prec}.tsv"
        res = CliRunner().invoke(main, ["predict", str(run), str(fasta), "--out", str(out),
                                        "--score", "--precision", prec])
        assert res.exit_code == 0, res.output
        rows = [ln.split("\t") for ln in out.read_text().splitlines()[1:]]
        scores[prec] = np.array([float(r[2]) for r in rows])
    np.testing.assert_allclose(scores["bf16"], scores["fp32"], rtol=0.02)

    variants = tmp_path / "v.csv"
    variants.write_text("mutant\nA4G\nK8R:I12V\n")
    wild = _fasta(tmp_path / "wt.fa", SEQS[:1])
    marginals = {}
    for prec in ("fp32", "bf16"):
        out = tmp_path / f"{prec}.csv"
        res = CliRunner().invoke(main, ["predict", str(run), str(wild), "--variants",
                                        str(variants), "--out", str(out), "--precision", prec])
        assert res.exit_code == 0, res.output
        with open(out) as fh:
            marginals[prec] = np.array([float(r["masked_marginal"]) for r in csv.DictReader(fh)])
    np.testing.assert_allclose(marginals["bf16"], marginals["fp32"], atol=0.05)


# ---- speed paths give the reference numbers --------------------------------------------
def test_padding_limited_batches_known_answer_and_bound() -> None:
    lengths = [143, 223, 242, 249, 265, 376, 399, 1020]
    assert token_budget_batches(lengths, 4096, shuffle=False) == [[0, 1, 2, 3, 4, 5, 6], [7]]
    assert inference_batches(lengths, 4096) == [[0], [1, 2, 3, 4], [5, 6], [7]]
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, 500).tolist()
    batches = inference_batches(lengths, 2048)
    assert sorted(i for b in batches for i in b) == list(range(500))  # nothing dropped
    for b in batches:
        real, padded = sum(lengths[i] for i in b), len(b) * max(lengths[i] for i in b)
        assert padded <= 2048 or len(b) == 1
        assert padded <= (1 + INFERENCE_PADDING) * real


def test_batched_embeddings_equal_each_sequence_alone_at_every_depth() -> None:
    """The reference: every sequence through the full encoder on its own (no padding);
    embeddings of an early layer stop the encoder there and must not change."""
    torch.manual_seed(0)
    model = SciFormer(ModelConfig(d_model=16, n_heads=2, n_encoder_layers=3, n_decoder_layers=0,
                                  d_ff=32, dropout=0.0, positions="rotary", token_dropout=True,
                                  lm_head="roberta")).eval()
    rng = np.random.default_rng(1)
    seqs = [TOKENIZER.encode("".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)),
                             add_special=False) for n in (5, 30, 7, 29, 12, 31)]
    for layers in ([3, 0], [1], [2, 1]):
        got = {i: (res, cls) for i, res, cls in embed_sequences(model, seqs, layers, 64, 96,
                                                                 CPU)}
        for i, seq in enumerate(seqs):
            with torch.no_grad():
                outs = model.encode(torch.as_tensor(frame(seq))[None], None, return_layers=True)
            want = torch.stack([outs[k][0] for k in layers]).numpy()  # (n, L + 2, D)
            np.testing.assert_allclose(got[i][0], want[:, 1:-1], atol=1e-5, rtol=0)
            np.testing.assert_allclose(got[i][1], want[:, 0], atol=1e-5, rtol=0)


def test_encode_depth_refuses_select() -> None:
    model = SciFormer(ModelConfig(d_model=16, n_heads=2, n_encoder_layers=2, n_decoder_layers=0,
                                  d_ff=32)).eval()
    tokens = torch.randint(4, 24, (1, 6))
    with pytest.raises(ValueError, match="full depth"):
        model.encode(tokens, select=torch.ones_like(tokens, dtype=torch.bool), depth=1)


def test_forecasting_runs_compute_in_fp32(tmp_path: Path) -> None:
    from tests.test_forecast import l63_run

    r = l63_run(tmp_path, (6, 200), (5, 200))
    assert isinstance(sciformer.load(r["run"], "cpu", precision="auto"), sciformer.Forecaster)
    with pytest.raises(ConfigError, match="protein runs only"):
        sciformer.load(r["run"], "cpu", precision="bf16")
    res = CliRunner().invoke(main, ["predict", str(r["run"]), str(r["test"]), "--out",
                                    str(tmp_path / "f.h5"), "--precision", "bf16"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "fp32" in res.output
