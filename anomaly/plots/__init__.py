"""Every figure of the package, by the stage that draws it.

- `anomaly.plots.model`: figures saved in model directories (training curves, learning-rate
  finder and schedule, finetuning curves, per-image results, train --inspect).
- `anomaly.plots.benchmark`: figures of one benchmark run (ROC, PRO curve, score histograms,
  example maps) and `plot_run`, which draws them from a tested model.
- `anomaly.plots.cutpaste`: CutPaste's synthetic anomalies and the t-SNE of its embeddings.
- `anomaly.plots.common`: the backend, saving and grey images, shared by both.

The figures are re-exported here, so `from anomaly import plots; plots.plot_history(...)` works.
"""

from anomaly.plots.benchmark import (
    FPR_LIMIT,
    PLOT_FILES,
    plot_examples,
    plot_pro,
    plot_roc,
    plot_run,
    plot_score_histograms,
)
from anomaly.plots.model import (
    plot_finetune,
    plot_history,
    plot_inspection,
    plot_lr_finder,
    plot_schedule,
    plot_selection,
    plot_synthetic_defects,
)
from anomaly.plots.result import render_result, save_result

__all__ = ["FPR_LIMIT", "PLOT_FILES", "plot_examples", "plot_finetune", "plot_history", "plot_inspection",
           "plot_lr_finder", "plot_pro", "plot_roc", "plot_run", "plot_schedule",
           "plot_score_histograms", "plot_selection", "plot_synthetic_defects", "render_result", "save_result"]
