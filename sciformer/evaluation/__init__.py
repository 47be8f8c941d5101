"""Evaluation: forecast and masked-residue metrics, classic baselines, plots and summaries.

`metrics` scores predictions against the truth, `baselines` gives the simple models every
report compares against (persistence, climatological mean, ridge autoregression, unigram), and
`report` draws the PNGs and writes the markdown summary. Pure numpy / scikit-learn /
matplotlib: nothing here knows about the Transformer.
"""
