"""The composition prior of masked-residue models (`model.composition_prior`): the term equals
the `composition` baseline's estimate on the same visible residues, masked positions are left
out, every inference path (evaluate, pseudo-perplexity, fill-masks) computes it the same way,
runs without it load unchanged, and the CLI trains and uses it end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import sciformer
from sciformer.cli import main
from sciformer.config import ModelConfig
from sciformer.evaluation.masked_baselines import CompositionBaseline, prior
from sciformer.model import SciFormer
from sciformer.model.composition import OTHER_P
from sciformer.tokenizers.protein import RESIDUE_IDS, TOKENIZER, frame
from sciformer.train.checkpoint import save_weights
from tests.conftest import TINY_MASKED, composition_only, write_fasta

TOK = TOKENIZER
COUNTS = np.zeros(33)
COUNTS[[TOK.alphabet.index(a) for a in "ACDEK"]] = [50, 10, 30, 5, 20]
PI = prior(COUNTS)  # add-one training frequencies over the residue ids 3..30


def _ids(text: str) -> np.ndarray:
    return TOK.encode(text, add_special=False).astype(np.int64)


def _composition_only(alpha: float, **model: object) -> SciFormer:
    """A model whose transformer adds nothing: all-zero embeddings and head bias make every
    logit 0, so its prediction is the composition term alone (gate 1, the given alpha)."""
    cfg = ModelConfig(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=0, d_ff=32,
                      dropout=0.0, composition_prior=True, **model)
    return composition_only(SciFormer(cfg), alpha, PI)


def _log_probs(net: SciFormer, tokens: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    h = net.encode(tokens, select=select)
    return torch.log_softmax(net.token_logits(h, tokens, select).double(), dim=-1)


def test_term_equals_the_composition_baseline_by_hand() -> None:
    seq, masked = _ids("AACDAKEA"), np.array([1, 5])
    net = _composition_only(alpha=7.0)
    inputs = seq.copy()
    inputs[masked] = TOK.mask_id
    tokens = torch.as_tensor(frame(inputs))[None]
    select = torch.zeros_like(tokens, dtype=torch.bool)
    select[0, masked + 1] = True
    got = _log_probs(net, tokens, select).exp().detach().numpy()  # (2, V)
    want = CompositionBaseline(PI, alpha=7.0).distributions([seq], [masked])[0]
    # visible: A, C, D, A, E, A (n = 6): p(A) = (3 + 7 pi_A) / 13, by hand
    a = TOK.alphabet.index("A")
    assert want[a] == pytest.approx((3 + 7 * PI[a]) / 13)
    residues = PI > 0
    for row in got:  # the non-residue ids take OTHER_P each, the residues the rest
        assert row[~residues] == pytest.approx(np.full((~residues).sum(), OTHER_P), rel=1e-3)
        np.testing.assert_allclose(row[residues] / row[residues].sum(), want[residues],
                                   rtol=1e-5)


def test_masked_positions_are_left_out_and_visible_ones_count() -> None:
    net = _composition_only(alpha=3.0)
    base = frame(_ids("AAAACCDE"))
    select = torch.zeros(1, len(base), dtype=torch.bool)
    select[0, 2] = True

    def at_mask(text: str) -> torch.Tensor:
        t = frame(_ids(text))
        t[2] = TOK.mask_id  # residue 1 is masked
        return _log_probs(net, torch.as_tensor(t)[None], select)

    same = at_mask("AKAACCDE")  # only the masked residue differs from "AAAACCDE"
    torch.testing.assert_close(at_mask("AAAACCDE"), same)
    assert not torch.allclose(at_mask("AAAACCDK"), same)  # a visible residue counts
    assert base[0] == TOK.cls_id  # specials are no residue: their ids have pi = 0
    assert PI[TOK.cls_id] == PI[TOK.eos_id] == PI[TOK.pad_id] == PI[TOK.mask_id] == 0


def test_selected_rows_equal_the_full_pass_and_padding_is_no_residue() -> None:
    torch.manual_seed(0)
    net = SciFormer(ModelConfig(d_model=16, n_heads=2, n_encoder_layers=2, n_decoder_layers=0,
                                d_ff=32, dropout=0.0, composition_prior=True)).eval()
    net.composition.set_prior(torch.as_tensor(PI))
    long, short = frame(_ids("ACDKEAACD")), frame(_ids("KKDA"))
    long[3] = TOK.mask_id
    tokens = TOK.pad_batch([long, short])
    pad = tokens == TOK.pad_id
    select = torch.zeros_like(pad)
    select[0, [3, 5]] = True
    select[1, 2] = True
    full = net.token_logits(net.encode(tokens, pad), tokens)  # (B, T, V)
    sparse = net.token_logits(net.encode(tokens, pad, select=select), tokens, select)
    torch.testing.assert_close(sparse, full[select], rtol=1e-5, atol=1e-5)
    alone = net.token_logits(net.encode(tokens[1:, :6]), tokens[1:, :6])  # no padding at all
    torch.testing.assert_close(full[1, :6], alone[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs the input tokens"):
        net.token_logits(net.encode(tokens, pad))


def test_no_prior_set_and_no_vocabulary_are_clear_errors() -> None:
    net = SciFormer(ModelConfig(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=0,
                                d_ff=32, composition_prior=True))
    tokens = torch.as_tensor(frame(_ids("ACD")))[None]
    with pytest.raises(ValueError, match="no residue frequencies"):
        net.token_logits(net.encode(tokens), tokens)
    from sciformer.errors import ConfigError

    with pytest.raises(ConfigError, match="model.composition_prior"):
        ModelConfig(vocab_size=0, input_dim=4, composition_prior=True).validate()


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


@pytest.fixture
def composition_run(tmp_path: Path) -> tuple[Path, Path]:
    """(run, FASTA): a tiny run with the prior; every protein fits one window (crop 64)."""
    fasta = write_fasta(tmp_path / "prot.fa", n=30, max_len=60)
    run = tmp_path / "run"
    config = TINY_MASKED + ["data.crop_length=64", "model.composition_prior=true"]
    res = invoke("pretrain", fasta, "--out-dir", run, *_sets(config))
    assert res.exit_code == 0, res.output
    return run, fasta


def test_cli_trains_stores_and_uses_the_prior(tmp_path: Path, composition_run) -> None:
    run, fasta = composition_run
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["composition_prior"] is True
    weights = load_file(str(run / "model.safetensors"))
    want = prior(np.asarray(config["residue_counts"], dtype=np.float64))
    np.testing.assert_allclose(weights["composition.prior"].numpy(), want, rtol=1e-6)
    assert float(weights["composition.log_alpha"]) != pytest.approx(math.log(100.0), abs=1e-6)
    assert float(weights["composition.gate"]) != pytest.approx(1.0, abs=1e-6)  # both trained

    query = tmp_path / "query.fa"
    query.write_text(">q1\nACDE<mask>GHIK<mask>\n")
    assert invoke("predict", run, query, "--out", tmp_path / "pred.tsv").exit_code == 0
    rows = [r.split("\t") for r in (tmp_path / "pred.tsv").read_text().splitlines()]
    assert [(r[0], r[1]) for r in rows[1:]] == [("q1", "5"), ("q1", "10")]
    probs = [float(x) for x in rows[1][3::2]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    res = invoke("evaluate", run, fasta, "--out-dir", tmp_path / "eval")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 1 < metrics["model"]["perplexity"] < 30


def test_every_inference_path_is_the_composition_baseline_when_the_transformer_adds_nothing(
        tmp_path: Path, composition_run) -> None:
    """Zero embeddings and bias, gate 1, the baseline's alpha: `evaluate`'s model perplexity
    is the `composition` baseline's, pseudo-log-likelihoods are its leave-one-out estimates
    and fill-masks its distribution over the residue letters."""
    run, fasta = composition_run
    first = tmp_path / "eval1"
    assert invoke("evaluate", run, fasta, "--out-dir", first).exit_code == 0
    alpha = json.loads((first / "metrics.json").read_text())["baselines"]["composition"]["fit"][
        "alpha"]
    net = composition_only(sciformer.load(run).model, alpha)
    save_weights(net, run / "model.safetensors")
    second = tmp_path / "eval2"
    assert invoke("evaluate", run, fasta, "--out-dir", second).exit_code == 0
    m = json.loads((second / "metrics.json").read_text())
    # the model's probabilities carry OTHER_P on each of the 5 non-residue ids
    mass = 1 - 5 * OTHER_P
    assert m["model"]["perplexity"] == pytest.approx(
        m["baselines"]["composition"]["perplexity"] / mass, rel=1e-5)
    assert m["model"]["perplexity"] < m["baselines"]["unigram"]["perplexity"] * 1.5

    lm = sciformer.load(run)
    pi = net.composition.prior.double().numpy()
    seq = "MKVACDEFAAKK"
    ids = _ids(seq)
    baseline = CompositionBaseline(pi, alpha=alpha)
    want = np.array([baseline.distributions([ids], [np.array([i])])[0, t]
                     for i, t in enumerate(ids)])
    got = lm.pseudo_log_likelihoods(ids.astype(np.uint8))
    np.testing.assert_allclose(np.exp(got), want * mass, rtol=1e-5)

    fill = lm.fill_masks(["MKVA<mask>DEF"], top_k=3)[0][0]
    dist = baseline.distributions([_ids("MKVAADEF")], [np.array([4])])[0][RESIDUE_IDS]
    dist /= dist.sum()
    order = np.argsort(-dist, kind="stable")[:3]
    assert fill["residues"] == [TOK.alphabet[RESIDUE_IDS[o]] for o in order]
    np.testing.assert_allclose(fill["probs"], dist[order], rtol=1e-5)


def test_runs_without_the_prior_load_unchanged(tmp_path: Path, masked_run: Path) -> None:
    """A run written before the setting existed (no key in config.json) loads as before: no
    composition weights, the same predictions."""
    before = sciformer.load(masked_run).log_probs(["MKVACDEF"])[0]
    config = json.loads((masked_run / "config.json").read_text())
    assert config["model"].pop("composition_prior") is False
    (masked_run / "config.json").write_text(json.dumps(config))
    lm = sciformer.load(masked_run)
    assert lm.model.composition is None
    assert not [k for k in load_file(str(masked_run / "model.safetensors")) if "composition" in k]
    np.testing.assert_array_equal(lm.log_probs(["MKVACDEF"])[0], before)
