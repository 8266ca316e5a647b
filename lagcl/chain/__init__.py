"""The level chain control -> + data -> + rank -> + rerank in one home (docs/design.md 13): every level measured
against the control and kept only when it pays on validation.

- `rule`: the gate's rule (`verdict`, the one for the data, rank and rerank steps), the paired tests of a
  step, and the walk control -> + data -> + rank (`choose_levels`);
- `fit`: one variant trained and measured (`fit_variant`);
- `data_level`: which augmented interactions reach training (eq. 2-4), the precision pre-check and the
  data-level plan;
- `levels`: the training stages' work (control, gcl);
- `rerank_level`: the evaluate stage's work, the rerank step (eq. 19-21) included;
- `text`, `report`: the chain as text, the evaluate stage's report and plots.
"""
