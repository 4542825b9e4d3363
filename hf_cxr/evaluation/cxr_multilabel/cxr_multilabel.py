"""`evaluate` metric for multi-label chest X-ray classification, a thin wrapper over `hf_cxr.evaluation`.

Shipped inside the hf-cxr package and loaded by local path, so it works offline (the Hub's metric scripts
cannot be downloaded at run time):

    import evaluate
    from hf_cxr.evaluation import evaluate_module_path
    metric = evaluate.load(evaluate_module_path())
    metric.compute(predictions=probabilities, references=labels, label_names=[...], patient_ids=[...])

`predictions` are probabilities (sigmoid of the logits), `references` 0/1 with -100 for ignored labels.
The numbers come from `hf_cxr.evaluation.score_predictions` (scikit-learn); nothing is computed here.
"""

import datasets
import evaluate

from hf_cxr.evaluation.scores import DEFAULT_CONFIDENCE, check_arrays, point_metrics, score_predictions

_DESCRIPTION = (
    "Per-finding and macro/micro ROC-AUC, average precision, and sensitivity/specificity/precision/F1 at 0.5 and "
    "at given per-finding thresholds, with patient-level bootstrap 95% intervals. Research use only."
)
_KWARGS = """
Args:
    predictions: [N, K] probabilities. references: [N, K] labels (1, 0, or -100 to ignore).
    label_names: K finding names (default finding_0 ... finding_K-1).
    patient_ids: N patient ids for the bootstrap (default: every image its own patient).
    thresholds: {finding: threshold} chosen on another split (adds the `at_threshold/...` keys).
    n_bootstrap: resamples for the intervals (default 0: point estimates only). seed: the bootstrap's seed.
Returns:
    A flat dict: `auc_macro`, `auc_micro`, `ap_macro`, `auc/<finding>`, `ap/<finding>`,
    `at_0.5/<metric>/<finding>`, ..., and with n_bootstrap > 0 the same keys suffixed `_ci95` holding [low, high].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class CxrMultilabel(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("float64")),
                    "references": datasets.List(datasets.Value("float64")),
                }
            ),
        )

    def _compute(
        self,
        predictions,
        references,
        label_names=None,
        patient_ids=None,
        thresholds=None,
        n_bootstrap=0,
        seed=0,
        confidence=DEFAULT_CONFIDENCE,
    ):
        width = len(predictions[0]) if len(predictions) else 0
        names = list(label_names) if label_names is not None else [f"finding_{index}" for index in range(width)]
        if n_bootstrap <= 0:
            return point_metrics(*check_arrays(predictions, references, names), names, thresholds)
        scores = score_predictions(
            predictions, references, names, patient_ids, thresholds, n_bootstrap, seed, confidence
        )
        result = dict(scores.metrics)
        result.update({f"{key}_ci95": interval.as_list() for key, interval in scores.intervals.items()})
        return result
